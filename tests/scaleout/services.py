"""Real services on 127.0.0.1 for the scale-out specifications, each stopped on exit.

- :func:`postgres_cluster`: a PostgreSQL cluster made with ``initdb`` and ``pg_ctl`` in a fresh
  folder (as the ``postgres`` user when this runs as root: PostgreSQL refuses root);
- :func:`prefect_server`: ``prefect server start`` on a database URL;
- :func:`prefect_worker`: ``prefect worker start --type process`` on a work pool.

Every process starts in a session of its own and is stopped with its descendants (SIGTERM, then
SIGKILL), even when the test fails. Logs go to files that failures quote.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

HOST = "127.0.0.1"
PREFECT_QUIET = {
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_UI_ENABLED": "false",
}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


def descendants(pid: int) -> list[int]:
    """Every living descendant of ``pid``, read from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def stop(process: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    """SIGTERM to the process's session, SIGKILL to what is left of it and its descendants."""
    tree = descendants(process.pid)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout)
    for pid in tree:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def tail(path: Path, lines: int = 40) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


@contextlib.contextmanager
def postgres_cluster() -> Iterator[str]:
    """A PostgreSQL cluster on a free port; yields the asyncpg URL Prefect's server takes."""
    if shutil.which("initdb") is None or shutil.which("pg_ctl") is None:
        raise RuntimeError("PostgreSQL binaries (initdb, pg_ctl) are not on PATH")
    folder = Path(tempfile.mkdtemp(prefix="koiitasks-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses root: run it as postgres, in a folder it owns
        owner = pwd.getpwnam("postgres")
        os.chown(folder, owner.pw_uid, owner.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    data, port = folder / "data", free_port()
    subprocess.run(
        [*as_user, "initdb", "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync"],
        check=True,
        capture_output=True,
    )
    options = f"-p {port} -k {folder} -c listen_addresses={HOST} -c fsync=off"
    log = folder / "postgres.log"
    try:
        subprocess.run(
            [*as_user, "pg_ctl", "-D", str(data), "-w", "-l", str(log), "-o", options, "start"],
            check=True,
            capture_output=True,
            timeout=60,
        )
        yield f"postgresql+asyncpg://postgres@{HOST}:{port}/postgres"
    finally:
        subprocess.run(
            [*as_user, "pg_ctl", "-D", str(data), "-m", "immediate", "stop"],
            capture_output=True,
            check=False,
            timeout=60,
        )
        shutil.rmtree(folder, ignore_errors=True)


def _spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "prefect", *args],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def base_env(home: Path) -> dict[str, str]:
    """This environment without Prefect or koiitasks settings, with a Prefect home of its own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "KOII_"))}
    return {**env, **PREFECT_QUIET, "PREFECT_HOME": str(home)}


@dataclass(frozen=True)
class PrefectServer:
    api_url: str
    log: Path


@contextlib.contextmanager
def prefect_server(
    database_url: str, folder: Path, timeout: float = 120.0
) -> Iterator[PrefectServer]:
    """``prefect server start`` on ``database_url``; yields once its API answers."""
    port = free_port()
    env = {**base_env(folder), "PREFECT_SERVER_DATABASE_CONNECTION_URL": database_url}
    log = folder / "server.log"
    process = _spawn(["server", "start", "--host", HOST, "--port", str(port)], env, log)
    api_url = f"http://{HOST}:{port}/api"
    try:
        deadline = time.monotonic() + timeout
        while not _healthy(api_url):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"prefect server did not start:\n{tail(log)}")
            time.sleep(0.2)
        yield PrefectServer(api_url=api_url, log=log)
    finally:
        stop(process)


def _healthy(api_url: str) -> bool:
    try:
        return httpx.get(f"{api_url}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@contextlib.contextmanager
def prefect_worker(
    pool: str,
    name: str,
    api_url: str,
    folder: Path,
    env: dict[str, str],
    limit: int,
    queue: str | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """``prefect worker start --type process`` on ``pool`` (only its work queue ``queue``, if
    given); its flow runs inherit ``env``."""
    folder.mkdir(parents=True, exist_ok=True)
    worker_env = {
        **base_env(folder),
        **env,
        "PREFECT_API_URL": api_url,
        # Poll every second, not every ten: the specifications wait on these runs.
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "PREFECT_WORKER_PREFETCH_SECONDS": "1",
    }
    args = ["worker", "start", "--pool", pool, "--type", "process", "--name", name]
    if queue is not None:
        args += ["--work-queue", queue]
    process = _spawn([*args, "--limit", str(limit)], worker_env, folder / "worker.log")
    try:
        yield process
    finally:
        stop(process)
