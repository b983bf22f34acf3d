"""What a settled round did to every node: the ``--json`` contract and the readable summary."""

from __future__ import annotations

from collections import Counter

from koiitasks.model import KoiiModel, Outcome


class NodeResult(KoiiModel):
    """One node in one round."""

    behaviour: str
    outcome: Outcome
    credit: int
    slash: int
    reason: str = ""


#: Reasons (for refused or missing nodes) a round's report lists before it sums up the rest.
REASONS_LISTED = 5


class RoundResult(KoiiModel):
    """One settled round. ``koiitasks run --json`` prints one of these per line."""

    task_id: str
    round: int
    bounty: int
    distribution_accepted: bool
    attempts: int
    already_settled: bool
    sequence: int
    ledger_hash: str
    reasons: list[str]
    nodes: dict[str, NodeResult]

    def counts(self) -> Counter[str]:
        return Counter(n.outcome.value for n in self.nodes.values())

    @property
    def credited(self) -> int:
        return sum(n.credit for n in self.nodes.values())

    @property
    def slashed(self) -> int:
        return sum(n.slash for n in self.nodes.values())

    def summary(self) -> str:
        """One line a person reads: who passed, who was paid, who was slashed."""
        counts = self.counts()
        parts = [f"{counts.get(o.value, 0)} {o.value}" for o in Outcome if counts.get(o.value)]
        paid = sum(1 for n in self.nodes.values() if n.credit)
        slashed = sum(1 for n in self.nodes.values() if n.slash)
        if self.already_settled:
            status = "already settled, nothing changed"
        elif self.distribution_accepted:
            status = f"paid {self.credited:,} of {self.bounty:,} to {paid} nodes"
        else:
            status = "distribution failed, nobody paid"
        line = f"round {self.round}: {', '.join(parts)}; {status}"
        if slashed:
            line += f"; slashed {self.slashed:,} from {slashed} nodes"
        return line + f"; ledger #{self.sequence} {self.ledger_hash[:12]}"

    def report(self) -> str:
        """:meth:`summary`, and under it why answers were refused or missing (one
        ``  - N refused: ...`` or ``  - N missing: ...`` line a reason, the commonest first, at
        most :data:`REASONS_LISTED`) and, when nobody was paid, why each distribution list was
        refused (``  - attempt N by NODE: ...``)."""
        lines = [self.summary()]
        if not self.already_settled:
            lines += self._unanswered()
        if not (self.distribution_accepted or self.already_settled):
            lines += [f"  - {reason}" for reason in self.reasons]
        return "\n".join(lines)

    def _unanswered(self) -> list[str]:
        """Why answers were refused, and why nodes were missing when more is known than that
        they did not answer (a connection refused, a hook that failed)."""
        why = Counter(
            (n.outcome.value, n.reason)
            for n in self.nodes.values()
            if n.outcome == Outcome.REFUSED
            or (n.outcome == Outcome.MISSING and n.reason not in ("", "no answer"))
        )
        common = why.most_common()
        lines = [f"  - {count} {o}: {reason}" for (o, reason), count in common[:REASONS_LISTED]]
        if rest := common[REASONS_LISTED:]:
            lines.append(
                f"  - {sum(count for _, count in rest)} more refused or missing for "
                f"{len(rest)} other reasons (koiitasks trace NODE shows each)"
            )
        return lines
