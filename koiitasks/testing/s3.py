"""S3 test helpers: moto in-process, in a thread, and as an OS process of its own.

- :func:`mock_s3_store` yields an :class:`~koiitasks.storage.s3.S3Store` on moto's in-process
  ``mock_aws``: the fastest, for one process.
- :func:`moto_server` runs moto's HTTP server in a thread of this process and yields its
  endpoint URL, for code that must reach S3 over HTTP.
- :func:`moto_server_process` runs ``python -m moto.server`` as a separate OS process, so other
  processes (nodes, workers, a racing writer) see the same buckets.

Clients sign with :data:`TEST_AWS_ENV`'s dummy keys; moto accepts any.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from typing import IO

import pytest

from koiitasks.errors import StorageUnavailable
from koiitasks.storage.s3 import (
    MOTO_CREDENTIALS,
    MOTO_REGION,
    MOTO_WRITE_LOCK,
    S3Store,
    make_s3_client,
)
from koiitasks.storage.s3_init import init_s3_store

TEST_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": MOTO_CREDENTIALS[0],
    "AWS_SECRET_ACCESS_KEY": MOTO_CREDENTIALS[1],
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": MOTO_REGION,
    "AWS_EC2_METADATA_DISABLED": "true",
}
"""Dummy AWS settings for tests; set them (and unset the rest of ``AWS_*``) around moto."""

_POLL_S = 0.05


def unique_bucket_name(prefix: str = "koii") -> str:
    """A valid bucket name no other test will pick, so tests can share one server."""
    return f"{prefix}-{uuid.uuid4().hex[:16]}"


@contextlib.contextmanager
def mock_s3_store(bucket: str = "koii-test", *, prefix: str = "") -> Iterator[S3Store]:
    """An S3 store on moto's in-process mock; the bucket and its records end with the block."""
    try:
        from moto import mock_aws  # noqa: PLC0415 - moto is a test dependency
    except ImportError as e:  # pragma: no cover - moto is in the dev extra
        raise ImportError("mock_s3_store needs moto: pip install 'koiitasks[testing]'") from e
    with mock_aws(config={"core": {"mock_credentials": False}}):
        client = make_s3_client(region_name=MOTO_REGION, credentials=MOTO_CREDENTIALS)
        url = f"s3://{bucket}/{prefix.strip('/')}".rstrip("/")
        init_s3_store(url, client=client)
        store = S3Store(client, bucket, prefix, url=url, write_lock=MOTO_WRITE_LOCK)
        try:
            yield store
        finally:
            store.close()


@pytest.fixture
def s3_store(monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Store]:
    """A pytest fixture: an S3 store on moto in-process, with a bucket of its own.

    In a task's ``conftest.py``: ``from koiitasks.testing.s3 import s3_store``; then pass the
    store to ``koiitasks.testing.run_rounds(..., store=s3_store)``.
    """
    for name in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(name)
    for name, value in TEST_AWS_ENV.items():
        monkeypatch.setenv(name, value)
    with mock_s3_store(unique_bucket_name()) as store:
        yield store


@contextlib.contextmanager
def moto_server(host: str = "127.0.0.1") -> Iterator[str]:
    """moto's HTTP server in a thread of this process, on a free port; yields the endpoint URL.

    It shares its buckets with any ``mock_aws`` of this process. Needs flask (moto[server]).
    """
    from moto.server import ThreadedMotoServer  # noqa: PLC0415 - needs moto[server]

    server = ThreadedMotoServer(ip_address=host, port=0, verbose=False)
    server.start()
    try:
        bound_host, port = server.get_host_and_port()
        yield f"http://{bound_host}:{port}"
    finally:
        server.stop()


@contextlib.contextmanager
def moto_server_process(
    host: str = "127.0.0.1", *, start_timeout: float = 30.0, stop_timeout: float = 10.0
) -> Iterator[str]:
    """moto's S3 server as its own OS process on a free port; yields the endpoint URL.

    It runs :mod:`koiitasks.testing.moto_serve`: ``moto.server`` with atomic conditional writes,
    as S3 has them.

    Waits until the server answers HTTP, and on exit sends SIGTERM, then SIGKILL after
    ``stop_timeout`` seconds. Raises :class:`StorageUnavailable` with the server's log when it
    does not start.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")} | TEST_AWS_ENV
    with tempfile.TemporaryFile() as log:
        process, endpoint = _start_server(host, env, log, start_timeout)
        try:
            yield endpoint
        finally:
            _stop(process, stop_timeout)


def _start_server(
    host: str, env: dict[str, str], log: IO[bytes], timeout: float
) -> tuple[subprocess.Popen[bytes], str]:
    # A free port can be taken between our probe and the server's bind: try a few.
    for _ in range(3):
        port = _free_port(host)
        process = subprocess.Popen(  # noqa: S603 - our own interpreter, fixed arguments
            [sys.executable, "-m", "koiitasks.testing.moto_serve", "-H", host, "-p", str(port)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        try:
            up = _wait_until_up(process, host, port, timeout)
        except BaseException:  # interrupted while waiting: leave no server behind
            _stop(process, 5.0)
            raise
        if up:
            return process, f"http://{host}:{port}"
        _stop(process, 5.0)
    log.seek(0)
    tail = log.read()[-2000:].decode(errors="replace")
    raise StorageUnavailable(
        f"moto server did not start on {host} within {timeout:g} s:\n{tail}",
        hint="is moto[server] installed in this interpreter? (pip install 'moto[server]')",
    )


def _wait_until_up(process: subprocess.Popen[bytes], host: str, port: int, timeout: float) -> bool:
    for _ in range(int(timeout / _POLL_S)):
        if process.poll() is not None:
            return False
        if _answers(host, port):
            return True
        time.sleep(_POLL_S)
    return False


def _answers(host: str, port: int) -> bool:
    connection = http.client.HTTPConnection(host, port, timeout=1.0)
    try:
        connection.request("GET", "/moto-api/")
        connection.getresponse().read()
    except OSError:
        return False
    finally:
        connection.close()
    return True


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def _stop(process: subprocess.Popen[bytes], timeout: float) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


__all__ = [
    "TEST_AWS_ENV",
    "mock_s3_store",
    "moto_server",
    "moto_server_process",
    "unique_bucket_name",
]
