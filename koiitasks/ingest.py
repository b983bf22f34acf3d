"""Ingest: the checks a node's answer must pass before the orchestrator stores it.

A reply is raw bytes from a node nobody trusts. It is accepted only when it is small enough,
canonical JSON of a submission, signed by the registered key of the node that was asked, for
this task, round and request nonce (so an old answer cannot be replayed), and stamped with a
slot inside the window that is not ahead of the orchestrator's own clock. Anything else is
refused with a reason that is stored, so a node's operator can see why it was not paid.

Votes and distribution lists are capped too (:data:`VOTE_BYTES` a vote, :data:`LIST_ENTRY_BYTES`
a node in a list, plus the envelope): a node cannot make the orchestrator parse or store more
than its share.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from koiitasks.clock import Schedule, SlotClock
from koiitasks.errors import RecordError
from koiitasks.nodes.base import Reply
from koiitasks.protocol import (
    MAX_RESULT_DEPTH,
    RoundRequest,
    Signed,
    Submission,
    canonical,
    decode,
    nested_deeper_than,
)

#: Room for the envelope around a result: ids, slots, nonce, signature.
ENVELOPE_BYTES = 2048
#: Room for one vote in an audit report or a list audit: ids, hash, verdict, a short reason.
VOTE_BYTES = 1024
#: Room for one node's credit or slash in a distribution list.
LIST_ENTRY_BYTES = 128


@dataclass(frozen=True)
class IngestRules:
    """What an answer is checked against."""

    request: Signed[RoundRequest]
    eligible: Collection[str]
    schedule: Schedule
    slot_clock: SlotClock
    max_result_bytes: int
    skew_tolerance_slots: int = 1


@dataclass(frozen=True)
class Accepted:
    submission: Signed[Submission]
    received_slot: int
    completion_slots: int
    completion_ms: int


@dataclass(frozen=True)
class Refused:
    reason: str
    received_slot: int


def ingest(reply: Reply, rules: IngestRules) -> Accepted | Refused | None:
    """Check one reply; None when the node did not answer at all."""
    if reply.data is None:
        return None
    received_slot = rules.slot_clock.slot_at_ms(reply.received_ms)
    reason = _refusal(reply, rules, received_slot)
    if isinstance(reason, str):
        return Refused(reason=reason, received_slot=received_slot)
    submission = reason
    request_slot = submission.body.request_slot
    return Accepted(
        submission=submission,
        received_slot=received_slot,
        # The orchestrator's own receipt, not the node's claim: a node cannot fake being fast.
        completion_slots=received_slot - request_slot,
        completion_ms=max(0, reply.received_ms - rules.slot_clock.ms_of_slot(request_slot)),
    )


def _refusal(reply: Reply, rules: IngestRules, received_slot: int) -> str | Signed[Submission]:
    assert reply.data is not None
    cap = rules.max_result_bytes + ENVELOPE_BYTES
    if len(reply.data) > cap:
        return f"answer is {len(reply.data)} bytes, over the {cap}-byte cap"
    try:
        submission = decode(
            reply.data, Submission, where=f"from node {reply.node_id}", check_signature=False
        )
    except RecordError as e:
        return f"malformed answer: {e.message}"
    body = submission.body
    request = rules.request.body
    if body.node_id != reply.node_id or submission.signer != reply.node_id:
        return f"answer claims to be from {body.node_id}, but node {reply.node_id} was asked"
    try:
        submission.verify()
    except RecordError:
        return "signature does not verify with the node's registered key (forged)"
    if body.node_id not in rules.eligible:
        return "node is not registered for this task with at least the minimum stake"
    if body.task_id != request.task_id:
        return f"answer is for task {body.task_id!r}, not {request.task_id!r}"
    if body.round != request.round:
        return f"answer is for round {body.round}, not {request.round} (replayed)"
    if body.nonce != request.nonce or body.request_slot != request.request_slot:
        return "answer does not carry this round's request nonce and slot (replayed)"
    window = rules.schedule.execute_window(request.round)
    if body.response_slot < body.request_slot:
        return f"answer is stamped slot {body.response_slot}, before it was asked"
    if body.response_slot >= window.end or received_slot >= window.end:
        return (
            f"answer came at slot {max(body.response_slot, received_slot)}, after the "
            f"submission window closed at slot {window.end} (late)"
        )
    if body.response_slot > received_slot + rules.skew_tolerance_slots:
        return (
            f"answer is stamped slot {body.response_slot} but arrived at slot {received_slot}: "
            f"its clock is ahead by more than {rules.skew_tolerance_slots} slot(s)"
        )
    return _result_problem(reply.data, body.result, rules.max_result_bytes) or submission


def _result_problem(data: bytes, result: object, max_result_bytes: int) -> str | None:
    """Why a well-formed answer's result cannot be stored, or None."""
    # Counting brackets is cheap; only a reply with enough of them can nest too deeply.
    brackets = data.count(b"[") + data.count(b"{")
    if brackets > MAX_RESULT_DEPTH and nested_deeper_than(result, MAX_RESULT_DEPTH):
        return f"result nests lists or dicts deeper than {MAX_RESULT_DEPTH} levels"
    size = len(canonical(result))
    if size > max_result_bytes:
        return f"result is {size} bytes, over max_result_bytes {max_result_bytes}"
    return None
