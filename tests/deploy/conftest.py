"""Fixtures for deployed tasks: real ``prefect server start`` processes on 127.0.0.1, one on
SQLite, and one on a PostgreSQL cluster that ``infra/stack.sh start --postgres`` makes with
initdb/pg_ctl (as a user starts it); and a task with short rounds.

Each server starts once per session (about 20 s each) and is stopped at the end of the session,
whatever happened; every test deploys a task of its own name, so runs never mix.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from koiitasks.testing import write_task
from koiitasks.testing.deployed import DEPLOYED_CONFIG, DeployProcess
from koiitasks.testing.processes import PrefectServer, free_port
from tests.conftest import HASH_PUZZLE, ROOT

STACK = ROOT / "infra" / "stack.sh"

#: A flow-run process may need many seconds to start on a busy machine: start it 30 s early.
DEPLOY_OPTIONS = ("--start-in", "15", "--prefetch", "30")


@pytest.fixture(scope="session")
def sqlite_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectServer]:
    """`prefect server start` on SQLite in a fresh PREFECT_HOME."""
    with PrefectServer(tmp_path_factory.mktemp("prefect-sqlite")) as server:
        yield server


@dataclass(frozen=True)
class Stack:
    """A Prefect server on PostgreSQL started by `infra/stack.sh start --postgres`."""

    api_url: str
    database_url: str


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """`infra/stack.sh start --postgres`: a PostgreSQL cluster made with initdb/pg_ctl (as the
    postgres user when run as root) and `prefect server start` on it; `stop` at the end, and
    the cluster's folder removed."""
    state = tmp_path_factory.mktemp("stack")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "KOII_"))}
    env.update(
        {
            "KOII_INFRA_DIR": str(state),
            "KOII_PYTHON": sys.executable,
            "PREFECT_PORT": str(free_port()),
            "PG_PORT": str(free_port()),
        }
    )

    def stack(*command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(STACK), *command], env=env, capture_output=True, text=True, timeout=240,
            check=False,
        )  # fmt: skip

    try:
        started = stack("start", "--postgres", "--no-ui")
        assert started.returncode == 0, started.stdout + started.stderr
        assert stack("status").returncode == 0
        yield Stack(
            api_url=f"http://127.0.0.1:{env['PREFECT_PORT']}/api",
            database_url=(state / "database-url").read_text().strip(),
        )
    finally:
        stopped = stack("stop")
        pg_dir = state / "pg-dir"
        if pg_dir.exists():
            shutil.rmtree(pg_dir.read_text().strip(), ignore_errors=True)
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        assert stack("status").returncode == 3


@dataclass(frozen=True)
class Setup:
    """A Prefect server and how rounds reach it: served by `koiitasks deploy`, or registered
    for a work pool and run by a `prefect worker`."""

    server: PrefectServer | Stack
    work_pool: str | None

    @property
    def name(self) -> str:
        return ("Pg" if self.server.database_url else "Lite") + (" Pool" if self.work_pool else "")


@pytest.fixture(
    params=[
        pytest.param(("sqlite_server", None), id="sqlite-serve"),
        pytest.param(("postgres_server", "rounds"), id="postgresql-worker"),
    ]
)
def setup(request: pytest.FixtureRequest) -> Setup:
    """SQLite with `koiitasks deploy` serving; PostgreSQL with a process worker."""
    fixture, work_pool = request.param
    return Setup(server=request.getfixturevalue(fixture), work_pool=work_pool)


def deployed_task(tmp_path: Path, name: str, **config: int) -> Path:
    """The hash puzzle with short rounds, under its own task name."""
    source = (HASH_PUZZLE / "task.py").read_text()
    doc = {"task_name": name, **DEPLOYED_CONFIG, **config}
    return write_task(tmp_path / "task", source, config=doc)


def deploy_process(
    tmp_path: Path,
    task_dir: Path,
    server: PrefectServer | Stack,
    *nodes: str,
    work_pool: str | None = None,
) -> DeployProcess:
    """`koiitasks deploy` of a task to a store in ``tmp_path``, against ``server``."""
    return DeployProcess(
        task_dir,
        tmp_path / "store",
        server.api_url,
        tmp_path / "client-home",
        options=(*nodes, *DEPLOY_OPTIONS),
        work_pool=work_pool,
    )
