"""Run the ``koiitasks`` command line inside the test process, as a user's shell would run it.

A subprocess costs about half a second of imports; a table of a hundred hostile command lines
would spend a minute on that alone. :func:`invoke` calls the same entry point the console
script calls, with ``sys.argv``, the working folder and the environment set for the call, and
captures what it prints and the exit code it ends with, then puts everything back (including
the logging set-up the command changes)::

    from koiitasks.testing.cli import invoke

    def test_unknown_adversary_is_refused(tmp_path):
        result = invoke("run", "examples/hash-puzzle", "--adversary", "evil=1", cwd=tmp_path)
        assert result.exit_code == 2
        assert "is not KIND=COUNT" in result.stderr
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

_LOGGERS = ("koiitasks", "koiitasks.round")
_lock = threading.Lock()  # argv, cwd and the environment are process-wide


@dataclass(frozen=True)
class Invocation:
    """One command line's outcome."""

    args: tuple[str, ...]
    exit_code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def invoke(
    *args: str, cwd: Path | str | None = None, env: Mapping[str, str | None] | None = None
) -> Invocation:
    """Run ``koiitasks ARGS`` in this process; ``env`` sets (or, with None, unsets) variables."""
    from koiitasks.cli import main  # noqa: PLC0415 - the CLI imports typer and rich

    stdout, stderr = io.StringIO(), io.StringIO()
    code: int
    with (
        _lock,
        _saved_process_state(cwd, {"KOII_DEBUG": None, **(env or {})}),
        contextlib.redirect_stdout(stdout),
        contextlib.redirect_stderr(stderr),
    ):
        sys.argv = ["koiitasks", *args]
        try:
            main()
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return Invocation(args=args, exit_code=code, stdout=stdout.getvalue(), stderr=stderr.getvalue())


@contextlib.contextmanager
def _saved_process_state(cwd: Path | str | None, env: Mapping[str, str | None]) -> Iterator[None]:
    argv, folder, environ = sys.argv, Path.cwd(), dict(os.environ)
    loggers = [
        (logger, list(logger.handlers), logger.level, logger.propagate)
        for logger in map(logging.getLogger, _LOGGERS)
    ]
    try:
        if cwd is not None:
            os.chdir(cwd)
        for name, value in env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        yield
    finally:
        sys.argv = argv
        os.chdir(folder)
        os.environ.clear()
        os.environ.update(environ)
        for logger, handlers, level, propagate in loggers:
            logger.handlers[:] = handlers
            logger.setLevel(level)
            logger.propagate = propagate
