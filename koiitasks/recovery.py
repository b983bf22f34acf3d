"""After a restart: re-run the rounds whose flow runs died, record the ones that are gone.

A flow run of a deployed round claims its process when it starts (``host:pid`` in the run's
``infrastructure_pid``). When ``koiitasks deploy`` starts serving (or registers for a work pool)
it looks at the deployment's unfinished runs:

- A pending or running run whose claimed process is gone from this host (the serve process was
  killed with its children, the machine rebooted), or that never claimed one and has not moved
  for :data:`UNCLAIMED_AFTER_S`, is marked Crashed, unless a process of this host still runs it
  (Prefect puts the run's id in its process's environment: one whose claim failed while the API
  was away is found that way). While serving, only a *pending* unclaimed run counts (its process
  died before running: the server went away as it started, so nobody could report the crash,
  and the run would sit pending for good); a running one may be on another host, having missed
  its claim, and is left alone. A run is crashed only if it is still in the state it was listed
  in. Runs of any age are looked at, not only those of the live rounds: until it is crashed, a
  run left pending or running holds one of the deployment's concurrency slots, and a few of
  them would leave the rounds due now waiting until their windows closed. If its round can
  still settle (before :meth:`~koiitasks.live.LiveEngine.settle_deadline`), a new run of the
  same round is created: every step of a round reads back what the store holds, so the rerun
  finishes the round with the bytes the first run would have written, and the ledger's
  create-only entry pays it once.
- A scheduled run whose round's execute window has already closed (the deployment was down) is
  cancelled and its round recorded as missed, with an event, instead of being run late, so it
  never takes a run slot. While serving, a round due after serving began is reported as one
  whose run did not start in time, not as one that came due while down.

- A run that completed and that Prefect's runner then marked cancelled as it stopped (it still
  held the run, whose process had just exited, and cancels what it holds when it stops) is
  completed again, as it was: its round was done, and the UI should say so.

Runs claimed on another host are left alone: only that host can tell whether they are alive.

While serving, :func:`cancel_requested` also stops the runs asked to cancel whose process runs on
this host, as Prefect's runner does until an API outage makes its cancellation watcher give up.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import logging
import os
import signal
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx

from koiitasks.deployment import DeploymentPlan
from koiitasks.errors import OrchestrationError
from koiitasks.events import EventSpec, missed_event
from koiitasks.live import LiveEngine

NOT_A_ROUND = (
    "not due at a round's first slot of this deployment (before round 0, or left from an "
    "earlier deploy of the task)"
)

log = logging.getLogger("koiitasks.recovery")

#: The message Prefect's runner gives the runs it still holds when it stops.
RUNNER_SHUTDOWN = "Runner is shutting down."

#: A pending or running run that has not claimed a process this long after its last state
#: change is taken as dead (a live one claims within a second or two of its process starting).
UNCLAIMED_AFTER_S = 60.0

#: What Prefect's runner puts in the environment of the process it starts for a run.
FLOW_RUN_ID_VARIABLE = b"PREFECT__FLOW_RUN_ID="

#: How long a run's process asked to stop has to exit before it is killed (Prefect's runner
#: gives the same).
STOP_GRACE_S = 30.0

#: How long a run stays Cancelling before the serving process stops it in Prefect's runner's
#: place. The runner, while it watches, hears of it within a second and first tells the run's
#: process that it is cancelled, so a later SIGTERM does not turn the cancel into a crash.
CANCEL_AFTER_S = 10.0

#: The message of a run that ``koiitasks deploy`` cancelled in Prefect's runner's place.
CANCELLED_HERE = "cancelled: koiitasks deploy stopped its process, as asked"


@dataclass
class RecoveryReport:
    """What recovery did, for the command line to print."""

    crashed: list[int] = field(default_factory=list)
    rerun: list[int] = field(default_factory=list)
    missed: list[int] = field(default_factory=list)
    #: Rounds due while serving whose runs had not started when their windows closed.
    late: list[int] = field(default_factory=list)
    stray: int = 0
    restored: int = 0
    rerun_ids: list[UUID] = field(default_factory=list)
    events: list[EventSpec] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = []
        if self.crashed:
            out.append(f"runs of {_rounds(self.crashed)} had died: marked crashed")
        if self.rerun:
            out.append(f"{_rounds(self.rerun)}: re-run from the store")
        if self.missed:
            out.append(f"{_rounds(self.missed)} came due while down: recorded as missed")
        if self.late:
            out.append(
                f"{_rounds(self.late)} came due while serving, but no run of theirs had started "
                "when their submission windows closed: recorded as missed"
            )
        if self.stray:
            out.append(f"{self.stray} scheduled runs fall between rounds: cancelled")
        if self.restored:
            out.append(
                f"{self.restored} completed runs were marked cancelled as the last deploy "
                "stopped: completed again"
            )
        return out


def _rounds(numbers: list[int]) -> str:
    unique = sorted(set(numbers))
    return ("round " if len(unique) == 1 else "rounds ") + ", ".join(map(str, unique))


@contextlib.contextmanager
def prefect_api(what: str) -> Iterator[None]:
    """Turn an httpx or Prefect HTTP error while doing ``what`` into an OrchestrationError."""
    try:
        yield
    except httpx.HTTPError as e:
        raise OrchestrationError(
            f"the Prefect API could not {what}: {e}",
            hint="check that the server PREFECT_API_URL names is up (`infra/stack.sh status`)",
        ) from e


def process_claim() -> str:
    """What a flow run's process writes as its ``infrastructure_pid``: ``host:pid``."""
    return f"{socket.gethostname()}:{os.getpid()}"


def claim_flow_run(flow_run_id: UUID | str) -> bool:
    """Record this process as the one running the flow run; False if the API was away (the
    run goes on; only recovery after a crash loses the claim)."""
    from prefect.client.orchestration import get_client  # noqa: PLC0415 - Prefect at the edge

    try:
        with get_client(sync_client=True) as client:
            client.update_flow_run(UUID(str(flow_run_id)), infrastructure_pid=process_claim())
    except httpx.HTTPError as e:
        log.warning("flow run %s: could not claim its process: %s", flow_run_id, e)
        return False
    return True


def claimed_process_alive(claim: str | None) -> bool | None:
    """True or False for a claim made on this host; None when this host cannot tell."""
    if not claim or ":" not in claim:
        return None
    host, _, pid = claim.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return None
    return _process_alive(int(pid))


def _process_alive(pid: int) -> bool:
    """Whether the process ``pid`` of this host runs (not exited, not a zombie)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    """A killed process nobody has reaped yet still answers ``kill(pid, 0)``."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state in {"Z", "X"}


def recover(
    plan: DeploymentPlan,
    engine: LiveEngine,
    deployment_id: UUID,
    *,
    starting: bool = True,
    serving_since_ms: int | None = None,
) -> RecoveryReport:
    """Crash and re-run the deployment's dead runs; cancel and record the runs that came due
    while nothing ran them (see the module docstring).

    ``serving_since_ms`` is when this process began serving: a round due since then was not
    missed while down, but because its run did not start in time (say, the deployment's runs
    were at their concurrency limit), and is reported as such.

    ``starting`` is for a serve process that has not started any run yet: a run that never
    claimed a process is then dead if it is old. While serving (``starting=False``) such runs
    may still be starting, so only claimed-and-gone runs count, and runs that Prefect already
    marked crashed (a flow-run process that lost the API while the server restarted) are
    re-run if their round can still settle.
    """
    from prefect.client.orchestration import get_client  # noqa: PLC0415
    from prefect.client.schemas.objects import StateType  # noqa: PLC0415

    report = RecoveryReport()
    now_ms = engine.slot_clock.clock.now_ms()
    since = _recent(plan, now_ms)
    # Unfinished runs of any age: a pending or running one holds one of the deployment's
    # concurrency slots until it ends, and a late scheduled one would take one to be missed.
    unfinished = _runs_in(
        deployment_id, [StateType.SCHEDULED, StateType.PENDING, StateType.RUNNING], None
    )
    crashed = _runs_in(deployment_id, [StateType.CRASHED], since)
    local = _LocalRuns()
    with prefect_api("recover the deployment's runs"), get_client(sync_client=True) as client:
        runs = [*_all_runs(client, unfinished), *_all_runs(client, crashed)]
        for run in runs:
            state = run.state
            number = _round_of(plan, run)
            if state is None:
                continue
            if number is None:
                _cancel_stray(client, run, report)
            elif state.type == StateType.SCHEDULED:
                _missed_while_down(
                    client, plan, engine, run, number, report, serving_since_ms=serving_since_ms
                )
            elif state.type == StateType.CRASHED:
                _name_after_round(client, plan, run, number)
                _rerun(client, plan, engine, deployment_id, run, number, report)
            elif _is_dead(
                run, state, now_ms=now_ms, starting=starting, plan=plan, local=local
            ) and _still_in(client, run, state):
                _crash(client, plan, run, number, report)
                _rerun(client, plan, engine, deployment_id, run, number, report)
        _restore_completed(client, deployment_id, since, report)
    return report


def cancel_requested(plan: DeploymentPlan, engine: LiveEngine, deployment_id: UUID) -> list[int]:
    """Stop this host's processes of the runs asked to cancel (*Cancelling*, as the UI's Cancel
    button leaves them) and mark those runs Cancelled; the rounds they ran.

    Prefect's runner does this itself while its cancellation watcher works (it is left
    :data:`CANCEL_AFTER_S` to begin), but after an API outage the watcher has given up for good,
    and the run would go on. The stopped process marks its run Crashed on its way
    out, so the run's history shows that crash before Cancelled. A round cancelled before it
    settled is recorded missed by a later round, like any round that did not settle.
    """
    from prefect.client.orchestration import get_client  # noqa: PLC0415
    from prefect.client.schemas.objects import StateType  # noqa: PLC0415
    from prefect.states import Cancelled  # noqa: PLC0415

    now_ms = engine.slot_clock.clock.now_ms()
    cancelling = _runs_in(deployment_id, [StateType.CANCELLING], _recent(plan, now_ms))
    local = _LocalRuns()
    stopped: list[int] = []
    with prefect_api("cancel the runs asked to cancel"), get_client(sync_client=True) as client:
        for run in client.read_flow_runs(flow_run_filter=cancelling, limit=200):
            asked = run.state.timestamp if run.state is not None else None
            if asked is None or now_ms - asked.timestamp() * 1000 < CANCEL_AFTER_S * 1000:
                continue  # Prefect's runner may still be at it
            pids = local.pids(run.id)
            if pids:
                if not _still_in(client, run, run.state):
                    continue  # it moved on while earlier runs were stopped
                _stop_processes(pids)
            elif claimed_process_alive(run.infrastructure_pid) is not False:
                continue  # running on another host, or not started: its runner cancels it
            # Stopped, it marked itself Crashed; anything else is a newer state that stands.
            now = client.read_flow_run(run.id).state
            if now is None or now.type not in {StateType.CANCELLING, StateType.CRASHED}:
                continue
            client.set_flow_run_state(run.id, Cancelled(message=CANCELLED_HERE), force=True)
            if (number := _round_of(plan, run)) is not None:
                stopped.append(number)
            log.info("run %s was asked to cancel: its process stopped", run.id)
    return stopped


def _stop_processes(pids: list[int]) -> None:
    """SIGTERM, then SIGKILL what has not exited after :data:`STOP_GRACE_S` (Prefect's own
    grace); never this process."""
    left = [pid for pid in pids if pid != os.getpid()]
    for signal_number in (signal.SIGTERM, signal.SIGKILL):
        for pid in left:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal_number)
        deadline = time.monotonic() + STOP_GRACE_S
        while left and time.monotonic() < deadline:
            left = [pid for pid in left if _process_alive(pid)]
            time.sleep(0.1)
        if not left:
            return


def restore_completed(plan: DeploymentPlan, engine: LiveEngine, deployment_id: UUID) -> int:
    """Complete again the runs that Prefect's runner cancelled after they had completed, as a
    serve process does once its runner has stopped; how many."""
    from prefect.client.orchestration import get_client  # noqa: PLC0415

    report = RecoveryReport()
    since = _recent(plan, engine.slot_clock.clock.now_ms())
    with (
        prefect_api("restore the deployment's completed runs"),
        get_client(sync_client=True) as client,
    ):
        _restore_completed(client, deployment_id, since, report)
    return report.restored


def _recent(plan: DeploymentPlan, now_ms: int) -> dt.datetime:
    """Older runs are past their rounds' deadlines: nothing left to re-run or record."""
    return dt.datetime.fromtimestamp(
        (now_ms - (plan.live_rounds + 2) * plan.round_ms) / 1000, tz=dt.UTC
    )


#: Runs read from the API a request (Prefect's server caps a page at 200).
PAGE = 200


def _all_runs(client: Any, flow_run_filter: Any) -> list[Any]:
    """Every run the filter matches, oldest due first, page by page: the stale runs recovery is
    for come first, and none is left out past one page."""
    from prefect.client.schemas.sorting import FlowRunSort  # noqa: PLC0415

    runs: list[Any] = []
    while True:
        page = client.read_flow_runs(
            flow_run_filter=flow_run_filter,
            sort=FlowRunSort.EXPECTED_START_TIME_ASC,
            limit=PAGE,
            offset=len(runs),
        )
        runs += page
        if len(page) < PAGE:
            return runs


def _runs_in(deployment_id: UUID, states: list[Any], since: dt.datetime | None) -> Any:
    """A filter for the deployment's runs in one of ``states``, due after ``since`` if given."""
    from prefect.client.schemas.filters import (  # noqa: PLC0415
        FlowRunFilter,
        FlowRunFilterDeploymentId,
        FlowRunFilterExpectedStartTime,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )

    return FlowRunFilter(
        deployment_id=FlowRunFilterDeploymentId(any_=[deployment_id]),
        state=FlowRunFilterState(type=FlowRunFilterStateType(any_=states)),
        expected_start_time=None if since is None else FlowRunFilterExpectedStartTime(after_=since),
    )


def _restore_completed(
    client: Any, deployment_id: UUID, since: dt.datetime, report: RecoveryReport
) -> None:
    from prefect.client.schemas.objects import StateType  # noqa: PLC0415
    from prefect.states import Completed  # noqa: PLC0415

    cancelled = _runs_in(deployment_id, [StateType.CANCELLED], since)
    for run in client.read_flow_runs(flow_run_filter=cancelled, limit=200):
        if run.state is None or run.state.message != RUNNER_SHUTDOWN:
            continue
        finished = [s for s in client.read_flow_run_states(run.id) if s.is_completed()]
        if not finished:
            continue  # cancelled mid-round: recovery re-runs or records the round
        last = max(finished, key=lambda s: s.timestamp)
        client.set_flow_run_state(
            run.id, Completed(name=last.name, message=last.message), force=True
        )
        log.info("run %s had completed before the runner cancelled it: completed again", run.id)
        report.restored += 1


def _round_of(plan: DeploymentPlan, run: Any) -> int | None:
    given = (run.parameters or {}).get("round_number")
    if isinstance(given, int):
        return given
    start = run.expected_start_time or run.created
    return plan.round_starting_at_ms(int(start.timestamp() * 1000))


def _cancel_stray(client: Any, run: Any, report: RecoveryReport) -> None:
    """A run due between rounds: before round 0 (the schedule's grid reaches back past its
    anchor) or on an older grid (an earlier deploy of the task to another store)."""
    from prefect.client.schemas.objects import StateType  # noqa: PLC0415
    from prefect.states import Cancelled  # noqa: PLC0415

    if run.state is not None and run.state.type == StateType.SCHEDULED:
        client.set_flow_run_state(run.id, Cancelled(message=NOT_A_ROUND), force=True)
        report.stray += 1


class _LocalRuns:
    """The flow runs this host has a process for, read from ``/proc`` once when first asked:
    Prefect starts each run's process with ``PREFECT__FLOW_RUN_ID`` in its environment, so a
    process that could not claim its run (the API was away) is still found."""

    def pids(self, run_id: UUID) -> list[int]:
        """The processes here that run ``run_id`` (its own, and any it started): none if
        ``/proc`` cannot tell."""
        return (self._processes or {}).get(str(run_id), [])

    def has(self, run_id: UUID) -> bool | None:
        """Whether a process here runs ``run_id``; None where ``/proc`` cannot tell."""
        pids = self._processes
        return None if pids is None else str(run_id) in pids

    @functools.cached_property
    def _processes(self) -> dict[str, list[int]] | None:
        return _flow_run_processes()


def _flow_run_processes(proc: Path = Path("/proc")) -> dict[str, list[int]] | None:
    if not proc.is_dir():
        return None
    pids: dict[str, list[int]] = {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()  # a zombie's is empty
        except OSError:
            continue  # gone, or another user's
        for variable in environ.split(b"\0"):
            if variable.startswith(FLOW_RUN_ID_VARIABLE):
                run_id = variable[len(FLOW_RUN_ID_VARIABLE) :].decode(errors="replace")
                pids.setdefault(run_id, []).append(int(entry.name))
    return pids


def _is_dead(
    run: Any, state: Any, *, now_ms: int, starting: bool, plan: DeploymentPlan, local: _LocalRuns
) -> bool:
    from prefect.client.schemas.objects import StateType  # noqa: PLC0415

    alive = claimed_process_alive(run.infrastructure_pid)
    if alive is not None:
        return not alive
    if run.infrastructure_pid:  # claimed on another host: only that host can tell
        return False
    here = local.has(run.id)
    if here:
        return False  # its process is alive here: it has not claimed the run yet
    if not starting and (here is None or state.type != StateType.PENDING):
        # Running: its process may be on another host, having missed its claim while the API
        # was away. Pending with no way to look for its process: it may still be starting.
        return False
    since: dt.datetime | None = state.timestamp
    if since is None:
        return starting
    # A run claims before it goes running; a live one is pending at most the prefetch before
    # its due time, plus its process's start (retried calls included while the API is away).
    patience_s = UNCLAIMED_AFTER_S + (0.0 if starting else plan.prefetch_s)
    return now_ms - since.timestamp() * 1000 > patience_s * 1000


def _still_in(client: Any, run: Any, state: Any) -> bool:
    """Whether the run is still in ``state``: it may have moved since the runs were listed."""
    current = client.read_flow_run(run.id).state
    return current is not None and current.id == state.id


def _name_after_round(client: Any, plan: DeploymentPlan, run: Any, number: int) -> None:
    """A run that never started still has the name the server made up; a run that starts
    names itself after its round, and the UI lists every round's run under its number."""
    name = f"{plan.task_id}-round-{number}"
    if run.name != name:
        client.update_flow_run(run.id, name=name)


def _crash(
    client: Any, plan: DeploymentPlan, run: Any, number: int, report: RecoveryReport
) -> None:
    from prefect.states import Crashed  # noqa: PLC0415

    _name_after_round(client, plan, run, number)
    client.set_flow_run_state(
        run.id,
        Crashed(message=f"the process running round {number} stopped; koiitasks deploy found it"),
        force=True,
    )
    report.crashed.append(number)


def _rerun(
    client: Any,
    plan: DeploymentPlan,
    engine: LiveEngine,
    deployment_id: UUID,
    run: Any,
    number: int,
    report: RecoveryReport,
) -> None:
    """A new run of the round, unless it settled or is past its deadline (a later round
    records it missed); one per crashed run, whoever asks (the idempotency key)."""
    from prefect.client.schemas.objects import StateType  # noqa: PLC0415

    if engine.is_settled(number) or engine.slot_clock.get_slot() >= engine.settle_deadline(number):
        return
    if any(s.type == StateType.CANCELLING for s in client.read_flow_run_states(run.id)):
        return  # asked to cancel, and crashed on its way out: the round stays cancelled
    rerun = client.create_flow_run_from_deployment(
        deployment_id,
        parameters={"round_number": number},
        name=f"{plan.task_id}-round-{number}",
        tags=[*plan.tags, "rerun"],
        idempotency_key=f"rerun-{run.id}",
    )
    report.rerun.append(number)
    report.rerun_ids.append(rerun.id)


def _missed_while_down(
    client: Any,
    plan: DeploymentPlan,
    engine: LiveEngine,
    run: Any,
    number: int,
    report: RecoveryReport,
    *,
    serving_since_ms: int | None,
) -> None:
    from prefect.states import Cancelled  # noqa: PLC0415

    why = engine.missed_reason(number)
    if why is None:
        return  # still due, or already opened: the run goes ahead
    late = serving_since_ms is not None and plan.round_start_ms(number) >= serving_since_ms
    if late:
        reason = f"its run had not started when its submission window closed ({why})"
    else:
        reason = f"nothing ran it before its submission window closed ({why})"
    _name_after_round(client, plan, run, number)
    client.set_flow_run_state(
        run.id, Cancelled(message=f"round {number} missed: {reason}"), force=True
    )
    before = len(engine.recorded_missed)
    missed = engine.note_missed(number, reason)
    (report.late if late else report.missed).append(number)
    if len(engine.recorded_missed) > before:
        report.events.append(missed_event(engine.task_id, number, missed.reason))
