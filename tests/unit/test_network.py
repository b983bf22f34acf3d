"""Specification of :mod:`koiitasks.network`: adversary options and sandbox network sizes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from koiitasks.errors import ConfigError, NetworkMismatchError, RecordError, RecordNotFound
from koiitasks.identity import Keypair
from koiitasks.network import (
    MAX_SANDBOX_NODES,
    load_network,
    open_remote_network,
    open_sandbox_network,
    parse_adversaries,
    register_node,
)
from koiitasks.sandbox import open_sandbox
from koiitasks.storage import FileStore, Layout
from koiitasks.task import load_task
from koiitasks.testing import memory_store, run_rounds, write_task
from tests.conftest import ECHO_TASK, HASH_PUZZLE


class TestParseAdversaries:
    """`--adversary KIND=COUNT`."""

    def test_counts_of_the_same_kind_add_up(self) -> None:
        """Repeated kinds are summed; zero counts are dropped; kinds come out sorted."""
        specs = ["lazy=2", "offline=1", "lazy=1", "late=0"]
        assert parse_adversaries(specs) == {"lazy": 3, "offline": 1}

    @pytest.mark.parametrize(
        "spec",
        [
            pytest.param("lazy", id="no-count"),
            pytest.param("=1", id="no-kind"),
            pytest.param("evil=1", id="unknown-kind"),
            pytest.param("LAZY=1", id="upper-case"),
            pytest.param("lazy=-1", id="negative"),
            pytest.param("lazy=1.5", id="fraction"),
            pytest.param("lazy=1=2", id="two-equals"),
            pytest.param("lazy=²", id="superscript-digit"),
            pytest.param("lazy=٣", id="arabic-indic-digit"),
            pytest.param("lazy= 1", id="space"),
        ],
    )
    def test_anything_but_kind_equals_ascii_digits_is_a_config_error(self, spec: str) -> None:
        """A malformed spec is a ConfigError naming it, never a ValueError from int()."""
        with pytest.raises(ConfigError, match="is not KIND=COUNT"):
            parse_adversaries([spec])


class TestSandboxNetworkSize:
    """How many nodes a sandbox network may have."""

    @pytest.mark.parametrize("nodes", [pytest.param(1, id="one"), pytest.param(10**20, id="huge")])
    def test_too_few_or_too_many_nodes_is_a_config_error(self, nodes: int) -> None:
        """Fewer than two nodes, or more than the sandbox simulates, is refused before any key
        is made (a huge count would otherwise derive keys for ever)."""
        with pytest.raises(ConfigError, match="--nodes"):
            open_sandbox_network(
                memory_store(), load_task(HASH_PUZZLE), nodes=nodes, seed=1, adversaries=None
            )

    def test_the_limit_is_a_hundred_thousand(self) -> None:
        """The documented limit."""
        assert MAX_SANDBOX_NODES == 100_000


class TestLoadNetwork:
    """Reading a task's network back from a store."""

    def test_a_task_the_store_does_not_hold_is_record_not_found(self) -> None:
        """Asking for a task that is not in the store is an input error (exit 2) naming the
        task and the store, not a failed check of a record."""
        store = memory_store()
        with pytest.raises(RecordNotFound, match="no task 'nope' in memory://") as caught:
            load_network(store, "nope")
        assert caught.value.exit_code == 2


class TestLostTaskRecord:
    """A store that holds a task's rounds but no longer its ``task.json``."""

    def test_a_sandbox_run_refuses_to_start_the_task_afresh_and_writes_nothing(
        self, tmp_path: Path
    ) -> None:
        """With task.json deleted, a new network (another orchestrator, other node keys) would
        make every stored record fail to verify: the run is refused, naming the file, and the
        store is left as it was."""
        store = FileStore(tmp_path / "store")
        box = open_sandbox(HASH_PUZZLE, store=str(tmp_path / "store"), nodes=4, seed=1)
        box.run_round(0)
        box.close()
        layout = Layout(box.loaded.task_id)
        (tmp_path / "store" / layout.task).unlink()
        before = store.list()
        with pytest.raises(RecordError, match=r"task\.json is missing from") as caught:
            open_sandbox_network(store, load_task(HASH_PUZZLE), nodes=10, seed=2, adversaries=None)
        assert "ledger and rounds" in caught.value.message
        assert "restore task.json" in (caught.value.hint or "")
        assert store.list() == before

    def test_node_registrations_alone_do_not_stop_a_new_network(self) -> None:
        """Nodes are registered before task.json is written: a run stopped between the two
        makes the same network again."""
        store = memory_store()
        loaded = load_task(HASH_PUZZLE)
        layout = Layout(loaded.task_id)
        first = open_sandbox_network(store, loaded, nodes=4, seed=1, adversaries=None)
        kept = {key: store.read(key) for key in store.list() if key != layout.task}
        again = memory_store()
        again.create_many(list(kept.items()))
        second = open_sandbox_network(again, loaded, nodes=4, seed=1, adversaries=None)
        assert second.record.body.orchestrator == first.record.body.orchestrator


class TestAdversariesFromTheLibrary:
    """``adversaries={...}`` given to the library (the testing kit's `run_rounds`, `sandbox`)."""

    @pytest.mark.parametrize(
        ("adversaries", "said"),
        [
            pytest.param({"lazzy": 2}, "adversary kind 'lazzy' is unknown", id="typo"),
            pytest.param({"lazy": -1}, "count -1 for 'lazy' is not a whole number", id="negative"),
            pytest.param({"lazy": 1.5}, "count 1.5 for 'lazy'", id="fraction"),
            pytest.param({"lazy": True}, "count True for 'lazy'", id="bool"),
            pytest.param(["lazy"], "is not a dict of kinds and counts", id="a-list"),
            pytest.param("lazy=2", "is not a dict of kinds and counts", id="cli-text"),
        ],
    )
    def test_are_held_to_the_rules_of_the_command_line(
        self, adversaries: object, said: str
    ) -> None:
        """A kind or count `--adversary` refuses is refused here too, with the kinds listed:
        a typo used to make honest nodes under an unknown name, so a test of the "lazy" nodes
        found none and passed without testing anything."""
        with pytest.raises(ConfigError, match=re.escape(said)) as caught:
            run_rounds(HASH_PUZZLE, nodes=6, adversaries=adversaries)  # type: ignore[arg-type]
        assert "lazy" in (caught.value.hint or "")

    def test_zero_counts_are_left_out(self) -> None:
        """`{"lazy": 0}` is no adversary, as `--adversary lazy=0` is."""
        (result,) = run_rounds(HASH_PUZZLE, nodes=4, adversaries={"lazy": 0, "offline": 1})
        assert sorted(n.behaviour for n in result.nodes.values()) == [
            "honest", "honest", "honest", "offline",
        ]  # fmt: skip


class TestRegisterNode:
    """What a node's registration is checked against when its task already runs in the store."""

    def test_a_store_running_a_sandbox_network_refuses_a_registration(self) -> None:
        """Registered nodes cannot join simulated ones: refused, nothing written (it used to
        be stored, and replay then counted the node missing in rounds run before it)."""
        store = memory_store()
        loaded = load_task(HASH_PUZZLE)
        open_sandbox_network(store, loaded, nodes=3, seed=1, adversaries=None)
        before = store.list()
        node = Keypair.from_seed(b"late joiner")
        with pytest.raises(NetworkMismatchError, match="runs on a sandbox network"):
            register_node(
                store, loaded, node, url="http://127.0.0.1:8001", stake=2 * 10**9
            )  # fmt: skip
        assert store.list() == before

    def test_a_task_record_with_another_config_refuses_a_registration(self, tmp_path: Path) -> None:
        """A node whose config-task.yml differs from the one the task runs with would be
        refused every round (409): its registration is refused at once, naming the fields."""
        ran = load_task(write_task(tmp_path / "ran", ECHO_TASK))
        changed = load_task(write_task(tmp_path / "changed", ECHO_TASK, round_time=12))
        store = memory_store()
        open_remote_network(store, ran, Keypair.from_seed(b"orchestrator"), now_ms=0)
        with pytest.raises(NetworkMismatchError, match=r"another config-task\.yml .*round_time"):
            register_node(
                store, changed, Keypair.from_seed(b"node"), url="http://127.0.0.1:8001", stake=200
            )
