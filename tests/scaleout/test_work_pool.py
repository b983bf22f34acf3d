"""Specifications of round flows on a Prefect work pool: two process workers, a Prefect server
on PostgreSQL, a Dask cluster, one S3 store (a moto server process), all real processes on
127.0.0.1."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from prefect import Flow
from prefect.client.orchestration import get_client
from prefect.deployments import run_deployment
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect.states import Crashed
from prefect.types.entrypoint import EntrypointType

from koiitasks.ledger import verify_ledger
from koiitasks.storage import Store, open_store
from koiitasks.storage.s3 import MOTO_CREDENTIALS, make_s3_client
from koiitasks.storage.s3_init import init_s3_store
from koiitasks.testing import sandbox, write_task
from koiitasks.testing.s3 import TEST_AWS_ENV, unique_bucket_name
from tests.conftest import ECHO_TASK, HASH_PUZZLE, ROOT
from tests.scaleout import services
from tests.scaleout.conftest import DaskCluster

# One xdist group: these start many processes; on one pytest worker they never compete.
pytestmark = [
    pytest.mark.slow,
    pytest.mark.xdist_group("scaleout"),
    pytest.mark.usefixtures("aws_env"),
]

POOL = "koii-rounds"
#: Where each worker takes runs from: the run that loses its machine goes to worker-b alone, so
#: the loss never takes another task's run down with it (a flow run dies with its worker's
#: pipes); the other runs, and the lost round run again, go to worker-a.
QUEUES = {"worker-a": "default", "worker-b": "lossy"}
#: The two round flows on the pool: shards on the flow run's threads, or on a Dask cluster.
ON_THREADS = "koii-sandbox-round/rounds"
ON_DASK = "koii-dask-round/rounds"
#: Set in the Prefect workers' environment only: where the machine-losing task leaves a marker.
LOSS_DIR_VARIABLE = "KOIITASKS_TEST_LOSS_DIR"


# The first time it executes on a Prefect worker, the machine is lost: its worker process
# and the flow run's own process die (SIGKILL) in the middle of the round.
LOSING_TASK = f"""
import os
import signal

from koiitasks import Task

task = Task()


def lose_the_machine_once():
    folder = os.environ.get({LOSS_DIR_VARIABLE!r})
    if not folder:
        return
    try:
        fd = os.open(os.path.join(folder, "lost"), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    worker = os.getppid()
    os.write(fd, str(worker).encode())
    os.close(fd)
    with open(f"/proc/{{worker}}/cmdline", "rb") as cmdline:
        if b"worker" in cmdline.read():
            os.kill(worker, signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)


@task.execute
def execute(ctx):
    lose_the_machine_once()
    return {{"node": ctx.node_id, "round": ctx.round, "kind": "losing"}}


@task.audit
def audit(ctx, submission):
    return submission.result == {{
        "node": submission.node_id, "round": submission.round, "kind": "losing"
    }}
"""


@dataclass
class Stack:
    """The running topology: server, pool, workers, the shared store."""

    api_url: str
    store_url: str
    endpoint: str
    workers: dict[str, Any]
    folder: Path
    loss_dir: Path

    def worker_logs(self) -> str:
        return "\n".join(
            f"--- {name}\n{services.tail(self.folder / name / 'worker.log')}"
            for name in self.workers
        )


@pytest.fixture
def stack(tmp_path: Path, moto_endpoint: str) -> Iterator[Stack]:
    """PostgreSQL, a Prefect server on it, a process work pool with the round flow deployed,
    two workers (at most two runs each) whose runs reach one S3 bucket."""
    store_url = f"s3://{unique_bucket_name()}/koii"
    client = make_s3_client(moto_endpoint, credentials=MOTO_CREDENTIALS)
    init_s3_store(store_url, client=client)
    client.close()
    loss_dir = tmp_path / "loss"
    loss_dir.mkdir()
    python_path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    run_env = {
        **TEST_AWS_ENV,
        "KOII_S3_ENDPOINT_URL": moto_endpoint,
        "PYTHONPATH": python_path,
        LOSS_DIR_VARIABLE: str(loss_dir),
    }
    with ExitStack() as running:
        database = running.enter_context(services.postgres_cluster())
        server = running.enter_context(services.prefect_server(database, tmp_path))
        with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
            create_pool()
        workers = {
            name: running.enter_context(
                services.prefect_worker(
                    POOL, name, server.api_url, tmp_path / name, run_env, limit=2, queue=queue
                )
            )
            for name, queue in QUEUES.items()
        }
        with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
            deploy_rounds()  # while the workers start
        yield Stack(server.api_url, store_url, moto_endpoint, workers, tmp_path, loss_dir)


def create_pool() -> None:
    """The process work pool, as `prefect work-pool create POOL --type process` makes it, and
    its second work queue (`prefect work-queue create lossy --pool POOL`)."""
    from prefect.client.schemas.actions import WorkPoolCreate  # noqa: PLC0415

    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name=POOL, type="process"))
        client.create_work_queue(name=QUEUES["worker-b"], work_pool_name=POOL)


def deploy_rounds() -> None:
    """Both round flows deployed on the pool from this checkout, as docs/scale-out.md does:
    the Dask one by module entrypoint, so Dask can unpickle the flow run's context."""
    for entrypoint, kind in (
        ("flows/round.py:sandbox_round", EntrypointType.FILE_PATH),
        ("flows.dask_round.dask_round", EntrypointType.MODULE_PATH),
    ):
        source = Flow.from_source(source=str(ROOT), entrypoint=entrypoint)
        assert isinstance(source, Flow)  # the sync spelling returns the flow itself
        source.deploy(
            name="rounds",
            work_pool_name=POOL,
            build=False,
            push=False,
            entrypoint_type=kind,
            print_next_steps=False,
            ignore_warnings=True,
        )


def submit(
    stack: Stack,
    deployment: str,
    task_dir: Path,
    round_number: int,
    network: dict[str, Any],
    worker: str = "worker-a",
) -> UUID:
    """A flow run of a deployment for one round of one task, on ``worker``'s work queue;
    returns at once."""
    parameters = {
        "task_dir": str(task_dir),
        "round_number": round_number,
        "store": stack.store_url,
        **network,
    }
    with temporary_settings(updates={PREFECT_API_URL: stack.api_url}):
        run = run_deployment(
            deployment, parameters=parameters, timeout=0, work_queue_name=QUEUES[worker]
        )
    return run.id  # type: ignore[union-attr]


def wait_until(stack: Stack, done: Callable[[], bool], what: str, timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}\n{stack.worker_logs()}")
        time.sleep(0.5)


def states(stack: Stack, runs: list[UUID]) -> dict[UUID, Any]:
    with (
        temporary_settings(updates={PREFECT_API_URL: stack.api_url}),
        get_client(sync_client=True) as client,
    ):
        return {run: client.read_flow_run(run).state for run in runs}


def all_final(stack: Stack, runs: list[UUID]) -> bool:
    return all(state.is_final() for state in states(stack, runs).values())


def task_records(store: Store, task_id: str) -> dict[str, bytes]:
    return {key: store.read(key) for key in store.list(f"tasks/{task_id}/")}


class TestRoundsOnAWorkPool:
    """Rounds of several tasks as flow runs of deployments on a pool of process workers."""

    def test_three_tasks_at_once_each_ledger_its_own_even_when_a_worker_is_lost(
        self, stack: Stack, dask_cluster: DaskCluster, tmp_path: Path
    ) -> None:
        """A round of three tasks, three flow runs at once on two process workers against the
        PostgreSQL-backed server, all writing one S3 bucket, one of them with its shards on a
        Dask cluster; a worker and its flow run are killed in the middle of one task's round,
        which, run again, settles on the other worker. Every task's records and ledger are
        exactly those of the same round in one process, and none leaks into another."""
        on_dask = {"dask_address": dask_cluster.address, "shard_size": 3}
        tasks: dict[str, tuple[str, Path, dict[str, Any], dict[str, Any]]] = {
            "hash-puzzle": (
                ON_DASK,
                HASH_PUZZLE,
                {"nodes": 8, "seed": 1, "adversaries": {"lazy": 1}},
                on_dask,
            ),
            "echo-alpha": (
                ON_THREADS,
                write_task(tmp_path / "alpha", ECHO_TASK, task_name="Echo Alpha", slot_ms=400),
                {"nodes": 6, "seed": 2},
                {},
            ),
            "losing-beta": (
                ON_THREADS,
                write_task(tmp_path / "beta", LOSING_TASK, task_name="Losing Beta", slot_ms=400),
                {"nodes": 7, "seed": 3, "adversaries": {"offline": 1}},
                {},
            ),
        }
        wave = {
            name: submit(
                stack,
                deployment,
                directory,
                0,
                {**network, **extra},
                worker="worker-b" if name == "losing-beta" else "worker-a",
            )
            for name, (deployment, directory, network, extra) in tasks.items()
        }
        others = [run for name, run in wave.items() if name != "losing-beta"]
        lost_marker = stack.loss_dir / "lost"
        wait_until(
            stack,
            lambda: lost_marker.exists() and all_final(stack, others),
            "the other tasks' rounds, and the machine loss",
        )
        assert all(s.is_completed() for s in states(stack, others).values()), stack.worker_logs()
        dead = [name for name, p in stack.workers.items() if p.poll() is not None]
        assert [stack.workers[name].pid for name in dead] == [int(lost_marker.read_text())]
        logs = stack.worker_logs()
        assert all(f"Worker '{name}' submitting" in logs for name in stack.workers)
        lost = wave["losing-beta"]
        assert not states(stack, [lost])[lost].is_final()  # nobody is left to finish it

        # What Prefect's zombie-run automation (or an operator) does: mark it crashed, run the
        # round again. The other worker reads what the lost one stored and finishes the round.
        with (
            temporary_settings(updates={PREFECT_API_URL: stack.api_url}),
            get_client(sync_client=True) as client,
        ):
            client.set_flow_run_state(lost, Crashed(message="worker lost"), force=True)
        deployment, directory, network, _ = tasks["losing-beta"]
        rerun = submit(stack, deployment, directory, 0, network)
        wait_until(stack, lambda: all_final(stack, [rerun]), "the round run again")
        assert states(stack, [rerun])[rerun].is_completed(), stack.worker_logs()

        with open_store(stack.store_url, s3_endpoint_url=stack.endpoint) as shared:
            assert shared.children("tasks/") == sorted(tasks)
            for task_id, (_, directory, network, _) in tasks.items():
                alone = sandbox(directory, **network)
                alone.run_round(0)
                assert task_records(shared, task_id) == task_records(alone.store, task_id)
                assert verify_ledger(shared, task_id).entries == 1
