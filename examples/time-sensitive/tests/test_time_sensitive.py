"""Specifications of the time-sensitive example: a reading taken at one slot of each round."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import JsonValue

from koiitasks.testing import (
    FakeClock,
    call_audit,
    call_distribute,
    call_execute,
    check_distribute,
    context,
    run_rounds,
    submission,
)

TASK = Path(__file__).resolve().parent.parent
ROUND = 4
ROUND_START = 40  # round_time 10, starting slot 0
SNAPSHOT = ROUND_START + 2  # SNAPSHOT_SLOT in task.py


def answer_at(start_slot: int, node: int = 0) -> tuple[dict[str, JsonValue], int]:
    """What a node answers when it starts at ``start_slot``, and the slot it answers in."""
    clock = FakeClock(start_slot)
    result = call_execute(TASK, round=ROUND, node=node, clock=clock)
    assert isinstance(result, dict)
    return result, clock.slot


class TestExecute:
    """A node acts at the snapshot slot, whenever it is woken."""

    @pytest.mark.parametrize(
        ("start", "answered"),
        [
            pytest.param(ROUND_START, SNAPSHOT, id="early-node-waits-for-the-snapshot-slot"),
            pytest.param(SNAPSHOT, SNAPSHOT, id="on-time-node-answers-at-once"),
            pytest.param(SNAPSHOT + 1, SNAPSHOT + 1, id="one-slot-late-still-answers"),
        ],
    )
    def test_the_reading_is_taken_and_stamped_at_the_slot_it_answers_in(
        self, start: int, answered: int
    ) -> None:
        """The result's slot is the slot on the node's clock when the hook returns."""
        result, slot = answer_at(start)
        assert slot == answered
        assert result["slot"] == answered

    def test_a_node_past_the_window_does_not_answer(self) -> None:
        """Starting after the snapshot window, execute raises instead of answering late."""
        with pytest.raises(RuntimeError, match="after round 4's snapshot window"):
            answer_at(SNAPSHOT + 2)

    def test_get_slot_follows_the_fake_clock(self) -> None:
        """A hook's ctx.get_slot() and get_round() move with the clock it is given."""
        clock = FakeClock(ROUND_START)
        ctx = context(TASK, round=ROUND, clock=clock)
        clock.advance(12)
        assert ctx.get_slot() == ROUND_START + 12
        assert ctx.get_round() == ROUND + 1


class TestAudit:
    """Auditors check the stamp, the window, the arrival and the reading."""

    def test_an_on_time_reading_passes(self) -> None:
        """A reading taken on the snapshot slot and stamped with it is valid."""
        result, slot = answer_at(ROUND_START)
        assert call_audit(TASK, submission(TASK, result, round=ROUND, node=0, response_slot=slot))

    @pytest.mark.parametrize(
        ("change", "response_slot"),
        [
            pytest.param({"slot": SNAPSHOT - 1}, SNAPSHOT - 1, id="before-the-window"),
            pytest.param({"slot": SNAPSHOT + 2}, SNAPSHOT + 2, id="after-the-window"),
            pytest.param({}, SNAPSHOT + 1, id="stamp-differs-from-the-signed-slot"),
            pytest.param({"reading": 1}, SNAPSHOT, id="wrong-reading"),
            pytest.param({"slot": "42"}, SNAPSHOT, id="slot-not-a-number"),
        ],
    )
    def test_a_bad_reading_fails(self, change: dict[str, object], response_slot: int) -> None:
        """Any of these changes to an honest answer makes it invalid."""
        result, _ = answer_at(ROUND_START)
        changed = {**result, **change}
        view = submission(TASK, changed, round=ROUND, node=0, response_slot=response_slot)
        assert not call_audit(TASK, view)

    def test_an_answer_that_arrived_late_fails_whatever_its_stamp(self) -> None:
        """The orchestrator's own arrival time (completion_slots) beats the node's stamp."""
        result, slot = answer_at(ROUND_START)
        honest = submission(TASK, result, round=ROUND, node=0, response_slot=slot)
        late = type(honest)(**{**honest.__dict__, "completion_slots": 5})
        assert not call_audit(TASK, late)


class TestRewards:
    """Punctual readings earn more; the rules of distribution hold."""

    def test_an_on_time_reading_earns_twice_a_late_one(self) -> None:
        """Weights 2 and 1: the on-time node gets two thirds, and the bounty is paid in full."""
        on_time, late = answer_at(ROUND_START, node=0), answer_at(SNAPSHOT + 1, node=1)
        approved = [
            submission(TASK, on_time[0], round=ROUND, node=0, response_slot=on_time[1]),
            submission(TASK, late[0], round=ROUND, node=1, response_slot=late[1]),
        ]
        credits = call_distribute(TASK, approved, 3_000, round=ROUND)
        assert credits == {approved[0].node_id: 2_000, approved[1].node_id: 1_000}

    def test_distribute_keeps_the_rules(self) -> None:
        """Integers, at most the bounty, approved nodes only, the same on every node."""
        check_distribute(TASK)

    def test_rounds_pay_every_honest_node_and_punctual_ones_more(self) -> None:
        """On simulated nodes that wake 1-3 slots into a round, all are paid, on-time most; a
        node woken after the window (the `late` adversary) does not answer at all."""
        for result in run_rounds(TASK, nodes=12, rounds=2, adversaries={"late": 1}):
            honest = [n for n in result.nodes.values() if n.behaviour == "honest"]
            late = [n for n in result.nodes.values() if n.behaviour == "late"]
            assert result.credited == result.bounty
            assert all(n.outcome == "approved" and n.credit > 0 for n in honest)
            assert len({n.credit // 10 for n in honest}) == 2  # two weights, up to remainders
            assert late
            assert all(n.outcome == "missing" and n.credit == 0 for n in late)
