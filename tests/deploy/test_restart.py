"""Specifications of a restart mid-round: the serve process and every flow-run process it
started are killed at once (SIGKILL), then `koiitasks deploy` is started again.

Recovery marks the dead runs crashed and re-runs their rounds from the store; rounds that can
no longer settle are recorded as missed. Whatever the timing, every round is in the ledger
exactly once, paid or missed, and the ledger verifies.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from koiitasks.ledger import verify_ledger
from koiitasks.storage import FileStore, Layout
from koiitasks.testing.deployed import DeployProcess, deployment_runs
from koiitasks.testing.processes import PrefectServer
from tests.deploy.conftest import deploy_process, deployed_task

pytestmark = pytest.mark.slow


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
            first.wait_for(
                lambda: bool(rounds_in_progress(first, store)),
                timeout_s=180,
                what="a round in progress",
            )
            interrupted = rounds_in_progress(first, store)
            first.crash()

        second = deploy_process(tmp_path, task_dir, sqlite_server, *nodes)
        with second:
            second.wait_for(
                lambda: max(second.ledger_rounds(), default=-1) >= max(interrupted) + 2,
                timeout_s=180,
                what=f"rounds after the interrupted {interrupted} to settle",
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
