"""Specifications of the hash-puzzle example: costly to solve, one hash to audit."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from pydantic import JsonValue

from koiitasks.testing import call_audit, call_execute, check_distribute, run_rounds, submission

TASK = Path(__file__).resolve().parent.parent
DIFFICULTY = 2  # as in task.py


def digest_of(round_number: int, node_id: str, nonce: int) -> str:
    """The puzzle's hash, computed here independently of task.py."""
    return hashlib.sha256(f"hash-puzzle:{round_number}:{node_id}:{nonce}".encode()).hexdigest()


class TestExecute:
    """Each node solves its own puzzle for the round."""

    def test_the_answer_solves_the_puzzle(self) -> None:
        """The nonce's hash starts with DIFFICULTY zero hex digits and is the digest returned."""
        result = call_execute(TASK, round=5, node=0)
        assert isinstance(result, dict)
        view = submission(TASK, result, round=5, node=0)
        nonce = result["nonce"]
        assert isinstance(nonce, int)
        assert result["digest"] == digest_of(5, view.node_id, nonce)
        assert str(result["digest"]).startswith("0" * DIFFICULTY)

    def test_puzzles_differ_per_node_and_round(self) -> None:
        """Another node, or another round, has another puzzle and so another answer."""
        answers = [call_execute(TASK, round=r, node=n) for r, n in ((1, 0), (1, 1), (2, 0))]
        assert len({str(a) for a in answers}) == 3


class TestAudit:
    """One hash decides: auditing costs nothing next to solving."""

    def test_an_honest_answer_passes(self) -> None:
        """Node 1 approves node 0's answer."""
        result = call_execute(TASK, round=5, node=0)
        assert call_audit(TASK, submission(TASK, result, round=5, node=0), node=1)

    @pytest.mark.parametrize(
        "result",
        [
            pytest.param(None, id="no-result"),
            pytest.param("lazy-answer", id="not-a-mapping"),
            pytest.param({"nonce": "7", "digest": "00"}, id="nonce-not-an-integer"),
            pytest.param({"nonce": 0, "digest": "0" * 64}, id="digest-not-the-nonces-hash"),
        ],
    )
    def test_a_malformed_or_wrong_answer_fails(self, result: JsonValue) -> None:
        """Anything but a solving nonce and its digest is invalid."""
        assert not call_audit(TASK, submission(TASK, result, round=5, node=0))

    def test_an_answer_copied_from_another_node_fails(self) -> None:
        """A solution is bound to its node: node 2 cannot pass off node 0's."""
        result = call_execute(TASK, round=5, node=0)
        assert not call_audit(TASK, submission(TASK, result, round=5, node=2))

    def test_an_answer_from_an_earlier_round_fails(self) -> None:
        """A solution is bound to its round: round 4's answer is not valid in round 5."""
        result = call_execute(TASK, round=4, node=0)
        assert not call_audit(TASK, submission(TASK, result, round=5, node=0))


class TestRounds:
    """Whole rounds on simulated nodes."""

    def test_lazy_nodes_are_rejected_and_slashed_and_honest_ones_paid(self) -> None:
        """A lazy node's made-up answer fails audit; it loses stake; the others share it all."""
        (result,) = run_rounds(TASK, nodes=10, adversaries={"lazy": 2})
        lazy = [n for n in result.nodes.values() if n.behaviour == "lazy"]
        honest = [n for n in result.nodes.values() if n.behaviour == "honest"]
        assert len(lazy) == 2
        assert all(n.outcome == "rejected" and n.slash > 0 and n.credit == 0 for n in lazy)
        assert all(n.outcome == "approved" and n.credit > 0 for n in honest)
        assert result.credited == result.bounty

    def test_the_default_split_keeps_the_rules(self) -> None:
        """hash-puzzle has no distribute hook: the default equal split is checked instead."""
        check_distribute(TASK)
