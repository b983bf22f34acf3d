"""Specifications of hostile node replies: whatever bytes a node sends, the round settles.

Round 0 runs honestly; in round 1 one node (or, for lists, every builder or list auditor)
answers a phase with hostile bytes, through koiitasks.testing.hostile. A hostile submission is
refused with its reason stored; a hostile vote or list is dropped (or its bad parts ignored)
and the round goes on with the others; the ledger verifies and replays, and nothing of round 0
changes. (HTTP-level hostility, such as bodies that never end, is specified with the remote
nodes.)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from koiitasks.model import Outcome
from koiitasks.protocol import Refusal, Vote, canonical, decode, sign
from koiitasks.replay import verify_task
from koiitasks.round_result import RoundResult
from koiitasks.sandbox import Sandbox
from koiitasks.storage import Layout
from koiitasks.testing import figures, sandbox, write_task
from koiitasks.testing.hostile import Answer, Call, HostilePool, Phase, resign
from koiitasks.testing.tamper import snapshot
from tests.conftest import ECHO_TASK
from tests.reliability.hostile_cases import KEY

TASK = "test-task"
LAYOUT = Layout(TASK)
ZERO = "0" * 64


@dataclass(frozen=True)
class Expect:
    """What must happen: ``refused`` (with ``fragment`` in the stored reason), ``missing``,
    ``dropped`` (the reply is not stored), ``ignored`` (stored, its bad votes not counted),
    ``recovered`` (a later list is paid) or ``unpaid`` (no list is paid, ``fragment`` says why)."""

    kind: str
    fragment: str = ""


def edit(*, body: dict[str, Any] | None = None, drop: str = "", **envelope: Any) -> Answer:
    """The honest answer as a JSON document with fields of its body set (or one dropped) and
    of its envelope set, re-encoded canonically (so only the change makes it wrong), with its
    signature left as it was."""

    def answer(call: Call) -> bytes:
        assert call.honest is not None
        doc = json.loads(call.honest)
        doc["body"].update(body or {})
        doc["body"].pop(drop, None)
        doc.update({k: v(doc[k]) if callable(v) else v for k, v in envelope.items()})
        return canonical(doc)

    return answer


def constant(data: bytes | None) -> Answer:
    """The same bytes (or silence) whatever was asked."""
    return lambda _call: data


def swap(old: bytes, new: bytes) -> Answer:
    return lambda call: (call.honest or b"").replace(old, new, 1)


def signed_by(stranger_signs: bool, **changes: object) -> Answer:
    """The honest answer (changed) signed by another key: claiming to be the node, or not."""

    def answer(call: Call) -> bytes:
        record = call.record()
        forged = sign(record.body.model_copy(update=changes), KEY)
        if not stranger_signs:
            forged = forged.model_copy(update={"signer": record.signer})
        return forged.encode()

    return answer


def other_node(call: Call) -> str:
    return sorted(n for n in call.pool.runtimes if n != call.node_id)[0]


def as_other_node(call: Call) -> bytes:
    """The honest answer re-signed by another registered node's own key."""
    other = call.pool.runtimes[other_node(call)].keypair
    return sign(call.record().body, other).encode()


def others_answer(call: Call) -> bytes:
    """Another node's own, valid answer to this request, sent as this node's."""
    return call.pool.runtimes[other_node(call)].execute(call.request).encode()


def claims_other_id(call: Call) -> bytes:
    return resign(call, node_id=other_node(call))


def padded_votes(call: Call) -> bytes:
    votes: tuple[Vote, ...] = call.record().body.votes
    return resign(call, votes=votes * 4096)


def extra_votes(call: Call) -> bytes:
    """Its votes, then the same votes flipped, then a vote on a submitter it was not given."""
    votes: tuple[Vote, ...] = call.record().body.votes
    flipped = tuple(v.model_copy(update={"valid": not v.valid}) for v in votes)
    stray = Vote(submitter=call.node_id, submission_hash=ZERO, valid=False, reason="me")
    return resign(call, votes=votes + flipped + (stray,))


def wrong_hash_votes(call: Call) -> bytes:
    votes: tuple[Vote, ...] = call.record().body.votes
    return resign(
        call,
        votes=tuple(v.model_copy(update={"submission_hash": ZERO, "valid": False}) for v in votes),
    )


def first_attempt(answer: Answer) -> Answer:
    """``answer`` for the first list only; later builders answer honestly."""
    return lambda call: answer(call) if call.record().body.attempt == 0 else call.honest


def over_paying(call: Call) -> bytes:
    listed = call.record().body
    return resign(call, credits={next(iter(listed.credits)): 10 * listed.bounty})


EXECUTE: list[tuple[str, Answer | None, Expect]] = [
    ("empty", constant(b""), Expect("refused", "malformed answer")),
    ("json-null", constant(b"null"), Expect("refused", "malformed answer")),
    ("json-list", constant(b"[]"), Expect("refused", "malformed answer")),
    ("empty-object", constant(b"{}"), Expect("refused", "malformed answer")),
    ("binary", constant(b"\x00\xff\x13\x37"), Expect("refused", "malformed answer")),
    ("invalid-utf8", swap(b'"result":{', b'"result":{"x":"\xff",'), Expect("refused", "malformed")),
    (
        "byte-order-mark",
        lambda call: b"\xef\xbb\xbf" + (call.honest or b""),
        Expect("refused", "malformed"),
    ),
    ("space-after-colon", swap(b'":', b'": '), Expect("refused", "canonical form")),
    ("trailing-newline", lambda c: (c.honest or b"") + b"\n", Expect("refused", "canonical form")),
    (
        "body-twice",
        lambda c: b'{"body":{},' + (c.honest or b"")[1:],
        Expect("refused", "malformed"),
    ),
    ("nan-literal", swap(b'"result":{', b'"result":{"x":NaN,'), Expect("refused", "malformed")),
    (
        "float-overflow",
        swap(b'"result":{', b'"result":{"x":1e400,'),
        Expect("refused", "malformed"),
    ),
    (
        "lone-surrogate",
        swap(b'"result":{', b'"result":{"x":"\\ud800",'),
        Expect("refused", "malformed"),
    ),
    (
        "nesting-under-cap",
        swap(b'"result":{', b'"result":{"x":' + b"[" * 20_000 + b"]" * 20_000 + b","),
        Expect("refused", "malformed"),
    ),
    (
        "nesting-over-cap",
        swap(b'"result":{', b'"result":{"x":' + b"[" * 60_000 + b"]" * 60_000 + b","),
        Expect("refused", "byte cap"),
    ),
    (
        "result-over-its-limit",
        lambda c: resign(c, result="x" * 65_600),
        Expect("refused", "over max_result_bytes"),
    ),
    (
        "answer-over-the-cap",
        lambda c: resign(c, result="x" * 100_000),
        Expect("refused", "byte cap"),
    ),
    ("wrong-kind", lambda c: resign(c, kind="audit-report"), Expect("refused", "malformed")),
    ("extra-field", edit(body={"evil": 1}), Expect("refused", "malformed")),
    ("missing-field", edit(drop="nonce"), Expect("refused", "malformed")),
    ("upper-case-signature", edit(signature=str.upper), Expect("refused", "malformed")),
    ("negative-slot", edit(body={"response_slot": -1}), Expect("refused", "malformed")),
    ("forged-signature", signed_by(False), Expect("refused", "forged")),
    ("stranger-signer", signed_by(True), Expect("refused", "claims to be from")),
    ("another-nodes-key", as_other_node, Expect("refused", "claims to be from")),
    ("another-nodes-id", claims_other_id, Expect("refused", "claims to be from")),
    ("another-nodes-answer", others_answer, Expect("refused", "claims to be from")),
    ("another-task", lambda c: resign(c, task_id="other-task"), Expect("refused", "is for task")),
    ("another-round", lambda c: resign(c, round=0), Expect("refused", "(replayed)")),
    ("another-nonce", lambda c: resign(c, nonce=ZERO), Expect("refused", "request nonce")),
    (
        "another-request-slot",
        lambda c: resign(c, request_slot=11),
        Expect("refused", "request nonce"),
    ),
    (
        "before-the-request",
        lambda c: resign(c, response_slot=9),
        Expect("refused", "before it was asked"),
    ),
    (
        "slot-ahead-of-the-clock",
        lambda c: resign(c, response_slot=20),
        Expect("refused", "clock is ahead"),
    ),
    ("slot-past-u64", lambda c: resign(c, response_slot=10**30), Expect("refused", "(late)")),
    ("silent", None, Expect("missing")),
]

AUDIT: list[tuple[str, Answer | None, Expect]] = [
    ("garbage", constant(b"garbage"), Expect("dropped")),
    ("empty", constant(b""), Expect("dropped")),
    ("forged-signature", signed_by(False), Expect("dropped")),
    ("stranger-signer", signed_by(True), Expect("dropped")),
    ("another-auditors-key", as_other_node, Expect("dropped")),
    ("another-round", lambda c: resign(c, round=0), Expect("dropped")),
    ("another-nonce", lambda c: resign(c, nonce=ZERO), Expect("dropped")),
    ("padded-past-its-cap", padded_votes, Expect("dropped")),
    ("silent", None, Expect("dropped")),
    ("votes-twice-and-on-strangers", extra_votes, Expect("ignored")),
    ("votes-on-another-hash", wrong_hash_votes, Expect("ignored")),
]

LISTS: list[tuple[str, Answer | None, Expect]] = [
    ("garbage", first_attempt(constant(b"garbage")), Expect("recovered")),
    ("forged-signature", first_attempt(signed_by(False)), Expect("recovered")),
    ("another-attempt", first_attempt(lambda c: resign(c, attempt=5)), Expect("recovered")),
    (
        "credits-a-stranger",
        first_attempt(lambda c: resign(c, credits={"stranger": 1})),
        Expect("recovered"),
    ),
    ("pays-past-the-bounty", first_attempt(over_paying), Expect("recovered")),
    (
        "another-inputs-hash",
        first_attempt(lambda c: resign(c, inputs_hash=ZERO)),
        Expect("recovered"),
    ),
    (
        "invented-slash",
        first_attempt(lambda c: resign(c, slashes={c.node_id: 1})),
        Expect("recovered"),
    ),
    ("every-builder-silent", None, Expect("unpaid", "no valid list")),
    ("every-builder-overpays", over_paying, Expect("unpaid", "more than the round's bounty")),
]

LIST_VOTES: list[tuple[str, Answer | None, Expect]] = [
    ("garbage", constant(b"garbage"), Expect("unpaid", "no auditor answered")),
    ("forged-signature", signed_by(False), Expect("unpaid", "no auditor answered")),
    (
        "vote-on-another-list",
        lambda c: resign(c, distribution_hash=ZERO),
        Expect("unpaid", "no auditor answered"),
    ),
    ("another-round", lambda c: resign(c, round=0), Expect("unpaid", "no auditor answered")),
    (
        "reason-of-a-megabyte",
        lambda c: resign(c, reason="x" * 1_000_000),
        Expect("unpaid", "no auditor answered"),
    ),
]

CASES = [
    pytest.param(phase, answer, expect, id=f"{phase}-{name}")
    for phase, table in (
        ("execute", EXECUTE),
        ("audit", AUDIT),
        ("distribution", LISTS),
        ("distribution-audit", LIST_VOTES),
    )
    for name, answer, expect in table
]


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_task(tmp_path_factory.mktemp("replies") / "echo", ECHO_TASK)


def play(
    task_dir: Path, phase: Phase, answer: Answer | None
) -> tuple[Sandbox, str, RoundResult, dict[str, bytes]]:
    """Round 0 honestly, then round 1 with the hostile answer: the sandbox, the hostile node,
    round 1's result and the store as round 0 left it."""
    box = sandbox(task_dir, nodes=7, seed=9, workers=1)
    box.run_round(0)
    settled = snapshot(box.store)
    nodes = sorted(box.network.nodes)
    hostile = nodes if phase in {"distribution", "distribution-audit"} else nodes[:1]
    HostilePool.install(box.engine, {n: {phase: answer or constant(None)} for n in hostile})
    return box, nodes[0], box.run_round(1), settled


class TestHostileReplies:
    """Whatever a node answers, the round settles by the rules and nothing stored changes."""

    @pytest.mark.parametrize(("phase", "answer", "expect"), CASES)
    def test_the_round_settles_and_the_reply_gets_what_it_deserves(
        self, task_dir: Path, phase: Phase, answer: Answer | None, expect: Expect
    ) -> None:
        """The hostile reply is refused with its reason, dropped, or has its bad parts ignored;
        everyone else's outcome is as in an honest round; the ledger verifies and replays."""
        box, node, result, settled = play(task_dir, phase, answer)
        others = [n for n_id, n in result.nodes.items() if n_id != node]
        if expect.kind == "refused":
            refusal = decode(box.store.read(LAYOUT.refusal(1, node)), Refusal, where="refusal")
            assert result.nodes[node].outcome == Outcome.REFUSED
            assert expect.fragment in refusal.body.reason
            assert expect.fragment in result.nodes[node].reason
        elif expect.kind == "missing":
            assert result.nodes[node].outcome == Outcome.MISSING
        elif expect.kind in {"dropped", "ignored"}:
            stored = box.store.read_or_none(LAYOUT.audit(1, node))
            assert (stored is not None) == (expect.kind == "ignored")
            assert result.nodes[node].outcome == Outcome.APPROVED
        elif expect.kind == "recovered":
            assert result.distribution_accepted
            assert result.attempts == 2
        else:
            assert not result.distribution_accepted
            assert result.credited == 0
            assert any(expect.fragment in reason for reason in result.reasons)
        if expect.kind != "unpaid":
            assert all(n.outcome == Outcome.APPROVED and n.credit > 0 for n in others)
        assert all(box.store.read(key) == data for key, data in settled.items())
        assert verify_task(box.store, TASK).rounds_replayed == 2
        figures.record("hostile_inputs")


def test_every_phase_has_hostile_replies() -> None:
    """Each phase a node answers is in the corpus, with at least five replies."""
    phases = [case.values[0] for case in CASES]
    assert {phase: phases.count(phase) >= 5 for phase in set(phases)} == dict.fromkeys(
        ("execute", "audit", "distribution", "distribution-audit"), True
    )
