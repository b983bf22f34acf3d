"""Prefect's temporary API server, as a command starts it: in a session of its own.

Without ``PREFECT_API_URL``, Prefect starts a temporary API server as a child process the first
time a client is made, in this process's group. In a terminal, Ctrl-C reaches every process of
the foreground group, so the server stopped at once while this process's flow engine was still
reporting the interrupted flow run to it, and Prefect's client retried the dead server with
back-off: ``koiitasks run`` took 70 to 80 s to exit after a Ctrl-C in the middle of a round
(measured). Started here in a session of its own, the server is not sent the terminal's Ctrl-C
(nor its hang-up): this process reports the run to a server still there, then stops the server
at exit, as Prefect registers with ``atexit``. So that a hang-up or ``kill`` of this process
stops it too, SIGTERM and SIGHUP stop the server first, then end this process as they did.
"""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import threading
from types import FrameType
from typing import Any
from unittest import mock


def start_temporary_server() -> str | None:
    """Start Prefect's temporary API server now, apart from the terminal's Ctrl-C, unless
    ``PREFECT_API_URL`` names a server or it runs already; its API URL, or None if none was
    started here. Prefect's own clients then use it as if they had started it."""
    from prefect.server.api.server import SubprocessASGIServer  # noqa: PLC0415 - keep --help fast
    from prefect.settings import PREFECT_API_URL  # noqa: PLC0415

    if PREFECT_API_URL.value():
        return None
    server = SubprocessASGIServer()  # the instance Prefect's get_client() asks for
    if server.running:
        return None
    apart = functools.partial(subprocess.Popen, start_new_session=True)
    with mock.patch.object(subprocess, "Popen", apart):  # only while the server starts
        server.start()
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGHUP):
            if signal.getsignal(signum) is signal.SIG_DFL:
                signal.signal(signum, functools.partial(_stop_then_end, server))
    return server.api_url


def reach_prefect_api() -> None:
    """Make sure Prefect's API answers before a command writes anything: the server
    ``PREFECT_API_URL`` names, else the temporary one, started here (see above). A server
    that does not answer, or a temporary one that does not start, is a :class:`ConfigError`
    saying what to do instead."""
    import httpx  # noqa: PLC0415
    from prefect.client.orchestration import get_client  # noqa: PLC0415

    from koiitasks.errors import ConfigError  # noqa: PLC0415

    failure: Exception | None
    try:
        start_temporary_server()
        with get_client(sync_client=True) as client:
            failure = client.api_healthcheck()
    except (RuntimeError, httpx.HTTPError) as e:  # "did not start", "failed to reach API"
        failure = e
    if failure is not None:
        first_line = str(failure).splitlines()[0] if str(failure) else type(failure).__name__
        raise ConfigError(
            f"the Prefect API did not answer: {first_line}",
            hint="start one (`prefect server start`) and set PREFECT_API_URL, give a slow "
            "machine longer with PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=60, or run "
            "the rounds without Prefect: --plain",
        ) from failure


def _stop_then_end(server: Any, signum: int, _frame: FrameType | None) -> None:
    """Stop the server, then let the signal end this process as it would have (an exception
    raised here could be caught by a flow run's engine, and the run would go on)."""
    server.stop()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)
