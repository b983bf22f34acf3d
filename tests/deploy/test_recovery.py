"""Specification of :mod:`koiitasks.recovery` against a Prefect API (the session's harness):
which of a deployment's runs are crashed, re-run, cancelled or left alone after a restart.

The task has one-minute rounds and the clock is the real one, half way into round 10, so every
run below is unambiguously before, in or after its round's windows.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import StateType
from prefect.client.schemas.sorting import FlowRunSort
from prefect.states import (
    Cancelled,
    Cancelling,
    Completed,
    Crashed,
    Pending,
    Running,
    Scheduled,
)

from koiitasks import recovery
from koiitasks.clock import SimulatedClock, WallClock
from koiitasks.deployment import (
    DeploymentPlan,
    open_deployed_engine,
    plan_deployment,
    prepare_deployed_task,
)
from koiitasks.events import ROUND_MISSED
from koiitasks.live import LiveEngine
from koiitasks.serving import apply, runner_deployment
from koiitasks.storage import Layout, open_store
from koiitasks.testing import write_task
from tests.conftest import HASH_PUZZLE

pytestmark = pytest.mark.usefixtures("prefect_api")

MINUTE_ROUNDS = {
    "round_time": 60,
    "submission_window": 20,
    "audit_window": 20,
    "slot_ms": 1000,
    "minimum_stake_amount": 100,
    "total_bounty_amount": 1_000_000,
    "bounty_amount_per_round": 1_000,
}


_deployments = itertools.count()


@contextlib.contextmanager
def run_process(run_id: UUID) -> Iterator[subprocess.Popen[bytes]]:
    """A process of this host started the way Prefect's runner starts a run's: the run's id in
    its environment. It never claims the run."""
    env = {**os.environ, "PREFECT__FLOW_RUN_ID": str(run_id)}
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], env=env)
    try:
        yield process
    finally:
        process.kill()
        process.wait()


def dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    return int(proc.stdout)


class Deployment:
    """A task deployed ten and a half rounds ago, and helpers to make runs of it."""

    def __init__(self, tmp_path: Path) -> None:
        source = (HASH_PUZZLE / "task.py").read_text()
        # A deployment of its own per test: the harness's server outlives each test.
        name = f"Recovered {next(_deployments)}"
        self.task_dir = write_task(
            tmp_path / "task", source, config={"task_name": name, **MINUTE_ROUNDS}
        )
        self.store = str(tmp_path / "store")
        now = WallClock().now_ms()
        prepare_deployed_task(
            self.task_dir, self.store, nodes=4, seed=3, lead_ms=0,
            clock=SimulatedClock(now - 10 * 60_000 - 30_000),
        )  # fmt: skip
        self.plan: DeploymentPlan = plan_deployment(self.task_dir, self.store)
        self.engine: LiveEngine = open_deployed_engine(self.task_dir, self.store)
        self.engines = [self.engine]
        self.id = apply(runner_deployment(self.plan))

    def at(self, ms: float) -> dt.datetime:
        return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC)

    def run(self, round_start_ms: float, state: Any = None, *, claim: str | None = None) -> UUID:
        """A run of the deployment due at ``round_start_ms``, then moved to ``state``."""
        with get_client(sync_client=True) as client:
            run = client.create_flow_run_from_deployment(
                self.id, state=Scheduled(scheduled_time=self.at(round_start_ms))
            )
            if state is not None:
                client.set_flow_run_state(run.id, state, force=True)
            if claim is not None:
                client.update_flow_run(run.id, infrastructure_pid=claim)
            return run.id

    def engine_later(self, seconds: float) -> LiveEngine:
        """The task's engine on a clock ``seconds`` ahead: the server stamps states with its
        own time, so runs age by moving recovery's clock instead."""
        later = SimulatedClock(WallClock().now_ms() + int(seconds * 1000))
        engine = open_deployed_engine(self.task_dir, self.store, clock=later)
        self.engines.append(engine)
        return engine

    def read(self, run_id: UUID) -> Any:
        with get_client(sync_client=True) as client:
            return client.read_flow_run(run_id)

    def reruns(self) -> list[Any]:
        with get_client(sync_client=True) as client:
            runs = client.read_flow_runs(limit=200)
        return [r for r in runs if r.deployment_id == self.id and "rerun" in r.tags]


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    deployed = Deployment(tmp_path)
    yield deployed
    for engine in deployed.engines:
        engine.pool.close()


class TestRecovery:
    """What a restarted `koiitasks deploy` does with the runs it finds."""

    def test_runs_of_a_dead_process_are_crashed_and_their_open_rounds_re_run(
        self, deployment: Deployment
    ) -> None:
        """A running run whose claimed process is gone is crashed and its round re-run; a run
        whose process lives is left alone."""
        plan, host = deployment.plan, recovery.process_claim().rsplit(":", 1)[0]
        deployment.engine.open_round(10)
        dead = deployment.run(plan.round_start_ms(10), Running(), claim=f"{host}:{dead_pid()}")
        alive = deployment.run(plan.round_start_ms(9), Running(), claim=recovery.process_claim())
        report = recovery.recover(plan, deployment.engine, deployment.id, starting=False)
        assert (report.crashed, report.rerun) == ([10], [10])
        assert deployment.read(dead).state.is_crashed()
        assert "stopped; koiitasks deploy found it" in deployment.read(dead).state.message
        assert deployment.read(alive).state.is_running()
        (rerun,) = deployment.reruns()
        assert rerun.name == f"{deployment.engine.task_id}-round-10"
        assert rerun.parameters["round_number"] == 10
        assert rerun.state.is_scheduled()

    def test_a_run_prefect_crashed_is_re_run_once_while_its_round_can_settle(
        self, deployment: Deployment
    ) -> None:
        """A run Prefect marked crashed (its process lost the API) is re-run; asking again
        makes no second re-run."""
        plan = deployment.plan
        deployment.run(plan.round_start_ms(11), Crashed(message="Process exited with code 1"))
        first = recovery.recover(plan, deployment.engine, deployment.id, starting=False)
        again = recovery.recover(plan, deployment.engine, deployment.id, starting=False)
        assert first.rerun == [11]
        assert again.rerun_ids == first.rerun_ids
        assert len(deployment.reruns()) == 1

    def test_a_crashed_run_past_its_deadline_is_left_to_be_recorded_missed(
        self, deployment: Deployment
    ) -> None:
        """Round 7 can no longer settle (round 8 needed it): no re-run; the run, which never
        started, is named after its round for the UI."""
        plan = deployment.plan
        crashed = deployment.run(
            plan.round_start_ms(7), Crashed(message="Process exited with code 1")
        )
        report = recovery.recover(plan, deployment.engine, deployment.id, starting=False)
        assert report.rerun == []
        assert deployment.reruns() == []
        assert deployment.read(crashed).name == f"{deployment.engine.task_id}-round-7"

    def test_a_run_that_came_due_while_down_is_cancelled_and_recorded_missed(
        self, deployment: Deployment
    ) -> None:
        """Round 8's scheduled run never ran and its window closed: cancelled, not run late,
        and named after its round; the round has its signed missed record and one event."""
        plan = deployment.plan
        missed = deployment.run(plan.round_start_ms(8))
        due = deployment.run(plan.round_start_ms(12))
        report = recovery.recover(plan, deployment.engine, deployment.id)
        assert report.missed == [8]
        assert [e.event for e in report.events] == [ROUND_MISSED]
        assert report.events[0].payload["round"] == 8
        assert deployment.read(missed).state.is_cancelled()
        assert deployment.read(missed).name == f"{deployment.engine.task_id}-round-8"
        assert deployment.read(due).state.is_scheduled()
        store = open_store(deployment.store)
        assert store.exists(Layout(deployment.engine.task_id).missed(8))
        again = recovery.recover(plan, deployment.engine, deployment.id)
        assert (again.missed, again.events) == ([], [])

    def test_a_run_the_runner_cancelled_after_it_completed_is_completed_again(
        self, deployment: Deployment
    ) -> None:
        """A run that completed and was then marked cancelled by Prefect's stopping runner is
        completed again, with its own state's name and message; one it cancelled mid-round
        stays cancelled."""
        start = deployment.plan.round_start_ms(10)
        finished = deployment.run(start, Running())
        unfinished = deployment.run(start, Running())
        with get_client(sync_client=True) as client:
            client.set_flow_run_state(finished, Completed(name="Missed", message="round 10"))
            for run in (finished, unfinished):
                shutdown: Any = Cancelled(message=recovery.RUNNER_SHUTDOWN)
                client.set_flow_run_state(run, shutdown, force=True)
        report = recovery.recover(deployment.plan, deployment.engine, deployment.id)
        state = deployment.read(finished).state
        assert (state.type, state.name, state.message) == (
            StateType.COMPLETED, "Missed", "round 10"
        )  # fmt: skip
        assert deployment.read(unfinished).state.is_cancelled()
        assert report.restored == 1
        assert "1 completed runs were marked cancelled" in " ".join(report.lines())
        restored = recovery.restore_completed(deployment.plan, deployment.engine, deployment.id)
        assert restored == 0

    def test_runs_between_rounds_are_cancelled(self, deployment: Deployment) -> None:
        """A run due between two rounds' first slots (an older schedule's) is cancelled."""
        plan = deployment.plan
        stray = deployment.run(plan.round_start_ms(12) + 30_000)
        report = recovery.recover(plan, deployment.engine, deployment.id)
        assert report.stray == 1
        state = deployment.read(stray).state
        assert state.is_cancelled()
        assert state.message == recovery.NOT_A_ROUND

    def test_a_pending_run_whose_process_never_ran_is_crashed_and_re_run_while_serving(
        self, deployment: Deployment
    ) -> None:
        """The server went away as a run's process started: the process died before running
        and nobody could report it. Pending and unclaimed past the prefetch and
        UNCLAIMED_AFTER_S, it is crashed, named after its round and its round re-run."""
        plan = deployment.plan
        dead = deployment.run(plan.round_start_ms(11), Pending())
        patience_s = recovery.UNCLAIMED_AFTER_S + plan.prefetch_s
        soon = deployment.engine_later(patience_s - 5)
        assert recovery.recover(plan, soon, deployment.id, starting=False).crashed == []
        assert deployment.read(dead).state.is_pending()
        later = deployment.engine_later(patience_s + 5)
        report = recovery.recover(plan, later, deployment.id, starting=False)
        assert (report.crashed, report.rerun) == ([11], [11])
        run = deployment.read(dead)
        assert run.state.is_crashed()
        assert run.name == f"{later.task_id}-round-11"
        assert [r.parameters["round_number"] for r in deployment.reruns()] == [11]

    def test_an_unclaimed_run_whose_process_lives_here_is_left_alone(
        self, deployment: Deployment
    ) -> None:
        """Its process could not claim it (the API was away) but still runs it: neither the
        serving process nor a fresh start crashes it, however long it has waited; once that
        process is gone, it is."""
        plan = deployment.plan
        waiting = deployment.run(plan.round_start_ms(11), Pending())
        later = deployment.engine_later(recovery.UNCLAIMED_AFTER_S + plan.prefetch_s + 5)
        with run_process(waiting):
            for starting in (False, True):
                report = recovery.recover(plan, later, deployment.id, starting=starting)
                assert report.crashed == []
            assert deployment.read(waiting).state.is_pending()
        report = recovery.recover(plan, later, deployment.id, starting=False)
        assert report.crashed == [11]

    def test_a_run_asked_to_cancel_is_stopped_here_and_cancelled(
        self, deployment: Deployment
    ) -> None:
        """Left to Prefect's runner for CANCEL_AFTER_S; then its process here is stopped and the
        run marked Cancelled; one whose claimed process here is gone is marked Cancelled; one
        with no process here and no claim (another host's, or not started) is left to its
        runner."""
        plan, engine = deployment.plan, deployment.engine
        running = deployment.run(plan.round_start_ms(10), Running())
        gone = deployment.run(
            plan.round_start_ms(9), Running(), claim=f"{socket.gethostname()}:{dead_pid()}"
        )
        elsewhere = deployment.run(plan.round_start_ms(11), Running())
        with get_client(sync_client=True) as client:
            for run in (running, gone, elsewhere):
                client.set_flow_run_state(run, Cancelling(), force=True)
        later = deployment.engine_later(recovery.CANCEL_AFTER_S + 5)
        with run_process(running) as process:
            assert recovery.cancel_requested(plan, engine, deployment.id) == []
            assert process.poll() is None
            stopped = recovery.cancel_requested(plan, later, deployment.id)
            assert process.wait(timeout=5) != 0  # stopped by a signal
        assert sorted(stopped) == [9, 10]
        for run in (running, gone):
            state = deployment.read(run).state
            assert state.is_cancelled()
            assert state.message == recovery.CANCELLED_HERE
        assert deployment.read(elsewhere).state.is_cancelling()

    def test_a_run_that_crashed_after_it_was_asked_to_cancel_is_not_re_run(
        self, deployment: Deployment
    ) -> None:
        plan = deployment.plan
        run = deployment.run(plan.round_start_ms(11), Running())
        with get_client(sync_client=True) as client:
            client.set_flow_run_state(run, Cancelling(), force=True)
            client.set_flow_run_state(run, Crashed(message="terminated"), force=True)
        report = recovery.recover(plan, deployment.engine, deployment.id, starting=False)
        assert report.rerun == []
        assert deployment.reruns() == []

    def test_an_unclaimed_run_is_only_taken_for_dead_when_nothing_is_serving(
        self, deployment: Deployment
    ) -> None:
        """A running run that never claimed a process may still be starting, or may have missed
        its claim while the API was away: while serving it is left alone, however old; a
        pending one is waiting for its due time. Recovery leaves recent ones alone either way."""
        plan = deployment.plan
        running = deployment.run(plan.round_start_ms(10), Running())
        pending = deployment.run(plan.round_start_ms(11), Pending())
        for starting in (False, True):
            report = recovery.recover(plan, deployment.engine, deployment.id, starting=starting)
            assert report.crashed == []
        assert deployment.read(running).state.is_running()
        assert deployment.read(pending).state.is_pending()
        later = deployment.engine_later(recovery.UNCLAIMED_AFTER_S + plan.prefetch_s + 5)
        report = recovery.recover(plan, later, deployment.id, starting=False)
        assert report.crashed == [11]  # the pending one; the running one may be alive
        assert deployment.read(running).state.is_running()
        report = recovery.recover(plan, later, deployment.id, starting=True)
        assert report.crashed == [10]  # nothing is serving: nobody runs it
        assert os.getpid() == int(recovery.process_claim().rsplit(":", 1)[1])

    def test_runs_left_by_a_serve_process_long_gone_hold_no_run_slot(
        self, deployment: Deployment
    ) -> None:
        """Runs of rounds long past, left running or pending by a serve process that is gone
        (each holds a concurrency slot), are crashed whatever their age, and not re-run; an
        old run still scheduled is cancelled and its round recorded missed, not run late."""
        plan, host = deployment.plan, socket.gethostname()
        running = deployment.run(plan.round_start_ms(3), Running(), claim=f"{host}:{dead_pid()}")
        pending = deployment.run(plan.round_start_ms(4), Pending(), claim=f"{host}:{dead_pid()}")
        late = deployment.run(plan.round_start_ms(2))
        report = recovery.recover(plan, deployment.engine, deployment.id)
        assert sorted(report.crashed) == [3, 4]
        assert report.rerun == []
        assert report.missed == [2]
        for run in (running, pending):
            assert deployment.read(run).state.is_crashed()
        assert deployment.read(late).state.is_cancelled()

    def test_a_round_due_while_serving_is_not_said_to_have_come_due_while_down(
        self, deployment: Deployment
    ) -> None:
        """A round due after serving began whose run never started in its window is recorded
        missed as one whose run did not start in time; one due before, as missed while down."""
        plan = deployment.plan
        deployment.run(plan.round_start_ms(8))
        deployment.run(plan.round_start_ms(9))
        serving_since_ms = plan.round_start_ms(9) - 1_000
        report = recovery.recover(
            plan, deployment.engine, deployment.id, starting=False,
            serving_since_ms=serving_since_ms,
        )  # fmt: skip
        assert (report.missed, report.late) == ([8], [9])
        said = report.lines()
        assert any("round 8 came due while down" in line for line in said)
        assert not any("round 9 came due while down" in line for line in said)
        assert any("round 9 came due while serving" in line for line in said)
        record = deployment.engine.missed_record(9)
        assert record is not None
        assert "its run had not started" in record.reason


class TestReadingRuns:
    """Recovery reads every run it looks at, however many, oldest due first."""

    def test_runs_past_one_page_are_read_oldest_due_first(self) -> None:
        """450 matching runs come back whole over three pages, each asked sorted by when it was
        due (stale runs, the ones recovery is for, first; past 200 they were left out)."""
        runs = list(range(450))
        wanted = object()
        asked: list[tuple[object, int, int]] = []

        class Client:
            def read_flow_runs(
                self, *, flow_run_filter: object, sort: object, limit: int, offset: int
            ) -> list[int]:
                assert flow_run_filter is wanted
                asked.append((sort, limit, offset))
                return runs[offset : offset + limit]

        assert recovery._all_runs(Client(), wanted) == runs
        assert [offset for _, _, offset in asked] == [0, 200, 400]
        assert {sort for sort, _, _ in asked} == {FlowRunSort.EXPECTED_START_TIME_ASC}
