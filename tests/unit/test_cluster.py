"""Specifications of shard jobs and the Dask cluster settings, without starting a cluster."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import cloudpickle
import pytest

from flows.dask_round import dask_round
from flows.dask_round import execute_shard as execute_shard_task
from koiitasks import cluster
from koiitasks.cluster import RoundMoment, SandboxSpec
from koiitasks.errors import ClusterError, ConfigError
from koiitasks.storage import FileStore
from koiitasks.testing import sandbox
from tests.conftest import HASH_PUZZLE

# What a process worker's flow run does: load the deployment's entrypoint, then pickle the flow,
# as every shard task submitted to Dask carries it in the flow run's context.
LOAD_AND_PICKLE_THE_FLOW = """
import sys
import cloudpickle
from prefect.flows import load_flow_from_entrypoint

import prefect_dask.task_runners  # noqa: F401 - the real dask, whatever the flow's folder holds

sys.stdout.buffer.write(cloudpickle.dumps(load_flow_from_entrypoint(sys.argv[1])))
"""


def snapshot(store: FileStore) -> dict[str, bytes]:
    return {key: store.read(key) for key in store.list()}


class TestShardJobs:
    """A shard job is plain values any process can run against the shared store."""

    def test_a_shard_job_survives_the_trip_to_a_worker(self, tmp_path: Path) -> None:
        """The shard task and its parameters go through cloudpickle, as Dask sends them."""
        spec = SandboxSpec(task_dir=str(HASH_PUZZLE), store=str(tmp_path), nodes=4, seed=1)
        moment = RoundMoment(round=3, at_ms=12_000, settled=2)
        job = (execute_shard_task, {"spec": spec, "moment": moment, "node_ids": ["a", "b"]})
        assert cloudpickle.loads(cloudpickle.dumps(job))[1] == job[1]

    def test_the_deployed_flow_unpickles_where_dask_runs_its_shards(self, tmp_path: Path) -> None:
        """Loaded from the module entrypoint docs/scale-out.md deploys, the Dask round flow
        (which every shard task carries in its context) unpickles in another process. (By
        path, its module would be `dask_round`, which only the loading process can import.)"""
        proc = subprocess.run(
            [sys.executable, "-c", LOAD_AND_PICKLE_THE_FLOW, "flows.dask_round.dask_round"],
            cwd=tmp_path,
            capture_output=True,
            timeout=120,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr.decode()[-3000:]
        assert cloudpickle.loads(proc.stdout).name == dask_round.name == "koii-dask-round"

    def test_a_shard_rerun_by_a_worker_that_never_saw_it_writes_nothing_new(
        self, tmp_path: Path
    ) -> None:
        """A shard run again by a process that listed the round before the first run stored
        it (Dask re-running it after its worker died) asks its nodes again and finds the same
        bytes stored: nothing changes."""
        spec = SandboxSpec(task_dir=str(HASH_PUZZLE), store=str(tmp_path / "s"), nodes=8, seed=2)
        orchestrator = spec.open()
        orchestrator.begin(0)
        orchestrator.engine.open_round(0)
        moment = RoundMoment.of(orchestrator.engine, 0)
        first, second = orchestrator.engine.eligible(0)[:4], orchestrator.engine.eligible(0)[4:]
        elsewhere = sandbox(HASH_PUZZLE, store=FileStore(tmp_path / "s"), nodes=8, seed=2)
        elsewhere.begin(0)
        elsewhere.engine.execute_shard(0, second)  # lists the round: the first shard is not in

        assert cluster.execute_shard(spec, moment, first)["accepted"] == 4
        before = snapshot(FileStore(tmp_path / "s"))
        assert elsewhere.engine.execute_shard(0, first)["accepted"] == 4  # asked again
        assert snapshot(FileStore(tmp_path / "s")) == before

    def test_a_worker_catches_up_with_rounds_settled_since_it_last_looked(
        self, tmp_path: Path
    ) -> None:
        """A worker whose engine read the ledger before later rounds settled re-reads it when
        the orchestrator has seen more entries."""
        spec = SandboxSpec(task_dir=str(HASH_PUZZLE), store=str(tmp_path / "s"), nodes=5, seed=3)
        worker = spec.open()
        orchestrator = sandbox(HASH_PUZZLE, store=FileStore(tmp_path / "s"), nodes=5, seed=3)
        for n in range(2):
            orchestrator.run_round(n)
        assert worker.engine.ledger.entries == []
        orchestrator.begin(2)
        orchestrator.engine.open_round(2)
        moment = RoundMoment.of(orchestrator.engine, 2)
        cluster.execute_shard(spec, moment, orchestrator.engine.eligible(2))
        assert len(worker.engine.ledger.entries) == 2
        assert worker.clock.now_ms() == moment.at_ms


class TestClusterSettings:
    """Where shards run, and the errors that say how to fix it."""

    @pytest.mark.parametrize(
        ("address", "workers"),
        [
            pytest.param("local", 2, id="local-default"),
            pytest.param("local:3", 3, id="local-with-count"),
            pytest.param("tcp://10.0.0.5:8786", None, id="remote-scheduler"),
        ],
    )
    def test_local_addresses_start_a_cluster_here(self, address: str, workers: int | None) -> None:
        """local and local:N ask for N worker processes here; other addresses name a
        scheduler."""
        assert cluster.local_workers(address) == workers

    @pytest.mark.parametrize("address", ["local:0", "local:many"])
    def test_a_malformed_local_address_is_refused(self, address: str) -> None:
        """local: with no positive count is refused, naming the forms that work."""
        with pytest.raises(ConfigError, match="local:N"):
            cluster.local_workers(address)

    def test_rounds_on_dask_need_a_real_prefect_server(self) -> None:
        """Without a Prefect API URL, the error says to start a server and set the URL."""
        with pytest.raises(ConfigError) as caught:
            cluster.check_prefect_api(None)
        assert "PREFECT_API_URL" in str(caught.value)
        assert "prefect server start" in str(caught.value)

    @pytest.mark.parametrize("store", ["memory://shared", "moto://bucket"])
    def test_a_store_inside_one_process_is_refused(self, store: str) -> None:
        """memory:// and moto:// live in one process: the error names folders and s3://."""
        with pytest.raises(ConfigError, match="s3://BUCKET"):
            cluster.check_shared_store(store)

    @pytest.mark.parametrize("store", ["/srv/koii", "file:///srv/koii", "s3://bucket/koii"])
    def test_folders_and_s3_can_be_shared(self, store: str) -> None:
        """A folder (on one machine or a shared mount) and S3 are stores workers share."""
        cluster.check_shared_store(store)

    def test_an_unreachable_scheduler_is_named_with_the_setting_to_fix(self) -> None:
        """A scheduler address where nothing listens raises ClusterError naming the address
        and KOII_DASK_ADDRESS, at once rather than after Dask's timeout."""
        with socket.socket() as probe:  # a port that was free a moment ago
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        address = f"tcp://127.0.0.1:{port}"
        with pytest.raises(ClusterError) as caught, cluster.dask_runner(address, timeout_s=5):
            pass
        assert address in caught.value.message
        assert caught.value.hint is not None
        assert "KOII_DASK_ADDRESS" in caught.value.hint

    @pytest.mark.parametrize("address", ["foo", "http://127.0.0.1:8786", "tcp://host-no-port"])
    def test_an_address_that_is_not_a_scheduler_url_is_refused(self, address: str) -> None:
        """Only tcp://HOST:PORT (or tls://) names a scheduler."""
        with pytest.raises(ConfigError, match="not tcp://HOST:PORT"):
            cluster.check_reachable(address)
