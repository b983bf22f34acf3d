"""Specification of :mod:`koiitasks.distribution`: the default split and the list rules."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from koiitasks.distribution import (
    ApprovedNode,
    DistributionInputs,
    check_credits,
    choose_builder,
    choose_list_auditors,
    default_distribute,
    equal_split,
)
from koiitasks.identity import Keypair

FAST = settings(max_examples=150, deadline=None, database=None)

TASK = "hash-puzzle"
NODES = sorted(Keypair.from_seed(f"node-{i}".encode()).public_id for i in range(40))
A, B, C = NODES[:3]


def _approved(node: str) -> ApprovedNode:
    return ApprovedNode(
        node_id=node,
        stake=10**9,
        result={"nonce": 1},
        request_slot=130,
        response_slot=132,
        completion_slots=2,
        completion_ms=900,
        votes_for=2,
        votes_against=0,
    )


INPUTS = DistributionInputs(
    task_id=TASK, round=7, bounty=100, approved=(_approved(A), _approved(B)), slashes={}
)


class TestEqualSplit:
    """Koii's default: equal integer shares."""

    def test_splits_evenly_when_it_divides(self) -> None:
        """A bounty that divides evenly gives everyone the same share."""
        assert equal_split([A, B, C], 300, salt="t/7") == {A: 100, B: 100, C: 100}

    def test_conserves_the_bounty_with_a_remainder(self) -> None:
        """The remainder is paid out one unit at a time: nothing is lost or created."""
        shares = equal_split(NODES[:7], 100, salt="t/7")
        assert sum(shares.values()) == 100
        assert sorted(set(shares.values())) == [14, 15]
        assert list(shares.values()).count(15) == 2

    def test_is_deterministic(self) -> None:
        """The same nodes, bounty and salt give the same split, whatever the input order."""
        first = equal_split(NODES[:7], 100, salt="t/7")
        assert equal_split(list(reversed(NODES[:7])), 100, salt="t/7") == first
        assert equal_split(NODES[:7] + NODES[:2], 100, salt="t/7") == first

    def test_of_no_nodes_is_empty(self) -> None:
        """Nobody to pay means no shares at all."""
        assert equal_split([], 100, salt="t/7") == {}

    def test_a_bounty_smaller_than_the_nodes_pays_some_one_unit(self) -> None:
        """With fewer units than nodes, each unit goes to a different node."""
        shares = equal_split(NODES[:10], 3, salt="t/7")
        assert sorted(shares.values()) == [0] * 7 + [1] * 3

    def test_remainder_is_spread_by_hash_not_by_id(self) -> None:
        """Across rounds the spare units go to different nodes, not always the smallest ids."""
        smallest = set(NODES[:3])
        winners = [
            frozenset(n for n, v in equal_split(NODES[:10], 13, salt=f"t/{r}").items() if v == 2)
            for r in range(20)
        ]
        assert all(len(w) == 3 for w in winners)
        assert any(w != smallest for w in winners)
        assert len(set(winners)) > 1

    @FAST
    @given(
        n=st.integers(min_value=1, max_value=40),
        bounty=st.integers(min_value=0, max_value=10**18),
        salt=st.text(max_size=20),
    )
    def test_conserves_and_is_fair_for_any_bounty(self, n: int, bounty: int, salt: str) -> None:
        """Shares sum to the bounty exactly, differ by at most one, and cover every node."""
        shares = equal_split(NODES[:n], bounty, salt=salt)
        assert set(shares) == set(NODES[:n])
        assert sum(shares.values()) == bounty
        assert max(shares.values()) - min(shares.values()) <= 1
        assert min(shares.values()) == bounty // n


class TestDefaultDistribute:
    """The distribute hook used when a task has none."""

    def test_pays_the_approved_nodes_equally(self) -> None:
        """The default list is an equal split of the round's bounty among approved nodes."""
        assert default_distribute(INPUTS) == {A: 50, B: 50}

    def test_keeps_the_rules(self) -> None:
        """The default list passes check_credits."""
        assert check_credits(default_distribute(INPUTS), INPUTS) is None

    def test_inputs_hash_binds_the_bounty(self) -> None:
        """Inputs that differ only in bounty have different hashes."""
        assert INPUTS.model_copy(update={"bounty": 101}).hash != INPUTS.hash


class TestCheckCredits:
    """The rules every distribution list must keep."""

    @pytest.mark.parametrize(
        ("credits", "reason"),
        [
            pytest.param({A: 50, B: 50}, None, id="exact-bounty"),
            pytest.param({A: 10}, None, id="less-than-bounty"),
            pytest.param({}, None, id="pays-nobody"),
            pytest.param({A: 0, B: 0}, None, id="zero-amounts"),
            pytest.param(
                {A: 60, B: 41}, "pays 101 in all, more than the round's bounty 100", id="overpay"
            ),
            pytest.param({A: 101}, "more than the round's bounty 100", id="one-node-overpaid"),
            pytest.param({A: -1, B: 101}, f"pays {A} a negative amount -1", id="negative"),
            pytest.param({A: 1.0}, f"pays {A} a non-integer amount 1.0", id="float"),
            pytest.param({A: True}, f"pays {A} a non-integer amount True", id="bool"),
            pytest.param({A: "5"}, f"pays {A} a non-integer amount '5'", id="string-amount"),
            pytest.param({C: 1}, f"pays {C!r}, which is not an approved node", id="unknown-node"),
            pytest.param({7: 1}, "pays 7, which is not an approved node", id="non-string-node"),
            pytest.param([(A, 50)], "returned list, not a mapping", id="list"),
            pytest.param(None, "returned NoneType, not a mapping", id="none"),
            pytest.param(100, "returned int, not a mapping", id="number"),
        ],
    )
    def test_says_what_is_wrong_or_none(self, credits: Any, reason: str | None) -> None:
        """check_credits returns None for a valid list and a reason naming the fault otherwise."""
        result = check_credits(credits, INPUTS)
        if reason is None:
            assert result is None
        else:
            assert result is not None
            assert reason in result


class TestChooseBuilder:
    """Which approved node builds each attempt's list."""

    def test_is_deterministic_and_order_independent(self) -> None:
        """The same approved nodes and round give the same builder in any order."""
        builder = choose_builder(NODES[:10], task_id=TASK, round_number=7)
        assert builder in NODES[:10]
        assert choose_builder(reversed(NODES[:10]), task_id=TASK, round_number=7) == builder

    def test_excludes_earlier_builders(self) -> None:
        """Each retry picks a node that has not built a list yet, until none is left."""
        earlier: list[str] = []
        while builder := choose_builder(NODES[:5], task_id=TASK, round_number=7, exclude=earlier):
            assert builder not in earlier
            earlier.append(builder)
        assert sorted(earlier) == sorted(NODES[:5])

    def test_is_none_when_nobody_is_left(self) -> None:
        """No candidate (none approved, or all excluded) means no builder."""
        assert choose_builder([], task_id=TASK, round_number=7) is None
        assert choose_builder([A, B], task_id=TASK, round_number=7, exclude=[A, B]) is None

    def test_is_not_always_the_same_node(self) -> None:
        """The builder changes with the round, so no node builds every list."""
        builders = {choose_builder(NODES[:10], task_id=TASK, round_number=r) for r in range(20)}
        assert len(builders) > 1


class TestChooseListAuditors:
    """Which approved nodes audit a list."""

    def test_never_includes_the_builder(self) -> None:
        """The builder does not audit its own list, and k auditors are chosen."""
        auditors = choose_list_auditors(
            NODES[:10], task_id=TASK, round_number=7, attempt=0, builder=NODES[0], k=3
        )
        assert NODES[0] not in auditors
        assert len(auditors) == len(set(auditors)) == 3
        assert set(auditors) <= set(NODES[1:10])

    def test_is_deterministic(self) -> None:
        """The same inputs give the same auditors."""
        choose = [
            choose_list_auditors(
                order, task_id=TASK, round_number=7, attempt=1, builder=NODES[0], k=3
            )
            for order in (NODES[:10], list(reversed(NODES[:10])))
        ]
        assert choose[0] == choose[1]

    def test_takes_everyone_else_when_there_are_fewer_than_k(self) -> None:
        """With k above the number of other nodes, every other node audits."""
        auditors = choose_list_auditors(
            [A, B, C], task_id=TASK, round_number=7, attempt=0, builder=A, k=5
        )
        assert sorted(auditors) == sorted([B, C])

    def test_a_lone_builder_has_no_auditors(self) -> None:
        """A list built by the only approved node has nobody to audit it."""
        assert (
            choose_list_auditors([A], task_id=TASK, round_number=7, attempt=0, builder=A, k=3) == []
        )
