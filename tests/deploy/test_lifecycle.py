"""Specifications of deploying a task again: to the store its deployment runs on, after a
deploy that made no deployment, or to another store (refused).

Each test registers the deployment for a work pool (`koiitasks deploy --work-pool`), which
returns once it is registered, against a real `prefect server start` on SQLite.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from koiitasks.clock import OffsetClock, WallClock
from koiitasks.deployment import prepare_deployed_task
from koiitasks.storage import Layout
from koiitasks.task import load_task
from koiitasks.testing.processes import PrefectServer
from tests.deploy.conftest import deployed_task

pytestmark = pytest.mark.slow


def register(
    task_dir: Path, store: Path, server: PrefectServer, env: dict[str, str], cwd: Path
) -> subprocess.CompletedProcess[str]:
    """`koiitasks deploy TASK --store STORE --nodes 4 --work-pool rounds`."""
    return subprocess.run(
        [sys.executable, "-m", "koiitasks", "deploy", str(task_dir), "--store", str(store),
         "--nodes", "4", "--work-pool", "rounds"],
        env={**env, "PREFECT_API_URL": server.api_url}, cwd=cwd, capture_output=True,
        text=True, timeout=180, check=False,
    )  # fmt: skip


class TestDeployAgain:
    """What a second `koiitasks deploy` of a task does with what the first left."""

    def test_rounds_due_since_a_genesis_no_deployment_served_are_counted(
        self, sqlite_server: PrefectServer, cli_env: dict[str, str], tmp_path: Path
    ) -> None:
        """A genesis recorded long ago by a deploy that never made its deployment: the next
        deploy says how many rounds came due unserved and that they will be recorded missed."""
        task_dir = deployed_task(tmp_path, "Unserved genesis")
        store = tmp_path / "store"
        an_hour_ago = OffsetClock(WallClock(), -3_600_000)
        prepare_deployed_task(task_dir, str(store), nodes=4, clock=an_hour_ago)
        proc = register(task_dir, store, sqlite_server, cli_env, tmp_path)
        assert proc.returncode == 0, proc.stderr
        said = " ".join(proc.stdout.split())
        assert "rounds 0-4" in said  # rounds of 8 s: about 450 came due in the hour
        assert "came due with no deployment to run them" in said
        assert "recorded as missed" in said

    def test_a_deployment_is_not_repointed_to_another_store(
        self, sqlite_server: PrefectServer, cli_env: dict[str, str], tmp_path: Path
    ) -> None:
        """Deploying the task to a second store exits 2 naming the first store and how to
        proceed; the second store is not written, and the deployment still runs on the first."""
        task_dir = deployed_task(tmp_path, "One store")
        first = register(task_dir, tmp_path / "first", sqlite_server, cli_env, tmp_path)
        assert first.returncode == 0, first.stderr
        again = register(task_dir, tmp_path / "second", sqlite_server, cli_env, tmp_path)
        assert again.returncode == 2, again.stderr
        said = " ".join(again.stderr.split())
        assert f"on store {tmp_path / 'first'}, not {tmp_path / 'second'}" in said
        assert "prefect deployment delete" in said
        assert not (tmp_path / "second").exists()
        same = register(task_dir, tmp_path / "first", sqlite_server, cli_env, tmp_path)
        assert same.returncode == 0, same.stderr
        task_id = load_task(task_dir).task_id
        assert (tmp_path / "first" / Layout(task_id).task).exists()
