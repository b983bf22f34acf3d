"""``koiitasks init NAME``: a new task folder whose own tests pass at once.

The folder is copied from the templates shipped in the package (``koiitasks/templates/task``)::

    NAME/
      config-task.yml      Koii's fields, each commented
      task.py              execute, audit and distribute hooks that work as they are
      tests/test_task.py   specifications with koiitasks.testing: hooks, rounds, distribute
      README.md            how to test and run it
      .gitignore

Only ``.yml`` and ``.md`` templates are filled in (``${task_name}``, ``${task_id}``); the Python
templates are plain code, linted and type-checked with the package. ``init`` never overwrites
anything: it refuses a folder that exists and is not empty.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from string import Template

from koiitasks.config import slugify
from koiitasks.errors import ConfigError, TaskLoadError

TEMPLATE = "task"
TASK_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")

#: Templates whose text is filled in; everything else is copied byte for byte.
_FILLED = (".yml", ".md")
#: Template files stored without their leading dot, so packaging tools keep them.
_DOTTED = {"gitignore": ".gitignore"}
_SKIPPED = ("__pycache__", ".pyc", ".mypy_cache", ".pytest_cache", ".ruff_cache")


@dataclass(frozen=True)
class Scaffold:
    """A task folder made by :func:`init_task`."""

    directory: Path
    task_id: str
    files: tuple[Path, ...]


def check_task_id(name: str) -> str:
    """``name`` if it can be a task id (and folder name); a :class:`ConfigError` that says
    what to use instead otherwise."""
    if TASK_ID.fullmatch(name):
        return name
    suggestion = slugify(name)
    raise ConfigError(
        f"task name {name!r} is not a task id: use lowercase letters, digits and dashes, "
        "starting with a letter or digit, at most 63 characters",
        hint=f"try `koiitasks init {suggestion}`" if suggestion != "task" else None,
    )


def task_name_of(task_id: str) -> str:
    """A readable task name for an id: ``price-feed`` becomes ``Price Feed``."""
    return " ".join(word.capitalize() for word in task_id.split("-") if word) or task_id


def init_task(name: str, parent: Path | str = ".") -> Scaffold:
    """Make the folder ``parent/name`` from the task template; return what was written."""
    task_id = check_task_id(name)
    target = Path(parent) / task_id
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise TaskLoadError(
            f"{target} already exists and is not empty; koiitasks init never overwrites files",
            hint="choose another NAME, or --dir for another parent folder",
        )
    values = {"task_id": task_id, "task_name": task_name_of(task_id)}
    written: list[Path] = []
    try:
        target.mkdir(parents=True, exist_ok=True)
        _copy(resources.files("koiitasks") / "templates" / TEMPLATE, target, values, written)
    except OSError as e:
        raise TaskLoadError(f"cannot create task folder {target}: {e.strerror or e}") from e
    return Scaffold(directory=target, task_id=task_id, files=tuple(written))


def _copy(source: Traversable, target: Path, values: dict[str, str], written: list[Path]) -> None:
    for item in sorted(source.iterdir(), key=lambda t: t.name):
        if item.name.startswith(_SKIPPED) or item.name.endswith(_SKIPPED):
            continue
        destination = target / _DOTTED.get(item.name, item.name)
        if item.is_dir():
            destination.mkdir(exist_ok=True)
            _copy(item, destination, values, written)
            continue
        if item.name.endswith(_FILLED):
            text = Template(item.read_text(encoding="utf-8")).substitute(values)
            destination.write_text(text, encoding="utf-8")
        else:
            destination.write_bytes(item.read_bytes())
        written.append(destination)
