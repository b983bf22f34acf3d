"""Specifications of rounds whose shards run on a real Dask cluster (two worker processes on
127.0.0.1) against a real Prefect server (the session's)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest

from flows.dask_round import dask_round
from koiitasks.ledger import verify_ledger
from koiitasks.round_result import RoundResult
from koiitasks.storage import FileStore, open_store
from koiitasks.storage.s3 import MOTO_CREDENTIALS, make_s3_client
from koiitasks.storage.s3_init import init_s3_store
from koiitasks.testing import sandbox, write_task
from koiitasks.testing.s3 import unique_bucket_name
from tests.conftest import HASH_PUZZLE, koiitasks, snapshot
from tests.scaleout.conftest import KILL_DIR_VARIABLE, DaskCluster

# One xdist group: these start many processes; on one pytest worker they never compete.
pytestmark = [
    pytest.mark.slow,
    pytest.mark.xdist_group("scaleout"),
    pytest.mark.usefixtures("prefect_api"),
]

# Hooks that make the Dask worker running them die (SIGKILL, as the kernel's OOM killer does)
# the first time they run in round 1's execute and in round 2's audit. Only the Dask workers
# have KILL_DIR_VARIABLE set, so the same task run in the test process never dies.
KILLER_TASK = f"""
import os
import signal

from koiitasks import Task

task = Task()


def witness_or_die(phase, round_number):
    folder = os.environ.get({KILL_DIR_VARIABLE!r})
    if not folder:
        return
    open(os.path.join(folder, f"ran-{{os.getpid()}}"), "a").close()
    if (phase, round_number) not in (("execute", 1), ("audit", 2)):
        return
    try:
        fd = os.open(os.path.join(folder, f"killed-{{phase}}-{{round_number}}"),
                     os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return  # killed once already: the re-run of the shard goes through
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    os.kill(os.getpid(), signal.SIGKILL)


@task.execute
def execute(ctx):
    witness_or_die("execute", ctx.round)
    return {{"node": ctx.node_id, "round": ctx.round}}


@task.audit
def audit(ctx, submission):
    witness_or_die("audit", ctx.round)
    return submission.result == {{"node": submission.node_id, "round": submission.round}}
"""


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class TestRoundsOnDask:
    """Execute and audit shards on Dask workers, the rest in the flow run."""

    def test_seeded_rounds_write_the_single_process_bytes(
        self, dask_cluster: DaskCluster, tmp_path: Path
    ) -> None:
        """Seeded rounds with adversaries, their shards on two Dask worker processes, write
        byte for byte the records and ledger the same rounds write in one process."""
        network: dict[str, Any] = {"nodes": 24, "seed": 8}
        network["adversaries"] = {"lazy": 2, "offline": 1, "forger": 1, "bad-auditor": 1}
        store = tmp_path / "on-dask"
        for n in range(2):
            result = RoundResult.model_validate_json(
                dask_round(
                    task_dir=str(HASH_PUZZLE),
                    round_number=n,
                    store=str(store),
                    shard_size=5,
                    dask_address=dask_cluster.address,
                    **network,
                )
            )
            assert result.distribution_accepted
            assert not result.already_settled

        alone = sandbox(HASH_PUZZLE, **network)
        for n in range(2):
            alone.run_round(n)
        assert snapshot(FileStore(store)) == snapshot(alone.store)

    @pytest.mark.usefixtures("aws_env")
    def test_workers_sharing_an_s3_store_write_the_single_process_bytes(
        self, dask_cluster: DaskCluster, moto_endpoint: str
    ) -> None:
        """Workers and the flow run sharing one S3 store (a moto server process), as on
        several machines, write the bytes the same round writes in one process."""
        url = f"s3://{unique_bucket_name()}/koii"
        client = make_s3_client(moto_endpoint, credentials=MOTO_CREDENTIALS)
        init_s3_store(url, client=client)
        client.close()
        network: dict[str, Any] = {"nodes": 10, "seed": 9, "adversaries": {"lazy": 1}}
        result = RoundResult.model_validate_json(
            dask_round(
                task_dir=str(HASH_PUZZLE),
                round_number=0,
                store=url,
                shard_size=4,
                s3_endpoint_url=moto_endpoint,
                dask_address=dask_cluster.address,
                **network,
            )
        )
        assert result.distribution_accepted

        alone = sandbox(HASH_PUZZLE, **network)
        alone.run_round(0)
        with open_store(url, s3_endpoint_url=moto_endpoint) as on_s3:
            assert snapshot(on_s3) == snapshot(alone.store)

    def test_killed_workers_mid_round_still_settle_each_round_once(
        self, dask_cluster: DaskCluster, tmp_path: Path
    ) -> None:
        """A worker killed in the middle of round 1's execute shards and another in the middle
        of round 2's audit shards: every round settles once, with the bytes of an undisturbed
        run in one process, and running the last round again changes nothing."""
        task_dir = write_task(tmp_path / "killer", KILLER_TASK, slot_ms=400)
        store = tmp_path / "store"
        options: dict[str, Any] = {
            "task_dir": str(task_dir),
            "store": str(store),
            "nodes": 12,
            "seed": 4,
            "adversaries": {"lazy": 1},
            "shard_size": 3,
            "dask_address": dask_cluster.address,
        }
        for n in range(3):
            result = json.loads(dask_round(round_number=n, **options))
            assert not result["already_settled"]

        killed = {
            marker.name: int(marker.read_text())
            for marker in dask_cluster.kill_dir.glob("killed-*")
        }
        assert set(killed) == {"killed-execute-1", "killed-audit-2"}
        assert not any(alive(pid) for pid in killed.values())
        ran = {int(p.name.removeprefix("ran-")) for p in dask_cluster.kill_dir.glob("ran-*")}
        # The two killed processes, and a live one that re-ran the second killed shard.
        assert len(ran) >= 3
        assert os.getpid() not in ran

        alone = sandbox(task_dir, nodes=12, seed=4, adversaries={"lazy": 1})
        for n in range(3):
            alone.run_round(n)
        on_dask = FileStore(store)
        assert snapshot(on_dask) == snapshot(alone.store)
        assert verify_ledger(on_dask, alone.loaded.task_id).entries == 3
        again = json.loads(dask_round(round_number=2, **options))
        assert again["already_settled"]
        assert snapshot(on_dask) == snapshot(alone.store)


class TestDaskCommandLine:
    """`koiitasks run --dask`."""

    def test_run_on_a_cluster_prints_what_one_process_computes(
        self, dask_cluster: DaskCluster, cli_env: dict[str, str], prefect_api: str, tmp_path: Path
    ) -> None:
        """--dask ADDRESS runs the rounds' shards on the cluster and prints the results a run
        in one process computes."""
        env = {**cli_env, "PREFECT_API_URL": prefect_api}
        args = ["--nodes", "10", "--seed", "6", "--rounds", "2", "--adversary", "lazy=1"]
        store = str(tmp_path / "store")
        proc = koiitasks(
            *["run", str(HASH_PUZZLE), *args, "--json", "--store", store],
            *["--dask", dask_cluster.address],
            env=env,
            cwd=tmp_path,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        printed = [RoundResult.model_validate_json(line) for line in proc.stdout.splitlines()]
        alone = sandbox(HASH_PUZZLE, nodes=10, seed=6, adversaries={"lazy": 1})
        assert printed == [alone.run_round(0), alone.run_round(1)]

    @pytest.mark.parametrize(
        ("store", "address", "said"),
        [
            pytest.param(
                "memory://one-process", "local:2", "lives inside one process", id="memory-store"
            ),
            pytest.param("store", "tcp://127.0.0.1:9", "is unreachable", id="no-scheduler"),
        ],
    )
    def test_a_store_or_scheduler_dask_cannot_use_is_refused_before_any_flow_run(
        self,
        cli_env: dict[str, str],
        prefect_api: str,
        tmp_path: Path,
        store: str,
        address: str,
        said: str,
    ) -> None:
        """A store the workers cannot share, or a scheduler nobody listens at, exits 2 with
        the error and its hint, no traceback, and no flow run left failed on the server."""
        env = {**cli_env, "PREFECT_API_URL": prefect_api}
        task_dir = tmp_path / "dask-refused"
        shutil.copytree(HASH_PUZZLE, task_dir)
        config = task_dir / "config-task.yml"  # its own task id, so its own flow run names
        config.write_text(config.read_text().replace("Hash Puzzle", "Dask Refused"))
        proc = koiitasks(
            *["run", str(task_dir), "--nodes", "4", "--store", store, "--dask", address],
            env=env,
            cwd=tmp_path,
        )
        assert proc.returncode == 2, proc.stderr[-3000:]
        assert said in proc.stderr
        assert "hint:" in proc.stderr
        assert "Traceback" not in proc.stderr
        assert not (tmp_path / "store").exists()  # no network written for a refused run
        runs = httpx.post(
            f"{prefect_api}/flow_runs/filter",
            json={"flow_runs": {"name": {"like_": "dask-refused-round"}}},
            timeout=30,
        ).json()
        assert runs == []

    def test_dask_without_a_prefect_server_says_how_to_start_one(
        self, cli_env: dict[str, str], tmp_path: Path
    ) -> None:
        """Without PREFECT_API_URL, --dask exits 2 before any round or Dask process starts and
        says to start a Prefect server: Dask workers cannot share a temporary one."""
        proc = koiitasks(
            *["run", str(HASH_PUZZLE), "--nodes", "4", "--store", str(tmp_path / "store")],
            *["--dask", "local"],
            env=cli_env,
            cwd=tmp_path,
        )
        assert proc.returncode == 2, proc.stderr[-3000:]
        assert "PREFECT_API_URL" in proc.stderr
        assert "prefect server start" in proc.stderr
