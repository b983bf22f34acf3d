"""Specifications of the round flow under a real Prefect API (the session's test harness)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

from flows import artifacts
from flows.deployed import deployed_round
from flows.round import sandbox_round
from koiitasks.clock import SimulatedClock, WallClock
from koiitasks.deployment import prepare_deployed_task
from koiitasks.errors import RoundError, StorageUnavailable
from koiitasks.reports import payouts_table, round_markdown
from koiitasks.round import RoundEngine
from koiitasks.round_result import RoundResult
from koiitasks.storage import FileStore, Layout
from koiitasks.task import load_task
from koiitasks.testing import sandbox, write_task
from tests.conftest import ECHO_TASK, HASH_PUZZLE

pytestmark = pytest.mark.usefixtures("prefect_api")


async def _flow_run(flow_run_id: Any) -> Any:
    async with get_client() as client:
        return await client.read_flow_run(flow_run_id)


async def _artifacts(flow_run_id: Any) -> list[Any]:
    async with get_client() as client:
        return list(
            await client.read_artifacts(
                artifact_filter=ArtifactFilter(
                    flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])
                )
            )
        )


class TestRoundFlow:
    """One Prefect flow run per round, composed of the library's steps."""

    def test_flow_writes_the_same_ledger_as_the_library(self, tmp_path: Path) -> None:
        """The flow and plain library calls, with the same seed, write the same ledger bytes."""
        store = tmp_path / "flow-store"
        options: dict[str, Any] = {"store": str(store), "nodes": 9, "seed": 21}
        options["adversaries"] = {"lazy": 1, "offline": 1}
        for n in range(2):
            result = RoundResult.model_validate_json(
                sandbox_round(task_dir=str(HASH_PUZZLE), round_number=n, **options)
            )
            assert result.round == n
            assert result.distribution_accepted

        plain = sandbox(HASH_PUZZLE, nodes=9, seed=21, adversaries={"lazy": 1, "offline": 1})
        for n in range(2):
            plain.run_round(n)
        layout = Layout("hash-puzzle")
        flow_store = FileStore(store)
        assert [flow_store.read(k) for k in flow_store.list(layout.ledger)] == [
            plain.store.read(k) for k in plain.store.list(layout.ledger)
        ]

    def test_flow_run_is_named_after_task_and_round_and_carries_artifacts(
        self, tmp_path: Path
    ) -> None:
        """The flow run is called `{task}-round-{N}`, completes, and has the round summary and
        the payouts table, one row a node, as artifacts."""
        state = sandbox_round(
            task_dir=str(HASH_PUZZLE),
            round_number=0,
            store=str(tmp_path / "named"),
            nodes=4,
            seed=99,
            adversaries={"lazy": 1},
            return_state=True,
        )
        result = RoundResult.model_validate_json(state.result())
        # Other specs run round 0 of this task too: this run is the one its state names.
        run = asyncio.run(_flow_run(state.state_details.flow_run_id))
        assert run.name == "hash-puzzle-round-0"
        assert run.state is not None
        assert run.state.is_completed()
        artifacts = asyncio.run(_artifacts(run.id))
        keys = {a.key for a in artifacts}
        assert {"hash-puzzle-round-summary", "hash-puzzle-payouts"} <= keys
        table = next(a for a in artifacts if a.key == "hash-puzzle-payouts")
        assert table.type == "table"
        assert json.loads(table.data) == payouts_table(result)
        assert {row["outcome"] for row in json.loads(table.data)} == {"approved", "rejected"}
        summary = next(a for a in artifacts if a.key == "hash-puzzle-round-summary")
        assert (summary.type, summary.data) == ("markdown", round_markdown(result))

    def test_rerunning_a_settled_round_in_a_flow_changes_nothing(self, tmp_path: Path) -> None:
        """A flow run of a settled round reports it settled and writes nothing."""
        options: dict[str, Any] = {"store": str(tmp_path / "again"), "nodes": 4, "seed": 7}
        first = json.loads(sandbox_round(task_dir=str(HASH_PUZZLE), round_number=0, **options))
        files = sorted(p for p in (tmp_path / "again").rglob("*") if p.is_file())
        second = json.loads(sandbox_round(task_dir=str(HASH_PUZZLE), round_number=0, **options))
        assert second["already_settled"]
        assert not first["already_settled"]
        assert sorted(p for p in (tmp_path / "again").rglob("*") if p.is_file()) == files

    @pytest.mark.parametrize("step", ["execute_shard", "audit_shard"])
    def test_a_shard_that_keeps_failing_stops_the_round_unpaid_and_a_rerun_settles_it(
        self, step: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A shard still failing after its retries fails the flow with an error that counts
        the failed shards; nothing is paid on part of the answers, and a rerun settles it."""
        options: dict[str, Any] = {"store": str(tmp_path / "faulty"), "nodes": 6, "seed": 5}
        real = getattr(RoundEngine, step)

        def broken(*_: Any) -> Any:
            raise StorageUnavailable("the disk went away")

        monkeypatch.setattr(RoundEngine, step, broken)
        with pytest.raises(RoundError, match=r"1 of 1 \w+ shards failed .*the disk went away"):
            sandbox_round(task_dir=str(HASH_PUZZLE), round_number=0, **options)
        ledger = Layout(load_task(HASH_PUZZLE).task_id).ledger_entry(0)
        assert not FileStore(tmp_path / "faulty").exists(ledger)

        monkeypatch.setattr(RoundEngine, step, real)
        result = json.loads(sandbox_round(task_dir=str(HASH_PUZZLE), round_number=0, **options))
        assert result["distribution_accepted"]
        assert FileStore(tmp_path / "faulty").exists(ledger)


class TestDeployedRoundFlow:
    """The deployed round flow, called directly on the wall clock."""

    def test_a_run_for_a_round_long_past_records_it_missed_and_says_so_in_its_summary(
        self, tmp_path: Path
    ) -> None:
        """A run for a round whose windows closed an hour ago ends Completed named Missed, and
        its summary artifact names the round and why it was missed."""
        task_dir = write_task(tmp_path / "echo", ECHO_TASK)
        store = str(tmp_path / "deployed")
        an_hour_ago = SimulatedClock(WallClock().now_ms() - 3_600_000)
        prepare_deployed_task(task_dir, store, nodes=3, seed=5, clock=an_hour_ago)
        state = deployed_round(
            task_dir=str(task_dir), store=store, round_number=0, return_state=True
        )
        assert (state.name, state.is_completed()) == ("Missed", True)
        (summary,) = asyncio.run(_artifacts(state.state_details.flow_run_id))
        assert (summary.key, summary.type) == ("test-task-round-summary", "markdown")
        assert "round 0" in summary.data
        assert "missed" in summary.data


class TestArtifacts:
    """The artifacts' content, as the UI reads it."""

    @pytest.mark.parametrize(
        "credit", [pytest.param(10**9, id="int"), pytest.param(2**70, id="over-64-bits")]
    )
    def test_a_table_is_its_rows_as_json(self, credit: int) -> None:
        """A table artifact's data is its rows as JSON, whatever the size of their integers."""
        rows = [{"node": "a", "credit": credit}, {"node": "b", "credit": 0}]
        made = artifacts.table("k", rows, "d")
        assert (made.type, json.loads(str(made.data))) == ("table", rows)
