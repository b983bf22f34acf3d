"""The task SDK: a :class:`Task` with three hooks, what hooks are given, and loading a task dir.

A task directory holds ``config-task.yml`` and ``task.py``; ``task.py`` defines a module-level
``task = Task()`` and registers hooks with its decorators::

    from koiitasks import Task

    task = Task()

    @task.execute
    def execute(ctx):                  # on each node: a JSON-serialisable result
        ...

    @task.audit
    def audit(ctx, submission):        # on each chosen auditor: True if valid
        ...

    @task.distribute                   # optional: {node_id: amount} for the approved nodes
    def distribute(ctx, approved, bounty):
        ...

Koii's ``setup`` and ``routes(app)`` hooks are ``@task.setup`` and ``@task.routes``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import logging
import sys
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from pydantic import JsonValue

from koiitasks.clock import Schedule, SlotClock
from koiitasks.config import CONFIG_FILE, TaskConfig, load_config
from koiitasks.errors import TaskLoadError

TASK_FILE = "task.py"

F = TypeVar("F", bound=Callable[..., Any])


class NodeStore:
    """A node's own key-value store for its hooks (Koii's ``storeGet``/``storeSet``)."""

    def __init__(self) -> None:
        self._values: dict[str, str] = {}
        self._lock = threading.Lock()

    def get(self, key: str, default: str | None = None) -> str | None:
        with self._lock:
            return self._values.get(key, default)

    def set(self, key: str, value: str) -> None:
        if not isinstance(value, str):
            raise TypeError("NodeStore values are strings, as Koii's storeSet; json.dumps first")
        with self._lock:
            self._values[key] = value


@dataclass(frozen=True)
class Context:
    """What a hook is given: who, when, and the node's own store."""

    task_id: str
    round: int
    node_id: str
    config: TaskConfig
    slot_clock: SlotClock
    schedule: Schedule
    store: NodeStore
    log: logging.Logger

    def get_slot(self) -> int:
        """The current slot (Koii's ``getSlot``)."""
        return self.slot_clock.get_slot()

    def get_round(self) -> int:
        """The round the current slot is in (Koii's ``getRound``)."""
        return self.schedule.round_of(self.get_slot())


@dataclass(frozen=True)
class SubmissionView:
    """A submission as an audit or distribute hook sees it."""

    node_id: str
    round: int
    result: JsonValue
    request_slot: int
    response_slot: int
    completion_slots: int
    completion_ms: int
    stake: int = 0
    votes_for: int = 0
    votes_against: int = 0


ExecuteHook = Callable[[Context], JsonValue]
AuditHook = Callable[[Context, SubmissionView], bool]
DistributeHook = Callable[[Context, list[SubmissionView], int], dict[str, int]]


@dataclass
class Task:
    """A task's hooks, registered with decorators."""

    execute_hook: ExecuteHook | None = None
    audit_hook: AuditHook | None = None
    distribute_hook: DistributeHook | None = None
    setup_hook: Callable[[], None] | None = None
    routes_hook: Callable[[Any], None] | None = None
    _setup_done: bool = field(default=False, repr=False)
    _setup_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    #: What is wrong with the registrations, for :func:`load_task` to report with the file.
    problems: list[str] = field(default_factory=list, repr=False)

    def execute(self, fn: F) -> F:
        """Register the hook every node runs each round; it returns the node's result."""
        return self._register("execute", fn)

    def audit(self, fn: F) -> F:
        """Register the hook auditors run on a submission; True when it is valid."""
        return self._register("audit", fn)

    def distribute(self, fn: F) -> F:
        """Register the hook that splits a round's bounty among approved nodes."""
        return self._register("distribute", fn)

    def setup(self, fn: F) -> F:
        """Register a hook run once per process before the first round."""
        return self._register("setup", fn)

    def routes(self, fn: F) -> F:
        """Register a hook that adds the task's own HTTP routes to a node's app."""
        return self._register("routes", fn)

    def _register(self, kind: str, fn: F) -> F:
        """Set the ``kind`` hook, noting a second one (only the last would run) and an
        ``async def`` (koiitasks calls hooks from threads and would get a coroutine back)."""
        before = getattr(self, f"{kind}_hook")
        if before is not None:
            self.problems.append(
                f"@task.{kind} decorates both {_where(before)} and {_where(fn)}: "
                "a task has one hook of each kind"
            )
        if inspect.iscoroutinefunction(fn):
            self.problems.append(
                f"@task.{kind} decorates async def {_where(fn)}: hooks are plain `def` "
                "functions (use asyncio.run inside one to await something)"
            )
        setattr(self, f"{kind}_hook", fn)
        return fn

    def ensure_setup(self) -> None:
        """Run the setup hook once per process."""
        with self._setup_lock:
            if not self._setup_done and self.setup_hook is not None:
                self.setup_hook()
            self._setup_done = True


@dataclass(frozen=True)
class LoadedTask:
    """A task directory, read and checked."""

    directory: Path
    config: TaskConfig
    task: Task
    task_id: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "task_id", self.config.id)  # read per hook call: derive once


_load_lock = threading.Lock()
_loaded: dict[Path, LoadedTask] = {}


def load_task(directory: Path | str) -> LoadedTask:
    """Read ``config-task.yml`` and import ``task.py`` from a task directory (cached per path)."""
    try:
        directory = Path(directory).resolve()
    except (OSError, RuntimeError, ValueError) as e:  # a symlink loop; a NUL byte
        raise TaskLoadError(
            f"task directory {str(directory)!r} cannot be resolved: {e}",
            hint="the path is a loop of symbolic links, holds a NUL byte, or cannot be read",
        ) from e
    with _load_lock:
        if directory in _loaded:
            return _loaded[directory]
        loaded = _load_uncached(directory)
        _loaded[directory] = loaded
        return loaded


def _where(fn: Callable[..., Any]) -> str:
    """A function's name and the line it starts on."""
    code = getattr(fn, "__code__", None)
    line = f" (line {code.co_firstlineno})" if code is not None else ""
    return f"{getattr(fn, '__name__', repr(fn))}{line}"


def _describe_import_error(error: BaseException) -> str:
    """The error and where in the task's own code it happened."""
    if isinstance(error, SyntaxError):
        return f"SyntaxError: {error.msg} ({Path(error.filename or '?').name}, line {error.lineno})"
    frames = traceback.extract_tb(error.__traceback__)
    own = [f for f in frames if not f.filename.startswith("<frozen")] or frames
    where = f" ({Path(own[-1].filename).name}, line {own[-1].lineno})" if own else ""
    return f"{type(error).__name__}: {error}{where}"


def _load_uncached(directory: Path) -> LoadedTask:
    if not directory.is_dir():
        raise TaskLoadError(
            f"task directory {directory} does not exist or is not a directory",
            hint="pass the folder that holds config-task.yml and task.py",
        )
    config = load_config(directory / CONFIG_FILE)
    path = directory / TASK_FILE
    if not path.is_file():
        raise TaskLoadError(
            f"{path}: no such file",
            hint="a task directory needs a task.py that defines `task = koiitasks.Task()`",
        )
    module_name = "koiitasks_task_" + hashlib.sha256(str(directory).encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:  # pragma: no cover - only for exotic paths
        raise TaskLoadError(f"{path}: cannot be imported")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(directory))  # so task.py can import its sibling modules
    try:
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as e:
        sys.modules.pop(module_name, None)
        raise TaskLoadError(f"{path}: failed to import: {_describe_import_error(e)}") from e
    finally:
        sys.path.remove(str(directory))
    task = getattr(module, "task", None)
    if not isinstance(task, Task):
        raise TaskLoadError(
            f"{path}: defines no module-level `task = koiitasks.Task()`",
            hint="add `from koiitasks import Task` and `task = Task()` at the top of task.py",
        )
    if task.problems:
        raise TaskLoadError(
            f"{path}: {task.problems[0]}",
            hint="keep one decorated plain `def` per hook kind",
        )
    missing = [name for name in ("execute", "audit") if getattr(task, f"{name}_hook") is None]
    if missing:
        raise TaskLoadError(
            f"{path}: registers no {' and no '.join(missing)} hook",
            hint=" and ".join(f"decorate a function with @task.{m}" for m in missing),
        )
    return LoadedTask(directory=directory, config=config, task=task)
