"""Hook failures as a task author wants to read them: where in the task, once per round.

A hook that raises does not stop a round: the node has no answer (execute), leaves a vote out
(audit) or builds no list (distribute). What the author needs is the hook's own traceback, so a
failure is logged under the line that names the node and round, with the frames of the task's
code and of what it called (koiitasks' own frames left out)::

    WARNING koiitasks.sim: execute hook failed on node 9xQe... in round 3: KeyError: 'price'
      File "/home/me/my-task/task.py", line 21, in execute
        return {"price": quote["price"]}
      (said once per round for all nodes failing the same way; -v says each, every frame)

:class:`FailureLog` says a failure once per round however many nodes fail the same way. With
its logger at INFO (``koiitasks run -v``) it says every failure with the whole traceback.
"""

from __future__ import annotations

import logging
import threading
import traceback
from pathlib import Path
from textwrap import indent
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # runtime.py imports this module; only its type is needed here
    from koiitasks.nodes.runtime import HookFailed

_PACKAGE = Path(__file__).resolve().parent.parent
# Scaffold templates are task code, though they ship inside the package.
_TEMPLATES = _PACKAGE / "templates"

ONCE_NOTE = "said once per round for all nodes failing the same way; -v says each, every frame"

log = logging.getLogger("koiitasks.node")


def is_library_frame(filename: str) -> bool:
    """Whether a frame is koiitasks' own code rather than the task's (or what the task called)."""
    path = Path(filename)
    if not path.is_absolute():
        return False
    return path.is_relative_to(_PACKAGE) and not path.is_relative_to(_TEMPLATES)


def task_frames(error: BaseException) -> traceback.StackSummary:
    """The frames of an exception's traceback that are not koiitasks' own."""
    frames = traceback.extract_tb(error.__traceback__)
    return traceback.StackSummary.from_list(
        [frame for frame in frames if not is_library_frame(frame.filename)]
    )


def describe(error: HookFailed, *, every_frame: bool = False) -> str:
    """The failure's line and, under it, the hook exception's traceback (indented)."""
    cause = error.__cause__
    if cause is None:
        return error.message
    if every_frame:
        text = "".join(traceback.format_exception(cause))
    else:
        text = "".join(task_frames(cause).format())
    return f"{error.message}\n{indent(text.rstrip(), '  ')}" if text.strip() else error.message


def signature(error: HookFailed) -> tuple[object, ...]:
    """What makes two failures "the same": hook, round, exception type and the raising line."""
    cause = error.__cause__
    if cause is None:
        message = error.message.replace(error.node_id, "<node>") if error.node_id else error.message
        return (error.hook, error.round_number, message)
    frames = traceback.extract_tb(cause.__traceback__)
    where = (frames[-1].filename, frames[-1].lineno) if frames else None
    return (error.hook, error.round_number, type(cause).__qualname__, where)


class FailureLog:
    """Logs hook failures: each distinct one once per round, or every one at INFO level."""

    def __init__(self, logger: logging.Logger = log, *, memory: int = 10_000) -> None:
        self.logger = logger
        self._memory = memory
        self._seen: set[tuple[object, ...]] = set()
        self._lock = threading.Lock()

    def __call__(self, error: HookFailed) -> None:
        if self.logger.isEnabledFor(logging.INFO):
            self.logger.warning("%s", describe(error, every_frame=True))
            return
        key = signature(error)
        with self._lock:
            if key in self._seen:
                return
            if len(self._seen) >= self._memory:  # a long run: forget old rounds, stay bounded
                self._seen.clear()
            self._seen.add(key)
        self.logger.warning("%s\n  (%s)", describe(error), ONCE_NOTE)


def report_hook_failure(error: HookFailed) -> None:
    """A node process's default: every failure, with its task frames (all frames at INFO)."""
    log.warning("%s", describe(error, every_frame=log.isEnabledFor(logging.INFO)))
