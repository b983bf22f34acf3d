"""Specification of :mod:`koiitasks.clock`: slots, rounds and the windows of gradual consensus."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from koiitasks.clock import Schedule, SimulatedClock, SlotClock, Window

FAST = settings(max_examples=200, deadline=None, database=None)

# The example task's timing, started at slot 100 so that "before the start" exists.
SCHEDULE = Schedule(starting_slot=100, round_time=10, submission_window=4, audit_window=3)

WindowOf = Callable[[Schedule, int], Window]


class TestSimulatedClock:
    """A clock that moves only when told to."""

    def test_reads_the_instant_it_was_started_at(self) -> None:
        """A new simulated clock reads its start instant until it is moved."""
        clock = SimulatedClock(1_234)
        assert clock.now_ms() == 1_234
        assert clock.now_ms() == 1_234

    def test_starts_at_the_epoch_by_default(self) -> None:
        """Without a start instant a simulated clock reads 0."""
        assert SimulatedClock().now_ms() == 0

    def test_advance_moves_forward_by_the_amount(self) -> None:
        """advance(ms) adds exactly ms to the reading."""
        clock = SimulatedClock(100)
        clock.advance(50)
        clock.advance(0)
        assert clock.now_ms() == 150

    def test_advance_rejects_a_negative_amount(self) -> None:
        """advance refuses to move backwards and leaves the clock where it was."""
        clock = SimulatedClock(100)
        with pytest.raises(ValueError, match="never moves backwards"):
            clock.advance(-1)
        assert clock.now_ms() == 100

    def test_sleep_until_a_later_instant_moves_there_at_once(self) -> None:
        """Sleeping until a later instant jumps the clock to that instant."""
        clock = SimulatedClock(100)
        clock.sleep_until_ms(5_000)
        assert clock.now_ms() == 5_000

    def test_sleep_until_an_earlier_instant_does_not_move_backwards(self) -> None:
        """Sleeping until an instant already past leaves the clock where it is."""
        clock = SimulatedClock(5_000)
        clock.sleep_until_ms(100)
        assert clock.now_ms() == 5_000

    @FAST
    @given(
        start=st.integers(min_value=0, max_value=10**12),
        targets=st.lists(st.integers(min_value=0, max_value=10**12), max_size=20),
    )
    def test_sleep_until_is_monotonic(self, start: int, targets: list[int]) -> None:
        """Any sequence of sleeps leaves the clock at the latest of its start and the targets."""
        clock = SimulatedClock(start)
        readings = []
        for target in targets:
            clock.sleep_until_ms(target)
            readings.append(clock.now_ms())
        assert readings == sorted(readings)
        assert clock.now_ms() == max([start, *targets])


class TestSlotClock:
    """Slots counted from a genesis instant."""

    @pytest.mark.parametrize(
        ("ms", "slot"),
        [
            pytest.param(1_000, 0, id="genesis-is-slot-0"),
            pytest.param(1_399, 0, id="last-ms-of-slot-0"),
            pytest.param(1_400, 1, id="first-ms-of-slot-1"),
            pytest.param(5_000, 10, id="slot-10"),
            pytest.param(999, 0, id="just-before-genesis"),
            pytest.param(0, 0, id="long-before-genesis"),
        ],
    )
    def test_slot_at_ms_counts_whole_slots_from_genesis(self, ms: int, slot: int) -> None:
        """slot_at_ms is floor((ms - genesis) / slot_ms), and 0 before genesis."""
        slots = SlotClock(SimulatedClock(), genesis_ms=1_000, slot_ms=400)
        assert slots.slot_at_ms(ms) == slot

    def test_ms_of_slot_is_the_first_millisecond_of_the_slot(self) -> None:
        """ms_of_slot is genesis + slot * slot_ms."""
        slots = SlotClock(SimulatedClock(), genesis_ms=1_000, slot_ms=400)
        assert slots.ms_of_slot(0) == 1_000
        assert slots.ms_of_slot(10) == 5_000

    @FAST
    @given(
        genesis=st.integers(min_value=0, max_value=10**13),
        slot_ms=st.integers(min_value=1, max_value=60_000),
        slot=st.integers(min_value=0, max_value=10**9),
    )
    def test_a_slot_spans_exactly_slot_ms_milliseconds(
        self, genesis: int, slot_ms: int, slot: int
    ) -> None:
        """The first and the last millisecond of a slot both map back to that slot."""
        slots = SlotClock(SimulatedClock(), genesis_ms=genesis, slot_ms=slot_ms)
        first = slots.ms_of_slot(slot)
        assert slots.slot_at_ms(first) == slot
        assert slots.slot_at_ms(first + slot_ms - 1) == slot
        assert slots.slot_at_ms(first + slot_ms) == slot + 1

    def test_get_slot_reads_the_underlying_clock(self) -> None:
        """get_slot is the slot of the clock's current instant, and follows it as it moves."""
        clock = SimulatedClock(1_000)
        slots = SlotClock(clock, genesis_ms=1_000, slot_ms=400)
        assert slots.get_slot() == 0
        clock.advance(4_000)
        assert slots.get_slot() == 10

    def test_get_slot_is_0_before_genesis(self) -> None:
        """A clock reading before genesis is in slot 0, never a negative slot."""
        slots = SlotClock(SimulatedClock(0), genesis_ms=1_000_000, slot_ms=400)
        assert slots.get_slot() == 0

    def test_wait_for_slot_moves_a_simulated_clock_to_the_slot_start(self) -> None:
        """Waiting for a future slot returns with the clock at that slot's first millisecond."""
        clock = SimulatedClock(1_000)
        slots = SlotClock(clock, genesis_ms=1_000, slot_ms=400)
        slots.wait_for_slot(7)
        assert clock.now_ms() == 3_800
        assert slots.get_slot() == 7

    def test_wait_for_a_past_slot_returns_without_moving_the_clock(self) -> None:
        """Waiting for a slot that has begun already does not turn the clock back."""
        clock = SimulatedClock(9_999)
        slots = SlotClock(clock, genesis_ms=1_000, slot_ms=400)
        slots.wait_for_slot(3)
        assert clock.now_ms() == 9_999

    @pytest.mark.parametrize("slot_ms", [pytest.param(0, id="zero"), pytest.param(-400, id="neg")])
    def test_rejects_a_slot_length_that_is_not_positive(self, slot_ms: int) -> None:
        """A slot must last at least one millisecond."""
        with pytest.raises(ValueError, match="slot_ms must be positive"):
            SlotClock(SimulatedClock(), slot_ms=slot_ms)


class TestScheduleRounds:
    """Round arithmetic: Koii's getRound."""

    @pytest.mark.parametrize(
        ("slot", "round_number"),
        [
            pytest.param(100, 0, id="starting-slot"),
            pytest.param(109, 0, id="last-slot-of-round-0"),
            pytest.param(110, 1, id="first-slot-of-round-1"),
            pytest.param(125, 2, id="inside-round-2"),
            pytest.param(99, -1, id="just-before-start"),
            pytest.param(0, -1, id="long-before-start"),
        ],
    )
    def test_round_of_floors_slots_since_start_by_round_time(
        self, slot: int, round_number: int
    ) -> None:
        """round_of is floor((slot - starting_slot) / round_time), and -1 before the start."""
        assert SCHEDULE.round_of(slot) == round_number

    @FAST
    @given(
        starting_slot=st.integers(min_value=0, max_value=10**6),
        round_time=st.integers(min_value=1, max_value=1_000),
        offset=st.integers(min_value=-(10**6), max_value=10**9),
    )
    def test_round_of_matches_koiis_formula_for_every_slot(
        self, starting_slot: int, round_time: int, offset: int
    ) -> None:
        """For any slot, round_of agrees with the floor formula and the slot lies in its round."""
        schedule = Schedule(starting_slot, round_time, submission_window=1, audit_window=0)
        slot = max(0, starting_slot + offset)
        round_number = schedule.round_of(slot)
        if slot < starting_slot:
            assert round_number == -1
        else:
            assert round_number == (slot - starting_slot) // round_time
            assert schedule.round_start(round_number) <= slot
            assert slot < schedule.round_start(round_number + 1)

    @pytest.mark.parametrize(
        ("round_number", "start"),
        [
            pytest.param(0, 100, id="round-0-starts-at-starting-slot"),
            pytest.param(1, 110, id="round-1"),
            pytest.param(7, 170, id="round-7"),
        ],
    )
    def test_round_start_is_starting_slot_plus_whole_rounds(
        self, round_number: int, start: int
    ) -> None:
        """round_start(N) is starting_slot + N * round_time."""
        assert SCHEDULE.round_start(round_number) == start
        assert SCHEDULE.round_of(start) == round_number


class TestScheduleWindows:
    """The windows of gradual consensus for one round."""

    @pytest.mark.parametrize(
        ("window_of", "round_number", "expected"),
        [
            # Round 2 of SCHEDULE runs slots 120..129; round 3 130..139; round 4 140..149.
            pytest.param(Schedule.execute_window, 2, Window(120, 134), id="execute"),
            pytest.param(Schedule.submission_window_of, 2, Window(130, 134), id="submission"),
            pytest.param(Schedule.audit_window_of, 2, Window(134, 137), id="audit"),
            pytest.param(Schedule.distribution_window_of, 2, Window(140, 144), id="distribution"),
            pytest.param(
                Schedule.distribution_audit_window_of, 2, Window(144, 147), id="distribution-audit"
            ),
            pytest.param(Schedule.execute_window, 0, Window(100, 114), id="execute-round-0"),
            pytest.param(Schedule.audit_window_of, 0, Window(114, 117), id="audit-round-0"),
            pytest.param(
                Schedule.distribution_audit_window_of,
                0,
                Window(124, 127),
                id="distribution-audit-round-0",
            ),
        ],
    )
    def test_window_of_round(
        self, window_of: WindowOf, round_number: int, expected: Window
    ) -> None:
        """Each phase of round N occupies the slots gradual consensus gives it."""
        assert window_of(SCHEDULE, round_number) == expected

    def test_settle_slot_is_the_end_of_the_distribution_audit_window(self) -> None:
        """Round N is paid at the first slot after its distribution audit window, in round N+2."""
        assert SCHEDULE.settle_slot(2) == 147
        assert SCHEDULE.round_of(SCHEDULE.settle_slot(2)) == 4

    @FAST
    @given(
        starting_slot=st.integers(min_value=0, max_value=10**6),
        submission_window=st.integers(min_value=1, max_value=50),
        audit_window=st.integers(min_value=1, max_value=50),
        spare=st.integers(min_value=0, max_value=50),
        round_number=st.integers(min_value=0, max_value=10**5),
    )
    def test_windows_follow_one_another_in_rounds_n_to_n_plus_2(
        self,
        starting_slot: int,
        submission_window: int,
        audit_window: int,
        spare: int,
        round_number: int,
    ) -> None:
        """Execute ends with submission; audit follows it in N+1; distribution phases fill N+2."""
        schedule = Schedule(
            starting_slot,
            round_time=submission_window + audit_window + spare,
            submission_window=submission_window,
            audit_window=audit_window,
        )
        n = round_number
        execute = schedule.execute_window(n)
        submission = schedule.submission_window_of(n)
        audit = schedule.audit_window_of(n)
        distribution = schedule.distribution_window_of(n)
        distribution_audit = schedule.distribution_audit_window_of(n)

        assert execute.start == schedule.round_start(n)
        assert execute.end == submission.end
        assert submission.start == schedule.round_start(n + 1)
        assert submission.end - submission.start == submission_window
        assert audit.start == submission.end
        assert audit.end - audit.start == audit_window
        assert audit.end <= schedule.round_start(n + 2)
        assert distribution.start == schedule.round_start(n + 2)
        assert distribution.end - distribution.start == submission_window
        assert distribution_audit.start == distribution.end
        assert distribution_audit.end - distribution_audit.start == audit_window
        assert schedule.settle_slot(n) == distribution_audit.end
        assert schedule.round_of(schedule.settle_slot(n) - 1) == n + 2


class TestWindow:
    """A half-open range of slots."""

    @pytest.mark.parametrize(
        ("slot", "inside"),
        [
            pytest.param(129, False, id="before-start"),
            pytest.param(130, True, id="start-is-inside"),
            pytest.param(133, True, id="last-slot-is-inside"),
            pytest.param(134, False, id="end-is-outside"),
        ],
    )
    def test_membership_is_half_open(self, slot: int, inside: bool) -> None:
        """A window [start, end) holds its start and not its end."""
        assert (slot in Window(130, 134)) is inside

    def test_an_empty_window_holds_no_slot(self) -> None:
        """A window whose end is its start holds nothing."""
        assert 5 not in Window(5, 5)

    def test_holds_only_integer_slots(self) -> None:
        """Values that are not slot numbers are never inside a window."""
        assert 131.0 not in Window(130, 134)
        assert "131" not in Window(130, 134)

    def test_str_names_the_first_and_last_slot(self) -> None:
        """A window prints as its inclusive slot range."""
        assert str(Window(130, 134)) == "slots 130..133"
