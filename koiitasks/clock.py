"""Time: one clock seam, slots of about 400 ms, rounds, and the windows of gradual consensus.

Nothing in koiitasks reads the time except :class:`WallClock`; everything else is handed a
:class:`Clock`. The sandbox and the tests hand it a :class:`SimulatedClock`, which moves only when
told to, so a round of many slots runs as fast as the work in it.

Gradual consensus for logical round N (Koii's runtime, see docs/concepts.md)::

    round N        work: nodes are asked to execute at the round's first slot
    round N+1      submission window: answers are due before it closes
                   audit window: chosen auditors vote on every accepted submission
    round N+2      submission window: the distribution list is built
                   audit window: the list is audited by recomputation, then paid
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Protocol


class Clock(Protocol):
    """A source of milliseconds since the Unix epoch that can be waited on."""

    def now_ms(self) -> int: ...

    def sleep_until_ms(self, target_ms: int) -> None: ...


class WallClock:
    """The real time: the only place koiitasks reads the system clock."""

    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000

    def sleep_until_ms(self, target_ms: int) -> None:
        while (remaining := target_ms - self.now_ms()) > 0:
            time.sleep(min(remaining / 1000, 1.0))


class OffsetClock:
    """Another clock shifted by ``offset_ms``: a node whose clock is wrong, for skew tests."""

    def __init__(self, clock: Clock, offset_ms: int) -> None:
        self.clock = clock
        self.offset_ms = offset_ms

    def now_ms(self) -> int:
        return self.clock.now_ms() + self.offset_ms

    def sleep_until_ms(self, target_ms: int) -> None:
        self.clock.sleep_until_ms(target_ms - self.offset_ms)


class SimulatedClock:
    """A clock that moves only when advanced; sleeping advances it at once."""

    def __init__(self, start_ms: int = 0) -> None:
        self._now = start_ms
        self._lock = threading.Lock()

    def now_ms(self) -> int:
        with self._lock:
            return self._now

    def sleep_until_ms(self, target_ms: int) -> None:
        with self._lock:
            self._now = max(self._now, target_ms)

    def advance(self, ms: int) -> None:
        """Move the clock forward by ``ms``."""
        if ms < 0:
            raise ValueError("a simulated clock never moves backwards")
        with self._lock:
            self._now += ms

    def set_ms(self, target_ms: int) -> None:
        """Put the clock at ``target_ms`` (the sandbox replays each round's own timeline)."""
        with self._lock:
            self._now = target_ms


class SlotClock:
    """Slots counted from a genesis instant on a :class:`Clock`."""

    def __init__(self, clock: Clock, *, genesis_ms: int = 0, slot_ms: int = 400) -> None:
        if slot_ms <= 0:
            raise ValueError("slot_ms must be positive")
        self.clock = clock
        self.genesis_ms = genesis_ms
        self.slot_ms = slot_ms

    def slot_at_ms(self, ms: int) -> int:
        """The slot an instant falls in (0 before genesis)."""
        return max(0, (ms - self.genesis_ms) // self.slot_ms)

    def ms_of_slot(self, slot: int) -> int:
        """The first millisecond of ``slot``."""
        return self.genesis_ms + slot * self.slot_ms

    def get_slot(self) -> int:
        """The current slot (Koii's ``getSlot``)."""
        return self.slot_at_ms(self.clock.now_ms())

    def wait_for_slot(self, slot: int) -> None:
        """Return once ``slot`` has begun."""
        self.clock.sleep_until_ms(self.ms_of_slot(slot))


@dataclass(frozen=True)
class Window:
    """A half-open range of slots ``[start, end)``."""

    start: int
    end: int

    def __contains__(self, slot: object) -> bool:
        return type(slot) is int and self.start <= slot < self.end

    def __str__(self) -> str:
        return f"slots {self.start}..{self.end - 1}"


@dataclass(frozen=True)
class Schedule:
    """Round arithmetic and the gradual-consensus windows of one task."""

    starting_slot: int
    round_time: int
    submission_window: int
    audit_window: int

    def round_of(self, slot: int) -> int:
        """``floor((slot - starting_slot) / round_time)`` (Koii's ``getRound``); -1 before start."""
        return (slot - self.starting_slot) // self.round_time if slot >= self.starting_slot else -1

    def round_start(self, round_number: int) -> int:
        """The first slot of a round."""
        return self.starting_slot + round_number * self.round_time

    def execute_window(self, round_number: int) -> Window:
        """From the request at round N's start until the submission window of N+1 closes."""
        return Window(self.round_start(round_number), self.submission_window_of(round_number).end)

    def submission_window_of(self, round_number: int) -> Window:
        start = self.round_start(round_number + 1)
        return Window(start, start + self.submission_window)

    def audit_window_of(self, round_number: int) -> Window:
        start = self.round_start(round_number + 1) + self.submission_window
        return Window(start, start + self.audit_window)

    def distribution_window_of(self, round_number: int) -> Window:
        start = self.round_start(round_number + 2)
        return Window(start, start + self.submission_window)

    def distribution_audit_window_of(self, round_number: int) -> Window:
        start = self.round_start(round_number + 2) + self.submission_window
        return Window(start, start + self.audit_window)

    def settle_slot(self, round_number: int) -> int:
        """The slot at which round N's distribution is paid and written to the ledger."""
        return self.distribution_audit_window_of(round_number).end
