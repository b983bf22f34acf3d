"""The round flow with its execute and audit shards on a Dask cluster, through prefect-dask.

The same steps as :mod:`flows.round`, but each shard task runs in a Dask worker process, on this
machine or another: it gets a :class:`~koiitasks.cluster.SandboxSpec` and the shard's node ids,
never the engine (:mod:`koiitasks.cluster` says why and how). The orchestrator keeps the steps
that decide (open, plan, distribute, settle) and re-reads the store after each fan-out.

The flow takes the scheduler address as a parameter or from ``KOII_DASK_ADDRESS`` when the run
starts, so a deployment picks up the cluster of the machine it runs on; ``local[:N]`` starts a
cluster of N worker processes for the one run. Dask workers report their task runs to the
Prefect API, so the run needs a real Prefect server (``PREFECT_API_URL``).

Deploy it with a module entrypoint, ``flows.dask_round.dask_round``
(``EntrypointType.MODULE_PATH``): every shard task carries the flow run's context, which holds
this flow, and Dask (scheduler and workers) unpickles it by module name. Loaded by path, as
``prefect deploy flows/dask_round.py:dask_round`` does, the module is ``dask_round``, which no
other process can import (seen on a process worker). The file is not named ``dask.py``: loaded
by path, ``flows/`` is on ``sys.path``, and it hid the real ``dask`` from prefect-dask.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.settings import PREFECT_API_URL
from prefect.task_runners import ThreadPoolTaskRunner

from flows.round import AuditSlice, FanOut, Shard, gather, round_run_name, run_round_steps
from koiitasks import cluster
from koiitasks.cluster import RoundMoment, SandboxSpec
from koiitasks.errors import ClusterError, ConfigError
from koiitasks.round import RoundEngine
from koiitasks.settings import load_settings

if TYPE_CHECKING:
    from prefect.futures import PrefectFuture
    from prefect_dask.task_runners import DaskTaskRunner

T = TypeVar("T")


@task(name="execute-shard", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=1)
def execute_shard(spec: SandboxSpec, moment: RoundMoment, node_ids: list[str]) -> dict[str, int]:
    return cluster.execute_shard(spec, moment, node_ids)


@task(name="audit-shard", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=1)
def audit_shard(
    spec: SandboxSpec, moment: RoundMoment, assignments: dict[str, list[str]], auditors: list[str]
) -> int:
    return cluster.audit_shard(spec, moment, assignments, auditors)


def _gather(futures: list[PrefectFuture[T]], step: str) -> list[T]:
    return gather(futures, step, where=" on the Dask cluster", error=ClusterError)


def on_dask(runner: DaskTaskRunner, spec: SandboxSpec) -> FanOut:
    """Shards as jobs on the runner's cluster. Workers store what they compute, so after each
    fan-out the engine forgets what it listed of the round and re-reads the store."""

    def execute(engine: RoundEngine, round_number: int, shards: list[Shard]) -> None:
        moment = RoundMoment.of(engine, round_number)
        jobs = [{"spec": spec, "moment": moment, "node_ids": shard} for shard in shards]
        _gather([runner.submit(execute_shard, job) for job in jobs], "execute")
        engine.forget_round_cache(round_number)

    def audit(engine: RoundEngine, round_number: int, slices: list[AuditSlice]) -> None:
        moment = RoundMoment.of(engine, round_number)
        jobs = [
            {"spec": spec, "moment": moment, "assignments": part, "auditors": auditors}
            for part, auditors in slices
        ]
        _gather([runner.submit(audit_shard, job) for job in jobs], "audit")
        engine.forget_round_cache(round_number)

    return FanOut(execute=execute, audit=audit)


@flow(
    name="koii-dask-round",
    flow_run_name=round_run_name,
    # Shards go to the Dask runner below; the flow's own runner has nothing to fan out.
    task_runner=ThreadPoolTaskRunner[Any](max_workers=1),  # type: ignore[arg-type]
    persist_result=False,
)
def dask_round(
    task_dir: str,
    round_number: int,
    store: str = ".koiitasks",
    nodes: int | None = None,
    seed: int | None = None,
    adversaries: dict[str, int] | None = None,
    workers: int = 4,
    shard_size: int = cluster.DASK_SHARD_SIZE,
    s3_endpoint_url: str | None = None,
    dask_address: str | None = None,
) -> str:
    """Run one sandbox round with its shards on a Dask cluster; the result as JSON text.

    ``dask_address`` is ``tcp://HOST:PORT`` of a running scheduler, or ``local[:N]``; when
    omitted, ``KOII_DASK_ADDRESS`` as the run starts.
    """
    settings = load_settings()
    address = dask_address or settings.dask_address
    if not address:
        raise ConfigError(
            "no Dask scheduler to run the round's shards on",
            hint="set KOII_DASK_ADDRESS=tcp://HOST:8786 (or local:2 to try it on this machine)",
        )
    cluster.check_prefect_api(PREFECT_API_URL.value())
    cluster.check_shared_store(store)
    spec = SandboxSpec(
        task_dir=task_dir,
        store=store,
        nodes=nodes,
        seed=seed,
        adversaries=adversaries,
        workers=workers,
        shard_size=shard_size,
        s3_endpoint_url=s3_endpoint_url or settings.s3_endpoint_url,
    )
    sandbox = spec.open()
    sandbox.begin(round_number)
    with cluster.scheduler(address) as scheduler, cluster.dask_runner(scheduler) as runner:
        fan_out = on_dask(runner, spec)
        return run_round_steps(sandbox.engine, round_number, fan_out=fan_out).model_dump_json()
