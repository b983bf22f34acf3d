"""Specification of :mod:`koiitasks.deployment`: the real slot clock of a deployed task, its
schedule as Prefect sees it, and the seam that picks the nodes its rounds run on."""

from __future__ import annotations

import datetime as dt
import itertools
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from koiitasks.clock import Schedule, SimulatedClock
from koiitasks.deployment import (
    ALIGN_WITHIN_MS,
    DeploymentPlan,
    aligned_genesis,
    open_deployed_engine,
    plan_deployment,
    prepare_deployed_task,
)
from koiitasks.errors import ConfigError, KeyFileError, NetworkMismatchError, RecordError
from koiitasks.identity import Keypair, save_key
from koiitasks.live import LiveEngine
from koiitasks.network import register_node
from koiitasks.nodes.http import HttpPool
from koiitasks.protocol import TaskRecord, sign
from koiitasks.storage import FileStore, Layout, open_store
from koiitasks.task import load_task
from koiitasks.testing import sandbox
from tests.conftest import HASH_PUZZLE

FAST = settings(max_examples=200, deadline=None, database=None)
NOW_MS = 1_800_000_123_456
_stores = itertools.count()


def plan(
    *, genesis_ms: int = 1_000_000, slot_ms: int = 400, round_time: int = 10
) -> DeploymentPlan:
    return DeploymentPlan(
        task_id="hash-puzzle",
        task_dir="/tasks/hash-puzzle",
        store="/stores/deployed",
        genesis_ms=genesis_ms,
        schedule=Schedule(
            starting_slot=0, round_time=round_time, submission_window=4, audit_window=4
        ),
        slot_ms=slot_ms,
    )


def new_url() -> str:
    return f"memory://deployment-{next(_stores)}"


class TestGenesis:
    """Round 0 starts on a slot boundary, a little after `koiitasks deploy`."""

    @FAST
    @given(
        now=st.integers(0, 2**42),
        slot_ms=st.sampled_from([100, 200, 250, 400, 408, 1000, 1500]),
        lead=st.integers(0, 60_000),
    )
    def test_genesis_is_a_slot_boundary_at_least_the_lead_ahead(
        self, now: int, slot_ms: int, lead: int
    ) -> None:
        """The genesis is a whole number of slots, no sooner than `lead` from now, and never
        more than the alignment step (at most 10 s) later."""
        genesis = aligned_genesis(now, slot_ms, lead)
        assert genesis % slot_ms == 0
        assert now + lead <= genesis < now + lead + max(ALIGN_WITHIN_MS, slot_ms)

    @pytest.mark.parametrize(
        ("slot_ms", "expected"),
        [
            pytest.param(250, 1_000_000_011_000, id="slots-dividing-a-second"),
            pytest.param(400, 1_000_000_012_000, id="two-slots-per-2-s"),
            pytest.param(408, 1_000_000_010_136, id="odd-slots-stay-on-slots"),
        ],
    )
    def test_genesis_falls_on_a_whole_second_when_that_is_near(
        self, slot_ms: int, expected: int
    ) -> None:
        """When slots and seconds meet within 10 s, the genesis is on both, so the UI's times
        read cleanly; otherwise it is on the next slot boundary."""
        assert aligned_genesis(1_000_000_000_001, slot_ms, 10_000) == expected


class TestPlan:
    """The schedule a deployment gives Prefect: one run per round, at its first slot."""

    def test_the_interval_is_one_round_and_the_anchor_is_round_zero(self) -> None:
        """round_time x slot_ms apart, anchored at the genesis (starting_slot 0)."""
        p = plan(genesis_ms=1_700_000_000_000, slot_ms=400, round_time=10)
        assert p.interval == dt.timedelta(seconds=4)
        assert p.anchor == dt.datetime(2023, 11, 14, 22, 13, 20, tzinfo=dt.UTC)
        assert p.round_start_ms(3) == 1_700_000_012_000

    @pytest.mark.parametrize(
        ("offset_ms", "expected"),
        [
            pytest.param(0, 3, id="exactly-the-first-slot"),
            pytest.param(199, 3, id="just-under-half-a-slot-late"),
            pytest.param(-200, 3, id="half-a-slot-early"),
            pytest.param(201, None, id="more-than-half-a-slot-late"),
            pytest.param(2_000, None, id="mid-round"),
        ],
    )
    def test_a_scheduled_start_names_the_round_starting_then(
        self, offset_ms: int, expected: int | None
    ) -> None:
        """A run knows its round from its scheduled start, to half a slot either way."""
        p = plan()
        assert p.round_starting_at_ms(p.round_start_ms(3) + offset_ms) == expected

    def test_a_start_before_round_zero_is_no_round(self) -> None:
        """The schedule's grid reaches back before its anchor: those runs are not rounds."""
        p = plan()
        assert p.round_starting_at_ms(p.round_start_ms(0) - p.round_ms) is None

    def test_three_rounds_are_live_at_once_with_koii_windows(self) -> None:
        """A round lives from its first slot to the end of N+2's audit window: three rounds."""
        assert plan().live_rounds == 3

    def test_the_concurrency_limit_leaves_room_for_waiting_and_rerun_runs(self) -> None:
        """Live rounds, the runs started early and waiting for their slot, and one rerun."""
        p = plan(slot_ms=400, round_time=10)  # 4 s rounds; runs start 15 s early (default)
        assert p.concurrency_limit == 3 + 4 + 1

    def test_tags_and_parameters_name_the_task(self) -> None:
        """Runs are tagged with the task id; parameters are the task folder and the store."""
        p = plan()
        assert p.tags == ["hash-puzzle", "koiitasks"]
        assert p.parameters == {"task_dir": "/tasks/hash-puzzle", "store": "/stores/deployed"}


class TestPrepare:
    """`koiitasks deploy` makes the task record once and checks it afterwards."""

    def test_a_first_deploy_records_a_real_genesis(self) -> None:
        """The new task record's genesis is the aligned instant after the lead."""
        url = new_url()
        network = prepare_deployed_task(
            HASH_PUZZLE, url, nodes=4, seed=1, clock=SimulatedClock(NOW_MS), lead_ms=10_000
        )
        assert network.task.genesis_ms == aligned_genesis(NOW_MS, 400, 10_000)
        assert plan_deployment(HASH_PUZZLE, url).genesis_ms == network.task.genesis_ms

    def test_a_later_deploy_keeps_the_genesis(self) -> None:
        """Deploying again (a restart) reuses the record: rounds keep their numbers."""
        url = new_url()
        first = prepare_deployed_task(HASH_PUZZLE, url, nodes=4, clock=SimulatedClock(NOW_MS))
        again = prepare_deployed_task(HASH_PUZZLE, url, clock=SimulatedClock(NOW_MS + 99_000))
        assert again.record == first.record

    def test_a_new_store_needs_nodes(self) -> None:
        """Without a task record and without --nodes there is nothing to run on."""
        with pytest.raises(ConfigError, match=r"no task 'hash-puzzle' .* and no --nodes or --key"):
            prepare_deployed_task(HASH_PUZZLE, new_url())

    def test_a_store_of_simulated_sandbox_rounds_is_refused(self, tmp_path: Path) -> None:
        """A store `koiitasks run` filled runs on simulated time; a deployment needs its own."""
        box = sandbox(HASH_PUZZLE, nodes=4, seed=2, store=FileStore(tmp_path / "sandbox"))
        box.run_round(0)
        url = box.store.url
        with pytest.raises(NetworkMismatchError, match="on simulated time"):
            prepare_deployed_task(HASH_PUZZLE, url, nodes=4, seed=2)

    def test_sandbox_runs_refuse_a_deployed_store(self) -> None:
        """`koiitasks run` on a deployed store would write into its rounds: refused."""
        url = new_url()
        prepare_deployed_task(HASH_PUZZLE, url, nodes=4, seed=3)
        with pytest.raises(NetworkMismatchError, match="deployed on the wall clock"):
            sandbox(HASH_PUZZLE, nodes=4, seed=3, store=open_store(url))

    def test_a_changed_network_is_refused(self) -> None:
        """Asking for another node count than the deployed store holds names the difference."""
        url = new_url()
        prepare_deployed_task(HASH_PUZZLE, url, nodes=4, seed=3)
        with pytest.raises(NetworkMismatchError, match=r"nodes=4.*nodes=5"):
            prepare_deployed_task(HASH_PUZZLE, url, nodes=5)


REMOTE_ORCHESTRATOR = Keypair.from_seed(b"remote orchestrator")


def remote_record(url: str) -> None:
    """A task record with no sandbox network: a task of registered remote nodes."""
    loaded = load_task(HASH_PUZZLE)
    orchestrator = REMOTE_ORCHESTRATOR
    record = TaskRecord(
        task_id=loaded.task_id,
        task_name=loaded.config.task_name,
        config=loaded.config.model_dump(mode="json", exclude={"metadata"}),
        orchestrator=orchestrator.public_id,
        genesis_ms=NOW_MS,
        starting_slot=0,
    )
    open_store(url).create(Layout(loaded.task_id).task, sign(record, orchestrator).encode())


class TestSeam:
    """The engine follows what the task record says about its nodes."""

    def test_a_sandbox_record_runs_simulated_nodes_on_the_wall_clock(self) -> None:
        """A deployed sandbox gets a live engine whose nodes answer on the real slot clock."""
        url = new_url()
        prepare_deployed_task(HASH_PUZZLE, url, nodes=4, seed=4)
        engine = open_deployed_engine(HASH_PUZZLE, url)
        try:
            assert engine.slot_clock.genesis_ms > 0
            assert getattr(engine.pool, "live", None) is engine.slot_clock
            assert len(engine.eligible(0)) == 4
        finally:
            engine.pool.close()

    def test_a_record_of_remote_nodes_runs_on_them_over_http(self, tmp_path: Path) -> None:
        """Registered remote nodes are the other branch of the seam: with the orchestrator's key
        file, a live engine whose pool calls the registered URLs."""
        url = new_url()
        remote_record(url)
        node = Keypair.from_seed(b"remote node")
        register_node(
            open_store(url), load_task(HASH_PUZZLE), node, url="http://127.0.0.1:9", stake=10**10
        )
        save_key(REMOTE_ORCHESTRATOR, tmp_path / "orchestrator.json")
        engine = open_deployed_engine(HASH_PUZZLE, url, key_file=tmp_path / "orchestrator.json")
        try:
            assert isinstance(engine, LiveEngine)
            assert isinstance(engine.pool, HttpPool)
            assert engine.slot_clock.genesis_ms == NOW_MS
            assert engine.eligible(0) == [node.public_id]
        finally:
            engine.pool.close()

    def test_a_record_of_remote_nodes_needs_the_orchestrator_key_file(self) -> None:
        """Without a key file nothing can sign the rounds: the error says how to deploy."""
        url = new_url()
        remote_record(url)
        with pytest.raises(ConfigError, match="registered remote nodes") as caught:
            open_deployed_engine(HASH_PUZZLE, url)
        assert "--key ORCHESTRATOR_KEY_FILE" in str(caught.value.hint)

    def test_another_orchestrator_key_file_is_refused_by_name(self, tmp_path: Path) -> None:
        """A key file that did not make the task record is named, with both public keys."""
        url = new_url()
        remote_record(url)
        other = Keypair.from_seed(b"another orchestrator")
        save_key(other, tmp_path / "other.json")
        with pytest.raises(NetworkMismatchError, match=r"other\.json") as caught:
            open_deployed_engine(HASH_PUZZLE, url, key_file=tmp_path / "other.json")
        assert REMOTE_ORCHESTRATOR.public_id in caught.value.message
        assert other.public_id in caught.value.message

    def test_a_lost_orchestrator_key_file_says_to_restore_it(self, tmp_path: Path) -> None:
        """A task's orchestrator key file gone (moved, deleted while serving) is not to be
        replaced by a new key, which could never run the task: the hint says to restore it,
        naming the orchestrator."""
        url = new_url()
        remote_record(url)
        with pytest.raises(KeyFileError, match="does not exist") as caught:
            open_deployed_engine(HASH_PUZZLE, url, key_file=tmp_path / "gone.json")
        assert f"restore the key file of orchestrator {REMOTE_ORCHESTRATOR.public_id}" in str(
            caught.value.hint
        )
        assert "keygen" not in str(caught.value.hint)

    def test_a_first_deploy_on_registered_nodes_records_a_real_genesis(
        self, tmp_path: Path
    ) -> None:
        """`deploy --key` on a store with registered nodes makes the task record, signed by the
        key, with the aligned genesis and no simulated network."""
        url = new_url()
        key = Keypair.from_seed(b"deploying orchestrator")
        save_key(key, tmp_path / "orchestrator.json")
        node = Keypair.from_seed(b"registered node")
        register_node(
            open_store(url), load_task(HASH_PUZZLE), node, url="http://127.0.0.1:9", stake=10**10
        )
        network = prepare_deployed_task(
            HASH_PUZZLE,
            url,
            key_file=tmp_path / "orchestrator.json",
            clock=SimulatedClock(NOW_MS),
            lead_ms=10_000,
        )
        assert network.task.network is None
        assert network.record.signer == key.public_id
        assert network.task.genesis_ms == aligned_genesis(NOW_MS, 400, 10_000)
        assert set(network.nodes) == {node.public_id}
        plan = plan_deployment(HASH_PUZZLE, url, key_file=tmp_path / "orchestrator.json")
        assert plan.parameters["key_file"] == str((tmp_path / "orchestrator.json").absolute())

    def test_a_first_deploy_on_registered_nodes_needs_one_registered(self, tmp_path: Path) -> None:
        """No registered node: refused before any record is written (its genesis would pass)."""
        url = new_url()
        save_key(REMOTE_ORCHESTRATOR, tmp_path / "orchestrator.json")
        with pytest.raises(ConfigError, match="no node is registered"):
            prepare_deployed_task(HASH_PUZZLE, url, key_file=tmp_path / "orchestrator.json")
        assert not open_store(url).exists(Layout("hash-puzzle").task)

    @pytest.mark.parametrize(
        "options",
        [
            pytest.param({"nodes": 4}, id="nodes"),
            pytest.param({"seed": 1}, id="seed"),
            pytest.param({"adversaries": {"lazy": 1}}, id="adversary"),
        ],
    )
    def test_a_key_file_and_simulated_nodes_are_one_or_the_other(
        self, tmp_path: Path, options: dict[str, Any]
    ) -> None:
        """--key (registered nodes) with --nodes, --seed or --adversary is refused."""
        save_key(REMOTE_ORCHESTRATOR, tmp_path / "orchestrator.json")
        with pytest.raises(ConfigError, match="--key runs the rounds on the nodes registered"):
            prepare_deployed_task(
                HASH_PUZZLE, new_url(), key_file=tmp_path / "orchestrator.json", **options
            )

    def test_simulated_nodes_are_not_added_to_a_remote_task(self) -> None:
        """--nodes on a store of remote nodes is refused rather than mixed in."""
        url = new_url()
        remote_record(url)
        with pytest.raises(NetworkMismatchError, match="registered remote nodes"):
            prepare_deployed_task(HASH_PUZZLE, url, nodes=4)

    def test_an_undeployed_task_has_no_engine(self) -> None:
        """A store without the task names the command that deploys it."""
        with pytest.raises(RecordError, match="not deployed") as caught:
            open_deployed_engine(HASH_PUZZLE, new_url())
        assert "koiitasks deploy" in str(caught.value.hint)
