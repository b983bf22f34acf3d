"""The events a deployed task sends to Prefect, so users can attach automations to them.

================================  ==========================  ===============================
event                             resource                    when
================================  ==========================  ===============================
``koii.node.slashed``             ``koii.node.{node}``        a node's submission failed its
                                                              audit and it lost stake
``koii.distribution.rejected``    ``koii.round.{task}.{N}``   a distribution list failed its
                                                              audit (one event per attempt)
``koii.round.missed``             ``koii.round.{task}.{N}``   a round did not run in its
                                                              windows and paid nobody
================================  ==========================  ===============================

Every event also names its task as a related resource (``koii.task.{task}``, role ``task``), so
one automation can watch one task: match ``related`` on ``koii.task.hash-puzzle``. This module
only describes the events; ``flows/deployed.py`` hands them to ``prefect.events.emit_event``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from koiitasks.round_result import RoundResult

NODE_SLASHED = "koii.node.slashed"
DISTRIBUTION_REJECTED = "koii.distribution.rejected"
ROUND_MISSED = "koii.round.missed"

# The engine words each failed attempt "attempt {i} by {builder}: {why}" (round.py).
_FAILED_ATTEMPT = re.compile(r"^attempt (\d+) by (\S+): (.+)$", re.DOTALL)


@dataclass(frozen=True)
class EventSpec:
    """One event: its name, the resource it is about, related resources and a payload."""

    event: str
    resource: dict[str, str]
    related: list[dict[str, str]] = field(default_factory=list)
    payload: dict[str, Any] = field(default_factory=dict)


def task_resource(task_id: str) -> dict[str, str]:
    return {
        "prefect.resource.id": f"koii.task.{task_id}",
        "prefect.resource.role": "task",
        "prefect.resource.name": task_id,
    }


def round_resource(task_id: str, round_number: int) -> dict[str, str]:
    return {
        "prefect.resource.id": f"koii.round.{task_id}.{round_number}",
        "prefect.resource.name": f"{task_id} round {round_number}",
        "koii.task": task_id,
        "koii.round": str(round_number),
    }


def node_resource(task_id: str, node_id: str) -> dict[str, str]:
    return {
        "prefect.resource.id": f"koii.node.{node_id}",
        "prefect.resource.name": node_id,
        "koii.task": task_id,
    }


def round_events(result: RoundResult) -> list[EventSpec]:
    """A settled round's slashes and rejected distribution lists (nothing for a rerun that
    found the round already settled: its first run sent them)."""
    if result.already_settled:
        return []
    task = result.task_id
    events = [
        EventSpec(
            event=NODE_SLASHED,
            resource=node_resource(task, node_id),
            related=[task_resource(task)],
            payload={
                "round": result.round,
                "amount": node.slash,
                "outcome": node.outcome.value,
                "reason": node.reason,
            },
        )
        for node_id, node in sorted(result.nodes.items())
        if node.slash > 0
    ]
    for reason in result.reasons:
        failed = _FAILED_ATTEMPT.match(reason)
        if failed is None:
            continue
        attempt, builder, why = failed.groups()
        events.append(
            EventSpec(
                event=DISTRIBUTION_REJECTED,
                resource=round_resource(task, result.round),
                related=[task_resource(task)],
                payload={
                    "round": result.round,
                    "attempt": int(attempt),
                    "builder": builder,
                    "reason": why,
                    "distribution_accepted": result.distribution_accepted,
                },
            )
        )
    return events


def missed_event(task_id: str, round_number: int, reason: str) -> EventSpec:
    """The event of a round recorded as missed."""
    return EventSpec(
        event=ROUND_MISSED,
        resource=round_resource(task_id, round_number),
        related=[task_resource(task_id)],
        payload={"round": round_number, "reason": reason},
    )


def emit(specs: list[EventSpec]) -> None:
    """Send events to the Prefect API of this process (a flow run's or ``koiitasks deploy``'s)."""
    from prefect.events import emit_event  # noqa: PLC0415 - Prefect only where events are sent

    for spec in specs:
        emit_event(
            event=spec.event, resource=spec.resource, related=spec.related, payload=spec.payload
        )
