"""Where a task stands on its timeline at a slot: Koii's ``getSlot`` and ``getRound``, and
which windows of gradual consensus are open, for which round, and for how many more slots.

At any slot three logical rounds are live: round R does its work, round R-1 submits and is
audited, round R-2 has its distribution list built and audited. Each logical round N passes
through five windows, one after the other::

    work                 round N, all of it: nodes execute (answers are accepted until the
                         submission window below closes)
    submission           the first submission_window slots of round N+1
    audit                the audit_window slots after that
    distribution         the first submission_window slots of round N+2: the list is built
    distribution-audit   the audit_window slots after that: the list is audited, then paid

:func:`read_timeline` says all that for one slot; :func:`locate_clock` finds which slot "now"
is: the wall clock from a deployed task's genesis (or from the Unix epoch when the store holds
no deployed task), or the sandbox's simulated clock where its next round starts.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from koiitasks.clock import Clock, Schedule, SlotClock, WallClock, Window
from koiitasks.errors import ConfigError
from koiitasks.model import KoiiModel
from koiitasks.protocol import TaskRecord, decode
from koiitasks.storage import Layout, Store

WINDOW_NAMES = ("work", "submission", "audit", "distribution", "distribution-audit")


def windows_of(schedule: Schedule, round_number: int) -> dict[str, Window]:
    """The five windows of one logical round, by name, in the order they open."""
    start = schedule.round_start(round_number)
    return {
        "work": Window(start, start + schedule.round_time),
        "submission": schedule.submission_window_of(round_number),
        "audit": schedule.audit_window_of(round_number),
        "distribution": schedule.distribution_window_of(round_number),
        "distribution-audit": schedule.distribution_audit_window_of(round_number),
    }


class WindowState(KoiiModel):
    """One window of one logical round, seen from a slot."""

    round: int
    name: str
    start: int
    end: int
    """The first slot after the window (windows are ``[start, end)``)."""
    open: bool
    slots_remaining: int
    """Slots until it closes when open, until it opens when not."""


class Timeline(KoiiModel):
    """A task's timeline at one slot."""

    task_id: str
    clock: str
    """``wall``, ``sandbox`` or ``given`` (a slot asked for with ``--slot``)."""
    note: str
    """Where the clock counts from, in words."""
    slot: int
    slot_ms: int
    genesis_ms: int
    starting_slot: int
    round_time: int
    round: int
    """``floor((slot - starting_slot) / round_time)``; -1 before the starting slot."""
    round_start: int
    next_round_in: int
    """Slots until the next round starts."""
    open: list[WindowState]
    next: WindowState | None
    """The next window to open after this slot (the oldest round's, when several open then)."""
    next_also: list[WindowState]
    """The other windows that open at the same slot as ``next``, oldest round first."""

    def lines(self) -> list[str]:
        """The timeline as a person reads it."""
        ms = self.slot_ms
        lines = [
            f"{self.task_id} at slot {self.slot:,} ({self.clock} clock, {ms} ms slots; {self.note})"
        ]
        if self.round < 0:
            lines.append(f"before the task's starting slot {self.starting_slot:,}")
        else:
            lines.append(
                f"round {self.round:,} (slots {self.round_start:,}..."
                f"{self.round_start + self.round_time - 1:,}); next round in "
                f"{self.next_round_in} slots ({self.next_round_in * ms / 1000:g} s)"
            )
        if self.open:
            lines.append("open now:")
            lines += [
                f"  round {w.round:<10,} {w.name:<19} slots {w.start:,}..{w.end - 1:,}, "
                f"closes in {w.slots_remaining} slots"
                for w in self.open
            ]
        if self.next is not None:
            w = self.next
            names = [f"round {x.round:,} {x.name}" for x in [w, *self.next_also]]
            together = ", ".join(names[:-1]) + f" and {names[-1]} open" if len(names) > 1 else ""
            lines.append(
                f"next: {together or names[0] + ' opens'} in {w.slots_remaining} slots "
                f"(slot {w.start:,})"
            )
        return lines


def read_timeline(
    schedule: Schedule,
    slot: int,
    *,
    task_id: str,
    slot_ms: int,
    clock: str = "given",
    note: str = "",
    genesis_ms: int = 0,
) -> Timeline:
    """The round at ``slot``, the windows open then, and the next one to open."""
    current = schedule.round_of(slot)
    first = schedule.round_start(max(current, 0))
    states: list[WindowState] = []
    for n in range(max(current - 2, 0), max(current, 0) + 2):
        for name, window in windows_of(schedule, n).items():
            is_open = slot in window
            if is_open or window.start > slot:
                left = window.end - slot if is_open else window.start - slot
                states.append(
                    WindowState(
                        round=n,
                        name=name,
                        start=window.start,
                        end=window.end,
                        open=is_open,
                        slots_remaining=left,
                    )
                )
    upcoming = sorted((s for s in states if not s.open), key=lambda s: (s.start, s.round))
    return Timeline(
        task_id=task_id,
        clock=clock,
        note=note,
        slot=slot,
        slot_ms=slot_ms,
        genesis_ms=genesis_ms,
        starting_slot=schedule.starting_slot,
        round_time=schedule.round_time,
        round=current,
        round_start=first,
        next_round_in=(first + schedule.round_time - slot) if current >= 0 else first - slot,
        open=sorted((s for s in states if s.open), key=lambda s: -s.round),
        next=upcoming[0] if upcoming else None,
        next_also=[s for s in upcoming[1:] if s.start == upcoming[0].start],
    )


@dataclass(frozen=True)
class ClockPosition:
    """Which slot "now" is for a task, on which clock, counted from where."""

    clock: str
    slot: int
    genesis_ms: int
    starting_slot: int
    note: str


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="seconds")


def locate_clock(
    store: Store,
    task_id: str | None,
    *,
    slot_ms: int,
    round_time: int,
    sandbox: bool = False,
    at_slot: int | None = None,
    wall: Clock | None = None,
) -> ClockPosition:
    """The slot a task is at now: on the wall clock, or on the sandbox's simulated clock.

    The wall clock counts from the genesis of the task as deployed in ``store``; a store that
    holds no deployed task (nothing, or only sandbox runs) counts from the Unix epoch, which is
    also where ``SlotClock`` counts from by default. The sandbox clock stands at the first slot
    of the next round ``koiitasks run`` would run (slot 0 on a fresh store). ``task_id`` None
    asks for no task in particular.
    """
    key = Layout(task_id).task if task_id is not None else None
    raw = store.read_or_none(key) if key is not None else None
    record = decode(raw, TaskRecord, where=str(key)).body if raw else None
    # On the wall clock: registered remote nodes, or simulated ones deployed (a real genesis);
    # a sandbox's simulated clock starts at 0.
    deployed = record is not None and (record.network is None or record.genesis_ms != 0)
    genesis = record.genesis_ms if deployed and record else 0
    starting = record.starting_slot if record else 0
    if at_slot is not None:
        return ClockPosition("given", at_slot, genesis, starting, "the slot asked for")
    if sandbox:
        if deployed:
            raise ConfigError(
                f"task {task_id!r} in {store.url} runs on the wall clock (deployed, or on "
                "registered nodes), not on the sandbox's simulated clock",
                hint="leave out --sandbox to read its clock, or give the --store of a sandbox run",
            )
        if record is None:
            note = f"no sandbox run in {store.url}: a fresh sandbox starts round 0 at slot 0"
            return ClockPosition("sandbox", 0, 0, 0, note)
        from koiitasks.ledger import read_ledger  # noqa: PLC0415 - only the sandbox needs it

        head = read_ledger(store, record.task_id, orchestrator=record.orchestrator).head
        next_round = head.body.round + 1 if head else 0
        note = f"{store.url}: simulated; the next `koiitasks run` starts round {next_round} here"
        first = starting + next_round * round_time
        return ClockPosition("sandbox", first, 0, starting, note)
    slot_clock = SlotClock(wall or WallClock(), genesis_ms=genesis, slot_ms=slot_ms)
    if deployed:
        note = f"genesis {_iso(genesis)} of task {task_id!r} as deployed in {store.url}"
    else:
        which = f"task {task_id!r}" if task_id is not None else "task"
        note = (
            f"no deployed {which} in {store.url}: counting from the Unix epoch; "
            "a deployed task counts from its own genesis"
        )
        starting = 0
    return ClockPosition("wall", slot_clock.get_slot(), genesis, starting, note)
