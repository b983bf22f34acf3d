"""The round flow: one Prefect flow run per logical round, composed of koiitasks steps.

Nothing here decides anything: each task wraps one :class:`~koiitasks.round.RoundEngine` step and
sets its name and retries. Execute and audit fan out over shards of nodes (hundreds per task
run, never one per node: design.md has the measured reasons), on a bounded thread pool.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import PrefectFuture
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner
from prefect.utilities.annotations import quote

from flows import artifacts
from koiitasks.collector import round_collection
from koiitasks.errors import KoiiTasksError, RoundError
from koiitasks.remote import open_remote
from koiitasks.reports import (
    artifact_key,
    payouts_first,
    payouts_rest,
    payouts_table,
    round_markdown,
)
from koiitasks.round import DistributionOutcome, RoundEngine
from koiitasks.round_result import RoundResult
from koiitasks.sandbox import open_sandbox
from koiitasks.settings import load_settings
from koiitasks.task import load_task

T = TypeVar("T")

# Shard tasks run side by side, one per core: simulated nodes are CPU-bound and more threads
# only fight over the GIL (4 shards x 4 hook workers was the slowest setting measured).
SHARD_CONCURRENCY = max(2, min(4, os.cpu_count() or 2))


def unexamined(value: T) -> T:
    """``value`` as a task parameter Prefect hands over as is (``quote``), without walking it
    for futures: it visits every list, dict and model three times per task run otherwise, and
    walking node ids, assignments and the distribution outcome cost a quarter of a 10,000-node
    round (measured; docs/performance.md)."""
    return cast(T, quote(value))


@task(name="execute-shard", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=1)
def execute_shard(engine: RoundEngine, round_number: int, node_ids: list[str]) -> dict[str, int]:
    return engine.execute_shard(round_number, node_ids)


@task(name="audit-shard", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=1)
def audit_shard(
    engine: RoundEngine, round_number: int, assignments: dict[str, list[str]], auditors: list[str]
) -> int:
    return engine.audit_shard(round_number, assignments, auditors)


@task(name="distribute", cache_policy=NO_CACHE, retries=1)
def distribute(engine: RoundEngine, round_number: int) -> DistributionOutcome:
    return engine.distribute(round_number)


@task(name="settle", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=1)
def settle(engine: RoundEngine, round_number: int, outcome: DistributionOutcome) -> RoundResult:
    engine.settle(round_number, outcome)
    return engine.result(round_number, reasons=outcome.reasons)


def publish(result: RoundResult) -> None:
    """The round summary and payouts table as artifacts of this flow run (side by side)."""
    artifacts.publish(
        artifacts.markdown(
            artifact_key(result.task_id, "round-summary"),
            round_markdown(result),
            f"{result.task_id} round {result.round}",
        ),
        artifacts.table(
            artifact_key(result.task_id, "payouts"),
            payouts_table(result),
            f"{result.task_id} round {result.round}: payouts and slashes",
            first=payouts_first,
            rest=payouts_rest(result.round),
        ),
    )


#: A shard of node ids, and an audit shard: its auditors with the submitters each must audit.
Shard = list[str]
AuditSlice = tuple[dict[str, list[str]], list[str]]


@dataclass(frozen=True)
class FanOut:
    """Where a round's execute and audit shards run; the other steps run in the flow.

    Each callable returns once every shard has finished, and raises if any shard still failed
    after its retries: a round must not be tallied and paid on the answers of part of it.
    """

    execute: Callable[[RoundEngine, int, list[Shard]], None]
    audit: Callable[[RoundEngine, int, list[AuditSlice]], None]


def gather(
    futures: list[PrefectFuture[T]],
    step: str,
    *,
    where: str = "",
    error: type[KoiiTasksError] = RoundError,
) -> list[T]:
    """Every shard's result, once all have finished; one ``error`` naming how many shards of
    ``step`` failed (and the first failure) if any did."""
    results: list[T] = []
    errors: list[Exception] = []
    for future in futures:
        try:
            results.append(future.result())
        except Exception as e:  # noqa: BLE001 - collected, then raised below with the count
            errors.append(e)
    if errors:
        first = errors[0]
        raise error(
            f"{len(errors)} of {len(futures)} {step} shards failed{where} "
            f"(first: {type(first).__name__}: {first})",
            hint="run the round again: what the finished shards stored is kept, not redone",
        ) from first
    return results


def _execute_on_threads(engine: RoundEngine, round_number: int, shards: list[Shard]) -> None:
    handed = unexamined(engine)
    gather([execute_shard.submit(handed, round_number, unexamined(s)) for s in shards], "execute")


def _audit_on_threads(engine: RoundEngine, round_number: int, slices: list[AuditSlice]) -> None:
    handed = unexamined(engine)
    futures = [
        audit_shard.submit(handed, round_number, unexamined(part), unexamined(auditors))
        for part, auditors in slices
    ]
    gather(futures, "audit")


def _execute_here(engine: RoundEngine, round_number: int, shards: list[Shard]) -> None:
    for shard in shards:
        execute_shard(unexamined(engine), round_number, unexamined(shard))


def _audit_here(engine: RoundEngine, round_number: int, slices: list[AuditSlice]) -> None:
    for part, auditors in slices:
        audit_shard(unexamined(engine), round_number, unexamined(part), unexamined(auditors))


#: Shard tasks on the flow's task runner (threads), side by side.
ON_THREADS = FanOut(execute=_execute_on_threads, audit=_audit_on_threads)
#: Shard tasks one after another in the flow's own thread, so a breakpoint in a hook stops
#: there (``koiitasks run --workers 1``: the main thread for a flow called from the CLI).
IN_THIS_THREAD = FanOut(execute=_execute_here, audit=_audit_here)


def run_round_steps(
    engine: RoundEngine, round_number: int, *, fan_out: FanOut = ON_THREADS
) -> RoundResult:
    """The round's steps as Prefect tasks, shards where ``fan_out`` puts them; inside a flow."""
    with round_collection():
        return _round_steps(engine, round_number, fan_out)


def _round_steps(engine: RoundEngine, round_number: int, fan_out: FanOut) -> RoundResult:
    if engine.is_settled(round_number):
        result = engine.result(round_number, already_settled=True)
        publish(result)
        return result
    engine.open_round(round_number)
    fan_out.execute(engine, round_number, engine.shards(engine.eligible(round_number)))
    assignments = engine.plan_audits(round_number)
    # Each audit shard gets its own slice of the assignments, never the whole map.
    slices = [({a: assignments[a] for a in s}, s) for s in engine.shards(sorted(assignments))]
    fan_out.audit(engine, round_number, slices)
    handed = unexamined(engine)
    outcome = distribute(handed, round_number)
    result = settle(handed, round_number, unexamined(outcome))
    publish(result)
    return result


def round_run_name() -> str:
    """``{task}-round-{N}``: the name of a round flow run, from its parameters."""
    parameters = flow_run.parameters
    return f"{load_task(parameters['task_dir']).task_id}-round-{parameters['round_number']}"


@flow(
    name="koii-sandbox-round",
    flow_run_name=round_run_name,
    task_runner=ThreadPoolTaskRunner[Any](max_workers=SHARD_CONCURRENCY),  # type: ignore[arg-type]
    persist_result=False,
)
def sandbox_round(
    task_dir: str,
    round_number: int,
    store: str = ".koiitasks",
    nodes: int | None = None,
    seed: int | None = None,
    adversaries: dict[str, int] | None = None,
    workers: int = 4,
    s3_endpoint_url: str | None = None,
) -> str:
    """Run one round of a task on simulated nodes and time (the local sandbox).

    ``workers=1`` runs every hook in the flow's own thread (see :func:`run_round_steps`).
    Returns the round's result as JSON text (a :class:`RoundResult`): Prefect walks a returned
    dict looking for futures, which at 10,000 nodes cost seconds; a string it leaves alone.
    """
    sandbox = open_sandbox(
        task_dir,
        store=store,
        nodes=nodes,
        seed=seed,
        adversaries=adversaries,
        workers=workers,
        s3_endpoint_url=s3_endpoint_url or load_settings().s3_endpoint_url,
    )
    sandbox.begin(round_number)
    fan_out = IN_THIS_THREAD if workers == 1 else ON_THREADS
    result = run_round_steps(sandbox.engine, round_number, fan_out=fan_out)
    return result.model_dump_json()


@flow(
    name="koii-remote-round",
    flow_run_name=round_run_name,
    task_runner=ThreadPoolTaskRunner[Any](max_workers=SHARD_CONCURRENCY),  # type: ignore[arg-type]
    persist_result=False,
)
def remote_round(
    task_dir: str,
    round_number: int,
    store: str,
    key_file: str,
    skew_tolerance_slots: int = 1,
) -> str:
    """Run one round of a task on its registered remote nodes, on the wall clock (the
    result as JSON text, like :func:`sandbox_round`)."""
    remote = open_remote(
        task_dir,
        store=store,
        key_file=key_file,
        skew_tolerance_slots=skew_tolerance_slots,
        s3_endpoint_url=load_settings().s3_endpoint_url,
    )
    return run_round_steps(remote.engine, round_number).model_dump_json()
