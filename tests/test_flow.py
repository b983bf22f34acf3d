"""Specifications of the round flow under a real Prefect API (the session's test harness)."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
from prefect.events import Event
from prefect.settings import PREFECT_EVENTS_MAXIMUM_SIZE_BYTES, temporary_settings

from flows import artifacts
from flows.deployed import deployed_round
from flows.round import sandbox_round
from koiitasks.clock import SimulatedClock, WallClock
from koiitasks.deployment import prepare_deployed_task
from koiitasks.errors import RoundError, StorageUnavailable
from koiitasks.reports import UNPAID_LISTED, payouts_first, payouts_table, round_markdown
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

    @pytest.mark.parametrize(
        "largest", [pytest.param(10**9, id="int"), pytest.param(2**70, id="over-64-bits")]
    )
    def test_a_table_too_large_for_one_event_keeps_the_rows_ranked_first(
        self, largest: int
    ) -> None:
        """A table too large for one Prefect event keeps the rows ranked first, as many as fit,
        in the table's order, and its description says how many it kept of how many; integers
        of any size and text in any script included."""
        rows = [_payout(i, slash=10 if i % 97 == 0 else 0) for i in range(2000)]
        rows[1]["credit"], rows[2]["reason"] = largest, "refusé: 署名が無効"
        limit = 40_000
        with temporary_settings(updates={PREFECT_EVENTS_MAXIMUM_SIZE_BYTES: limit}):
            made = artifacts.table("k", rows, "payouts", first=payouts_first, rest="See more.")
        kept = json.loads(str(made.data))
        description = str(made.description)
        in_event = len(orjson.dumps(made.data)) + len(orjson.dumps(description))
        assert limit / 2 < in_event <= limit - artifacts.EVENT_HEADROOM_BYTES
        assert kept == [row for row in rows if row in kept]  # the table's own order
        assert [row for row in rows if row["slash"]] == [row for row in kept if row["slash"]]
        assert rows[1] in kept  # the largest credit
        dropped = [row for row in rows if row not in kept]
        assert min(row["credit"] for row in kept if not row["slash"]) > max(
            row["credit"] for row in dropped
        )
        assert description.startswith(f"payouts\n\n**{len(kept):,} of 2,000 rows.**")
        assert description.endswith("PREFECT_SERVER_EVENTS_MAXIMUM_SIZE_BYTES). See more.")

    def test_a_table_that_fits_in_one_event_is_whole(self) -> None:
        """A table that fits in one event keeps every row and its description as given."""
        rows = _payouts(100)
        made = artifacts.table("k", rows, "payouts", first=payouts_first, rest="See more.")
        assert (json.loads(str(made.data)), made.description) == (rows, "payouts")

    def test_the_server_publishes_the_event_of_a_payouts_table_of_15000_nodes(self) -> None:
        """A 15,000-node payouts table, 1.8 MB whole, is cut to fit, so the server publishes its
        artifact event rather than refusing it (Prefect's limit is 1.5 MB)."""
        assert len(orjson.dumps(orjson.dumps(_payouts(15_000)).decode())) > 1_500_000
        key = f"large-payouts-{os.getpid()}"
        _publish_table(key, 15_000)
        deadline = time.monotonic() + 60
        while not (found := asyncio.run(_artifact_events(key))) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert [event.event for event in found] == ["prefect.artifact-collection.created"]

    def test_the_round_summary_lists_the_nodes_not_paid_most_slashed_first_up_to_a_bound(
        self, tmp_path: Path
    ) -> None:
        """The round summary lists at most UNPAID_LISTED nodes not paid, the most slashed ones
        whatever their ids, and says how many more there are and how to look into them."""
        result = RoundResult.model_validate_json(
            sandbox_round(
                task_dir=str(HASH_PUZZLE),
                round_number=0,
                store=str(tmp_path / "unpaid"),
                nodes=UNPAID_LISTED + 12,
                seed=3,
                adversaries={"offline": UNPAID_LISTED + 5, "lazy": 2},
            )
        )
        text = round_markdown(result)
        listed = [line for line in text.splitlines() if line.startswith("| `")]
        assert len(listed) == UNPAID_LISTED
        slashed = [node for node, n in result.nodes.items() if n.slash]
        assert slashed, "a lazy node is slashed"
        assert all(f"| `{node}` |" in text for node in slashed)
        assert "And 7 more nodes not paid" in text
        assert "`koiitasks trace NODE --round 0`" in text


def _payout(i: int, *, slash: int = 0) -> dict[str, Any]:
    """A payouts row as ``payouts_table`` makes them, about 120 bytes of JSON."""
    return {
        "node": f"{i:044d}",
        "behaviour": "honest",
        "outcome": "rejected" if slash else "approved",
        "credit": 0 if slash else 1_000_000 + i,
        "slash": slash,
        "reason": "",
    }


def _payouts(count: int) -> list[dict[str, Any]]:
    return [_payout(i) for i in range(count)]


@flow(name="publish-a-table", persist_result=False)
def _publish_table(key: str, rows: int) -> None:
    artifacts.publish(artifacts.table(key, _payouts(rows), "a large table", first=payouts_first))


async def _artifact_events(key: str) -> list[Any]:
    async with get_client() as client:
        response = await client._client.post(
            "/events/filter",
            json={
                "filter": {
                    "event": {"prefix": ["prefect.artifact-collection."]},
                    "resource": {"labels": {"prefect.resource.name": [key]}},
                },
                "limit": 10,
            },
        )
        response.raise_for_status()
        return [Event.model_validate(e) for e in response.json()["events"]]
