"""The wire between an orchestrator and remote nodes: paths, call envelopes, caps, windows.

An orchestrator reaches a node identity at ``{url}/nodes/{node_id}/{phase}``, where ``url`` is
the base URL of the node's signed registration. One process usually serves one identity; a
process may serve many (benchmarks), and the node id in the path picks one. Every call is a POST
of canonical JSON, the orchestrator's signed task record and signed request plus what the phase
needs::

    {"task": <signed TaskRecord>, "request": <signed RoundRequest>}          execute
    ... + {"submissions": [<signed AcceptedSubmission>, ...]}               audit
    ... + {"inputs": <DistributionInputs>, "attempt": 0}                    distribution
    ... + {"inputs": <DistributionInputs>, "distribution": <signed list>}   distribution-audit

The task record tells the node the task's genesis and starting slot, so a node needs no access
to the orchestrator's store: it trusts the record because the orchestrator's key signed it. A
node answers 200 with the bytes of its signed record, or an error status with
``{"error": "<why>"}``.

Each phase is open for a window of slots on both sides' clocks (:func:`phase_window`): nodes
refuse calls outside it, and the orchestrator stops waiting for an answer when it closes.
"""

from __future__ import annotations

import json

from pydantic import Field, ValidationError

from koiitasks.clock import Schedule, Window
from koiitasks.distribution import DistributionInputs
from koiitasks.errors import RequestRefused
from koiitasks.ingest import ENVELOPE_BYTES
from koiitasks.model import FrozenModel, Phase
from koiitasks.protocol import (
    AcceptedSubmission,
    DistributionList,
    RoundRequest,
    Signed,
    TaskRecord,
    canonical,
)

#: The largest call a node reads: Koii's node app accepts 50 MB bodies. Distribution calls carry
#: every approved result, so they are the large ones.
MAX_CALL_BYTES = 50 * 1024 * 1024

#: Room for an answer that is not a submission: an audit report, a list, a vote.
VOTE_REPLY_BYTES = 64 * 1024
#: Added per submission audited (one vote) and per approved node (one credit).
PER_ITEM_BYTES = 1024

#: The phases a node is called for, in path form.
CALLABLE = (Phase.EXECUTE, Phase.AUDIT, Phase.DISTRIBUTION, Phase.DISTRIBUTION_AUDIT)


class Call(FrozenModel):
    """What every call carries: the task record and the request, both signed by the
    orchestrator."""

    task: Signed[TaskRecord]
    request: Signed[RoundRequest]


class ExecuteCall(Call):
    """Run the execute hook and answer with a signed, slot-stamped submission."""


class AuditCall(Call):
    """Vote on the accepted submissions assigned to this auditor."""

    submissions: tuple[Signed[AcceptedSubmission], ...]


class DistributionCall(Call):
    """Build the round's distribution list from these inputs."""

    inputs: DistributionInputs
    attempt: int = Field(ge=0)


class DistributionAuditCall(Call):
    """Recompute the list from the inputs and vote on it."""

    inputs: DistributionInputs
    distribution: Signed[DistributionList]


CALLS: dict[Phase, type[Call]] = {
    Phase.EXECUTE: ExecuteCall,
    Phase.AUDIT: AuditCall,
    Phase.DISTRIBUTION: DistributionCall,
    Phase.DISTRIBUTION_AUDIT: DistributionAuditCall,
}


def node_path(node_id: str, phase: Phase) -> str:
    """The path of one identity's endpoint for a phase."""
    return f"/nodes/{node_id}/{phase.value}"


def call_url(base_url: str, node_id: str, phase: Phase) -> str:
    """The URL an orchestrator posts a phase's call to."""
    return base_url.rstrip("/") + node_path(node_id, phase)


def encode_call(call: Call) -> bytes:
    """The canonical bytes of a call."""
    return canonical(call.model_dump(mode="json"))


def decode_call(raw: bytes, phase: Phase) -> Call:
    """Parse a call for ``phase``; raise :class:`RequestRefused` (400) saying what is wrong."""
    try:
        return CALLS[phase].model_validate_json(raw)
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) or "body"
        raise RequestRefused(
            f"malformed {phase.value} call: {loc}: {first['msg']}", status=400
        ) from e


def phase_window(schedule: Schedule, phase: Phase, round_number: int) -> Window:
    """The slots during which a phase of a round is open, on either side.

    The request of each phase is stamped with the slot it goes out in: its window's first, or a
    later one when the orchestrator got to it late. The distribution phase stays open through
    the distribution audit window, because a rejected list is rebuilt by another node while the
    audit window runs.
    """
    if phase is Phase.EXECUTE:
        return schedule.execute_window(round_number)
    if phase is Phase.AUDIT:
        return schedule.audit_window_of(round_number)
    if phase is Phase.DISTRIBUTION:
        return Window(
            schedule.distribution_window_of(round_number).start,
            schedule.distribution_audit_window_of(round_number).end,
        )
    if phase is Phase.DISTRIBUTION_AUDIT:
        return schedule.distribution_audit_window_of(round_number)
    raise ValueError(f"phase {phase.value!r} has no calls")


def reply_cap(phase: Phase, *, max_result_bytes: int, items: int = 0) -> int:
    """The most bytes an orchestrator reads of a node's answer to a phase's call.

    An execute answer may be as large as ingest accepts; votes and lists grow with the number of
    submissions audited or nodes approved (``items``).
    """
    if phase is Phase.EXECUTE:
        return max_result_bytes + ENVELOPE_BYTES
    return VOTE_REPLY_BYTES + PER_ITEM_BYTES * items


def error_body(message: str, hint: str | None = None) -> bytes:
    """A node's error answer."""
    return canonical({"error": message, **({"hint": hint} if hint else {})})


def error_text(data: bytes, *, limit: int = 300) -> str:
    """The message of a node's error answer, or the start of whatever it sent instead."""
    try:
        doc = json.loads(data)
        text = str(doc["error"]) if isinstance(doc, dict) and "error" in doc else data.decode()
    except (ValueError, UnicodeDecodeError):
        text = data[:limit].decode("utf-8", errors="replace")
    return text if len(text) <= limit else text[:limit] + "..."
