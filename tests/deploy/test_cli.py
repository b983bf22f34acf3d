"""Specifications of `koiitasks deploy` that need no Prefect server: its errors, and the
prefect.yaml it writes for `prefect deploy`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from prefect.cli.deploy._models import DeploymentConfig

from koiitasks.deployment import plan_deployment
from tests.conftest import HASH_PUZZLE, ROOT


def koiitasks(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "koiitasks", *args],
        env=env, cwd=cwd, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


class TestDeployCommand:
    """What `koiitasks deploy` refuses, and what it writes instead of deploying."""

    def test_without_a_server_it_says_how_to_start_one(
        self, cli_env: dict[str, str], tmp_path: Path
    ) -> None:
        """No PREFECT_API_URL: exit 2, naming the variable and infra/stack.sh, no traceback."""
        proc = koiitasks(
            "deploy", str(HASH_PUZZLE), "--store", "deployed", "--nodes", "4",
            env=cli_env, cwd=tmp_path,
        )  # fmt: skip
        assert proc.returncode == 2
        assert "PREFECT_API_URL is not set" in proc.stderr
        assert "infra/stack.sh start" in proc.stderr
        assert "Traceback" not in proc.stderr
        assert not (tmp_path / "deployed").exists()

    def test_prefect_yaml_needs_a_work_pool(self, cli_env: dict[str, str], tmp_path: Path) -> None:
        """--prefect-yaml describes a deployment for workers, so it needs --work-pool."""
        proc = koiitasks(
            "deploy", str(HASH_PUZZLE), "--store", "deployed", "--nodes", "4",
            "--prefect-yaml", "prefect.yaml", env=cli_env, cwd=tmp_path,
        )  # fmt: skip
        assert proc.returncode == 2
        assert "--prefect-yaml needs --work-pool" in proc.stderr

    def test_prefect_yaml_is_the_same_deployment(
        self, cli_env: dict[str, str], tmp_path: Path
    ) -> None:
        """The written prefect.yaml is a valid Prefect deployment config with the schedule,
        limit, tags, parameters and pool `koiitasks deploy --work-pool` registers."""
        proc = koiitasks(
            "deploy", str(HASH_PUZZLE), "--store", "deployed", "--nodes", "4",
            "--work-pool", "rounds", "--prefect-yaml", "prefect.yaml",
            env=cli_env, cwd=tmp_path,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        document = yaml.safe_load((tmp_path / "prefect.yaml").read_text())
        (config,) = [DeploymentConfig.model_validate(d) for d in document["deployments"]]
        plan = plan_deployment(HASH_PUZZLE, str(tmp_path / "deployed"))
        assert config.name == "hash-puzzle"
        assert config.entrypoint == "flows/deployed.py:deployed_round"
        assert config.parameters == plan.parameters
        assert config.tags == plan.tags
        assert config.work_pool is not None
        assert config.work_pool.name == "rounds"
        (schedule,) = document["deployments"][0]["schedules"]
        assert schedule["interval"] == plan.round_ms / 1000
        assert schedule["anchor_date"] == plan.anchor.isoformat()
        assert document["deployments"][0]["concurrency_limit"] == {
            "limit": plan.concurrency_limit,
            "collision_strategy": "ENQUEUE",
        }
        directory = document["pull"][0]["prefect.deployments.steps.set_working_directory"]
        assert (Path(directory["directory"]) / config.entrypoint.split(":")[0]).is_file()

    @pytest.mark.parametrize("path", [ROOT / "infra" / "prefect.yaml"], ids=["infra"])
    def test_the_shipped_example_is_a_valid_deployment_config(self, path: Path) -> None:
        """infra/prefect.yaml parses as Prefect deployment configs for the deployed round."""
        document = yaml.safe_load(path.read_text())
        configs = [DeploymentConfig.model_validate(d) for d in document["deployments"]]
        assert [c.entrypoint for c in configs] == ["flows/deployed.py:deployed_round"]
