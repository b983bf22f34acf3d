"""Specifications of a restart mid-round: the serve process and every flow-run process it
started are killed at once (SIGKILL), then `koiitasks deploy` is started again; or the Prefect
server is killed (SIGKILL) and started again on the same port and database.

Recovery marks the dead runs crashed and re-runs their rounds from the store; rounds that can
no longer settle are recorded as missed. Whatever the timing, every round is in the ledger
exactly once, paid or missed, and the ledger verifies.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from koiitasks.ledger import LedgerState, verify_ledger
from koiitasks.recovery import CANCELLED_HERE
from koiitasks.storage import FileStore, Layout
from koiitasks.testing.deployed import DeployProcess, deployment_runs
from koiitasks.testing.processes import PrefectServer
from tests.deploy.conftest import DEPLOY_OPTIONS, deploy_process, deployed_task

pytestmark = pytest.mark.slow

#: How long the Prefect server stays down: longer than Prefect's runner tolerates by default
#: (three failed polls in a row, 15 s here), as a restart onto a new version or a busy
#: database takes.
SERVER_DOWN_S = 30


def rounds_in_progress(deployed: DeployProcess, store: FileStore) -> list[int]:
    """Rounds with accepted submissions stored and no ledger entry yet: mid-round."""
    layout = Layout(deployed.task_id)
    settled = set(deployed.ledger_rounds())
    submitted = {
        int(key.split("/")[3])
        for key in store.list(f"{layout.root}rounds/")
        if "/submissions/" in key
    }
    return sorted(submitted - settled)


def wait_for_a_round_in_progress(deployed: DeployProcess, store: FileStore) -> list[int]:
    """Wait until some round is mid-way (answers stored, not settled); those rounds."""
    deployed.wait_for(
        lambda: bool(rounds_in_progress(deployed, store)),
        timeout_s=180,
        what="a round in progress",
    )
    return rounds_in_progress(deployed, store)


def assert_each_round_once(ledger: LedgerState, store: FileStore, task_id: str) -> None:
    """Every round from 0 in the ledger once, in order, paid, recorded missed or left with
    nobody to pay, and verified."""
    rounds = [entry.body.round for entry in ledger.entries]
    assert rounds == list(range(len(rounds)))
    assert verify_ledger(store, task_id).entries == len(rounds)
    layout = Layout(task_id)
    for entry in ledger.entries:
        # Paid, recorded missed, or (a round that started in its window's last slot, its
        # answers all late) settled with nobody to pay: never paid twice.
        body = entry.body
        missed = store.exists(layout.missed(body.round))
        assert body.distribution_accepted or missed or (body.attempts == 0 and not body.credits)
        assert body.round_credited <= body.bounty


def cancel_a_started_run(deployed: DeployProcess, server: PrefectServer) -> str:
    """Ask to cancel the newest run whose process has started (pending, waiting for its due
    time, or running: it has the most of its round left), as the UI's Cancel button does; its
    id."""
    cancelled: list[str] = []

    def cancel_one() -> bool:
        runs = deployment_runs(server.api_url, deployed.task_id)
        started = [r for r in runs if r.state and (r.state.is_pending() or r.state.is_running())]
        if not started:
            return False
        run_id = str(started[-1].id)
        answer = httpx.post(
            f"{server.api_url}/flow_runs/{run_id}/set_state",
            json={"state": {"type": "CANCELLING", "name": "Cancelling"}, "force": False},
        )
        answer.raise_for_status()
        if answer.json()["status"] != "ACCEPT":  # it finished in the meantime: another
            return False
        cancelled.append(run_id)
        return True

    deployed.wait_for(cancel_one, timeout_s=60, what="a started run to cancel")
    return cancelled[0]


def run_state(server: PrefectServer, run_id: str) -> tuple[str, str]:
    """The run's state type and message."""
    answer = httpx.get(f"{server.api_url}/flow_runs/{run_id}")
    answer.raise_for_status()
    state = answer.json()["state"]
    return str(state["type"]), str(state["message"])


def unnamed_rounds(deployed: DeployProcess, server: PrefectServer) -> list[int]:
    """Settled rounds with no run named after them (the UI lists each round's run under its
    number, missed ones included)."""
    names = {r.name for r in deployment_runs(server.api_url, deployed.task_id)}
    return [n for n in deployed.ledger_rounds() if f"{deployed.task_id}-round-{n}" not in names]


class TestRestart:
    """Killing the serve process mid-round and starting it again pays every round once."""

    def test_a_crash_mid_round_leaves_every_round_paid_or_missed_exactly_once(
        self, sqlite_server: PrefectServer, tmp_path: Path
    ) -> None:
        """The interrupted rounds are re-run (or recorded missed), later rounds go on, and the
        ledger holds each round once, in order, verified."""
        # 12 s rounds: a re-run has until round N+3 to settle round N, time enough to restart.
        task_dir = deployed_task(
            tmp_path, "Restarted", round_time=48, submission_window=12, audit_window=12
        )
        store = FileStore(tmp_path / "store")
        nodes = ("--nodes", "5", "--seed", "21")
        first = deploy_process(tmp_path, task_dir, sqlite_server, *nodes)
        with first:
            interrupted = wait_for_a_round_in_progress(first, store)
            first.crash()

        second = deploy_process(tmp_path, task_dir, sqlite_server, *nodes)

        def settled_and_reruns_done() -> bool:
            # Stopping the process while a re-run publishes its artifacts would crash it.
            if max(second.ledger_rounds(), default=-1) < max(interrupted) + 2:
                return False
            # Nor just after: a run's process outlives its final state briefly, and Prefect's
            # runner, stopping, marks the runs whose process it still sees cancelled.
            runs = deployment_runs(sqlite_server.api_url, second.task_id)
            ended_before = datetime.now(UTC) - timedelta(seconds=5)
            return all(
                r.state and r.state.is_final() and r.end_time and r.end_time < ended_before
                for r in runs
                if "rerun" in r.tags
            )

        with second:
            second.wait_for(
                settled_and_reruns_done,
                timeout_s=180,
                what=f"rounds after the interrupted {interrupted} to settle, re-runs to finish",
            )
        log = second.log()
        task_id = first.task_id
        ledger = second.ledger()
        rounds = [entry.body.round for entry in ledger.entries]
        assert rounds == list(range(len(rounds)))
        assert verify_ledger(store, task_id).entries == len(rounds)
        layout = Layout(task_id)
        for number in interrupted:
            # Its submissions were stored before the crash: a rerun in time pays it; one too
            # late finds it recorded missed. Either way it is in the ledger once.
            entry = ledger.entry(number)
            assert entry is not None
            assert entry.body.distribution_accepted or store.exists(layout.missed(number))
            assert entry.body.round_credited <= entry.body.bounty

        runs = deployment_runs(sqlite_server.api_url, task_id)
        crashed = [
            r.name
            for r in runs
            if r.state is not None
            and r.state.is_crashed()
            and "stopped; koiitasks deploy found it" in (r.state.message or "")
        ]
        assert {f"{task_id}-round-{n}" for n in interrupted} <= set(crashed)
        assert "had died: marked crashed" in log
        reruns = [r for r in runs if "rerun" in r.tags]
        assert set(interrupted) <= {r.parameters["round_number"] for r in reruns}
        for rerun in reruns:
            number = rerun.parameters["round_number"]
            assert rerun.name == f"{task_id}-round-{number}"
            assert rerun.state is not None
            assert rerun.state.is_completed()


class TestServerRestart:
    """Killing the Prefect server mid-round and starting it again pays every round once."""

    def test_a_server_killed_mid_round_and_started_again_leaves_every_round_paid_once(
        self, tmp_path: Path
    ) -> None:
        """`koiitasks deploy` rides out the outage: the interrupted round settles (or is
        re-run, or recorded missed), the next rounds are paid, and the ledger holds each round
        once, in order, verified."""
        task_dir = deployed_task(
            tmp_path, "ServerRestarted", round_time=48, submission_window=12, audit_window=12
        )
        store = FileStore(tmp_path / "store")
        # A server of its own: the session's server must not go down under other specs.
        with PrefectServer(tmp_path / "prefect") as server:
            deployed = deploy_process(tmp_path, task_dir, server, "--nodes", "5", "--seed", "22")
            with deployed:
                interrupted = wait_for_a_round_in_progress(deployed, store)
                server.crash()
                down_at = time.monotonic()
                time.sleep(SERVER_DOWN_S)
                server.start()
                down_s = time.monotonic() - down_at
                # Rounds due while the server was down are recorded missed; a later one pays.
                deployed.wait_for(
                    lambda: any(
                        e.body.distribution_accepted and e.body.round > max(interrupted)
                        for e in deployed.ledger().entries
                    ),
                    timeout_s=240,
                    what=f"a round after the interrupted {interrupted} to be paid",
                )
                # A run whose process the outage killed before it ran is crashed by the watch
                # (UNCLAIMED_AFTER_S after it went pending) and named after its round.
                deployed.wait_for(
                    lambda: not unnamed_rounds(deployed, server),
                    timeout_s=180,
                    what="a run named after each settled round",
                )
                # Cancelling a run from the UI still stops it: Prefect's runner gave up watching
                # for cancellations during the outage, so the serving process does it.
                assert "flow run cancellation will fail" in deployed.log(), (
                    "Prefect's runner still watches for cancellations: the outage was too short "
                    "to test the serving process's"
                )
                cancelled = cancel_a_started_run(deployed, server)
                deployed.wait_for(
                    lambda: run_state(server, cancelled)[0] in {"CANCELLED", "COMPLETED"},
                    timeout_s=120,
                    what=f"run {cancelled} to be cancelled",
                )
                assert run_state(server, cancelled)[0] == "CANCELLED", "it ran to the end"
                assert "its run was asked to cancel; stopped and cancelled" in deployed.log()
                assert deployed.process is not None
                assert deployed.process.poll() is None, "koiitasks deploy exited"
            task_id = deployed.task_id
            ledger = deployed.ledger()
            assert_each_round_once(ledger, store, task_id)
            assert down_s >= SERVER_DOWN_S
            # Prefect's services and events worker, in the serve process and the runs', said
            # each failed call in one line: no websocket tracebacks, no whole events.
            log = deployed.log()
            assert "websockets.exceptions.ConnectionClosedError" not in log
            assert max(map(len, log.splitlines())) < 1_000, "a log line ran on"
            # The cancelled run stays cancelled, and its round is not re-run.
            assert run_state(server, cancelled) == ("CANCELLED", CANCELLED_HERE)
            runs = deployment_runs(server.api_url, task_id)
        (cancelled_run,) = [r for r in runs if str(r.id) == cancelled]
        assert not [r for r in runs if "rerun" in r.tags and r.name == cancelled_run.name]

    def test_a_deploy_that_gives_up_on_a_lost_server_exits_2_and_a_restart_recovers(
        self, tmp_path: Path
    ) -> None:
        """When Prefect's runner gives up on the API (three failed polls in a row; minutes of
        outage by default, seconds here with client retries off), `koiitasks deploy` exits 2
        saying to start it again; started again once the server is back, it recovers: every
        round once in the ledger, a later round paid."""
        task_dir = deployed_task(
            tmp_path, "ServerLost", round_time=48, submission_window=12, audit_window=12
        )
        store = FileStore(tmp_path / "store")
        nodes = ("--nodes", "5", "--seed", "23")
        with PrefectServer(tmp_path / "prefect") as server:
            first = DeployProcess(
                task_dir,
                tmp_path / "store",
                server.api_url,
                tmp_path / "client-home",
                options=(*nodes, *DEPLOY_OPTIONS),
                extra_env={"PREFECT_CLIENT_MAX_RETRIES": "0"},
            )
            with first:
                interrupted = wait_for_a_round_in_progress(first, store)
                server.crash()
                code = first.wait_exit(timeout_s=180)
            log = first.log()
            assert code == 2, log[-4000:]
            said = log[log.index("error: stopped serving") :]
            assert "lost the API" in said
            assert "start `koiitasks deploy` again once the server is up" in said
            assert "Traceback" not in said

            server.start()
            second = deploy_process(tmp_path, task_dir, server, *nodes)
            with second:
                second.wait_for(
                    lambda: any(
                        e.body.distribution_accepted and e.body.round > max(interrupted)
                        for e in second.ledger().entries
                    ),
                    timeout_s=240,
                    what=f"a round after the interrupted {interrupted} to be paid",
                )
            assert_each_round_once(second.ledger(), store, second.task_id)
