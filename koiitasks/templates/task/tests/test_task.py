"""Specifications of this task, on simulated nodes and a simulated clock (koiitasks.testing)."""

from __future__ import annotations

from pathlib import Path

import pytest

from koiitasks.testing import (
    call_audit,
    call_execute,
    check_distribute,
    run_rounds,
    submission,
)

TASK = Path(__file__).resolve().parent.parent


class TestHooks:
    """Each hook on its own, as one node runs it."""

    def test_an_honest_answer_passes_audit(self) -> None:
        """What node 0 computes in round 3 is approved by node 1's audit."""
        result = call_execute(TASK, round=3, node=0)
        assert call_audit(TASK, submission(TASK, result, round=3, node=0), node=1)

    def test_a_copied_answer_fails_audit(self) -> None:
        """Node 2 cannot submit node 0's answer as its own."""
        result = call_execute(TASK, round=3, node=0)
        assert not call_audit(TASK, submission(TASK, result, round=3, node=2), node=1)

    def test_a_replayed_answer_fails_audit(self) -> None:
        """An answer made for round 3 is not valid in round 4."""
        result = call_execute(TASK, round=3, node=0)
        assert not call_audit(TASK, submission(TASK, result, round=4, node=0), node=1)


class TestRounds:
    """Whole rounds on many simulated nodes."""

    def test_honest_nodes_share_the_whole_bounty(self) -> None:
        """With every node honest, every node is approved and the bounty is paid in full."""
        for result in run_rounds(TASK, nodes=10, rounds=2):
            assert result.distribution_accepted
            assert result.credited == result.bounty
            assert all(n.outcome == "approved" and n.credit > 0 for n in result.nodes.values())

    @pytest.mark.parametrize(
        ("kind", "outcome"),
        [
            pytest.param("lazy", "rejected", id="lazy-answers-fail-audit"),
            pytest.param("offline", "missing", id="offline-nodes-miss-the-round"),
            pytest.param("forger", "refused", id="forged-signatures-are-refused"),
        ],
    )
    def test_misbehaving_nodes_are_not_paid(self, kind: str, outcome: str) -> None:
        """A misbehaving node gets nothing; the honest nodes are still paid."""
        (result,) = run_rounds(TASK, nodes=10, adversaries={kind: 2})
        bad = [n for n in result.nodes.values() if n.behaviour == kind]
        honest = [n for n in result.nodes.values() if n.behaviour == "honest"]
        assert len(bad) == 2
        assert all(n.outcome == outcome and n.credit == 0 for n in bad)
        assert all(n.credit > 0 for n in honest)


class TestDistribute:
    """The distribute hook keeps Koii's rules on any round, not just the ones above."""

    def test_distribute_keeps_the_rules(self) -> None:
        """Integers, at most the bounty, approved nodes only, the same on every node."""
        check_distribute(TASK)
