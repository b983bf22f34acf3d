"""Specification of :mod:`koiitasks.network`: adversary options and sandbox network sizes."""

from __future__ import annotations

from pathlib import Path

import pytest

from koiitasks.errors import ConfigError, RecordError, RecordNotFound
from koiitasks.network import (
    MAX_SANDBOX_NODES,
    load_network,
    open_sandbox_network,
    parse_adversaries,
)
from koiitasks.sandbox import open_sandbox
from koiitasks.storage import FileStore, Layout
from koiitasks.task import load_task
from koiitasks.testing import memory_store
from tests.conftest import HASH_PUZZLE


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
