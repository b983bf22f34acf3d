"""Real service processes for tests and benchmarks: a Prefect server, and stopping process trees.

:class:`PrefectServer` starts ``prefect server start`` in a session of its own on 127.0.0.1,
waits until it answers, and stops the whole session (SIGTERM, then SIGKILL) when the ``with``
block ends, even when the block raises. Its log goes to a file, so a failed test can show it::

    with PrefectServer(home) as server:
        env = {**os.environ, "PREFECT_API_URL": server.api_url}

(A server on PostgreSQL: ``infra/stack.sh start --postgres``, which the deploy specs use.)
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import IO

import httpx

from koiitasks.errors import ConfigError

#: Settings every Prefect process started here gets: no telemetry, leases that survive a
#: server restart (the default keeps them in memory, so a restart would cancel long runs).
PREFECT_SERVICE_ENV = {
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": (
        "prefect.server.concurrency.lease_storage.filesystem"
    ),
}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def descendants(pid: int) -> list[int]:
    """Every living descendant of ``pid`` (children first), read from ``/proc``."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            # The command name may hold spaces and parentheses: the fields follow the last ")".
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found: list[int] = []
    todo = [pid]
    while todo:
        children = parents.get(todo.pop(), [])
        found += children
        todo += children
    return found


def kill_tree(process: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
    """Send ``sig`` to a process and all its descendants at once (a crash of the whole tree).

    Prefect starts each flow run in a session of its own, so killing the leader's process
    group would leave them running; they are found through ``/proc`` first.
    """
    for pid in [process.pid, *descendants(process.pid)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=10)


def stop_session(process: subprocess.Popen[bytes], *, grace_s: float = 20.0) -> None:
    """Stop a process and everything it started: SIGTERM to its session, then SIGKILL to
    whatever is left (flow-run processes in sessions of their own included)."""
    tree = descendants(process.pid)
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=grace_s)
    for pid in [*tree, *descendants(process.pid)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=10)


class PrefectServer:
    """``prefect server start`` on 127.0.0.1 with its own ``PREFECT_HOME``."""

    def __init__(
        self,
        home: Path,
        *,
        port: int | None = None,
        database_url: str | None = None,
        ui: bool = False,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.home = Path(home)
        self.port = port or free_port()
        self.database_url = database_url
        self.ui = ui
        self.extra_env = dict(extra_env or {})
        self.log_path = self.home / "server.log"
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "KOII_"))}
        env.update(PREFECT_SERVICE_ENV)
        env["PREFECT_HOME"] = str(self.home)
        env["PREFECT_SERVER_LOGGING_LEVEL"] = "WARNING"
        if self.database_url:
            env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = self.database_url
        env.update(self.extra_env)
        return env

    def start(self, *, timeout_s: float = 120.0) -> PrefectServer:
        self.home.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        command = [sys.executable, "-m", "prefect", "server", "start"]
        command += ["--host", "127.0.0.1", "--port", str(self.port)]
        command += [] if self.ui else ["--no-ui"]
        self.process = subprocess.Popen(  # noqa: S603 - our own interpreter and arguments
            command,
            env=self.env(),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_healthy(self.api_url, self.process, timeout_s=timeout_s, log=self.log_path)
        return self

    def stop(self) -> None:
        if self.process is not None:
            stop_session(self.process)
            self.process = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def restart(self) -> None:
        """Stop the server and start it again on the same port, home and database."""
        self.stop()
        self.start()

    def crash(self) -> None:
        """SIGKILL the server and everything it started, at once, as a crashed machine would
        stop it; :meth:`start` starts it again on the same port, home and database."""
        if self.process is not None:
            kill_tree(self.process)
            self.process = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> PrefectServer:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def wait_healthy(
    api_url: str, process: subprocess.Popen[bytes], *, timeout_s: float, log: Path
) -> None:
    """Poll ``/health`` until the server answers true; fail early if the process exits."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ConfigError(
                f"prefect server exited with code {process.returncode} before it was healthy",
                hint=f"see its log: {log}",
            )
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{api_url}/health", timeout=2).json() is True:
                return
        time.sleep(0.25)
    raise ConfigError(
        f"prefect server at {api_url} was not healthy after {timeout_s:.0f}s",
        hint=f"see its log: {log}",
    )
