"""Specifications of scheduled rounds: a task deployed with `koiitasks deploy` against a real
`prefect server start` on 127.0.0.1: served on SQLite, and run by a process worker of a work
pool on PostgreSQL.

Only orderings and slots are asserted, never wall time: the machine may be busy.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest

from koiitasks.deployment import plan_deployment
from koiitasks.ledger import LedgerState, verify_ledger
from koiitasks.storage import FileStore
from koiitasks.testing.deployed import (
    DeployProcess,
    deployment_runs,
    events_until,
    run_artifacts,
)
from tests.deploy.conftest import Setup, deploy_process, deployed_task

pytestmark = pytest.mark.slow

PAID_ROUNDS = 3


def completed_paid_rounds(deployed: DeployProcess, api_url: str) -> list[int]:
    """Rounds paid in the ledger whose flow run has completed (artifacts published)."""
    paid = {e.body.round for e in deployed.ledger().entries if e.body.distribution_accepted}
    if len(paid) < PAID_ROUNDS:
        return []
    done = {
        run.name
        for run in deployment_runs(api_url, deployed.task_id)
        if run.state is not None and run.state.is_completed()
    }
    return sorted(n for n in paid if f"{deployed.task_id}-round-{n}" in done)


def most_alive_at_once(runs: list[Any]) -> int:
    """The most flow runs that were running at the same instant."""
    changes = sorted(
        [(run.start_time, 1) for run in runs if run.start_time and run.end_time]
        + [(run.end_time, -1) for run in runs if run.start_time and run.end_time]
    )
    alive = most = 0
    for _, change in changes:
        alive += change
        most = max(most, alive)
    return most


def balances_through(ledger: LedgerState, round_number: int) -> dict[str, int]:
    balances: dict[str, int] = {}
    for entry in ledger.entries:
        if entry.body.round <= round_number:
            for node, amount in entry.body.credits.items():
                balances[node] = balances.get(node, 0) + amount
    return balances


class TestScheduledRounds:
    """A deployment starts one flow run per round, at the round's first slot."""

    def test_rounds_run_named_tagged_overlapping_with_artifacts_that_match_the_ledger(
        self, setup: Setup, tmp_path: Path
    ) -> None:
        """At least three scheduled rounds complete as `{task}-round-{N}` runs, tagged with the
        task, due at their round's first slot, about three alive at once; their artifacts and
        events say what the ledger in the store says."""
        prefect_server = setup.server
        task_dir = deployed_task(tmp_path, f"Scheduled {setup.name}")
        nodes = ("--nodes", "6", "--seed", "11", "--adversary", "lazy=1")
        with deploy_process(
            tmp_path, task_dir, prefect_server, *nodes, work_pool=setup.work_pool
        ) as deployed:
            deployed.wait_for(
                lambda: len(completed_paid_rounds(deployed, prefect_server.api_url)) >= PAID_ROUNDS,
                timeout_s=240,
                what=f"{PAID_ROUNDS} paid rounds with completed flow runs",
            )
            paid = completed_paid_rounds(deployed, prefect_server.api_url)
            # Read while it still serves: stopping the deploy process cancels the runs Prefect's
            # runner still holds, and a run that has just completed can be one of them.
            every_run = deployment_runs(prefect_server.api_url, deployed.task_id)
        task_id = deployed.task_id
        api = prefect_server.api_url
        if setup.work_pool is None:
            # Stopping, Prefect's runner cancelled the runs it still held, perhaps one that had
            # just completed; the serve process put such runs back before it exited.
            after = {run.name: run for run in deployment_runs(api, task_id)}
            assert [n for n in paid if not after[f"{task_id}-round-{n}"].state.is_completed()] == []
        store = FileStore(tmp_path / "store")
        plan = plan_deployment(task_dir, str(tmp_path / "store"))
        ledger = deployed.ledger()
        assert verify_ledger(store, task_id).entries == len(ledger.entries)
        assert [e.body.round for e in ledger.entries] == list(range(len(ledger.entries)))

        runs = {run.name: run for run in every_run}
        # Nothing crashed here, so nothing was re-run: one flow run per paid round.
        paid_names = {f"{task_id}-round-{n}" for n in paid}
        assert len([r for r in every_run if r.name in paid_names]) == len(paid), [
            (r.name, r.state.name if r.state else None, r.state.message if r.state else None,
             r.tags, str(r.expected_start_time))
            for r in every_run
        ]  # fmt: skip
        paid_runs = [runs[f"{task_id}-round-{n}"] for n in paid]
        for number, run in zip(paid, paid_runs, strict=True):
            assert run.state.is_completed()
            assert {task_id, "koiitasks"} <= set(run.tags)
            scheduled_ms = round(run.expected_start_time.timestamp() * 1000)
            assert scheduled_ms == plan.round_start_ms(number)

        # Rounds overlap: each run lives past the next round's first slot.
        for (n, earlier), (m, later) in itertools.pairwise(zip(paid, paid_runs, strict=True)):
            if m == n + 1:
                assert later.start_time < earlier.end_time
        assert 2 <= most_alive_at_once(list(runs.values())) <= plan.live_rounds

        for number, run in zip(paid, paid_runs, strict=True):
            entry = ledger.entry(number)
            assert entry is not None
            artifacts = {a.key: a for a in run_artifacts(api, run.id)}
            assert {f"{task_id}-round-summary", f"{task_id}-payouts", f"{task_id}-balances"} <= set(
                artifacts
            )
            payouts = json.loads(artifacts[f"{task_id}-payouts"].data)
            assert {
                row["node"]: row["credit"] for row in payouts if row["credit"]
            } == entry.body.credits
            assert {
                row["node"]: row["slash"] for row in payouts if row["slash"]
            } == entry.body.slashes
            assert entry.hash[:12] in artifacts[f"{task_id}-round-summary"].data
            # The balances a run publishes are the ledger's right after it settled its round.
            balances = json.loads(artifacts[f"{task_id}-balances"].data)
            assert {r["node"]: r["balance"] for r in balances if r["balance"]} == balances_through(
                ledger, number
            )

        slashing_rounds = {n for n in paid if ledger.entry(n).body.slashes}  # type: ignore[union-attr]

        def rounds_of(found: list[dict[str, Any]]) -> set[int]:
            return {e["payload"]["round"] for e in found}

        slashed = events_until(
            api, task_id, "koii.node.slashed", lambda found: slashing_rounds <= rounds_of(found)
        )
        assert slashing_rounds <= rounds_of(slashed)
