"""Fixtures that start real scale-out processes on 127.0.0.1 and stop them at teardown.

- ``dask_cluster``: a Dask scheduler with two worker processes (one thread each) for the whole
  session. Its workers import this checkout (PYTHONPATH) and carry ``KILL_DIR_VARIABLE``, so a
  test task can make the worker that runs it die (see ``tests/scaleout/test_dask.py``).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

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
    env = {"PYTHONPATH": python_path, KILL_DIR_VARIABLE: str(kill_dir)}
    with local_cluster(2, env=env) as address:
        yield DaskCluster(address=address, kill_dir=kill_dir)
