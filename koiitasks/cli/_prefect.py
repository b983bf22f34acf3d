"""Prefect's temporary API server, as a command starts it: in a session of its own.

Without ``PREFECT_API_URL``, Prefect starts a temporary API server as a child process the first
time a client is made, in this process's group. In a terminal, Ctrl-C reaches every process of
the foreground group, so the server stopped at once while this process's flow engine was still
reporting the interrupted flow run to it, and Prefect's client retried the dead server with
back-off: ``koiitasks run`` took 70 to 80 s to exit after a Ctrl-C in the middle of a round
(measured). Started here in a session of its own, the server is not sent the terminal's Ctrl-C
(nor its hang-up): this process reports the run to a server still there, then stops the server
at exit, as Prefect registers with ``atexit``. However this process ends (killed, hung up,
Ctrl-\\, out of memory), the kernel sends the server SIGTERM as it goes (Linux's
``PR_SET_PDEATHSIG``), so it is never left running alone.
"""

from __future__ import annotations

import ctypes
import functools
import signal
import subprocess
import sys
from typing import Any
from unittest import mock

#: ``prctl`` option: the signal a process gets when the thread that started it ends.
_PR_SET_PDEATHSIG = 1


def start_temporary_server() -> None:
    """Start Prefect's temporary API server now, apart from the terminal's Ctrl-C, unless
    ``PREFECT_API_URL`` names a server or it runs already. Prefect's own clients then use it as
    if they had started it. Call it from the thread that lives as long as the command (the main
    one): the server ends with it."""
    from prefect.server.api.server import SubprocessASGIServer  # noqa: PLC0415 - keep --help fast
    from prefect.settings import PREFECT_API_URL  # noqa: PLC0415

    if PREFECT_API_URL.value():
        return
    server = SubprocessASGIServer()  # the instance Prefect's get_client() asks for
    if server.running:
        return
    spawn = server._run_uvicorn_command  # the one call that starts the process

    def spawn_apart() -> subprocess.Popen[Any]:
        apart = functools.partial(
            subprocess.Popen, start_new_session=True, preexec_fn=_end_with_parent
        )
        with mock.patch.object(subprocess, "Popen", apart):  # for this one call only
            return spawn()

    setattr(server, "_run_uvicorn_command", spawn_apart)  # noqa: B010 - this instance only
    try:
        server.start()
    finally:
        delattr(server, "_run_uvicorn_command")


def _end_with_parent() -> None:
    """In the server's process, before it runs: SIGTERM it when this process ends."""
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def reach_prefect_api() -> None:
    """Make sure Prefect's API answers before a command writes anything: the server
    ``PREFECT_API_URL`` names, else the temporary one, started here (see above). A server
    that does not answer, or a temporary one that does not start, is a :class:`ConfigError`
    saying what to do instead."""
    import httpx  # noqa: PLC0415
    from prefect.client.orchestration import get_client  # noqa: PLC0415
    from prefect.settings import PREFECT_API_URL  # noqa: PLC0415

    from koiitasks.errors import ConfigError  # noqa: PLC0415

    named = PREFECT_API_URL.value()
    failure: Exception | None
    try:
        start_temporary_server()
        with get_client(sync_client=True) as client:
            failure = client.api_healthcheck()
    except (RuntimeError, httpx.HTTPError) as e:  # "did not start", "failed to reach API"
        failure = e
    if failure is None:
        return
    first_line = str(failure).splitlines()[0] if str(failure) else type(failure).__name__
    if named:
        hint = (
            f"start the server PREFECT_API_URL names ({named}), unset PREFECT_API_URL for a "
            "temporary one, or run the rounds without Prefect: --plain"
        )
    else:
        hint = (
            "give a slow machine longer with PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="
            "60, start a server (`prefect server start`) and set PREFECT_API_URL, or run the "
            "rounds without Prefect: --plain"
        )
    raise ConfigError(f"the Prefect API did not answer: {first_line}", hint=hint) from failure
