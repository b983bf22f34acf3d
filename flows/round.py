"""The round flow: one Prefect flow run per logical round, composed of koiitasks steps.

Nothing here decides anything: each task wraps one :class:`~koiitasks.round.RoundEngine` step and
sets its name and retries. Execute and audit fan out over shards of nodes (hundreds per task
run, never one per node: design.md has the measured reasons), on a bounded thread pool.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.futures import wait
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner

from koiitasks.remote import open_remote
from koiitasks.reports import artifact_key, payouts_table, round_markdown
from koiitasks.round import DistributionOutcome, RoundEngine
from koiitasks.round_result import RoundResult
from koiitasks.sandbox import open_sandbox
from koiitasks.task import load_task

# Shard tasks run side by side; every shard is itself bounded by its pool's workers.
SHARD_CONCURRENCY = 4


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
    """The round summary and payouts table as artifacts of this flow run."""
    create_markdown_artifact(
        key=artifact_key(result.task_id, "round-summary"),
        markdown=round_markdown(result),
        description=f"{result.task_id} round {result.round}",
    )
    create_table_artifact(
        key=artifact_key(result.task_id, "payouts"),
        table=payouts_table(result),
        description=f"{result.task_id} round {result.round}: payouts and slashes",
    )


def run_round_steps(engine: RoundEngine, round_number: int) -> RoundResult:
    """The round's steps as Prefect tasks; called inside a flow."""
    if engine.is_settled(round_number):
        result = engine.result(round_number, already_settled=True)
        publish(result)
        return result
    engine.open_round(round_number)
    wait(
        [
            execute_shard.submit(engine, round_number, shard)
            for shard in engine.shards(engine.eligible(round_number))
        ]
    )
    assignments = engine.plan_audits(round_number)
    wait(
        [
            audit_shard.submit(engine, round_number, assignments, shard)
            for shard in engine.shards(sorted(assignments))
        ]
    )
    outcome = distribute(engine, round_number)
    result = settle(engine, round_number, outcome)
    publish(result)
    return result


def _run_name() -> str:
    parameters = flow_run.parameters
    return f"{load_task(parameters['task_dir']).task_id}-round-{parameters['round_number']}"


@flow(
    name="koii-sandbox-round",
    flow_run_name=_run_name,
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
) -> dict[str, Any]:
    """Run one round of a task on simulated nodes and time (the local sandbox)."""
    sandbox = open_sandbox(
        task_dir, store=store, nodes=nodes, seed=seed, adversaries=adversaries, workers=workers
    )
    sandbox.begin(round_number)
    return run_round_steps(sandbox.engine, round_number).model_dump(mode="json")


@flow(
    name="koii-remote-round",
    flow_run_name=_run_name,
    task_runner=ThreadPoolTaskRunner[Any](max_workers=SHARD_CONCURRENCY),  # type: ignore[arg-type]
    persist_result=False,
)
def remote_round(
    task_dir: str,
    round_number: int,
    store: str,
    key_file: str,
    skew_tolerance_slots: int = 1,
) -> dict[str, Any]:
    """Run one round of a task on its registered remote nodes, on the wall clock."""
    remote = open_remote(
        task_dir, store=store, key_file=key_file, skew_tolerance_slots=skew_tolerance_slots
    )
    return run_round_steps(remote.engine, round_number).model_dump(mode="json")
