"""Test helpers for task authors and for koiitasks itself, shipped inside the package.

Run rounds of a task inside a pytest test, on a simulated clock and an in-memory store, with
chosen node counts and adversaries, and get typed results back::

    from koiitasks.testing import run_rounds

    def test_honest_nodes_are_paid():
        results = run_rounds("path/to/task", nodes=10, rounds=2, adversaries={"lazy": 1})
        assert all(n.credit > 0 for n in results[-1].nodes.values() if n.behaviour == "honest")

Call one hook at a time on a fake clock (:mod:`koiitasks.testing.hooks`: ``call_execute``,
``call_audit``, ``call_distribute``, ``submission``, ``context``, ``FakeClock``), and check a
distribute hook's rules in one line with hypothesis (:mod:`koiitasks.testing.properties`:
``check_distribute``; hypothesis comes with ``pip install 'koiitasks[testing]'``).
"""

from __future__ import annotations

import itertools
import textwrap
from pathlib import Path
from typing import Any

import yaml

from koiitasks.errors import ConfigError
from koiitasks.round_result import RoundResult
from koiitasks.sandbox import Sandbox, build_sandbox
from koiitasks.storage import MemoryStore, Store
from koiitasks.task import load_task
from koiitasks.testing.hooks import (
    FakeClock,
    call_audit,
    call_distribute,
    call_execute,
    context,
    node_id,
    submission,
)
from koiitasks.testing.properties import check_distribute

_names = itertools.count()

#: A config that runs fast in tests: short rounds, small amounts that divide evenly.
FAST_CONFIG: dict[str, Any] = {
    "task_name": "Test Task",
    "round_time": 10,
    "submission_window": 4,
    "audit_window": 4,
    "slot_ms": 10,
    "minimum_stake_amount": 100,
    "total_bounty_amount": 1_000_000,
    "bounty_amount_per_round": 1_000,
    "allowed_failed_distributions": 2,
}


def memory_store() -> MemoryStore:
    """A new, empty in-memory store."""
    return MemoryStore(f"test-{next(_names)}")


def sandbox(
    task_dir: Path | str,
    *,
    nodes: int = 10,
    seed: int = 0,
    adversaries: dict[str, int] | None = None,
    store: Store | None = None,
    workers: int = 4,
    hook_timeout_s: float | None = None,
    stake: int | None = None,
) -> Sandbox:
    """A sandbox over ``store`` (a new memory store by default), not shared with other tests."""
    if store is not None and not isinstance(store, Store):
        raise ConfigError(
            f"store= takes a Store, not a {type(store).__name__}",
            hint="memory_store() (the default), or FileStore(Path('folder')) for files on disk",
        )
    for name, count in (("nodes", nodes), ("seed", seed), ("workers", workers)):
        if isinstance(count, bool) or not isinstance(count, int):
            raise ConfigError(f"{name}= takes a whole number, not {count!r}")
    return build_sandbox(
        load_task(task_dir),
        store if store is not None else memory_store(),
        nodes=nodes,
        seed=seed,
        adversaries=adversaries,
        workers=workers,
        hook_timeout_s=hook_timeout_s,
        stake=stake,
    )


def run_rounds(
    task_dir: Path | str,
    *,
    rounds: int = 1,
    nodes: int = 10,
    seed: int = 0,
    adversaries: dict[str, int] | None = None,
    store: Store | None = None,
) -> list[RoundResult]:
    """Run the next ``rounds`` rounds of a task in a fresh sandbox; one result per round."""
    if isinstance(rounds, bool) or not isinstance(rounds, int):
        raise ConfigError(f"rounds= takes a whole number, not {rounds!r}")
    box = sandbox(task_dir, nodes=nodes, seed=seed, adversaries=adversaries, store=store)
    try:
        return [box.run_round(n) for n in box.plan(rounds=rounds, round_number=None)]
    finally:
        box.close()


def write_task(
    directory: Path | str, source: str, *, config: dict[str, Any] | None = None, **overrides: Any
) -> Path:
    """Write a task folder: ``config-task.yml`` (FAST_CONFIG with overrides) and ``task.py``.

    It never overwrites: a folder already holding either file with other contents is refused
    (pointed at a real task by mistake, it would have replaced the author's own files)."""
    directory = Path(directory)
    doc = {**(FAST_CONFIG if config is None else config), **overrides}
    files = {
        directory / "config-task.yml": yaml.safe_dump(doc, sort_keys=False),
        directory / "task.py": textwrap.dedent(source),
    }
    for path, text in files.items():
        if path.exists() and path.read_text() != text:
            raise ConfigError(
                f"{path} already exists: write_task writes a new task folder, it never "
                "overwrites one",
                hint="give it a folder of its own, such as pytest's tmp_path / 'task'",
            )
    directory.mkdir(parents=True, exist_ok=True)
    for path, text in files.items():
        path.write_text(text)
    return directory


__all__ = [
    "FAST_CONFIG",
    "FakeClock",
    "call_audit",
    "call_distribute",
    "call_execute",
    "check_distribute",
    "context",
    "memory_store",
    "node_id",
    "run_rounds",
    "sandbox",
    "submission",
    "write_task",
]
