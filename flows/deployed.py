"""The deployed round flow: one run per round of a deployed task, started by its schedule.

The schedule is due at every round's first slot (``koiitasks/deployment.py``); each run works
out its round from its scheduled start, so a run that starts late still knows which round it
is. It runs the round's steps (:func:`flows.round.run_round_steps`) on the engine the task record
calls for (simulated nodes, or the registered ones over HTTP), waiting on the slot clock between
phases, then publishes the round's artifacts, the task's latest balances, and events for
slashes, rejected lists and missed rounds.

A run that starts after its round's execute window has closed does not run the round late: it
records it as missed and ends Completed, in a state named ``Missed``. That is the deployment
doing its job (the ``koii.round.missed`` event is what to alert on), so it is not a failure that
would page someone a second time for the same downtime.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.client.schemas.objects import State
from prefect.runtime import flow_run
from prefect.states import Cancelled, Completed
from prefect.task_runners import ThreadPoolTaskRunner

from flows import artifacts
from flows.round import SHARD_CONCURRENCY, run_round_steps
from koiitasks.deployment import FLOW_NAME, open_deployed_engine, plan_deployment
from koiitasks.events import emit, missed_event, round_events
from koiitasks.live import LiveEngine
from koiitasks.logs import quiet_api_outages
from koiitasks.model import Outcome
from koiitasks.recovery import NOT_A_ROUND, claim_flow_run
from koiitasks.reports import (
    BALANCES_REST,
    artifact_key,
    balances_first,
    balances_table,
    missed_markdown,
)
from koiitasks.round_result import RoundResult
from koiitasks.settings import load_settings
from koiitasks.task import load_task

# A run's process loads this module before the run starts: a server restart under it then
# logs one line per failed call, not tracebacks and whole events.
quiet_api_outages()


def _round(task_dir: str, store: str, round_number: int | None) -> int | None:
    """The given round, else the one the run was scheduled for (None: due between rounds)."""
    if round_number is not None:
        return round_number
    start = flow_run.scheduled_start_time
    plan = plan_deployment(task_dir, store, s3_endpoint_url=load_settings().s3_endpoint_url)
    return plan.round_starting_at_ms(int(start.timestamp() * 1000))


#: Runs of this process whose claim the API did not take (it was away): claimed again once the
#: run is running, when the API has answered.
_unclaimed: set[str] = set()


def _run_name() -> str:
    # The earliest point inside the run's own process: recovery reads the claim after a crash.
    if not claim_flow_run(flow_run.id):
        _unclaimed.add(str(flow_run.id))
    parameters = flow_run.parameters
    number = _round(parameters["task_dir"], parameters["store"], parameters.get("round_number"))
    task_id = load_task(parameters["task_dir"]).task_id
    return f"{task_id}-round-{number}" if number is not None else f"{task_id}-not-a-round"


def publish_balances(engine: LiveEngine) -> None:
    """The task's latest balances, under one key for the task: the newest version is current."""
    artifacts.publish(
        artifacts.table(
            artifact_key(engine.task_id, "balances"),
            balances_table(engine.ledger, engine.network),
            f"{engine.task_id}: balances and stakes after round "
            f"{engine.ledger.head.body.round if engine.ledger.head else '-'}",
            first=balances_first,
            rest=BALANCES_REST,
        )
    )


def publish_missed(engine: LiveEngine, round_number: int, reason: str) -> State[Any]:
    artifacts.publish(
        artifacts.markdown(
            artifact_key(engine.task_id, "round-summary"),
            missed_markdown(engine.task_id, round_number, reason),
            f"{engine.task_id} round {round_number}: missed",
        )
    )
    emit([missed_event(engine.task_id, m.round, m.reason) for m in engine.recorded_missed])
    return Completed(name="Missed", message=f"round {round_number} missed: {reason}")


def log_nodes(result: RoundResult) -> None:
    """One log line per node that was not paid, naming it and why."""
    logger = get_run_logger()
    logger.info("%s", result.report())
    for node_id, node in sorted(result.nodes.items()):
        if node.outcome != Outcome.APPROVED or node.slash:
            logger.warning(
                "round %d: node %s %s, credit %d, slash %d: %s",
                result.round,
                node_id,
                node.outcome.value,
                node.credit,
                node.slash,
                node.reason,
            )


@flow(
    name=FLOW_NAME,
    flow_run_name=_run_name,
    task_runner=ThreadPoolTaskRunner[Any](max_workers=SHARD_CONCURRENCY),  # type: ignore[arg-type]
    persist_result=False,
)
def deployed_round(
    task_dir: str, store: str, round_number: int | None = None, key_file: str | None = None
) -> dict[str, Any] | State[Any]:
    """Run one round of a deployed task on the wall clock (the round its schedule says).

    ``key_file`` is the path of the orchestrator's key file, for rounds on registered remote
    nodes: read here, never passed as a parameter itself.
    """
    if str(flow_run.id) in _unclaimed and claim_flow_run(flow_run.id):
        _unclaimed.discard(str(flow_run.id))
    number = _round(task_dir, store, round_number)
    if number is None:
        return Cancelled(message=NOT_A_ROUND)
    engine = open_deployed_engine(
        task_dir, store, key_file=key_file, s3_endpoint_url=load_settings().s3_endpoint_url
    )
    try:
        if engine.is_missed(number):
            record = engine.missed_record(number)
            return publish_missed(engine, number, record.reason if record else "recorded missed")
        if not engine.is_settled(number) and (why := engine.missed_reason(number)):
            missed = engine.note_missed(number, why)
            return publish_missed(engine, number, missed.reason)
        result = run_round_steps(engine, number)
        log_nodes(result)
        publish_balances(engine)
        emit(
            round_events(result)
            + [missed_event(engine.task_id, m.round, m.reason) for m in engine.recorded_missed]
        )
        return result.model_dump(mode="json")
    finally:
        engine.pool.close()


__all__ = ["deployed_round"]
