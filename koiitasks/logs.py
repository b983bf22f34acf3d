"""Prefect's own log lines, readable while its API is away.

When the Prefect server restarts under ``koiitasks deploy``, Prefect's background services log
each failed call with a full traceback (a websocket closed, a connection refused) and its
events worker prints every event it could not send, a few thousand characters each, from the
serve process and from every flow run's. :class:`ApiOutageFilter`, on Prefect's handlers, keeps
each of those records to one line that says what failed and why: the traceback of an error
that only says the API cannot be reached becomes its last line, and an internal message longer
than :data:`LONGEST_MESSAGE` is cut. Records of flow and task runs (the task's own lines) and
every other error keep their tracebacks and their text.

Prefect's client still prints one block of its own when a poll gives up (``Failed the last 3
attempts``): it goes to standard output without the logging module.
"""

from __future__ import annotations

import logging

#: Prefect's internal messages longer than this are cut (an event's repr runs to 3 KB).
LONGEST_MESSAGE = 400

#: What a service that has given up on the API says (its own traceback adds nothing).
_GAVE_UP = "exceeded error threshold"

#: Loggers whose records are the task's and the rounds' own lines: left whole.
_RUN_LOGGERS = ("prefect.flow_runs", "prefect.task_runs")


def _connection_errors() -> tuple[type[BaseException], ...]:
    import httpx  # noqa: PLC0415 - both come with Prefect
    import websockets.exceptions  # noqa: PLC0415

    return (
        ConnectionError,
        TimeoutError,
        httpx.TransportError,
        websockets.exceptions.ConnectionClosed,
        websockets.exceptions.InvalidHandshake,
    )


def _is_outage(error: BaseException) -> bool:
    """Whether ``error``, or an error it was raised from or during, says the API is away."""
    kinds = _connection_errors()
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, kinds) or (
            isinstance(current, RuntimeError) and _GAVE_UP in str(current)
        ):
            return True
        current = current.__cause__ or current.__context__
    return False


class ApiOutageFilter(logging.Filter):
    """Keeps Prefect's records about an unreachable API to one line each (see the module)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith("prefect") or record.name.startswith(_RUN_LOGGERS):
            return True
        error = record.exc_info[1] if record.exc_info else None
        if error is not None and _is_outage(error):
            reason = str(error).strip() or "no message"
            record.msg = f"{record.getMessage()} ({type(error).__name__}: {reason})"
            record.args = ()
            record.exc_info = None
            record.exc_text = None
        message = record.getMessage()
        if len(message) > LONGEST_MESSAGE:
            cut = len(message) - LONGEST_MESSAGE
            record.msg = f"{message[:LONGEST_MESSAGE]}... ({cut:,} more characters)"
            record.args = ()
        return True


def quiet_api_outages() -> None:
    """Put :class:`ApiOutageFilter` on Prefect's handlers in this process (once; call it after
    Prefect has set up its logging, which importing it does)."""
    # The console (on the root logger) and the stream Prefect's internals log to alone.
    handlers = {
        handler
        for name in ("", "prefect._internal")
        for handler in logging.getLogger(name).handlers
    }
    for handler in handlers:
        if not any(isinstance(f, ApiOutageFilter) for f in handler.filters):
            handler.addFilter(ApiOutageFilter())
