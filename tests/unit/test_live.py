"""Specification of :mod:`koiitasks.live`: overlapping rounds, each in a process of its own.

Each "process" here is a :class:`LiveEngine` of its own over one shared store, on a simulated
clock of its own, so the tests choose exactly when each round's run does what.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import pytest

from koiitasks.clock import SimulatedClock
from koiitasks.deployment import open_deployed_engine, prepare_deployed_task
from koiitasks.errors import RoundError
from koiitasks.ledger import read_ledger, verify_ledger
from koiitasks.live import LiveEngine
from koiitasks.model import Outcome
from koiitasks.protocol import AcceptedSubmission, decode
from koiitasks.storage import Layout, Store, open_store
from koiitasks.testing import write_task
from tests.conftest import ECHO_TASK

_stores = itertools.count()
START_MS = 1_800_000_000_000  # the instant `koiitasks deploy` ran, in these tests


@dataclass
class Deployed:
    """A task deployed to a memory store; :meth:`process` starts another engine over it."""

    task_dir: Path
    url: str

    @property
    def store(self) -> Store:
        return open_store(self.url)

    def process(self, at_slot: int = 0) -> LiveEngine:
        """A new engine (as a new flow-run process would build), its clock at ``at_slot``."""
        clock = SimulatedClock()
        engine = open_deployed_engine(self.task_dir, self.url, workers=1, clock=clock)
        clock.set_ms(engine.slot_clock.ms_of_slot(at_slot))
        return engine

    def process_at_round(self, round_number: int, plus_slots: int = 0) -> LiveEngine:
        engine = self.process()
        start = engine.schedule.round_start(round_number) + plus_slots
        engine.slot_clock.clock.sleep_until_ms(engine.slot_clock.ms_of_slot(start))
        return engine


def deploy(tmp_path: Path, **network: object) -> Deployed:
    task_dir = write_task(tmp_path / "echo", ECHO_TASK)
    url = f"memory://live-{next(_stores)}"
    options: dict[str, object] = {"nodes": 6, "seed": 5, **network}
    prepare_deployed_task(task_dir, url, clock=SimulatedClock(START_MS), **options)  # type: ignore[arg-type]
    return Deployed(task_dir, url)


@pytest.fixture
def deployed(tmp_path: Path) -> Deployed:
    return deploy(tmp_path)


def rounds_in_ledger(engine: LiveEngine) -> list[tuple[int, int, bool]]:
    """(round, credited, distribution accepted) per entry, in ledger order."""
    engine.refresh()
    return [
        (e.body.round, e.body.round_credited, e.body.distribution_accepted)
        for e in engine.ledger.entries
    ]


class TestLedgerOrder:
    """Rounds settle in round order, every round once, paid or missed."""

    def test_rounds_run_in_turn_are_each_paid_once(self, deployed: Deployed) -> None:
        """Rounds 0, 1, 2 run one after another are paid in order, and the ledger verifies."""
        for number in range(3):
            deployed.process_at_round(number).run(number)
        engine = deployed.process()
        assert rounds_in_ledger(engine) == [(n, 1_000, True) for n in range(3)]
        assert verify_ledger(deployed.store, engine.task_id).entries == 3

    def test_a_round_nobody_ran_is_recorded_missed_before_the_next_one_settles(
        self, deployed: Deployed
    ) -> None:
        """Round 1 never ran: round 2 records it as missed (empty entry, signed reason)."""
        deployed.process_at_round(0).run(0)
        engine = deployed.process_at_round(2)
        result = engine.run(2)
        assert rounds_in_ledger(engine) == [(0, 1_000, True), (1, 0, False), (2, 1_000, True)]
        assert engine.is_missed(1)
        assert not engine.is_missed(2)
        record = engine.missed_record(1)
        assert record is not None
        assert "had not settled by slot" in record.reason
        assert result.distribution_accepted
        assert verify_ledger(deployed.store, engine.task_id).entries == 3

    def test_an_earlier_round_settled_in_time_is_not_recorded_missed(
        self, deployed: Deployed
    ) -> None:
        """Round 1's run, started while round 0 still ran, finds round 0 settled and waits."""
        later = deployed.process_at_round(1)
        later.open_round(1)
        deployed.process_at_round(0).run(0)
        result = later.run(1)
        assert rounds_in_ledger(later) == [(0, 1_000, True), (1, 1_000, True)]
        assert later.missed_record(0) is None
        assert result.distribution_accepted

    def test_a_round_settling_after_its_deadline_pays_nobody(self, deployed: Deployed) -> None:
        """Round 0's run is too slow: round 1 records it missed; round 0's late settle finds that
        entry and keeps it, so nobody is paid twice or out of order."""
        slow = deployed.process_at_round(0)
        slow.open_round(0)
        for shard in slow.shards(slow.eligible(0)):
            slow.execute_shard(0, shard)
        assignments = slow.plan_audits(0)
        slow.audit_shard(0, assignments, sorted(assignments))
        outcome = slow.distribute(0)
        assert outcome.accepted is not None
        deployed.process_at_round(1).run(1)  # waits for round 0 until its deadline, then moves on
        entry = slow.settle(0, outcome)
        assert entry.body.round_credited == 0
        assert slow.result(0).reasons[-1].startswith("round 0 was recorded as missed")
        assert rounds_in_ledger(slow) == [(0, 0, False), (1, 1_000, True)]
        assert verify_ledger(deployed.store, slow.task_id).entries == 2

    def test_a_settle_that_loses_the_race_returns_the_winning_entry(
        self, deployed: Deployed, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Round 1 records round 0 missed between round 0's last look at the ledger and its
        write: the create-only entry refuses round 0's bytes and round 0 reports the winner."""
        slow = deployed.process_at_round(0)
        slow.open_round(0)
        for shard in slow.shards(slow.eligible(0)):
            slow.execute_shard(0, shard)
        assignments = slow.plan_audits(0)
        slow.audit_shard(0, assignments, sorted(assignments))
        outcome = slow.distribute(0)
        looked = slow.resolve_before

        def look_then_lose(number: int) -> None:
            looked(number)
            rival = deployed.process_at_round(3)  # long past round 0's deadline
            rival.resolve_before(1)

        monkeypatch.setattr(slow, "resolve_before", look_then_lose)
        entry = slow.settle(0, outcome)
        assert entry.body.round_credited == 0
        assert not entry.body.distribution_accepted
        assert (
            len(
                read_ledger(
                    deployed.store, slow.task_id, orchestrator=slow.orchestrator.public_id
                ).entries
            )
            == 1
        )


class TestMissedRounds:
    """A round is never run late: it is recorded as missed, with why."""

    def test_a_round_whose_execute_window_closed_unopened_is_not_run(
        self, deployed: Deployed
    ) -> None:
        """Past the end of round 0's submission window, round 0 says why it cannot run."""
        engine = deployed.process()
        window = engine.schedule.execute_window(0)
        engine.slot_clock.clock.sleep_until_ms(engine.slot_clock.ms_of_slot(window.end))
        reason = engine.missed_reason(0)
        assert reason == (
            f"it started at slot {window.end}, after its submission window closed at slot "
            f"{window.end}"
        )
        with pytest.raises(RoundError, match="can no longer run"):
            engine.open_round(0)

    def test_a_round_opened_in_time_may_finish_after_its_window(self, deployed: Deployed) -> None:
        """Once its execute request exists, a round is finished, never recorded missed (answers
        asked for after the window are refused as late)."""
        first = deployed.process_at_round(0)
        first.open_round(0)
        rerun = deployed.process_at_round(2)
        assert rerun.missed_reason(0) is None
        result = rerun.run(0)
        assert rerun.is_settled(0)
        assert not rerun.is_missed(0)
        assert {n.outcome for n in result.nodes.values()} == {Outcome.REFUSED}

    def test_a_round_still_in_its_window_can_start_late(self, deployed: Deployed) -> None:
        """A run that starts a few slots into its round still runs it."""
        engine = deployed.process_at_round(0, plus_slots=5)
        assert engine.missed_reason(0) is None

    def test_the_first_missed_record_keeps_its_reason(self, deployed: Deployed) -> None:
        """Recording a round missed twice keeps the first reason; only the first write counts
        as this engine's record (so one event is sent)."""
        engine = deployed.process_at_round(3)
        first = engine.note_missed(0, "first reason")
        again = deployed.process_at_round(4).note_missed(0, "second reason")
        assert (first.reason, again.reason) == ("first reason", "first reason")
        assert [m.round for m in engine.recorded_missed] == [0]

    def test_a_missed_round_only_has_its_record_until_a_later_round_settles(
        self, deployed: Deployed
    ) -> None:
        """A run that finds its round missed writes missed.json, not a ledger entry (which
        must wait for the entries before it)."""
        engine = deployed.process_at_round(3)
        engine.note_missed(1, "deployment was down")
        assert deployed.store.exists(Layout(engine.task_id).missed(1))
        assert not engine.is_settled(1)
        assert not engine.is_missed(1)


class TestReruns:
    """A round interrupted in one process is finished by another, byte for byte."""

    def test_a_rerun_finishes_a_half_done_round_with_the_same_bytes(self, tmp_path: Path) -> None:
        """A run that stopped after execute, finished by a new process later in the round,
        leaves exactly the records of an uninterrupted run."""
        whole = deploy(tmp_path / "whole")
        whole.process_at_round(0).run(0)

        interrupted = deploy(tmp_path / "interrupted")
        first = interrupted.process_at_round(0)
        first.open_round(0)
        for shard in first.shards(first.eligible(0)):
            first.execute_shard(0, shard)
        interrupted.process_at_round(1, plus_slots=2).run(0)

        def records(d: Deployed) -> dict[str, bytes]:
            return {key: d.store.read(key) for key in d.store.list()}

        assert records(interrupted) == records(whole)

    def test_a_round_opened_late_counts_slashes_settled_meanwhile(self, tmp_path: Path) -> None:
        """A process started before round 0 settled opens round 3 with round 0's slashes:
        the lazy node slashed below the minimum stake is not asked to execute."""
        deployed = deploy(tmp_path, adversaries={"lazy": 1})
        early = deployed.process()
        result = deployed.process_at_round(0).run(0)
        lazy = next(n for n, r in result.nodes.items() if r.behaviour == "lazy")
        assert result.nodes[lazy].slash > 0
        early.slot_clock.clock.sleep_until_ms(
            early.slot_clock.ms_of_slot(early.schedule.round_start(3))
        )
        early.open_round(3)
        assert lazy not in early.eligible(3)
        assert len(early.eligible(3)) == 5


class TestWallClockNodes:
    """Simulated nodes on the wall clock answer in the slot they answer in."""

    def test_answers_are_stamped_with_the_live_slot(self, deployed: Deployed) -> None:
        """Asked three slots into round 0, every node's answer carries that slot."""
        engine = deployed.process_at_round(0, plus_slots=3)
        engine.open_round(0)
        for shard in engine.shards(engine.eligible(0)):
            engine.execute_shard(0, shard)
        now = engine.slot_clock.get_slot()
        layout = Layout(engine.task_id)
        stamps = {
            decode(
                deployed.store.read(key), AcceptedSubmission, where=key
            ).body.submission.body.response_slot
            for key in deployed.store.list(layout.submissions(0))
        }
        assert stamps == {now}
        assert now == engine.schedule.round_start(0) + 3

    def test_late_nodes_still_answer_after_the_window(self, tmp_path: Path) -> None:
        """A `late` node's answer is refused as late, as in the sandbox."""
        deployed = deploy(tmp_path, adversaries={"late": 1})
        result = deployed.process_at_round(0).run(0)
        late = [r for r in result.nodes.values() if r.behaviour == "late"]
        assert [r.outcome for r in late] == [Outcome.REFUSED]
        assert "late" in late[0].reason
