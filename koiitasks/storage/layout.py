"""Where each record lives: one layout for every backend.

::

    tasks/{task_id}/task.json
    tasks/{task_id}/nodes/{node}.json
    tasks/{task_id}/rounds/{round:010d}/request.json
    tasks/{task_id}/rounds/{round:010d}/submissions/{node}.json
    tasks/{task_id}/rounds/{round:010d}/refusals/{node}.json
    tasks/{task_id}/rounds/{round:010d}/audits/{auditor}.json
    tasks/{task_id}/rounds/{round:010d}/distributions/{attempt:02d}.json
    tasks/{task_id}/rounds/{round:010d}/distribution-audits/{attempt:02d}/{auditor}.json
    tasks/{task_id}/rounds/{round:010d}/missed.json
    tasks/{task_id}/ledger/{round:010d}.json

Rounds are zero-padded so that a sorted listing is in round order on every backend.
"""

from __future__ import annotations

from dataclasses import dataclass

from koiitasks.errors import InvalidKey
from koiitasks.storage.base import check_key

#: The highest round the layout holds: round keys are ten digits, so that they sort by number.
MAX_ROUND = 10**10 - 1


def round_part(round_number: int) -> str:
    """The zero-padded round segment; a round outside 0..MAX_ROUND is an :class:`InvalidKey`
    (an eleven-digit key would sort before round 9,999,999,999 and break the ledger's order)."""
    if not 0 <= round_number <= MAX_ROUND:
        raise InvalidKey(
            f"round {round_number} does not fit the store's ten-digit round keys "
            f"(0 to {MAX_ROUND:,})"
        )
    return f"{round_number:010d}"


def _segment(name: str, what: str) -> str:
    """``name`` if it is one key segment: an id with a slash would file its records inside
    another record's folder."""
    if "/" in name:
        raise InvalidKey(
            f"{what} {name!r} must be one key segment, without '/'",
            hint="ids are base58 node keys or lowercase task ids",
        )
    return name


@dataclass(frozen=True)
class Layout:
    """Keys of one task's records."""

    task_id: str

    @property
    def root(self) -> str:
        return check_key(f"tasks/{_segment(self.task_id, 'task id')}") + "/"

    @property
    def task(self) -> str:
        return self.root + "task.json"

    @property
    def nodes(self) -> str:
        return self.root + "nodes/"

    def node(self, node_id: str) -> str:
        return check_key(f"{self.nodes}{_segment(node_id, 'node id')}.json")

    @property
    def rounds(self) -> str:
        return f"{self.root}rounds/"

    def round(self, round_number: int) -> str:
        return f"{self.rounds}{round_part(round_number)}/"

    def request(self, round_number: int) -> str:
        return self.round(round_number) + "request.json"

    def submissions(self, round_number: int) -> str:
        return self.round(round_number) + "submissions/"

    def submission(self, round_number: int, node_id: str) -> str:
        return check_key(f"{self.submissions(round_number)}{_segment(node_id, 'node id')}.json")

    def refusals(self, round_number: int) -> str:
        return self.round(round_number) + "refusals/"

    def refusal(self, round_number: int, node_id: str) -> str:
        return check_key(f"{self.refusals(round_number)}{_segment(node_id, 'node id')}.json")

    def audits(self, round_number: int) -> str:
        return self.round(round_number) + "audits/"

    def audit(self, round_number: int, auditor: str) -> str:
        return check_key(f"{self.audits(round_number)}{_segment(auditor, 'auditor id')}.json")

    def distributions(self, round_number: int) -> str:
        return self.round(round_number) + "distributions/"

    def distribution(self, round_number: int, attempt: int) -> str:
        return f"{self.distributions(round_number)}{attempt:02d}.json"

    def distribution_audits(self, round_number: int, attempt: int) -> str:
        return f"{self.round(round_number)}distribution-audits/{attempt:02d}/"

    def distribution_audit(self, round_number: int, attempt: int, auditor: str) -> str:
        auditor = _segment(auditor, "auditor id")
        return check_key(f"{self.distribution_audits(round_number, attempt)}{auditor}.json")

    def missed(self, round_number: int) -> str:
        """A deployed round that did not run in its windows (:class:`~.protocol.RoundMissed`)."""
        return self.round(round_number) + "missed.json"

    @property
    def ledger(self) -> str:
        return self.root + "ledger/"

    def ledger_entry(self, round_number: int) -> str:
        return f"{self.ledger}{round_part(round_number)}.json"

    @staticmethod
    def round_of_ledger_key(key: str) -> int:
        """The round number a ledger key names."""
        return int(key.rsplit("/", 1)[-1].removesuffix(".json"))

    @staticmethod
    def name_of(key: str) -> str:
        """The last segment of a key without ``.json`` (a node id, auditor id or attempt)."""
        return key.rsplit("/", 1)[-1].removesuffix(".json")
