"""Rounds that overlap on the wall clock: the round engine of a deployed task.

A deployed task starts a round every ``round_time`` slots, and each round lives until round
N+2's distribution audit ends, so about three rounds run at once, each in a process of its own.
:class:`LiveEngine` is a :class:`~koiitasks.round.RoundEngine` that keeps them from racing:

- The ledger of a deployed task holds one entry for every round from 0 on, in order: the paid
  round, or an empty entry for a missed one. Round N's entry is written only after N-1's exists,
  so its sequence number and previous hash are fixed, and the create-only key settles every race:
  the round's own run and a later run that gave up on it cannot both write it.
- Before round N builds its distribution list (first slot of N+2), and again before it settles,
  every earlier round must have its entry. One still missing is waited for until its deadline
  (:meth:`LiveEngine.settle_deadline`: a few slots into the next round's distribution window),
  then recorded as missed: a signed ``missed.json`` saying why, then the empty entry.
- The ledger is read again at each phase boundary: stakes and the bounty left depend on rounds
  that other processes settled meanwhile, and a rerun must see the same inputs as the first run.
- A round whose flow run starts after its execute window closed is not run late:
  :meth:`LiveEngine.missed_reason` says why, and :meth:`LiveEngine.note_missed` records it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from koiitasks.errors import RecordConflict
from koiitasks.ledger import append_entry
from koiitasks.model import Phase
from koiitasks.protocol import LedgerEntry, RoundMissed, RoundRequest, Signed, sign
from koiitasks.round import DistributionOutcome, RoundEngine
from koiitasks.round_result import RoundResult


@dataclass(frozen=True)
class Missed:
    """A round recorded as missed, and why."""

    round: int
    reason: str
    recorded_slot: int


class LiveEngine(RoundEngine):
    """A round engine for rounds that overlap on the wall clock, one process per round."""

    def __init__(self, **engine: Any) -> None:
        super().__init__(**engine)
        #: Rounds this engine recorded as missed (others' records are not repeated here).
        self.recorded_missed: list[Missed] = []

    # --- missed rounds ---------------------------------------------------------------------

    def settle_deadline(self, round_number: int) -> int:
        """The slot after which a later round records this one as missed if it has not settled.

        A round settles at :meth:`~koiitasks.clock.Schedule.settle_slot`; the next round needs
        it when it builds its own list, so it waits half of its distribution window at most.
        """
        window = self.schedule.distribution_window_of(round_number + 1)
        return window.start + max(1, self.config.submission_window // 2)

    def missed_reason(self, round_number: int) -> str | None:
        """Why the round can no longer run (its execute window closed unopened), or None."""
        if self.store.exists(self._execute_key(round_number)):
            return None
        window = self.schedule.execute_window(round_number)
        now = self.slot_clock.get_slot()
        if now < window.end:
            return None
        return f"it started at slot {now}, after its submission window closed at slot {window.end}"

    def missed_record(self, round_number: int) -> RoundMissed | None:
        stored = self._load(self.layout.missed(round_number), RoundMissed)
        return None if stored is None else stored.body

    def is_missed(self, round_number: int) -> bool:
        """Whether the round's ledger entry is the empty entry of a missed round."""
        if not self.is_settled(round_number):
            return False
        entry = self.ledger.entry(round_number)
        assert entry is not None  # is_settled re-read the ledger
        return _is_empty(entry) and self.missed_record(round_number) is not None

    def note_missed(self, round_number: int, reason: str) -> Missed:
        """Write the round's signed missed record; a record already there keeps its reason."""
        key = self.layout.missed(round_number)
        existing = self.missed_record(round_number)
        if existing is None:
            body = RoundMissed(
                task_id=self.task_id,
                round=round_number,
                reason=reason,
                recorded_slot=self.slot_clock.get_slot(),
            )
            try:
                if self.store.create(key, sign(body, self.orchestrator).encode()):
                    missed = Missed(round_number, reason, body.recorded_slot)
                    self.recorded_missed.append(missed)
                    return missed
            except RecordConflict:
                pass  # another run recorded it a moment earlier, with its own reason
            existing = self.missed_record(round_number)
            assert existing is not None
        return Missed(existing.round, existing.reason, existing.recorded_slot)

    def resolve_before(self, round_number: int) -> None:
        """Give every round before ``round_number`` its ledger entry, in order: wait for one
        still running until its deadline, then record it as missed."""
        self.refresh()
        while (pending := self.next_round()) < round_number:
            deadline = self.settle_deadline(pending)
            if not self._wait_for_entry(pending, deadline):
                self.note_missed(
                    pending,
                    f"round {pending} had not settled by slot {deadline}, when round "
                    f"{pending + 1} needed it",
                )
                self._append_empty(pending)
            self.refresh()

    def _wait_for_entry(self, round_number: int, deadline: int) -> bool:
        key = self.layout.ledger_entry(round_number)
        clock = self.slot_clock
        while not self.store.exists(key):
            if clock.get_slot() >= deadline:
                return False
            next_look = clock.clock.now_ms() + clock.slot_ms
            clock.clock.sleep_until_ms(min(next_look, clock.ms_of_slot(deadline)))
        return True

    def _append_empty(self, round_number: int) -> None:
        # The round's own run may have settled it first; refresh() then shows its entry.
        with contextlib.suppress(RecordConflict):
            append_entry(
                self.store,
                self.ledger,
                self.orchestrator,
                task_id=self.task_id,
                round_number=round_number,
                bounty=0,
                distribution=None,
                attempts=0,
                slashes={},
            )

    def _execute_key(self, round_number: int) -> str:
        return f"{self.layout.round(round_number)}requests/{Phase.EXECUTE.value}.json"

    # --- the steps, in ledger order --------------------------------------------------------

    def open_round(self, round_number: int) -> Signed[RoundRequest]:
        """Wait for the round's first slot; its stakes count every round up to N-3, so those
        must have settled (or been recorded missed) first."""
        request = super().open_round(round_number)
        self.resolve_before(round_number - 2)
        return request

    def distribute(self, round_number: int) -> DistributionOutcome:
        """Build and audit the list once every earlier round has its ledger entry."""
        self.slot_clock.wait_for_slot(self.schedule.distribution_window_of(round_number).start)
        self.resolve_before(round_number)
        return super().distribute(round_number)

    def settle(self, round_number: int, outcome: DistributionOutcome) -> Signed[LedgerEntry]:
        """Append the round's entry after every earlier one; if a later round recorded this
        one as missed first, that entry stands."""
        self.slot_clock.wait_for_slot(self.schedule.settle_slot(round_number))
        self.resolve_before(round_number)
        try:
            return super().settle(round_number, outcome)
        except RecordConflict:
            self.refresh()
            entry = self.ledger.entry(round_number)
            if entry is None:
                raise
            return entry

    def result(
        self,
        round_number: int,
        *,
        already_settled: bool = False,
        reasons: Sequence[str] = (),
    ) -> RoundResult:
        """The settled round, with why it paid nobody when it was recorded as missed."""
        record = self.missed_record(round_number)
        entry = self.ledger.entry(round_number)
        if record is not None and entry is not None and _is_empty(entry):
            reasons = [*reasons, f"round {round_number} was recorded as missed: {record.reason}"]
        return super().result(round_number, already_settled=already_settled, reasons=reasons)


def _is_empty(entry: Signed[LedgerEntry]) -> bool:
    body = entry.body
    return (
        body.attempts == 0
        and not body.distribution_accepted
        and not body.credits
        and not body.slashes
        and body.bounty == 0
    )
