"""The signed records that cross trust boundaries, and how they are encoded.

Every record is canonical JSON (sorted keys, no spaces, UTF-8, no NaN) of a signed envelope::

    {"body": {"kind": "submission", ...}, "signature": "<base58>", "signer": "<node id>"}

The signature covers ``b"koiitasks:v1:" + canonical(body)``; ``kind`` inside the body keeps a
record of one kind from being passed off as another. A record is only accepted when its bytes
are exactly the canonical encoding of what they parse to, so no byte can change unnoticed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any, Generic, Literal, Self, TypeVar, cast

import orjson
from pydantic import JsonValue, ValidationError

from koiitasks.errors import MalformedRecord, SignatureError
from koiitasks.identity import Keypair, verify
from koiitasks.model import (
    Amount,
    Digest,
    FrozenModel,
    NodeId,
    Phase,
    RoundNumber,
    SignatureHex,
    Slot,
    TaskId,
)

_DOMAIN = b"koiitasks:v1:"
ZERO_DIGEST = "0" * 64


#: How deeply a node's result may nest lists and dicts. A record wraps its result a few levels
#: deeper, and pydantic's JSON parser stops at 200 levels: a deeper result could be signed and
#: stored, then never read back.
MAX_RESULT_DEPTH = 100


def nested_deeper_than(value: object, limit: int) -> bool:
    """Whether lists, tuples and dicts in ``value`` nest more than ``limit`` levels deep (looked
    at without recursion, so no depth makes it fail)."""
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list | tuple):
            if depth > limit:
                return True
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return False


def canonical(obj: Any) -> bytes:
    """The canonical JSON encoding of ``obj``: keys sorted, no spaces, UTF-8.

    orjson writes it (14x faster than the json module, measured); integers beyond 64 bits,
    which orjson refuses, fall back to the json module. NaN and infinities become ``null``.
    Which encoder runs depends only on the value, so the bytes are a function of the value.
    """
    try:
        return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)
    except TypeError:
        return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def digest(data: bytes) -> str:
    """SHA-256 of ``data`` in lowercase hex."""
    return hashlib.sha256(data).hexdigest()


class Body(FrozenModel):
    """Base of every signed body; ``kind`` names the record type."""

    kind: str


B = TypeVar("B", bound=Body)


_ENVELOPE_HEAD = b'{"body":'
_SIGNATURE_KEY = b',"signature":"'


class Signed(FrozenModel, Generic[B]):
    """A body, who signed it, and the signature.

    Records are immutable, so what is costly is worked out once and remembered: the canonical
    bytes, the hash, and that the signature verified. A copy made with :meth:`model_copy`
    starts without any of them.

    They are kept in the dict pydantic keeps for private attributes, without declaring any:
    a model with private attributes has pydantic initialise them on every validation, a Python
    call that was 4% of a 10,000-node round's GIL time (measured), and pydantic's own
    ``__getattr__`` and ``__setattr__`` cost microseconds a call.
    """

    body: B
    signer: NodeId
    signature: SignatureHex

    def _memo(self) -> dict[str, Any]:
        """The remembered values, made on first use."""
        memo: dict[str, Any] | None = self.__pydantic_private__
        if memo is None:
            memo = _fresh_memo(None)
            object.__setattr__(self, "__pydantic_private__", memo)
        return memo

    def encode(self) -> bytes:
        """Canonical bytes of the whole envelope: ``{"body":...,"signature":...,"signer":...}``."""
        private = self._memo()
        raw: bytes | None = private["_raw"]
        if raw is None:
            raw = private["_raw"] = _envelope(
                canonical(self.body.model_dump(mode="json")), self.signature, self.signer
            )
        return raw

    def body_bytes(self) -> bytes:
        """Canonical bytes of the body alone (what the signature covers, less the domain)."""
        raw = self.encode()
        # Nested records may hold "signature" keys too; the envelope's own is the last one.
        return raw[len(_ENVELOPE_HEAD) : raw.rfind(_SIGNATURE_KEY)]

    @property
    def hash(self) -> str:
        """SHA-256 of the canonical envelope: how other records refer to this one."""
        private = self._memo()
        value: str | None = private["_hash"]
        if value is None:
            value = private["_hash"] = digest(self.encode())
        return value

    def verify(self) -> None:
        """Raise :class:`~koiitasks.errors.SignatureError` unless ``signer`` signed ``body``."""
        private = self._memo()
        if not private["_checked"]:
            verify(self.signer, _DOMAIN + self.body_bytes(), self.signature)
            private["_checked"] = True

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        copy = super().model_copy(update=update, deep=deep)
        object.__setattr__(copy, "__pydantic_private__", None)
        return copy

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Signed):
            return NotImplemented
        return (self.signer, self.signature, self.body) == (
            other.signer,
            other.signature,
            other.body,
        )

    __hash__ = None  # type: ignore[assignment]  # bodies hold dicts: records are not hashable


def _fresh_memo(raw: bytes | None) -> dict[str, Any]:
    return {"_raw": raw, "_hash": None, "_checked": False}


def _envelope(body: bytes, signature: str, signer: str) -> bytes:
    return b"".join(
        (_ENVELOPE_HEAD, body, _SIGNATURE_KEY, signature.encode(), b'","signer":"',
         signer.encode(), b'"}')
    )  # fmt: skip


_signed_types: dict[type[Body], Any] = {}


def signed_type(body_type: type[Body]) -> Any:
    """``Signed[body_type]``, made once per body class (pydantic's own lookup costs ~10 us).

    Records are parametrised by their body's own class, or pydantic would serialise the body as
    a bare :class:`Body`.
    """
    model = _signed_types.get(body_type)
    if model is None:
        model = _signed_types[body_type] = Signed[body_type]  # type: ignore[valid-type]
    return model


def sign(body: B, keypair: Keypair) -> Signed[B]:
    """``body`` signed by ``keypair``."""
    body_bytes = canonical(body.model_dump(mode="json"))
    signature = keypair.sign(_DOMAIN + body_bytes)
    # Built, not validated: the body is a validated model and the key and signature are ours.
    # This is what model_construct does, less its general machinery (5 us a record, measured).
    model = signed_type(type(body))
    signed = model.__new__(model)
    set_ = object.__setattr__
    set_(signed, "__dict__", {"body": body, "signer": keypair.public_id, "signature": signature})
    set_(signed, "__pydantic_fields_set__", {"body", "signer", "signature"})
    set_(signed, "__pydantic_extra__", None)
    set_(
        signed,
        "__pydantic_private__",
        _fresh_memo(_envelope(body_bytes, signature, keypair.public_id)),
    )
    return cast("Signed[B]", signed)


def decode(
    raw: bytes, body_type: type[B], *, where: str, check_signature: bool = True
) -> Signed[B]:
    """Parse and check a signed record; ``where`` names it in errors (a key or a node)."""
    try:
        record = cast("Signed[B]", signed_type(body_type).model_validate_json(raw))
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) or "record"
        raise MalformedRecord(
            f"record {where} is not a valid {body_type.__name__}: {loc}: {first['msg']}"
        ) from e
    if canonical(record.model_dump(mode="json")) != raw:
        raise MalformedRecord(f"record {where} is not in canonical form (its bytes were altered)")
    object.__setattr__(record, "__pydantic_private__", _fresh_memo(bytes(raw)))
    if check_signature:
        try:
            record.verify()
        except SignatureError as e:
            raise SignatureError(f"record {where}: {e.message}") from e
    return record


# --- the record bodies -------------------------------------------------------------------------


class SandboxNetwork(FrozenModel):
    """How a sandbox store's simulated network was made, so later runs can reuse it."""

    seed: int
    nodes: int
    stake: Amount
    adversaries: dict[str, int]


class TaskRecord(Body):
    """What a store knows of a task: its config, its orchestrator, its clock, its network."""

    kind: Literal["task"] = "task"
    task_id: TaskId
    task_name: str
    config: dict[str, JsonValue]
    orchestrator: NodeId
    genesis_ms: int
    starting_slot: Slot
    network: SandboxNetwork | None = None


class NodeRegistration(Body):
    """A node's signed wish to take part in a task with a stake."""

    kind: Literal["node"] = "node"
    task_id: TaskId
    node_id: NodeId
    stake: Amount
    url: str | None = None
    behaviour: str = "honest"


class RoundRequest(Body):
    """The orchestrator's order to a node to work on a round."""

    kind: Literal["round-request"] = "round-request"
    task_id: TaskId
    round: RoundNumber
    phase: Phase
    request_slot: Slot
    nonce: Digest


class Submission(Body):
    """A node's signed answer to an execute request, stamped with the slot it answered in."""

    kind: Literal["submission"] = "submission"
    task_id: TaskId
    round: RoundNumber
    node_id: NodeId
    request_slot: Slot
    response_slot: Slot
    nonce: Digest
    result: JsonValue


class AcceptedSubmission(Body):
    """The orchestrator's record that a submission passed ingest, with its completion time."""

    kind: Literal["accepted-submission"] = "accepted-submission"
    task_id: TaskId
    round: RoundNumber
    node_id: NodeId
    submission: Signed[Submission]
    received_slot: Slot
    completion_slots: int
    completion_ms: int


class Refusal(Body):
    """The orchestrator's record that a node's answer failed ingest, and why."""

    kind: Literal["refusal"] = "refusal"
    task_id: TaskId
    round: RoundNumber
    node_id: NodeId
    reason: str
    received_slot: Slot


class Vote(FrozenModel):
    """One auditor's verdict on one submission."""

    submitter: NodeId
    submission_hash: Digest
    valid: bool
    reason: str = ""


class AuditReport(Body):
    """All of one auditor's votes in one round: one signature instead of one per vote."""

    kind: Literal["audit-report"] = "audit-report"
    task_id: TaskId
    round: RoundNumber
    auditor: NodeId
    nonce: Digest
    votes: tuple[Vote, ...]


class DistributionList(Body):
    """Who gets what for a round, built by one node from the approved submissions."""

    kind: Literal["distribution"] = "distribution"
    task_id: TaskId
    round: RoundNumber
    attempt: int
    builder: NodeId
    bounty: Amount
    credits: dict[str, int]
    slashes: dict[str, int]
    inputs_hash: Digest


class DistributionAudit(Body):
    """An auditor's verdict on a distribution list, after recomputing it."""

    kind: Literal["distribution-audit"] = "distribution-audit"
    task_id: TaskId
    round: RoundNumber
    attempt: int
    auditor: NodeId
    distribution_hash: Digest
    valid: bool
    reason: str = ""


class LedgerEntry(Body):
    """One settled round in the task's append-only, hash-chained, signed ledger."""

    kind: Literal["ledger-entry"] = "ledger-entry"
    task_id: TaskId
    round: RoundNumber
    sequence: int
    prev_hash: Digest
    bounty: Amount
    distribution_accepted: bool
    distribution_hash: Digest | None
    attempts: int
    credits: dict[str, Amount]
    slashes: dict[str, Amount]
    round_credited: Amount
    total_credited: Amount
    total_slashed: Amount


class RoundMissed(Body):
    """The orchestrator's record that a round did not run in its windows and paid nobody.

    A deployed task writes it when a round's flow run started after its submission window had
    closed, or when a later round found it unsettled past its deadline; the round's ledger entry
    then pays and slashes nothing.
    """

    kind: Literal["round-missed"] = "round-missed"
    task_id: TaskId
    round: RoundNumber
    reason: str
    recorded_slot: Slot
