"""Distribution lists: what builders and auditors are given, the default split, the rules.

One node, chosen deterministically among the approved ones, builds the list with the task's
distribute hook; other nodes audit it by recomputing it from the same inputs and checking the
rules below; a rejected list is rebuilt by another node, up to ``allowed_failed_distributions``
times. The orchestrator checks the same rules again before it pays, so conservation holds even
if every auditor colludes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping

import orjson
from pydantic import JsonValue, PrivateAttr

from koiitasks.model import Amount, Digest, FrozenModel, NodeId, RoundNumber, TaskId
from koiitasks.protocol import canonical, digest
from koiitasks.task import SubmissionView


class ApprovedNode(FrozenModel):
    """An approved submission as distribution builders and auditors see it."""

    node_id: NodeId
    stake: Amount
    result: JsonValue
    request_slot: int
    response_slot: int
    completion_slots: int
    completion_ms: int
    votes_for: int
    votes_against: int

    def view(self, round_number: int) -> SubmissionView:
        """The hook-facing view of this node's submission."""
        return SubmissionView(
            node_id=self.node_id,
            round=round_number,
            result=self.result,
            request_slot=self.request_slot,
            response_slot=self.response_slot,
            completion_slots=self.completion_slots,
            completion_ms=self.completion_ms,
            stake=self.stake,
            votes_for=self.votes_for,
            votes_against=self.votes_against,
        )


class DistributionInputs(FrozenModel):
    """Everything a distribution list is computed from; its hash binds the list to it."""

    task_id: TaskId
    round: RoundNumber
    bounty: Amount
    approved: tuple[ApprovedNode, ...]
    slashes: dict[str, Amount]

    _hash: str | None = PrivateAttr(default=None)

    @property
    def hash(self) -> Digest:
        """SHA-256 of the inputs' canonical JSON: computed once (the builder, every list
        auditor and the orchestrator all ask, and at 10,000 nodes pydantic's serialiser took
        50 ms a time), from the approved nodes' own values, which are JSON already."""
        if self._hash is None:
            try:
                data = orjson.dumps(
                    {
                        **self.__dict__,
                        "approved": [node.__dict__ for node in self.approved],
                    },
                    option=orjson.OPT_SORT_KEYS,
                )
            except TypeError:  # an integer beyond 64 bits in a result: the slower, general way
                data = canonical(self.model_dump(mode="json"))
            self._hash = digest(data)
        return self._hash

    def __eq__(self, other: object) -> bool:  # the remembered hash is not part of the value
        if not isinstance(other, DistributionInputs):
            return NotImplemented
        return self.__dict__ == other.__dict__

    __hash__ = None  # type: ignore[assignment]  # holds dicts: not hashable

    def views(self) -> list[SubmissionView]:
        return [a.view(self.round) for a in self.approved]


def _rank(*parts: str) -> bytes:
    return hashlib.sha256("\x1f".join(parts).encode()).digest()


def equal_split(node_ids: Iterable[str], bounty: int, *, salt: str) -> dict[str, int]:
    """Split ``bounty`` equally; the remainder goes one unit each to nodes ranked by hash.

    Ranking by ``sha256(salt, node)`` rather than by id keeps the spare units from always going
    to the same nodes.
    """
    ids = sorted(set(node_ids))
    if not ids:
        return {}
    share, remainder = divmod(bounty, len(ids))
    ranked = sorted(ids, key=lambda node: _rank(salt, node))
    extra = set(ranked[:remainder])
    return {node: share + (1 if node in extra else 0) for node in ids}


def default_distribute(inputs: DistributionInputs) -> dict[str, int]:
    """Koii's default: the round's bounty in equal integer shares among approved nodes."""
    return equal_split(
        (a.node_id for a in inputs.approved), inputs.bounty, salt=f"{inputs.task_id}/{inputs.round}"
    )


def check_credits(credits: object, inputs: DistributionInputs) -> str | None:
    """Why ``credits`` breaks the rules, or None when it keeps them all.

    Rules: a mapping of approved node ids to non-negative integers whose sum is at most the
    round's bounty.
    """
    if not isinstance(credits, Mapping):
        return f"distribute hook returned {type(credits).__name__}, not a mapping of node ids"
    approved = {a.node_id for a in inputs.approved}
    total = 0
    for node, amount in credits.items():
        if not isinstance(node, str) or node not in approved:
            return f"distribution pays {node!r}, which is not an approved node of this round"
        if isinstance(amount, bool) or not isinstance(amount, int):
            return f"distribution pays {node} a non-integer amount {amount!r}"
        if amount < 0:
            return f"distribution pays {node} a negative amount {amount}"
        total += amount
    if total > inputs.bounty:
        return f"distribution pays {total} in all, more than the round's bounty {inputs.bounty}"
    return None


def choose_builder(
    approved: Iterable[str], *, task_id: str, round_number: int, exclude: Iterable[str] = ()
) -> str | None:
    """The node that builds attempt's list: highest rank among approved, minus earlier builders."""
    excluded = set(exclude)
    candidates = [node for node in approved if node not in excluded]
    if not candidates:
        return None
    return max(candidates, key=lambda node: _rank(task_id, str(round_number), "builder", node))


def choose_list_auditors(
    approved: Iterable[str], *, task_id: str, round_number: int, attempt: int, builder: str, k: int
) -> list[str]:
    """``k`` approved nodes other than the builder, chosen deterministically."""
    candidates = [node for node in approved if node != builder]
    key = (task_id, str(round_number), "list-audit", str(attempt))
    return sorted(candidates, key=lambda node: _rank(*key, node))[:k]
