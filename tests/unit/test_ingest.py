"""Specification of :mod:`koiitasks.ingest`: the checks a node's answer passes to be stored.

The setup is built by hand: round 3 of a schedule that starts at slot 100 with 10-slot rounds and
a 4-slot submission window, so the request is at slot 130 and answers are due before slot 144.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from koiitasks.clock import Schedule, SimulatedClock, SlotClock
from koiitasks.identity import Keypair
from koiitasks.ingest import ENVELOPE_BYTES, Accepted, IngestRules, Refused, ingest
from koiitasks.model import Phase
from koiitasks.nodes.base import Reply
from koiitasks.protocol import (
    MAX_RESULT_DEPTH,
    AcceptedSubmission,
    RoundRequest,
    Submission,
    canonical,
    decode,
    digest,
    sign,
)

TASK = "hash-puzzle"
GENESIS_MS = 1_000_000
SLOT_MS = 400
MAX_RESULT_BYTES = 256
SCHEDULE = Schedule(starting_slot=100, round_time=10, submission_window=4, audit_window=4)
ROUND = 3
REQUEST_SLOT = SCHEDULE.round_start(ROUND)  # 130
WINDOW_END = SCHEDULE.execute_window(ROUND).end  # 144
NONCE = digest(b"round-3-nonce")

ORCHESTRATOR = Keypair.from_seed(b"orchestrator")
NODE = Keypair.from_seed(b"node-a")
OTHER = Keypair.from_seed(b"node-b")
STRANGER = Keypair.from_seed(b"unregistered")
REQUEST = sign(
    RoundRequest(
        task_id=TASK, round=ROUND, phase=Phase.EXECUTE, request_slot=REQUEST_SLOT, nonce=NONCE
    ),
    ORCHESTRATOR,
)


def _ms(slot: int, offset: int = 0) -> int:
    """An instant ``offset`` ms into ``slot``."""
    return GENESIS_MS + slot * SLOT_MS + offset


def _answer(keypair: Keypair = NODE, **changes: Any) -> bytes:
    """A node's signed answer to REQUEST, honest unless ``changes`` say otherwise."""
    fields: dict[str, Any] = {
        "task_id": TASK,
        "round": ROUND,
        "node_id": keypair.public_id,
        "request_slot": REQUEST_SLOT,
        "response_slot": REQUEST_SLOT + 2,
        "nonce": NONCE,
        "result": {"nonce": 41, "digest": "00ab"},
    }
    return sign(Submission(**{**fields, **changes}), keypair).encode()


def _nested(depth: int) -> object:
    """A result of ``depth`` lists, one inside the other."""
    result: object = 1
    for _ in range(depth):
        result = [result]
    return result


def _forged() -> bytes:
    """NODE's answer, claiming NODE as signer, but signed by STRANGER."""
    body = decode(_answer(), Submission, where="test").body
    return sign(body, STRANGER).model_copy(update={"signer": NODE.public_id}).encode()


def _wrong_schema() -> bytes:
    """Canonical JSON of an answer whose round is negative."""
    doc = json.loads(_answer())
    doc["body"]["round"] = -1
    return canonical(doc)


@pytest.fixture
def rules() -> IngestRules:
    """The orchestrator's rules for round 3: NODE and OTHER are registered with enough stake."""
    return IngestRules(
        request=REQUEST,
        eligible=frozenset({NODE.public_id, OTHER.public_id}),
        schedule=SCHEDULE,
        slot_clock=SlotClock(SimulatedClock(GENESIS_MS), genesis_ms=GENESIS_MS, slot_ms=SLOT_MS),
        max_result_bytes=MAX_RESULT_BYTES,
    )


class TestAccepted:
    """Answers that pass every check."""

    def test_an_honest_answer_is_accepted_with_its_completion_time(
        self, rules: IngestRules
    ) -> None:
        """An honest answer in the window is accepted, with the slots and ms from the request to
        its arrival, as the orchestrator measured them."""
        data = _answer(response_slot=132)
        checked = ingest(Reply(NODE.public_id, data, _ms(133, 100)), rules)
        assert isinstance(checked, Accepted)
        assert checked.submission == decode(data, Submission, where="t")
        assert checked.submission.signer == NODE.public_id
        assert checked.received_slot == 133
        assert checked.completion_slots == 3
        assert checked.completion_ms == 3 * SLOT_MS + 100

    def test_a_node_cannot_claim_to_be_faster_than_it_arrived(self, rules: IngestRules) -> None:
        """Completion time comes from the arrival, not from the slot the node stamped."""
        data = _answer(response_slot=REQUEST_SLOT)  # claims it answered at once
        checked = ingest(Reply(NODE.public_id, data, _ms(REQUEST_SLOT + 3)), rules)
        assert isinstance(checked, Accepted)
        assert checked.completion_slots == 3

    @pytest.mark.parametrize(
        ("response_slot", "received_ms"),
        [
            pytest.param(REQUEST_SLOT, _ms(REQUEST_SLOT), id="answered-at-once"),
            pytest.param(134, _ms(133), id="clock-ahead-within-tolerance"),
            pytest.param(WINDOW_END - 1, _ms(WINDOW_END, -1), id="last-ms-of-the-window"),
        ],
    )
    def test_boundary_answers_are_accepted(
        self, rules: IngestRules, response_slot: int, received_ms: int
    ) -> None:
        """Answers at the edges of what is allowed are still accepted."""
        checked = ingest(
            Reply(NODE.public_id, _answer(response_slot=response_slot), received_ms), rules
        )
        assert isinstance(checked, Accepted)
        assert checked.completion_slots == checked.received_slot - REQUEST_SLOT

    def test_a_result_nested_exactly_max_result_depth_deep_is_accepted(
        self, rules: IngestRules
    ) -> None:
        """The nesting limit is inclusive, and what is accepted can be stored and read back."""
        data = _answer(result={"a": _nested(MAX_RESULT_DEPTH - 1)})
        checked = ingest(Reply(NODE.public_id, data, _ms(133)), rules)
        assert isinstance(checked, Accepted)
        record = sign(
            AcceptedSubmission(
                task_id=TASK,
                round=ROUND,
                node_id=NODE.public_id,
                submission=checked.submission,
                received_slot=checked.received_slot,
                completion_slots=checked.completion_slots,
                completion_ms=checked.completion_ms,
            ),
            STRANGER,
        )
        assert decode(record.encode(), AcceptedSubmission, where="t") == record

    def test_a_result_of_exactly_max_result_bytes_is_accepted(self, rules: IngestRules) -> None:
        """The result limit is inclusive."""
        result = "x" * (MAX_RESULT_BYTES - 2)  # two quote characters make it MAX_RESULT_BYTES
        assert len(canonical(result)) == MAX_RESULT_BYTES
        checked = ingest(Reply(NODE.public_id, _answer(result=result), _ms(133)), rules)
        assert isinstance(checked, Accepted)


class TestNoAnswer:
    """Silence."""

    def test_a_node_that_did_not_answer_gives_none(self, rules: IngestRules) -> None:
        """A reply without data is neither accepted nor refused: the node is missing."""
        assert ingest(Reply(NODE.public_id, None, _ms(150), error="timed out"), rules) is None


REFUSED = [
    pytest.param(
        b"x" * (MAX_RESULT_BYTES + ENVELOPE_BYTES + 1),
        NODE,
        _ms(133),
        [f"answer is {MAX_RESULT_BYTES + ENVELOPE_BYTES + 1} bytes", "-byte cap"],
        id="oversized-bytes",
    ),
    pytest.param(b"not json", NODE, _ms(133), ["malformed answer", "Invalid JSON"], id="not-json"),
    pytest.param(
        _wrong_schema(), NODE, _ms(133), ["malformed answer", "body.round"], id="wrong-schema"
    ),
    pytest.param(
        sign(REQUEST.body, NODE).encode(),
        NODE,
        _ms(133),
        ["malformed answer", "not a valid Submission"],
        id="another-kind-of-record",
    ),
    pytest.param(
        _answer() + b" ", NODE, _ms(133), ["malformed answer", "canonical"], id="not-canonical"
    ),
    pytest.param(
        _answer(OTHER),
        NODE,
        _ms(133),
        [f"claims to be from {OTHER.public_id}", f"node {NODE.public_id} was asked"],
        id="claims-another-node-id",
    ),
    pytest.param(
        _answer(node_id=OTHER.public_id),
        NODE,
        _ms(133),
        [f"claims to be from {OTHER.public_id}"],
        id="body-names-another-node",
    ),
    pytest.param(_forged(), NODE, _ms(133), ["signature does not verify", "forged"], id="forged"),
    pytest.param(
        _answer(result={"a": _nested(MAX_RESULT_DEPTH)}),
        NODE,
        _ms(133),
        [f"result nests lists or dicts deeper than {MAX_RESULT_DEPTH} levels"],
        id="nested-too-deep-to-read-back",
    ),
    pytest.param(
        _answer(STRANGER),
        STRANGER,
        _ms(133),
        ["not registered for this task with at least the minimum stake"],
        id="unregistered-or-under-staked",
    ),
    pytest.param(
        _answer(task_id="other-task"),
        NODE,
        _ms(133),
        ["for task 'other-task', not 'hash-puzzle'"],
        id="other-task",
    ),
    pytest.param(
        _answer(round=ROUND - 1),
        NODE,
        _ms(133),
        [f"for round {ROUND - 1}, not {ROUND}", "replayed"],
        id="other-round-replayed",
    ),
    pytest.param(
        _answer(nonce=digest(b"last round's nonce")),
        NODE,
        _ms(133),
        ["does not carry this round's request nonce", "replayed"],
        id="wrong-nonce-replayed",
    ),
    pytest.param(
        _answer(request_slot=REQUEST_SLOT - 10, response_slot=REQUEST_SLOT - 8),
        NODE,
        _ms(133),
        ["does not carry this round's request nonce and slot", "replayed"],
        id="wrong-request-slot",
    ),
    pytest.param(
        _answer(response_slot=REQUEST_SLOT - 1),
        NODE,
        _ms(133),
        [f"stamped slot {REQUEST_SLOT - 1}, before it was asked"],
        id="stamped-before-the-request",
    ),
    pytest.param(
        _answer(response_slot=WINDOW_END - 1),
        NODE,
        _ms(WINDOW_END),
        [f"came at slot {WINDOW_END}", f"window closed at slot {WINDOW_END} (late)"],
        id="late-arrival",
    ),
    pytest.param(
        _answer(response_slot=WINDOW_END),
        NODE,
        _ms(WINDOW_END - 1),
        [f"came at slot {WINDOW_END}", "(late)"],
        id="late-stamp",
    ),
    pytest.param(
        _answer(response_slot=136),
        NODE,
        _ms(134),
        ["stamped slot 136 but arrived at slot 134", "ahead by more than 1 slot(s)"],
        id="clock-ahead-beyond-tolerance",
    ),
    pytest.param(
        _answer(result="x" * MAX_RESULT_BYTES),
        NODE,
        _ms(133),
        [f"result is {MAX_RESULT_BYTES + 2} bytes, over max_result_bytes {MAX_RESULT_BYTES}"],
        id="result-over-max-result-bytes",
    ),
]


class TestRefused:
    """Answers that fail a check, each with a reason the node's operator can act on."""

    @pytest.mark.parametrize(("data", "asked", "received_ms", "fragments"), REFUSED)
    def test_is_refused_with_a_reason_that_says_what_was_wrong(
        self,
        rules: IngestRules,
        data: bytes,
        asked: Keypair,
        received_ms: int,
        fragments: list[str],
    ) -> None:
        """A bad answer is Refused, stamped with the slot it arrived in, and says why."""
        checked = ingest(Reply(asked.public_id, data, received_ms), rules)
        assert isinstance(checked, Refused), checked
        assert checked.received_slot == rules.slot_clock.slot_at_ms(received_ms)
        for fragment in fragments:
            assert fragment in checked.reason

    def test_the_skew_tolerance_is_configurable(self, rules: IngestRules) -> None:
        """With no tolerance, an answer stamped one slot ahead of its arrival is refused."""
        strict = IngestRules(
            request=rules.request,
            eligible=rules.eligible,
            schedule=rules.schedule,
            slot_clock=rules.slot_clock,
            max_result_bytes=rules.max_result_bytes,
            skew_tolerance_slots=0,
        )
        data = _answer(response_slot=134)
        assert isinstance(ingest(Reply(NODE.public_id, data, _ms(133)), rules), Accepted)
        refused = ingest(Reply(NODE.public_id, data, _ms(133)), strict)
        assert isinstance(refused, Refused)
        assert "ahead by more than 0 slot(s)" in refused.reason

    def test_an_answer_replayed_into_the_next_round_is_refused(self, rules: IngestRules) -> None:
        """Round 3's accepted answer, sent again for round 4, is refused as a replay."""
        next_request = sign(
            RoundRequest(
                task_id=TASK,
                round=ROUND + 1,
                phase=Phase.EXECUTE,
                request_slot=SCHEDULE.round_start(ROUND + 1),
                nonce=digest(b"round-4-nonce"),
            ),
            ORCHESTRATOR,
        )
        next_rules = IngestRules(
            request=next_request,
            eligible=rules.eligible,
            schedule=rules.schedule,
            slot_clock=rules.slot_clock,
            max_result_bytes=rules.max_result_bytes,
        )
        data = _answer()
        assert isinstance(ingest(Reply(NODE.public_id, data, _ms(133)), rules), Accepted)
        replayed = ingest(Reply(NODE.public_id, data, _ms(143)), next_rules)
        assert isinstance(replayed, Refused)
        assert "replayed" in replayed.reason
