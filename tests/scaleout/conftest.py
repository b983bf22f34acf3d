"""Fixtures that start real scale-out processes on 127.0.0.1 and stop them at teardown.

- ``dask_cluster``: a Dask scheduler with two worker processes (one thread each) for the whole
  session. Its workers import this checkout (PYTHONPATH), sign S3 requests with the test's dummy
  AWS keys, and carry ``KILL_DIR_VARIABLE``, so a test task can make the worker that runs it die
  (see ``tests/scaleout/test_dask.py``).
- ``moto_endpoint``: one ``python -m moto.server`` process, the S3 every process shares.
- ``aws_env``: the dummy AWS settings, and no others, in this process.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from koiitasks.testing.s3 import TEST_AWS_ENV, moto_server_process
from tests.conftest import ROOT

#: Set in the Dask workers' environment only: the folder where a test task leaves its markers.
KILL_DIR_VARIABLE = "KOIITASKS_TEST_KILL_DIR"


@dataclass(frozen=True)
class DaskCluster:
    """A running local Dask cluster: where to reach it, where its workers leave markers."""

    address: str
    kill_dir: Path


@pytest.fixture(scope="session")
def dask_cluster() -> Iterator[DaskCluster]:
    """Two Dask worker processes and their scheduler, stopped at the end of the session."""
    from koiitasks.cluster import local_cluster  # noqa: PLC0415

    kill_dir = Path(tempfile.mkdtemp(prefix="koiitasks-dask-kill-"))
    python_path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    env = {"PYTHONPATH": python_path, KILL_DIR_VARIABLE: str(kill_dir), **TEST_AWS_ENV}
    try:
        with local_cluster(2, env=env) as address:
            yield DaskCluster(address=address, kill_dir=kill_dir)
    finally:
        shutil.rmtree(kill_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """The endpoint URL of one moto server process for the session."""
    with moto_server_process() as endpoint:
        yield endpoint


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Dummy AWS settings only: no real credentials, profiles or endpoints leak into a test."""
    for name in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(name)
    for name, value in TEST_AWS_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
