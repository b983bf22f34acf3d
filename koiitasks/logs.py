"""Prefect's own log lines, readable while its API is away.

When the Prefect server restarts under ``koiitasks deploy``, Prefect's background services log
each failed call with a full traceback (a websocket closed, a connection refused) and its
events worker prints every event it could not send, a few thousand characters each, from the
serve process and from every flow run's. :class:`ApiOutageFilter`, on Prefect's handlers, keeps
each of those records to one line that says what failed and why: the traceback of an error
that only says the API cannot be reached becomes its last line, and an internal message longer
than :data:`LONGEST_MESSAGE` is cut. Records of flow and task runs (the task's own lines) and
every other error keep their tracebacks and their text, but a Ctrl-C's (a terminal sends it
to every run's process too: each would print one).

Prefect's client still prints one block of its own when a poll gives up (``Failed the last 3
attempts``): it goes to standard output without the logging module.

A run's process gets the filter from its start when the serving process hands it a logging
configuration (:func:`runs_log_quietly`): Prefect's own, with the filter on the same handlers.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

#: Prefect's internal messages longer than this are cut (an event's repr runs to 3 KB).
LONGEST_MESSAGE = 400

#: What a service that has given up on the API says (its own traceback adds nothing).
_GAVE_UP = "exceeded error threshold"

#: Prefect's setting naming the logging configuration its processes load when they start.
SETTINGS_PATH_VARIABLE = "PREFECT_LOGGING_SETTINGS_PATH"

#: Prefect's handlers that get the filter: its console, and the stream its internals log to.
_QUIETED_HANDLERS = ("console", "debug")

#: Loggers whose records are the task's and the rounds' own lines: left whole.
_RUN_LOGGERS = ("prefect.flow_runs", "prefect.task_runs")


def _connection_errors() -> tuple[type[BaseException], ...]:
    import httpx  # noqa: PLC0415 - both come with Prefect
    import websockets.exceptions  # noqa: PLC0415

    return (
        ConnectionError,
        httpx.TransportError,
        websockets.exceptions.ConnectionClosed,
        websockets.exceptions.InvalidHandshake,
    )


def _outage(error: BaseException) -> BaseException | None:
    """The error that says the API is away: ``error``, or one it was raised from (``raise ...
    from``; an error raised while handling another may be a bug of its own), or a group whose
    every error says so; None for any other error."""
    kinds = _connection_errors()
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, kinds) or (
            isinstance(current, RuntimeError) and _GAVE_UP in str(current)
        ):
            return current
        if isinstance(current, BaseExceptionGroup):
            found = [_outage(e) for e in current.exceptions]
            return found[0] if found and all(found) else None
        current = current.__cause__
    return None


class ApiOutageFilter(logging.Filter):
    """Keeps Prefect's records about an unreachable API to one line each (see the module)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith("prefect"):
            return True
        if record.exc_info and isinstance(record.exc_info[1], KeyboardInterrupt):
            # A terminal's Ctrl-C reaches every run `koiitasks deploy` started: each would
            # print the traceback of wherever it happened to be.
            record.exc_info, record.exc_text = None, None
            record.msg = f"{record.msg} (KeyboardInterrupt: Ctrl-C)"
        if record.name.startswith(_RUN_LOGGERS):
            return True
        # A record the filter cannot read is left as it was, for the handler to report.
        with contextlib.suppress(Exception):
            self._shorten(record)
        return True

    @staticmethod
    def _shorten(record: logging.LogRecord) -> None:
        # getMessage() first: a record whose message and arguments do not fit raises here,
        # before anything is changed, and the handler reports it as it would have.
        message = record.getMessage()
        error = record.exc_info[1] if record.exc_info else None
        outage = _outage(error) if error is not None else None
        if outage is not None:
            reason = str(outage).strip() or "no message"
            message = f"{message} ({type(outage).__name__}: {reason})"
        if len(message) > LONGEST_MESSAGE:
            cut = len(message) - LONGEST_MESSAGE
            message = f"{message[:LONGEST_MESSAGE]}... ({cut:,} more characters)"
        if outage is not None:
            record.exc_info, record.exc_text = None, None
        record.msg, record.args = message, ()


def quiet_api_outages() -> None:
    """Put :class:`ApiOutageFilter` on Prefect's handlers in this process (once; call it after
    Prefect has set up its logging, which loading ``prefect.main`` does: ``from prefect import
    flow`` or ``import prefect.runner``, say)."""
    # The console (on the root logger) and the stream Prefect's internals log to alone: the
    # handlers _QUIETED_HANDLERS names in Prefect's configuration.
    handlers = {
        handler
        for name in ("", "prefect._internal")
        for handler in logging.getLogger(name).handlers
    }
    for handler in handlers:
        if not any(isinstance(f, ApiOutageFilter) for f in handler.filters):
            handler.addFilter(ApiOutageFilter())


def quiet_logging_config() -> dict[str, Any]:
    """Prefect's default logging configuration with :class:`ApiOutageFilter` on its console and
    internal stream handlers (its ``${SETTING}`` placeholders left for Prefect to fill in)."""
    from prefect.logging.configuration import DEFAULT_LOGGING_SETTINGS_PATH  # noqa: PLC0415

    config: dict[str, Any] = yaml.safe_load(DEFAULT_LOGGING_SETTINGS_PATH.read_text())
    config["filters"] = {"koiitasks_api_outage": {"()": f"{__name__}.ApiOutageFilter"}}
    for name in _QUIETED_HANDLERS:
        config["handlers"][name].setdefault("filters", []).append("koiitasks_api_outage")
    return config


@contextlib.contextmanager
def runs_log_quietly() -> Iterator[None]:
    """While in the block, the processes this one starts (Prefect's runner's runs) load
    :func:`quiet_logging_config` when they start, unless the user named a logging
    configuration of their own; the file is removed afterwards."""
    if os.environ.get(SETTINGS_PATH_VARIABLE):
        yield
        return
    folder = Path(tempfile.mkdtemp(prefix="koiitasks-logging-"))
    try:
        path = folder / "logging.yml"
        path.write_text(yaml.safe_dump(quiet_logging_config(), sort_keys=False))
        os.environ[SETTINGS_PATH_VARIABLE] = str(path)
        try:
            yield
        finally:
            os.environ.pop(SETTINGS_PATH_VARIABLE, None)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
