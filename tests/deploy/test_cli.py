"""Specifications of `koiitasks deploy` that need no Prefect server: its errors, and the
prefect.yaml it writes for `prefect deploy`."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from prefect.cli.deploy._models import DeploymentConfig

from koiitasks.deployment import plan_deployment
from koiitasks.identity import Keypair, save_key
from koiitasks.network import open_remote_network, register_node
from koiitasks.storage import FileStore, Layout
from koiitasks.task import load_task
from tests.conftest import HASH_PUZZLE, ROOT

#: A Prefect API nothing answers: these commands stop before they would call it.
NO_SERVER = "http://127.0.0.1:9/api"


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

    def test_a_server_that_does_not_answer_leaves_the_store_untouched(
        self, cli_env: dict[str, str], tmp_path: Path
    ) -> None:
        """The Prefect API is asked before the store is written: exit 2 naming the API, and no
        task record whose genesis a later deploy would find long past."""
        proc = koiitasks(
            "deploy", str(HASH_PUZZLE), "--store", "deployed", "--nodes", "4",
            env={**cli_env, "PREFECT_API_URL": NO_SERVER}, cwd=tmp_path,
        )  # fmt: skip
        assert proc.returncode == 2, proc.stderr
        assert "the Prefect API could not" in proc.stderr
        assert "Traceback" not in proc.stderr
        assert not (tmp_path / "deployed").exists()

    def test_prefect_yaml_in_a_missing_folder_exits_2_before_the_store_is_made(
        self, cli_env: dict[str, str], tmp_path: Path
    ) -> None:
        """An --prefect-yaml that cannot be written is refused up front, naming its folder."""
        proc = koiitasks(
            "deploy", str(HASH_PUZZLE), "--store", "deployed", "--nodes", "4",
            "--work-pool", "rounds", "--prefect-yaml", str(tmp_path / "nowhere" / "x.yaml"),
            env=cli_env, cwd=tmp_path,
        )  # fmt: skip
        assert proc.returncode == 2, proc.stderr
        assert f"folder {tmp_path / 'nowhere'} does not exist" in proc.stderr
        assert "internal error" not in proc.stderr
        assert not (tmp_path / "deployed").exists()

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
        env = config.work_pool.job_variables["env"]
        assert env["PREFECT_LOGGING_EXTRA_LOGGERS"] == "koiitasks"
        assert "KOII_S3_ENDPOINT_URL" not in env  # none was set for the deploy

    def test_a_work_pools_runs_get_the_s3_endpoint_the_deploy_used(
        self, cli_env: dict[str, str], tmp_path: Path
    ) -> None:
        """With KOII_S3_ENDPOINT_URL set, the written deployment gives it to each flow run a
        worker starts (a worker started as deploy says would send an s3:// store's runs to
        AWS)."""
        env = {**cli_env, "KOII_S3_ENDPOINT_URL": "http://127.0.0.1:5999"}
        proc = koiitasks(
            "deploy", str(HASH_PUZZLE), "--store", "deployed", "--nodes", "4",
            "--work-pool", "rounds", "--prefect-yaml", "prefect.yaml", env=env, cwd=tmp_path,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        document = yaml.safe_load((tmp_path / "prefect.yaml").read_text())
        variables = document["deployments"][0]["work_pool"]["job_variables"]
        assert variables["env"]["KOII_S3_ENDPOINT_URL"] == "http://127.0.0.1:5999"

    @pytest.mark.parametrize("path", [ROOT / "infra" / "prefect.yaml"], ids=["infra"])
    def test_the_shipped_example_is_a_valid_deployment_config(self, path: Path) -> None:
        """infra/prefect.yaml parses as Prefect deployment configs for the deployed round."""
        document = yaml.safe_load(path.read_text())
        configs = [DeploymentConfig.model_validate(d) for d in document["deployments"]]
        assert [c.entrypoint for c in configs] == ["flows/deployed.py:deployed_round"]


def registered_store(tmp_path: Path, *, orchestrator: Keypair | None = None) -> Path:
    """A store with one registered node and, given an orchestrator, its task record."""
    store = FileStore(tmp_path / "remote")
    loaded = load_task(HASH_PUZZLE)
    node = Keypair.from_seed(b"a registered node")
    register_node(store, loaded, node, url="http://127.0.0.1:9", stake=10**10)
    if orchestrator is not None:
        open_remote_network(store, loaded, orchestrator, now_ms=1_800_000_000_000)
    return tmp_path / "remote"


def missing_key(tmp_path: Path) -> tuple[Path, Path]:
    return registered_store(tmp_path), tmp_path / "nowhere" / "orchestrator.json"


def key_readable_by_others(tmp_path: Path) -> tuple[Path, Path]:
    save_key(Keypair.generate(), tmp_path / "orchestrator.json")
    (tmp_path / "orchestrator.json").chmod(0o644)
    return registered_store(tmp_path), tmp_path / "orchestrator.json"


def another_orchestrators_key(tmp_path: Path) -> tuple[Path, Path]:
    save_key(Keypair.generate(), tmp_path / "orchestrator.json")
    return registered_store(tmp_path, orchestrator=Keypair.generate()), (
        tmp_path / "orchestrator.json"
    )


def not_a_key(tmp_path: Path) -> tuple[Path, Path]:
    (tmp_path / "orchestrator.json").write_text("{}")
    (tmp_path / "orchestrator.json").chmod(0o600)
    return registered_store(tmp_path), tmp_path / "orchestrator.json"


class TestDeployOnRegisteredNodes:
    """`koiitasks deploy --key`: what it refuses before it deploys anything."""

    @pytest.mark.parametrize(
        ("make", "says"),
        [
            pytest.param(missing_key, "does not exist", id="missing"),
            pytest.param(key_readable_by_others, "chmod 600", id="readable-by-others"),
            pytest.param(not_a_key, "is malformed", id="malformed"),
            pytest.param(another_orchestrators_key, "was made by orchestrator", id="wrong-key"),
        ],
    )
    def test_a_bad_orchestrator_key_file_exits_2_naming_it(
        self,
        cli_env: dict[str, str],
        tmp_path: Path,
        make: Callable[[Path], tuple[Path, Path]],
        says: str,
    ) -> None:
        """Exit 2 with a message that names the key file and says what to do; no traceback,
        and no task record written for a key that could not sign."""
        store, key = make(tmp_path)
        had_record = (store / Layout("hash-puzzle").task).exists()
        proc = koiitasks(
            "deploy", str(HASH_PUZZLE), "--store", str(store), "--key", str(key),
            env={**cli_env, "PREFECT_API_URL": NO_SERVER}, cwd=tmp_path,
        )  # fmt: skip
        assert proc.returncode == 2, proc.stderr
        assert str(key) in proc.stderr
        assert says in proc.stderr
        assert "Traceback" not in proc.stderr
        assert (store / Layout("hash-puzzle").task).exists() == had_record

    def test_a_work_pool_deployment_names_the_key_file_and_holds_no_key(
        self, cli_env: dict[str, str], tmp_path: Path
    ) -> None:
        """With --work-pool, the deployment's runs (on a worker of this machine) read the key
        file at its absolute path, given relative; the deployment itself carries no key."""
        store = registered_store(tmp_path)
        orchestrator = Keypair.generate()
        save_key(orchestrator, tmp_path / "orchestrator.json")
        proc = koiitasks(
            "deploy", str(HASH_PUZZLE), "--store", str(store), "--key", "orchestrator.json",
            "--work-pool", "rounds", "--prefect-yaml", "prefect.yaml",
            env=cli_env, cwd=tmp_path,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        written = (tmp_path / "prefect.yaml").read_text()
        (deployment,) = yaml.safe_load(written)["deployments"]
        assert deployment["parameters"]["key_file"] == str(tmp_path / "orchestrator.json")
        assert deployment["work_pool"]["name"] == "rounds"
        secret = json.loads((tmp_path / "orchestrator.json").read_text())["secret"]
        assert secret not in written

    def test_a_task_of_registered_nodes_needs_the_key(
        self, cli_env: dict[str, str], tmp_path: Path
    ) -> None:
        """Deploying a task of registered nodes again without --key says to add it."""
        store = registered_store(tmp_path, orchestrator=Keypair.generate())
        proc = koiitasks(
            "deploy", str(HASH_PUZZLE), "--store", str(store),
            env={**cli_env, "PREFECT_API_URL": NO_SERVER}, cwd=tmp_path,
        )  # fmt: skip
        assert proc.returncode == 2, proc.stderr
        assert "needs the orchestrator's key file" in proc.stderr
        assert "--key FILE" in proc.stderr
        assert "Traceback" not in proc.stderr
