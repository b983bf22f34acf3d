"""A deployed task as a Prefect deployment: served in the foreground, or registered for workers.

The deployment is named after the task and runs ``flows.deployed:deployed_round`` (imported by
module path, so serve's and a worker's child processes load the installed koiitasks). Its
schedule is an interval of one round anchored at round 0's first slot; its concurrency limit
(``ENQUEUE``) leaves room for the rounds that are alive at once and no more, so after downtime
the rounds that came due are recorded as missed rather than run late in a burst. Before serving
or after registering, :func:`~koiitasks.recovery.recover` deals with runs a restart left behind.

Prefect settings worth knowing (``infra/stack.sh`` sets them): the server should keep
concurrency leases on disk (``PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE=...filesystem``), or a
server restart forgets them and a round that renews its lease afterwards is cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING
from uuid import UUID

import httpx

from koiitasks.deployment import FLOW_NAME, DeploymentPlan
from koiitasks.errors import ConfigError, OrchestrationError
from koiitasks.events import emit
from koiitasks.live import LiveEngine
from koiitasks.logs import quiet_api_outages
from koiitasks.recovery import (
    RecoveryReport,
    cancel_requested,
    prefect_api,
    recover,
    restore_completed,
)

if TYPE_CHECKING:
    from prefect.deployments.runner import RunnerDeployment
    from prefect.runner import Runner

#: How often the serving process looks for runs asked to cancel.
CANCEL_POLL_S = 5.0

#: Flow-run processes get the koiitasks loggers (node ids, refusals) in the Prefect UI.
FLOW_RUN_ENV = {"PREFECT_LOGGING_EXTRA_LOGGERS": "koiitasks"}


def job_env(s3_endpoint_url: str | None) -> dict[str, str]:
    """The environment a work pool's worker gives each flow run: :data:`FLOW_RUN_ENV`, and the
    S3 endpoint the deploy used, so an ``s3://`` store is reached where ``deploy`` reached it
    (a worker started as ``deploy`` says would not have it)."""
    endpoint = {"KOII_S3_ENDPOINT_URL": s3_endpoint_url} if s3_endpoint_url else {}
    return FLOW_RUN_ENV | endpoint


def runner_deployment(
    plan: DeploymentPlan, *, work_pool: str | None = None, s3_endpoint_url: str | None = None
) -> RunnerDeployment:
    """The Prefect deployment of a planned task."""
    from prefect.client.schemas.objects import (  # noqa: PLC0415 - Prefect only when deploying
        ConcurrencyLimitConfig,
        ConcurrencyLimitStrategy,
    )
    from prefect.schedules import Interval  # noqa: PLC0415
    from prefect.types.entrypoint import EntrypointType  # noqa: PLC0415

    from flows.deployed import deployed_round  # noqa: PLC0415

    deployment: RunnerDeployment = deployed_round.to_deployment(  # type: ignore[assignment]
        name=plan.name,
        schedule=Interval(plan.interval, anchor_date=plan.anchor, timezone="UTC"),
        concurrency_limit=ConcurrencyLimitConfig(
            limit=plan.concurrency_limit, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE
        ),
        parameters=plan.parameters,
        tags=plan.tags,
        description=_description(plan),
        work_pool_name=work_pool,
        job_variables={"env": job_env(s3_endpoint_url)} if work_pool else None,
        entrypoint_type=EntrypointType.MODULE_PATH,
    )
    return deployment


@dataclass(frozen=True)
class ExistingDeployment:
    """The deployment of a task the server already holds: its id and the store it runs on."""

    id: UUID
    name: str
    store: str | None


def existing_deployment(task_id: str) -> ExistingDeployment | None:
    """The task's deployment on the server, or None. Asked before ``koiitasks deploy`` writes
    anything to the store: a server that does not answer stops it there."""
    from prefect.client.orchestration import get_client  # noqa: PLC0415
    from prefect.exceptions import ObjectNotFound  # noqa: PLC0415

    name = f"{FLOW_NAME}/{task_id}"
    with prefect_api(f"look for deployment {name!r}"), get_client(sync_client=True) as client:
        try:
            found = client.read_deployment_by_name(name)
        except ObjectNotFound:
            return None
    store = (found.parameters or {}).get("store")
    return ExistingDeployment(found.id, name, store if isinstance(store, str) else None)


def refuse_another_store(existing: ExistingDeployment | None, store_url: str) -> None:
    """A deployment runs its task on one store: deploying it to another would repoint it, and
    the runs it already scheduled would go on writing to the first."""
    if existing is None or existing.store is None or existing.store == store_url:
        return
    raise ConfigError(
        f"deployment {existing.name} ({existing.id}) runs its task on store {existing.store}, "
        f"not {store_url}",
        hint=f"deploy with --store {existing.store} to serve it again, or stop its serve "
        f"process and delete it (`prefect deployment delete {existing.name}`) to deploy the "
        "task to another store",
    )


def ensure_work_pool(name: str) -> bool:
    """Create a ``process`` work pool of that name unless it exists; whether it was created."""
    from prefect.client.orchestration import get_client  # noqa: PLC0415
    from prefect.client.schemas.actions import WorkPoolCreate  # noqa: PLC0415
    from prefect.exceptions import ObjectNotFound  # noqa: PLC0415

    with prefect_api(f"find or make work pool {name!r}"), get_client(sync_client=True) as client:
        try:
            client.read_work_pool(name)
        except ObjectNotFound:
            client.create_work_pool(WorkPoolCreate(name=name, type="process"))
            return True
    return False


def apply(deployment: RunnerDeployment, *, work_pool: str | None = None) -> UUID:
    """Create or update the deployment on the server; its id. (Prefect drops the deployment's
    future scheduled runs on every update; :func:`schedule_now` makes them again at once.)"""
    with prefect_api(f"create deployment {deployment.name!r}"):
        deployment_id: UUID = deployment.apply(work_pool_name=work_pool)  # type: ignore[assignment]
    return deployment_id


def schedule_now(deployment_id: UUID) -> None:
    """Have the server make the deployment's next scheduled runs now, not at its next loop."""
    from prefect.client.orchestration import get_client  # noqa: PLC0415

    with prefect_api("schedule the deployment's runs"), get_client(sync_client=True) as client:
        client.request("POST", "/deployments/{id}/schedule", path_params={"id": deployment_id})


def recover_and_report(
    plan: DeploymentPlan, engine: LiveEngine, deployment_id: UUID, *, starting: bool = True
) -> list[str]:
    """Run recovery, send its events, and say what it did."""
    report: RecoveryReport = recover(plan, engine, deployment_id, starting=starting)
    emit(report.events)
    return report.lines()


class Watch(threading.Thread):
    """While serving, recovery once a round: re-runs rounds whose flow-run process died (a
    server restart cuts a starting process off the API) while their round can still settle.
    Every :data:`CANCEL_POLL_S` it also stops the runs asked to cancel, which Prefect's runner
    no longer does once an API outage has made its cancellation watcher give up.

    ``halted`` says the runner is shutting down: its runs are then crashed on purpose (SIGTERM,
    Ctrl-C) and must not be re-run; the next ``koiitasks deploy`` recovers them.
    """

    def __init__(
        self,
        plan: DeploymentPlan,
        engine: LiveEngine,
        deployment_id: UUID,
        say: Callable[[list[str]], None],
        halted: Callable[[], bool] = lambda: False,
        announced: Iterable[UUID] = (),
    ) -> None:
        super().__init__(name="koiitasks-recovery", daemon=True)
        self.plan, self.engine, self.deployment_id, self.say = plan, engine, deployment_id, say
        self.halted = halted
        self.stopped = threading.Event()
        #: Rounds due from here on came due while serving, not while down.
        self.serving_since_ms = engine.slot_clock.clock.now_ms()
        # Re-runs already reported (at start): the same crashed run gives the same re-run.
        self._announced: set[UUID] = set(announced)

    def run(self) -> None:
        every = max(CANCEL_POLL_S, self.plan.round_ms / 1000)
        next_recovery = time.monotonic() + every
        while not self.stopped.wait(min(CANCEL_POLL_S, max(0.0, next_recovery - time.monotonic()))):
            if self.halted():
                continue
            self.cancel()
            if time.monotonic() < next_recovery:
                continue
            next_recovery = time.monotonic() + every
            try:
                report = recover(
                    self.plan,
                    self.engine,
                    self.deployment_id,
                    starting=False,
                    serving_since_ms=self.serving_since_ms,
                )
            except Exception as e:  # noqa: BLE001 - the server may be restarting: next round
                self.say([f"recovery skipped this round: {type(e).__name__}: {e}"])
                continue
            emit(report.events)
            new = [i for i in report.rerun_ids if i not in self._announced]
            self._announced.update(new)
            if new or report.missed or report.late or report.crashed:
                report.rerun = report.rerun if new else []
                self.say(report.lines())

    def cancel(self) -> None:
        try:
            stopped = cancel_requested(self.plan, self.engine, self.deployment_id)
        except OrchestrationError as e:
            if not isinstance(e.__cause__, httpx.TransportError):  # away: nothing to cancel
                self.say([f"could not look for runs asked to cancel: {e.message}"])
            return
        except Exception as e:  # noqa: BLE001 - the watch goes on; recovery too
            self.say([f"could not look for runs asked to cancel: {type(e).__name__}: {e}"])
            return
        for number in stopped:
            self.say([f"round {number}: its run was asked to cancel; stopped and cancelled"])


def serve(
    plan: DeploymentPlan,
    deployment: RunnerDeployment,
    engine: LiveEngine,
    *,
    on_ready: Callable[[UUID, list[str]], None] = lambda _id, _lines: None,
    say: Callable[[list[str]], None] = lambda _lines: None,
) -> None:
    """Serve the deployment in this process until SIGTERM or Ctrl-C, as Prefect's ``serve``
    does, with recovery between registering the deployment and polling for its runs.

    Flow-run processes inherit this process's environment, so the caller sets
    :data:`FLOW_RUN_ENV` there (the CLI's logging set-up does).
    """
    from prefect.exceptions import TerminationSignal  # noqa: PLC0415
    from prefect.runner import Runner  # noqa: PLC0415

    quiet_api_outages()  # a server restart: one line per failed call, not tracebacks

    runner = Runner(
        name=f"koiitasks-{plan.task_id}",
        limit=plan.concurrency_limit,
        query_seconds=plan.poll_s,
        prefetch_seconds=plan.prefetch_s,
        pause_on_shutdown=True,
    )
    with prefect_api(f"create deployment {deployment.name!r}"):
        deployment_id: UUID = runner.add_deployment(deployment)  # type: ignore[assignment]
    schedule_now(deployment_id)
    report = recover(plan, engine, deployment_id)
    emit(report.events)
    on_ready(deployment_id, report.lines())
    watch = Watch(
        plan,
        engine,
        deployment_id,
        say,
        halted=lambda: runner.stopping,
        announced=report.rerun_ids,
    )
    watch.start()
    ctrl_c = threading.Event()
    try:
        with (
            _ctrl_c_stops(runner, ctrl_c),
            contextlib.suppress(KeyboardInterrupt, TerminationSignal),
        ):
            asyncio.run(runner.start())
    except KeyboardInterrupt:
        raise
    except Exception as e:
        # Prefect's runner gives up after its API failed three polls in a row, each retried
        # for about a minute: a server down for minutes. Say so; a restart recovers the runs.
        raise OrchestrationError(
            f"stopped serving {plan.task_id!r}: Prefect's runner lost the API at "
            f"{_api_url()} ({type(e).__name__}: {e})",
            hint="start `koiitasks deploy` again once the server is up (`infra/stack.sh "
            "status`): it re-runs the interrupted rounds that can still settle and records the "
            "others as missed",
        ) from e
    finally:
        watch.stopped.set()
    # Stopping, the runner cancels the runs it still holds, one whose process has just exited
    # after completing its round included: put those back as they were.
    try:
        if restored := restore_completed(plan, engine, deployment_id):
            say([f"{restored} runs completed as the runner stopped: marked completed again"])
    except OrchestrationError as e:
        say([f"could not check the runs the runner cancelled as it stopped: {e.message}"])
    if ctrl_c.is_set():
        raise KeyboardInterrupt  # stopped cleanly: the CLI says so and exits 130


@contextlib.contextmanager
def _ctrl_c_stops(runner: Runner, noted: threading.Event) -> Iterator[None]:
    """While the block runs, a Ctrl-C stops the runner as SIGTERM does (schedules paused, runs
    cancelled, then :func:`serve` returns) and is noted in ``noted``. A KeyboardInterrupt
    raised inside Prefect's event loop would instead cancel its tasks mid-call: tracebacks by
    the hundred, and a stop that pauses nothing. A second Ctrl-C interrupts at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal.getsignal(signal.SIGINT)
    if before is signal.SIG_IGN:  # nohup: Ctrl-C is not this process's to handle
        yield
        return

    def stop(signum: int, frame: FrameType | None) -> None:
        again = noted.is_set()
        noted.set()
        if again or not runner.started or runner.stopping or runner._loop is None:
            signal.default_int_handler(signum, frame)
        runner.stopping = True
        runner.execute_in_background(runner.astop)

    signal.signal(signal.SIGINT, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, before)


def _api_url() -> str:
    from prefect.settings import PREFECT_API_URL  # noqa: PLC0415

    return str(PREFECT_API_URL.value())


def prefect_yaml(
    plan: DeploymentPlan, *, work_pool: str, s3_endpoint_url: str | None = None
) -> str:
    """The same deployment as a ``prefect.yaml`` for ``prefect deploy`` (workers of a pool run
    it from this checkout, which ``flows/`` and ``koiitasks/`` are imported from)."""
    import yaml  # noqa: PLC0415

    checkout = Path(__file__).resolve().parents[1]
    document = {
        "name": "koiitasks",
        "prefect-version": "3.9.1",
        "pull": [{"prefect.deployments.steps.set_working_directory": {"directory": str(checkout)}}],
        "deployments": [
            {
                "name": plan.name,
                "entrypoint": "flows/deployed.py:deployed_round",
                "description": _description(plan),
                "tags": plan.tags,
                "parameters": plan.parameters,
                "schedules": [
                    {
                        "interval": plan.round_ms / 1000,
                        "anchor_date": plan.anchor.isoformat(),
                        "timezone": "UTC",
                    }
                ],
                "concurrency_limit": {
                    "limit": plan.concurrency_limit,
                    "collision_strategy": "ENQUEUE",
                },
                "work_pool": {
                    "name": work_pool,
                    "job_variables": {"env": job_env(s3_endpoint_url)},
                },
            }
        ],
    }
    header = (
        f"# Rounds of task {plan.task_id} as a Prefect deployment, made by `koiitasks deploy "
        "--prefect-yaml`.\n# Deploy it with `prefect deploy --all --prefect-file THIS_FILE`; "
        "the anchor is round 0's first slot,\n# the genesis recorded in the store.\n"
    )
    return header + yaml.safe_dump(document, sort_keys=False)


def _description(plan: DeploymentPlan) -> str:
    return (
        f"Rounds of task {plan.task_id}: one flow run every {plan.schedule.round_time} slots "
        f"of {plan.slot_ms} ms, from round 0 at {plan.anchor.isoformat()}"
    )
