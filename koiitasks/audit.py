"""Audits: who audits whom, and how the votes are tallied into outcomes and slashes.

Every accepted submission is audited by ``auditors_per_submission`` other nodes: the round's
submitters are put on a ring ordered by ``sha256(task, round, node)`` and each is audited by the
nodes that follow it: deterministic, never the submitter, the same load for every auditor.
Auditors are the nodes whose own submissions were accepted this round: the nodes known to be up.
The majority of cast votes decides: more valid than invalid votes approves; more invalid than
valid rejects and slashes ``slash_fraction`` of the node's stake; a tie (some
auditors silent) rejects without a slash, as Koii's template pays nothing on a zero vote count.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from fractions import Fraction

from koiitasks.model import Outcome
from koiitasks.protocol import AuditReport, Signed


def audit_ring(submitters: Iterable[str], *, task_id: str, round_number: int) -> list[str]:
    """The round's submitters ordered by ``sha256(task, round, node)``: a fair, fixed shuffle."""
    prefix = f"{task_id}\x1f{round_number}\x1f".encode()
    return sorted(set(submitters), key=lambda node: hashlib.sha256(prefix + node.encode()).digest())


def assign_audits(
    submitters: Iterable[str], *, task_id: str, round_number: int, k: int
) -> dict[str, list[str]]:
    """For every auditor, the submitters it must audit.

    Each submitter is audited by the ``k`` nodes after it on the ring (fewer when the round has
    fewer other submitters), so nobody audits itself and every auditor carries the same load.
    """
    ring = audit_ring(submitters, task_id=task_id, round_number=round_number)
    n = len(ring)
    k = min(k, n - 1)
    assignments: dict[str, list[str]] = {}
    for i, submitter in enumerate(ring):
        for step in range(1, k + 1):
            assignments.setdefault(ring[(i + step) % n], []).append(submitter)
    return assignments


def auditors_of(assignments: Mapping[str, list[str]]) -> dict[str, list[str]]:
    """The inverse of :func:`assign_audits`: for every submitter, its auditors."""
    inverse: dict[str, list[str]] = {}
    for auditor, submitters in assignments.items():
        for submitter in submitters:
            inverse.setdefault(submitter, []).append(auditor)
    return inverse


def slash_amount(stake: int, slash_fraction: float) -> int:
    """``floor(stake * slash_fraction)`` computed exactly, never more than the stake."""
    fraction = Fraction(str(slash_fraction))
    return min(stake, stake * fraction.numerator // fraction.denominator)


@dataclass
class Verdict:
    """The tally for one submitter."""

    votes_for: int = 0
    votes_against: int = 0
    reasons: list[str] = field(default_factory=list)

    @property
    def approved(self) -> bool:
        return self.votes_for > self.votes_against

    @property
    def slashable(self) -> bool:
        return self.votes_against > self.votes_for


def tally_votes(
    reports: Iterable[Signed[AuditReport]],
    *,
    assignments: Mapping[str, list[str]],
    submission_hashes: Mapping[str, str],
) -> dict[str, Verdict]:
    """Count the votes that count: by an assigned auditor, on the exact submission it was given,
    once per auditor and submitter."""
    verdicts = {submitter: Verdict() for submitter in submission_hashes}
    for report in reports:
        allowed = set(assignments.get(report.body.auditor, ()))
        for vote in report.body.votes:
            if vote.submitter not in allowed:
                continue
            allowed.discard(vote.submitter)  # one vote per auditor per submitter: the first
            if submission_hashes.get(vote.submitter) != vote.submission_hash:
                continue
            verdict = verdicts[vote.submitter]
            if vote.valid:
                verdict.votes_for += 1
            else:
                verdict.votes_against += 1
                if vote.reason:
                    verdict.reasons.append(vote.reason)
    return verdicts


def outcome_of(verdict: Verdict) -> Outcome:
    return Outcome.APPROVED if verdict.approved else Outcome.REJECTED
