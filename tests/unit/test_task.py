"""Specification of :mod:`koiitasks.task`: the Task SDK, the node store and loading task dirs."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from koiitasks.config import CONFIG_FILE
from koiitasks.errors import ConfigError, TaskLoadError
from koiitasks.task import TASK_FILE, NodeStore, Task, load_task

HASH_PUZZLE = Path(__file__).resolve().parents[2] / "examples" / "hash-puzzle"
CONFIG_TEXT = (HASH_PUZZLE / CONFIG_FILE).read_text(encoding="utf-8")

HOOKS = """\
from koiitasks import Task

task = Task()
"""
EXECUTE = """
@task.execute
def execute(ctx):
    return {"ok": True}
"""
AUDIT = """
@task.audit
def audit(ctx, submission):
    return True
"""


def _task_dir(root: Path, *, config: str | None = CONFIG_TEXT, task_py: str | None) -> Path:
    """A task directory under ``root`` holding the given files (None: the file is absent)."""
    directory = root / "task"
    directory.mkdir()
    if config is not None:
        (directory / CONFIG_FILE).write_text(config, encoding="utf-8")
    if task_py is not None:
        (directory / TASK_FILE).write_text(task_py, encoding="utf-8")
    return directory


class TestLoadTask:
    """Reading a task directory."""

    def test_loads_the_example_task(self) -> None:
        """The hash-puzzle example loads with its config and both required hooks."""
        loaded = load_task(HASH_PUZZLE)
        assert loaded.task_id == "hash-puzzle"
        assert loaded.config.task_name == "Hash Puzzle"
        assert loaded.directory == HASH_PUZZLE.resolve()
        assert callable(loaded.task.execute_hook)
        assert callable(loaded.task.audit_hook)
        assert loaded.task.distribute_hook is None

    def test_loads_a_minimal_task(self, tmp_path: Path) -> None:
        """A task.py with an execute and an audit hook is all a task needs."""
        loaded = load_task(_task_dir(tmp_path, task_py=HOOKS + EXECUTE + AUDIT))
        assert loaded.task.execute_hook is not None
        assert loaded.task.audit_hook is not None

    def test_is_cached_per_directory(self, tmp_path: Path) -> None:
        """Loading the same directory twice (by str or Path) imports task.py once."""
        directory = _task_dir(tmp_path, task_py=HOOKS + EXECUTE + AUDIT)
        first = load_task(directory)
        assert load_task(str(directory)) is first
        assert load_task(directory / ".." / "task") is first

    def test_task_py_can_import_its_sibling_modules(self, tmp_path: Path) -> None:
        """task.py may import a module next to it; sys.path is restored afterwards."""
        directory = _task_dir(
            tmp_path, task_py="from unit_spec_sibling import ANSWER\n" + HOOKS + EXECUTE + AUDIT
        )
        (directory / "unit_spec_sibling.py").write_text("ANSWER = 42\n", encoding="utf-8")
        before = list(sys.path)
        try:
            load_task(directory)
        finally:
            sys.modules.pop("unit_spec_sibling", None)
        assert sys.path == before

    def test_sys_path_is_restored_when_task_py_fails(self, tmp_path: Path) -> None:
        """A task.py that raises on import leaves sys.path as it was."""
        before = list(sys.path)
        with pytest.raises(TaskLoadError):
            load_task(_task_dir(tmp_path, task_py="raise RuntimeError('boom')\n"))
        assert sys.path == before

    def test_a_missing_directory_is_a_task_load_error(self, tmp_path: Path) -> None:
        """A directory that does not exist is a TaskLoadError naming it."""
        missing = tmp_path / "nope"
        with pytest.raises(TaskLoadError, match="does not exist or is not a directory") as caught:
            load_task(missing)
        assert str(missing) in str(caught.value)

    def test_a_file_in_place_of_the_directory_is_a_task_load_error(self, tmp_path: Path) -> None:
        """A path to a file is not a task directory."""
        path = tmp_path / "task.py"
        path.write_text(HOOKS, encoding="utf-8")
        with pytest.raises(TaskLoadError, match="is not a directory"):
            load_task(path)

    def test_a_symlink_loop_is_a_task_load_error(self, tmp_path: Path) -> None:
        """A path that is a loop of symbolic links is a TaskLoadError naming it, not a
        RuntimeError from resolving it."""
        loop = tmp_path / "loop"
        loop.symlink_to(loop)
        with pytest.raises(TaskLoadError, match="symbolic links") as caught:
            load_task(loop)
        assert str(loop) in str(caught.value)

    def test_a_path_with_a_nul_byte_is_a_task_load_error(self, tmp_path: Path) -> None:
        """A NUL byte in the path is a TaskLoadError, not a ValueError from the OS layer."""
        with pytest.raises(TaskLoadError, match="NUL byte"):
            load_task(f"{tmp_path}/a\x00b")

    def test_a_missing_config_is_a_config_error(self, tmp_path: Path) -> None:
        """A directory without config-task.yml is a ConfigError naming that file."""
        directory = _task_dir(tmp_path, config=None, task_py=HOOKS + EXECUTE + AUDIT)
        with pytest.raises(ConfigError, match="no such file") as caught:
            load_task(directory)
        assert str(directory.resolve() / CONFIG_FILE) in str(caught.value)

    def test_an_invalid_config_is_a_config_error(self, tmp_path: Path) -> None:
        """A task directory whose config is invalid fails with the config's own error."""
        directory = _task_dir(tmp_path, config="task_name: T\n", task_py=HOOKS + EXECUTE + AUDIT)
        with pytest.raises(ConfigError, match="missing required field 'round_time'"):
            load_task(directory)

    @pytest.mark.parametrize(
        ("task_py", "fragments"),
        [
            pytest.param(None, ["task.py: no such file"], id="no-task-py"),
            pytest.param(
                "import json\n\nraise RuntimeError('boom')\n",
                ["failed to import", "RuntimeError: boom", "task.py, line 3"],
                id="raises-on-import",
            ),
            pytest.param(
                "import koiitasks_no_such_module\n",
                ["failed to import", "ModuleNotFoundError", "koiitasks_no_such_module"],
                id="imports-a-missing-module",
            ),
            pytest.param(
                "from koiitasks import Task\n\nTASK = Task()\n",
                ["defines no module-level `task = koiitasks.Task()`"],
                id="no-task",
            ),
            pytest.param(
                "task = object()\n",
                ["defines no module-level `task = koiitasks.Task()`"],
                id="task-not-a-task",
            ),
            pytest.param(HOOKS + AUDIT, ["registers no execute hook"], id="no-execute-hook"),
            pytest.param(HOOKS + EXECUTE, ["registers no audit hook"], id="no-audit-hook"),
            pytest.param(HOOKS, ["registers no execute and no audit hook"], id="no-hooks"),
            pytest.param(
                HOOKS + EXECUTE + AUDIT + EXECUTE.replace("def execute", "def again"),
                ["@task.execute decorates both execute (line 5) and again (line 13)"],
                id="two-execute-hooks",
            ),
            pytest.param(
                HOOKS + EXECUTE.replace("def execute", "async def execute") + AUDIT,
                ["@task.execute decorates async def execute (line 5)", "plain `def`"],
                id="async-hook",
            ),
        ],
    )
    def test_an_unusable_task_py_is_a_task_load_error(
        self, tmp_path: Path, task_py: str | None, fragments: list[str]
    ) -> None:
        """Every way task.py can be unusable is a TaskLoadError naming the file and the fault."""
        directory = _task_dir(tmp_path, task_py=task_py)
        with pytest.raises(TaskLoadError) as caught:
            load_task(directory)
        message = caught.value.message
        assert message.startswith(f"{directory.resolve() / TASK_FILE}: ")
        for fragment in fragments:
            assert fragment in message

    def test_a_missing_hook_hint_names_the_decorator(self, tmp_path: Path) -> None:
        """The hint for a missing hook says which decorator to add."""
        with pytest.raises(TaskLoadError) as caught:
            load_task(_task_dir(tmp_path, task_py=HOOKS + EXECUTE))
        assert caught.value.hint == "decorate a function with @task.audit"

    def test_a_failed_load_is_not_cached(self, tmp_path: Path) -> None:
        """After fixing task.py, loading the same directory again succeeds."""
        directory = _task_dir(tmp_path, task_py=HOOKS + EXECUTE)
        with pytest.raises(TaskLoadError):
            load_task(directory)
        (directory / TASK_FILE).write_text(HOOKS + EXECUTE + AUDIT, encoding="utf-8")
        assert load_task(directory).task.audit_hook is not None

    def test_a_syntax_error_is_located_in_task_py(self, tmp_path: Path) -> None:
        """A syntax error in task.py names task.py's line, not importlib's internals."""
        with pytest.raises(TaskLoadError) as caught:
            load_task(_task_dir(tmp_path, task_py="x = 1\ndef broken(:\n"))
        message = caught.value.message
        assert "SyntaxError" in message
        assert "line 2" in message
        assert "<frozen" not in message


class TestTaskHooks:
    """Registering hooks with the Task decorators."""

    @pytest.mark.parametrize(
        ("register", "attribute"),
        [
            pytest.param(Task.execute, "execute_hook", id="execute"),
            pytest.param(Task.audit, "audit_hook", id="audit"),
            pytest.param(Task.distribute, "distribute_hook", id="distribute"),
            pytest.param(Task.setup, "setup_hook", id="setup"),
            pytest.param(Task.routes, "routes_hook", id="routes"),
        ],
    )
    def test_a_decorator_registers_the_function_and_returns_it_unchanged(
        self, register: Callable[[Task, Callable[..., Any]], Callable[..., Any]], attribute: str
    ) -> None:
        """Each decorator stores the hook and hands the same function back."""
        task = Task()

        def hook(*args: object) -> None:
            """A hook."""

        assert register(task, hook) is hook
        assert getattr(task, attribute) is hook

    def test_ensure_setup_runs_the_setup_hook_once(self) -> None:
        """However often ensure_setup is called, the setup hook runs a single time."""
        calls: list[int] = []
        task = Task()
        task.setup(lambda: calls.append(1))
        for _ in range(3):
            task.ensure_setup()
        assert calls == [1]

    def test_ensure_setup_runs_once_across_threads(self) -> None:
        """Concurrent first rounds still run the setup hook once."""
        calls: list[int] = []
        started = threading.Barrier(8)
        task = Task()
        task.setup(lambda: calls.append(1))

        def first_round() -> None:
            started.wait()
            task.ensure_setup()

        with ThreadPoolExecutor(max_workers=8) as pool:
            for future in [pool.submit(first_round) for _ in range(8)]:
                future.result()
        assert calls == [1]

    def test_ensure_setup_without_a_setup_hook_does_nothing(self) -> None:
        """A task without a setup hook can still be set up."""
        Task().ensure_setup()


class TestNodeStore:
    """A node's own key-value store (Koii's storeGet/storeSet)."""

    def test_get_of_an_unset_key_is_the_default(self) -> None:
        """An unset key reads as None, or as the default given."""
        store = NodeStore()
        assert store.get("missing") is None
        assert store.get("missing", "fallback") == "fallback"

    def test_set_then_get_returns_the_value(self) -> None:
        """A value set under a key reads back, and a second set replaces it."""
        store = NodeStore()
        store.set("round", "7")
        assert store.get("round") == "7"
        store.set("round", "8")
        assert store.get("round") == "8"

    def test_stores_are_independent(self) -> None:
        """Two nodes' stores do not share values."""
        first, second = NodeStore(), NodeStore()
        first.set("k", "v")
        assert second.get("k") is None

    @pytest.mark.parametrize(
        "value",
        [
            pytest.param(7, id="int"),
            pytest.param({"a": 1}, id="dict"),
            pytest.param(b"bytes", id="bytes"),
            pytest.param(None, id="none"),
        ],
    )
    def test_rejects_values_that_are_not_strings(self, value: Any) -> None:
        """Like Koii's storeSet, values are strings; anything else is a TypeError."""
        store = NodeStore()
        with pytest.raises(TypeError, match=r"json\.dumps first"):
            store.set("k", value)
        assert store.get("k") is None
