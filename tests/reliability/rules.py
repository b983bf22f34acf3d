"""The round rules restated on their own, as the property tests' oracle.

Given who the nodes are (behaviour and stake) and the config, :class:`Rules` says what every
round must come to: who is refused or missing, every submission's votes and verdict, who is
slashed and by how much, the round's bounty, which distribution attempt is accepted and who is
paid. It shares no decision with the round engine; it calls the library only for the seeded
choices the rules define by hash (audit assignments, builders, list auditors, the equal split's
remainder, the exact slash), which have their own unit specifications.

Behaviours, as the simulated pool plays them: ``honest`` and ``bad-auditor`` submit good
answers, ``lazy`` a made-up one; ``forger``, ``replayer`` and ``late`` answers are refused at
ingest, ``offline`` never answers. Every node whose answer was accepted audits: honestly, except
``bad-auditor``, which votes the opposite of the truth (on submissions and on lists alike).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from koiitasks.audit import assign_audits, auditors_of, slash_amount
from koiitasks.config import TaskConfig
from koiitasks.distribution import choose_builder, choose_list_auditors, equal_split
from koiitasks.model import Outcome

REFUSED_AT_INGEST = frozenset({"forger", "replayer", "late"})
SUBMITS = frozenset({"honest", "lazy", "bad-auditor"})
COLLUDER = "bad-auditor"


@dataclass
class Expected:
    """What one round must come to."""

    round: int
    bounty: int
    outcomes: dict[str, Outcome]
    votes: dict[str, tuple[int, int]]  # submitter: (for, against)
    slashes: dict[str, int]
    distribution_accepted: bool
    attempts: int
    credits: dict[str, int]
    colluded: set[str] = field(default_factory=set)  # submitters judged by a colluding majority

    def credit(self, node: str) -> int:
        return self.credits.get(node, 0)


class Rules:
    """The rounds of one network, in order, as the rules say they must settle."""

    def __init__(
        self,
        task_id: str,
        config: TaskConfig,
        behaviours: Mapping[str, str],
        stakes: Mapping[str, int],
    ) -> None:
        self.task_id = task_id
        self.config = config
        self.behaviours = dict(behaviours)
        self.registered = dict(stakes)
        self.slashed: dict[int, dict[str, int]] = {}
        self.credited = 0

    def stakes(self, through_round: int) -> dict[str, int]:
        """Registered stakes less the slashes of rounds up to ``through_round``."""
        left = dict(self.registered)
        for number, slashes in self.slashed.items():
            if number <= through_round:
                for node, amount in slashes.items():
                    left[node] -= amount
        return left

    def round(self, number: int) -> Expected:
        config = self.config
        # Eligibility is fixed by the slashes settled by the round's first slot (rounds <= N-3).
        eligible = {
            n
            for n, s in self.stakes(number - 3).items()
            if s >= config.minimum_stake_amount and s > 0
        }
        outcomes: dict[str, Outcome] = {}
        for node, behaviour in self.behaviours.items():
            if node not in eligible or behaviour in REFUSED_AT_INGEST:
                outcomes[node] = Outcome.REFUSED
            elif behaviour == "offline":
                outcomes[node] = Outcome.MISSING
        accepted = sorted(n for n in eligible if self.behaviours[n] in SUBMITS)
        auditors = auditors_of(
            assign_audits(
                accepted,
                task_id=self.task_id,
                round_number=number,
                k=config.auditors_per_submission,
            )
        )
        votes: dict[str, tuple[int, int]] = {}
        colluded: set[str] = set()
        for submitter in accepted:
            truth = self.behaviours[submitter] != "lazy"
            mine = auditors.get(submitter, [])
            bad = sum(self.behaviours[a] == COLLUDER for a in mine)
            good = len(mine) - bad
            votes[submitter] = (good, bad) if truth else (bad, good)
            outcomes[submitter] = (
                Outcome.APPROVED if votes[submitter][0] > votes[submitter][1] else Outcome.REJECTED
            )
            if mine and bad >= good:
                colluded.add(submitter)
        left = self.stakes(number - 1)
        slashes = {
            node: amount
            for node, (yes, no) in sorted(votes.items())
            if no > yes and (amount := slash_amount(max(0, left[node]), config.slash_fraction)) > 0
        }
        bounty = max(
            0, min(config.bounty_amount_per_round, config.total_bounty_amount - self.credited)
        )
        approved = sorted(n for n, o in outcomes.items() if o == Outcome.APPROVED)
        accepted_at, attempts = self._distribution(number, approved)
        credits = (
            equal_split(approved, bounty, salt=f"{self.task_id}/{number}")
            if accepted_at is not None
            else {}
        )
        self.slashed[number] = slashes
        self.credited += sum(credits.values())
        return Expected(
            round=number,
            bounty=bounty,
            outcomes=outcomes,
            votes=votes,
            slashes=slashes,
            distribution_accepted=accepted_at is not None,
            attempts=attempts,
            credits=credits,
            colluded=colluded,
        )

    def _distribution(self, number: int, approved: list[str]) -> tuple[int | None, int]:
        """The attempt whose list is accepted (None: none is) and how many were made.

        Every approved node builds the list honestly; its auditors vote for it unless they
        collude. A list with no auditor (one approved node) stands on the orchestrator's checks.
        """
        builders: list[str] = []
        for attempt in range(self.config.allowed_failed_distributions + 1):
            builder = choose_builder(
                approved, task_id=self.task_id, round_number=number, exclude=builders
            )
            if builder is None:
                break
            builders.append(builder)
            list_auditors = choose_list_auditors(
                approved,
                task_id=self.task_id,
                round_number=number,
                attempt=attempt,
                builder=builder,
                k=self.config.auditors_per_submission,
            )
            against = sum(self.behaviours[a] == COLLUDER for a in list_auditors)
            if not list_auditors or len(list_auditors) - against > against:
                return attempt, attempt + 1
        return None, len(builders)
