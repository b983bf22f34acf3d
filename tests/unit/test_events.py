"""Specification of :mod:`koiitasks.events` and the deployed task's reports: what a deployed
round tells Prefect about slashes, rejected lists, missed rounds and balances."""

from __future__ import annotations

import subprocess
import sys

import pytest

from koiitasks.events import (
    DISTRIBUTION_REJECTED,
    NODE_SLASHED,
    ROUND_MISSED,
    missed_event,
    round_events,
)
from koiitasks.model import Outcome
from koiitasks.recovery import RecoveryReport, claimed_process_alive, process_claim
from koiitasks.reports import balances_table
from koiitasks.round_result import NodeResult, RoundResult
from koiitasks.testing import sandbox
from tests.conftest import HASH_PUZZLE

HONEST, LAZY = "A" * 44, "B" * 44


def result(*, reasons: list[str], already_settled: bool = False) -> RoundResult:
    return RoundResult(
        task_id="hash-puzzle",
        round=7,
        bounty=1_000,
        distribution_accepted=True,
        attempts=2,
        already_settled=already_settled,
        sequence=7,
        ledger_hash="0" * 64,
        reasons=reasons,
        nodes={
            HONEST: NodeResult(behaviour="honest", outcome=Outcome.APPROVED, credit=1_000, slash=0),
            LAZY: NodeResult(
                behaviour="lazy",
                outcome=Outcome.REJECTED,
                credit=0,
                slash=700,
                reason="audit hook returned False",
            ),
        },
    )


class TestRoundEvents:
    """One event per slash and per rejected distribution list, naming the task."""

    def test_a_slashed_node_is_an_event_about_that_node(self) -> None:
        """The slash event's resource is the node; the task is a related resource."""
        (event,) = round_events(result(reasons=[]))
        assert event.event == NODE_SLASHED
        assert event.resource["prefect.resource.id"] == f"koii.node.{LAZY}"
        assert event.resource["koii.task"] == "hash-puzzle"
        assert event.related[0]["prefect.resource.id"] == "koii.task.hash-puzzle"
        assert event.payload == {
            "round": 7,
            "amount": 700,
            "outcome": "rejected",
            "reason": "audit hook returned False",
        }

    def test_each_rejected_list_is_an_event_about_the_round(self) -> None:
        """Failed attempts become events; other reasons (no approvals, missed) do not."""
        reasons = [
            f"attempt 0 by {HONEST}: rejected by 2 of 3 auditors: recomputed credits differ",
            "no submission was approved this round",
        ]
        events = round_events(result(reasons=reasons))
        rejected = [e for e in events if e.event == DISTRIBUTION_REJECTED]
        assert len(rejected) == 1
        assert rejected[0].resource["prefect.resource.id"] == "koii.round.hash-puzzle.7"
        assert rejected[0].payload["attempt"] == 0
        assert rejected[0].payload["builder"] == HONEST
        assert rejected[0].payload["reason"].startswith("rejected by 2 of 3")

    def test_a_rerun_of_a_settled_round_sends_nothing_again(self) -> None:
        """The first run sent the round's events; a rerun that found it settled does not."""
        assert round_events(result(reasons=[], already_settled=True)) == []

    def test_a_missed_round_is_an_event_with_its_reason(self) -> None:
        """The missed-round event names the round and says why."""
        event = missed_event("hash-puzzle", 12, "the deployment was down")
        assert event.event == ROUND_MISSED
        assert event.resource["koii.round"] == "12"
        assert event.payload == {"round": 12, "reason": "the deployment was down"}


class TestBalances:
    """The task's latest balances: one row per registered node."""

    def test_rows_add_up_to_the_ledger(self) -> None:
        """Balances sum to the credited total; stakes drop by the slashes."""
        box = sandbox(HASH_PUZZLE, nodes=6, seed=8, adversaries={"lazy": 1})
        for number in range(2):
            box.run_round(number)
        rows = balances_table(box.engine.ledger, box.network)
        assert len(rows) == 6
        assert sum(r["balance"] for r in rows) == box.engine.ledger.total_credited
        assert sum(r["slashed"] for r in rows) == box.engine.ledger.total_slashed
        lazy = next(r for r in rows if r["behaviour"] == "lazy")
        assert lazy["slashed"] > 0
        assert lazy["rounds_paid"] == 0
        assert rows[0]["balance"] >= rows[-1]["balance"]


class TestRecoveryClaims:
    """A flow run's process claims itself as host:pid; only this host can judge the claim."""

    def test_this_process_is_alive(self) -> None:
        """A claim of this very process is alive."""
        assert claimed_process_alive(process_claim()) is True

    def test_a_finished_process_is_dead(self) -> None:
        """A claim of a process that has exited is dead."""
        proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True)  # fmt: skip
        claim = process_claim().rsplit(":", 1)[0] + ":" + proc.stdout.strip()
        assert claimed_process_alive(claim) is False

    @pytest.mark.parametrize(
        "claim",
        [
            pytest.param("another-host:1", id="another-host"),
            pytest.param("", id="no-claim"),
            pytest.param(None, id="none"),
            pytest.param("no-pid-here", id="malformed"),
        ],
    )
    def test_claims_this_host_cannot_judge_are_unknown(self, claim: str | None) -> None:
        """Another host's process, or no claim at all: unknown, never taken as dead."""
        assert claimed_process_alive(claim) is None

    def test_the_report_says_what_recovery_did(self) -> None:
        """Crashed, re-run, missed and stray runs each get a line; nothing done says nothing."""
        assert RecoveryReport().lines() == []
        report = RecoveryReport(crashed=[4, 3], rerun=[4], missed=[9], stray=2)
        assert report.lines() == [
            "runs of rounds 3, 4 had died: marked crashed",
            "round 4: re-run from the store",
            "round 9 came due while down: recorded as missed",
            "2 scheduled runs fall between rounds: cancelled",
        ]
