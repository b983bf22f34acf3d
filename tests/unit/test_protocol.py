"""Specification of :mod:`koiitasks.protocol`: canonical JSON and signed, kind-tagged records."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from koiitasks.errors import MalformedRecord, RecordError, SignatureError
from koiitasks.identity import Keypair
from koiitasks.model import Phase
from koiitasks.protocol import (
    AcceptedSubmission,
    AuditReport,
    Body,
    DistributionAudit,
    DistributionList,
    LedgerEntry,
    NodeRegistration,
    Refusal,
    RoundRequest,
    SandboxNetwork,
    Signed,
    Submission,
    TaskRecord,
    Vote,
    canonical,
    decode,
    digest,
    sign,
)

FAST = settings(max_examples=300, deadline=None, database=None)

ORCHESTRATOR = Keypair.from_seed(b"orchestrator")
NODE = Keypair.from_seed(b"node-a")
OTHER = Keypair.from_seed(b"node-b")
TASK = "hash-puzzle"
NONCE = digest(b"nonce")
HASH = digest(b"something")

BODY_CHANGES: list[tuple[str, dict[str, Any]]] = [
    ("task_id", {"task_id": "other-task"}),
    ("round", {"round": 8}),
    ("node_id", {"node_id": OTHER.public_id}),
    ("request_slot", {"request_slot": 131}),
    ("response_slot", {"response_slot": 133}),
    ("nonce", {"nonce": HASH}),
    ("result", {"result": {"nonce": 41}}),
]

SUBMISSION = Submission(
    task_id=TASK,
    round=7,
    node_id=NODE.public_id,
    request_slot=130,
    response_slot=132,
    nonce=NONCE,
    result={"nonce": 41, "digest": "00ab", "note": "café"},
)
SIGNED_SUBMISSION = sign(SUBMISSION, NODE)
RAW_SUBMISSION = SIGNED_SUBMISSION.encode()

BODIES: list[tuple[Body, Keypair]] = [
    (
        TaskRecord(
            task_id=TASK,
            task_name="Hash Puzzle",
            config={"round_time": 10, "tags": ["pow"]},
            orchestrator=ORCHESTRATOR.public_id,
            genesis_ms=1_000_000,
            starting_slot=100,
            network=SandboxNetwork(seed=1, nodes=5, stake=10, adversaries={"lazy": 1}),
        ),
        ORCHESTRATOR,
    ),
    (NodeRegistration(task_id=TASK, node_id=NODE.public_id, stake=10**9), NODE),
    (
        RoundRequest(task_id=TASK, round=7, phase=Phase.EXECUTE, request_slot=130, nonce=NONCE),
        ORCHESTRATOR,
    ),
    (SUBMISSION, NODE),
    (
        AcceptedSubmission(
            task_id=TASK,
            round=7,
            node_id=NODE.public_id,
            submission=SIGNED_SUBMISSION,
            received_slot=133,
            completion_slots=2,
            completion_ms=1_300,
        ),
        ORCHESTRATOR,
    ),
    (
        Refusal(task_id=TASK, round=7, node_id=NODE.public_id, reason="late", received_slot=150),
        ORCHESTRATOR,
    ),
    (
        AuditReport(
            task_id=TASK,
            round=7,
            auditor=OTHER.public_id,
            nonce=NONCE,
            votes=(Vote(submitter=NODE.public_id, submission_hash=HASH, valid=False, reason="x"),),
        ),
        OTHER,
    ),
    (
        DistributionList(
            task_id=TASK,
            round=7,
            attempt=0,
            builder=OTHER.public_id,
            bounty=100,
            credits={NODE.public_id: 60, OTHER.public_id: 40},
            slashes={},
            inputs_hash=HASH,
        ),
        OTHER,
    ),
    (
        DistributionAudit(
            task_id=TASK,
            round=7,
            attempt=0,
            auditor=NODE.public_id,
            distribution_hash=HASH,
            valid=True,
        ),
        NODE,
    ),
    (
        LedgerEntry(
            task_id=TASK,
            round=7,
            sequence=3,
            prev_hash=HASH,
            bounty=100,
            distribution_accepted=True,
            distribution_hash=HASH,
            attempts=1,
            credits={NODE.public_id: 100},
            slashes={},
            round_credited=100,
            total_credited=400,
            total_slashed=0,
        ),
        ORCHESTRATOR,
    ),
]

EVERY_KIND = [pytest.param(body, keypair, id=body.kind) for body, keypair in BODIES]


def _reencode(raw: bytes, change: Any) -> bytes:
    """The canonical bytes of ``raw`` after ``change`` edits its parsed JSON in place."""
    doc = json.loads(raw)
    change(doc)
    return canonical(doc)


class TestCanonical:
    """The one JSON encoding every record uses."""

    def test_sorts_keys_at_every_depth_and_has_no_spaces(self) -> None:
        """Keys are sorted (nested ones too) and separators carry no whitespace."""
        assert canonical({"b": 1, "a": {"d": [1, 2], "c": None}}) == (
            b'{"a":{"c":null,"d":[1,2]},"b":1}'
        )

    def test_is_utf8_without_escapes(self) -> None:
        """Non-ASCII text is written as UTF-8, not as \\u escapes."""
        assert canonical({"k": "café"}) == '{"k":"café"}'.encode()

    def test_same_value_same_bytes_whatever_the_insertion_order(self) -> None:
        """Two equal mappings built in different orders encode identically."""
        assert canonical({"x": 1, "y": 2}) == canonical({"y": 2, "x": 1})

    @pytest.mark.parametrize(
        "value",
        [
            pytest.param(float("nan"), id="nan"),
            pytest.param(float("inf"), id="infinity"),
            pytest.param(float("-inf"), id="minus-infinity"),
        ],
    )
    def test_numbers_json_cannot_hold_become_null(self, value: float) -> None:
        """NaN and infinities have no JSON form; canonical writes null (hooks refuse them
        earlier, see tests/test_round.py)."""
        assert canonical({"x": value}) == b'{"x":null}'

    def test_integers_beyond_64_bits_keep_their_digits(self) -> None:
        """Integers orjson cannot hold are written exactly, by the fallback encoder."""
        assert canonical({"x": 2**70, "a": [1]}) == b'{"a":[1],"x":1180591620717411303424}'

    def test_floats_have_one_spelling(self) -> None:
        """A float is written in its shortest round-trip form."""
        assert canonical([0.1, 1e-7, 1.5]) == b"[0.1,1e-7,1.5]"

    def test_digest_is_lowercase_hex_sha256(self) -> None:
        """digest is SHA-256 in lowercase hex."""
        assert digest(b"") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


class TestSignAndDecode:
    """Signing a body and reading it back."""

    @pytest.mark.parametrize(("body", "keypair"), EVERY_KIND)
    def test_a_signed_body_decodes_to_the_same_record(self, body: Body, keypair: Keypair) -> None:
        """decode(sign(body).encode()) gives back the body, its signer and the signature."""
        signed = sign(body, keypair)
        decoded = decode(signed.encode(), type(body), where="test")
        assert decoded == signed
        assert decoded.body == body
        assert decoded.signer == keypair.public_id
        assert decoded.hash == signed.hash

    @pytest.mark.parametrize(("body", "keypair"), EVERY_KIND)
    def test_encoding_is_canonical(self, body: Body, keypair: Keypair) -> None:
        """A signed record's bytes are the canonical JSON of what they parse to."""
        raw = sign(body, keypair).encode()
        assert raw == canonical(json.loads(raw))
        assert json.loads(raw)["body"]["kind"] == body.kind

    @pytest.mark.parametrize(("body", "keypair"), EVERY_KIND)
    def test_a_body_of_one_kind_cannot_be_decoded_as_another(
        self, body: Body, keypair: Keypair
    ) -> None:
        """Decoding a validly signed record as any other kind is a MalformedRecord."""
        raw = sign(body, keypair).encode()
        others = [type(other) for other, _ in BODIES if other.kind != body.kind]
        assert len(others) == len(BODIES) - 1
        for other in others:
            with pytest.raises(MalformedRecord, match=f"not a valid {other.__name__}"):
                decode(raw, other, where="test")

    def test_signing_is_deterministic(self) -> None:
        """The same body and key give the same bytes, so seeded runs are reproducible."""
        assert sign(SUBMISSION, NODE).encode() == RAW_SUBMISSION

    def test_check_signature_false_skips_only_the_signature(self) -> None:
        """With check_signature=False a re-signed-by-nobody body still decodes if well formed."""
        raw = _reencode(RAW_SUBMISSION, lambda doc: doc["body"].update(round=8))
        assert decode(raw, Submission, where="test", check_signature=False).body.round == 8
        with pytest.raises(SignatureError):
            decode(raw, Submission, where="test")


class TestDecodeRefuses:
    """Every way a record's bytes can be wrong."""

    @pytest.mark.parametrize(
        "raw",
        [
            pytest.param(RAW_SUBMISSION.replace(b'{"body":', b'{ "body":', 1), id="added-space"),
            pytest.param(RAW_SUBMISSION + b"\n", id="trailing-newline"),
            pytest.param(
                json.dumps(json.loads(RAW_SUBMISSION), ensure_ascii=False).encode(),
                id="default-separators",
            ),
            pytest.param(
                json.dumps(
                    json.loads(RAW_SUBMISSION), separators=(",", ":"), ensure_ascii=True
                ).encode(),
                id="escaped-unicode",
            ),
            pytest.param(
                json.dumps(
                    dict(reversed(json.loads(RAW_SUBMISSION).items())),
                    separators=(",", ":"),
                    ensure_ascii=False,
                ).encode(),
                id="unsorted-keys",
            ),
            pytest.param(
                RAW_SUBMISSION.replace(b'"round":7', b'"round":7.0'), id="integer-as-float"
            ),
        ],
    )
    def test_bytes_that_are_not_canonical(self, raw: bytes) -> None:
        """A record that parses but is not byte-for-byte canonical is a MalformedRecord."""
        assert raw != RAW_SUBMISSION
        with pytest.raises(MalformedRecord, match="not in canonical form"):
            decode(raw, Submission, where="rounds/7/submissions/a.json")

    @pytest.mark.parametrize(
        ("change", "field"),
        [
            pytest.param(lambda d: d["body"].update(round=-1), "body.round", id="negative-round"),
            pytest.param(lambda d: d["body"].pop("nonce"), "body.nonce", id="missing-field"),
            pytest.param(lambda d: d["body"].update(extra=1), "body.extra", id="unknown-field"),
            pytest.param(lambda d: d["body"].update(nonce="XYZ"), "body.nonce", id="bad-digest"),
            pytest.param(
                lambda d: d["body"].update(request_slot="soon"), "body.request_slot", id="text-slot"
            ),
            pytest.param(lambda d: d.update(signer="0OIl"), "signer", id="signer-not-an-id"),
            pytest.param(lambda d: d.pop("signature"), "signature", id="no-signature"),
            pytest.param(lambda d: d["body"].update(kind="node"), "body.kind", id="other-kind"),
        ],
    )
    def test_a_wrong_schema_names_the_field(self, change: Any, field: str) -> None:
        """Canonical JSON of the wrong shape is a MalformedRecord naming the field and place."""
        raw = _reencode(RAW_SUBMISSION, change)
        with pytest.raises(MalformedRecord) as caught:
            decode(raw, Submission, where="rounds/7/submissions/a.json")
        message = str(caught.value)
        assert f": {field}: " in message
        assert "rounds/7/submissions/a.json" in message
        assert "not a valid Submission" in message

    def test_bytes_that_are_not_json(self) -> None:
        """Bytes that are not JSON at all are a MalformedRecord."""
        with pytest.raises(MalformedRecord, match="Invalid JSON"):
            decode(b"\x00garbage", Submission, where="test")

    @pytest.mark.parametrize(
        "change",
        [
            pytest.param(lambda d: d["body"].update(round=8), id="round"),
            pytest.param(lambda d: d["body"].update(response_slot=131), id="response-slot"),
            pytest.param(lambda d: d["body"]["result"].update(nonce=42), id="result"),
            pytest.param(lambda d: d.update(signer=OTHER.public_id), id="signer"),
            pytest.param(
                lambda d: d.update(signature=OTHER.sign(b"koiitasks:v1:x")), id="signature"
            ),
        ],
    )
    def test_a_changed_record_does_not_verify(self, change: Any) -> None:
        """Any well-formed change to a signed record is a SignatureError naming the record."""
        raw = _reencode(RAW_SUBMISSION, change)
        with pytest.raises(SignatureError, match=r"record rounds/7/a\.json: signature by"):
            decode(raw, Submission, where="rounds/7/a.json")

    def test_a_signature_by_the_wrong_domain_does_not_verify(self) -> None:
        """A signature of the bare body (without the koiitasks:v1: prefix) is refused."""
        bare = NODE.sign(canonical(SUBMISSION.model_dump(mode="json")))
        raw = _reencode(RAW_SUBMISSION, lambda d: d.update(signature=bare))
        with pytest.raises(SignatureError):
            decode(raw, Submission, where="test")

    @FAST
    @given(position=st.integers(min_value=0, max_value=len(RAW_SUBMISSION) - 1), data=st.data())
    def test_changing_any_single_byte_is_a_record_error(
        self, position: int, data: st.DataObject
    ) -> None:
        """Replacing any one byte makes decode raise a RecordError, never succeed or crash."""
        value = data.draw(
            st.integers(min_value=0, max_value=255).filter(lambda b: b != RAW_SUBMISSION[position])
        )
        raw = RAW_SUBMISSION[:position] + bytes([value]) + RAW_SUBMISSION[position + 1 :]
        with pytest.raises(RecordError):
            decode(raw, Submission, where="test")

    def test_flipping_any_single_bit_is_a_record_error(self) -> None:
        """Exhaustively, every one-bit change anywhere in a record is caught."""
        for position in range(len(RAW_SUBMISSION)):
            for bit in range(8):
                raw = bytearray(RAW_SUBMISSION)
                raw[position] ^= 1 << bit
                with pytest.raises(RecordError):
                    decode(bytes(raw), Submission, where=f"byte {position} bit {bit}")


class TestSignedHash:
    """How records refer to one another."""

    def test_is_the_sha256_of_the_encoding(self) -> None:
        """Signed.hash is the digest of the canonical envelope."""
        assert SIGNED_SUBMISSION.hash == digest(RAW_SUBMISSION)

    @pytest.mark.parametrize(
        "changed",
        [
            pytest.param(
                SIGNED_SUBMISSION.model_copy(update={"body": SUBMISSION.model_copy(update=change)}),
                id=name,
            )
            for name, change in BODY_CHANGES
        ]
        + [
            pytest.param(
                SIGNED_SUBMISSION.model_copy(update={"signer": OTHER.public_id}), id="signer"
            ),
            pytest.param(
                SIGNED_SUBMISSION.model_copy(update={"signature": OTHER.sign(b"x")}),
                id="signature",
            ),
        ],
    )
    def test_changes_when_any_field_changes(self, changed: Signed[Submission]) -> None:
        """Two records that differ in any field have different hashes."""
        assert changed != SIGNED_SUBMISSION
        assert changed.hash != SIGNED_SUBMISSION.hash
