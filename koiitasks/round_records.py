"""The records of one round, checked one by one: what ``ledger verify`` walks before a replay.

Every record under ``tasks/{task}/rounds/{round}/`` must be canonical JSON validly signed by the
party its key names: requests, accepted submissions and refusals by the orchestrator (and the
submission inside by its node), audit reports and list audits by the auditor named in the key,
distribution lists by their builder, a deployment's missed-round record by the orchestrator;
each for this task and this round, from a registered node.
A record of a kind this version does not know must still be canonical and signed by the
orchestrator or a registered node. The first record that breaks a rule is named in a
:class:`~koiitasks.errors.RecordError`, so a changed byte anywhere in a round is never quiet.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import ConfigDict

from koiitasks.errors import RecordError
from koiitasks.network import Network
from koiitasks.protocol import (
    AcceptedSubmission,
    AuditReport,
    Body,
    DistributionAudit,
    DistributionList,
    Refusal,
    RoundMissed,
    RoundRequest,
    Signed,
    decode,
)
from koiitasks.storage import Layout, Store


class _AnyBody(Body):
    """A record of a kind this version does not know: any fields, still signed and canonical."""

    model_config = ConfigDict(extra="allow", frozen=True)


def check_round_records(store: Store, network: Network, round_number: int) -> int:
    """Check every record stored under a round: canonical, validly signed, by the signer its key
    names, for this task and round. Raise :class:`RecordError` naming the first bad one; return
    how many were checked."""
    task_id = network.task.task_id
    prefix = Layout(task_id).round(round_number)
    checker = _RecordChecker(network, round_number)
    keys = store.list(prefix)
    for key in keys:
        checker.check(key, key[len(prefix) :].split("/"), store.read(key))
    return len(keys)


class _RecordChecker:
    def __init__(self, network: Network, round_number: int) -> None:
        self.task_id = network.task.task_id
        self.round = round_number
        self.orchestrator = network.record.signer
        self.registered = set(network.nodes)

    def check(self, key: str, parts: Sequence[str], raw: bytes) -> None:
        folder, name = parts[0], Layout.name_of(key)
        if len(parts) == 2 and folder == "requests":
            request = self._decode(raw, RoundRequest, key, signer=self.orchestrator)
            self._require(request.body.phase.value == name, key, "is a request of another phase")
        elif len(parts) == 2 and folder == "submissions":
            accepted = self._decode(raw, AcceptedSubmission, key, signer=self.orchestrator)
            submission = accepted.body.submission
            self._require(accepted.body.node_id == name, key, f"is not the record of {name}")
            self._require(name in self.registered, key, f"{name} is not a registered node")
            try:
                submission.verify()
            except RecordError as e:
                raise RecordError(f"record {key}: the node's submission: {e.message}") from e
            inner = submission.body
            self._require(
                submission.signer == inner.node_id == name
                and inner.task_id == self.task_id
                and inner.round == self.round,
                key,
                "holds a submission that is not the node's own for this round",
            )
        elif len(parts) == 2 and folder == "refusals":
            refusal = self._decode(raw, Refusal, key, signer=self.orchestrator)
            self._require(refusal.body.node_id == name, key, f"is not the refusal of {name}")
        elif len(parts) == 2 and folder == "audits":
            self._decode(raw, AuditReport, key, signer=name, who="auditor")
        elif len(parts) == 2 and folder == "distributions":
            listed = self._decode(raw, DistributionList, key, signer=None, who="builder")
            self._require(f"{listed.body.attempt:02d}" == name, key, "is for another attempt")
        elif parts == ["missed.json"]:
            self._decode(raw, RoundMissed, key, signer=self.orchestrator)
        elif len(parts) == 3 and folder == "distribution-audits":
            vote = self._decode(raw, DistributionAudit, key, signer=name, who="auditor")
            self._require(f"{vote.body.attempt:02d}" == parts[1], key, "is for another attempt")
        else:
            # A record kind this version does not know (a newer one wrote it): still signed,
            # canonical, by the orchestrator or a registered node, for this task and round.
            record = self._decode(raw, _AnyBody, key, signer=None)
            self._require(
                record.signer == self.orchestrator or record.signer in self.registered,
                key,
                f"is signed by {record.signer}, neither the orchestrator nor a registered node",
            )

    def _decode(
        self, raw: bytes, body_type: type[Any], key: str, *, signer: str | None, who: str = ""
    ) -> Signed[Any]:
        record: Signed[Any] = decode(raw, body_type, where=key)
        body = record.body
        if who:
            claimed = getattr(body, who)
            self._require(record.signer == claimed, key, f"is signed by {record.signer}, not "
                          f"its {who} {claimed}")  # fmt: skip
            self._require(claimed in self.registered, key, f"{claimed} is not a registered node")
        if signer is not None:
            self._require(
                record.signer == signer, key, f"is signed by {record.signer}, not {signer}"
            )
        task_id, round_number = getattr(body, "task_id", None), getattr(body, "round", None)
        self._require(
            (task_id, round_number) == (self.task_id, self.round),
            key,
            f"holds task {task_id!r} round {round_number}, not {self.task_id!r} round {self.round}",
        )
        return record

    @staticmethod
    def _require(condition: bool, key: str, problem: str) -> None:
        if not condition:
            raise RecordError(f"record {key} {problem}")
