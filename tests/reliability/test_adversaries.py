"""Specifications of rounds among adversaries, over random networks (hypothesis).

Each example draws a network (2 to 10 nodes, each with its own behaviour and stake), a config
(bounties, auditors per submission, slash fraction, retries) and a number of rounds, runs the
rounds, and checks every settled round against the rules restated in ``rules.py``, then the
invariants every round keeps whoever cheats: conservation, exactly-once, no negative stake or
balance, a ledger that verifies and replays to the balances ``ledger show`` prints.

Hypothesis runs with a fixed seed (derandomize) and no example database, so CI draws much the
same networks every time (its search also adapts to how long examples take).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from koiitasks.ledger import read_ledger
from koiitasks.model import Outcome
from koiitasks.nodes.sim import ADVERSARIES
from koiitasks.replay import Replayer, verify_task
from koiitasks.round_result import NodeResult, RoundResult
from koiitasks.sandbox import Sandbox
from koiitasks.storage import open_store
from koiitasks.task import LoadedTask, load_task
from koiitasks.testing import figures, write_task
from koiitasks.testing.cli import invoke
from koiitasks.testing.networks import NodeSpec, network_sandbox
from koiitasks.testing.tamper import snapshot
from tests.conftest import ECHO_TASK
from tests.reliability.rules import COLLUDER, REFUSED_AT_INGEST, Expected, Rules

MINIMUM = 100
NON_COLLUDERS = [kind for kind in ADVERSARIES if kind != COLLUDER]
STAKES = st.one_of(st.just(2 * MINIMUM), st.sampled_from([0, MINIMUM - 1, MINIMUM, 10**12]))
PROPERTIES = settings(
    max_examples=100,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
_names = itertools.count()


@dataclass(frozen=True)
class Drawn:
    """One random network and how long it runs."""

    nodes: tuple[NodeSpec, ...]
    config: dict[str, Any]
    rounds: int
    seed: int


@st.composite
def networks(draw: st.DrawFn, *, colluders: bool = False) -> Drawn:
    """A network of every adversary kind (or, with ``colluders``, one where bad auditors are
    at least half the nodes), with random stakes, bounties and config."""
    size = draw(st.integers(2, 10))
    if colluders:  # at least half the nodes
        bad = draw(st.integers((size + 1) // 2, size))
        kinds = st.sampled_from(["honest", "lazy"])
    else:  # fewer than half the nodes, though they may still be a submission's majority
        bad = draw(st.integers(0, (size - 1) // 2))
        kinds = st.one_of(st.just("honest"), st.sampled_from(NON_COLLUDERS))
    others = draw(st.lists(kinds, min_size=size - bad, max_size=size - bad))
    behaviours = draw(st.permutations([COLLUDER] * bad + others))
    stakes = draw(st.lists(STAKES, min_size=size, max_size=size))
    per_round = draw(st.one_of(st.integers(1, 12), st.integers(1, 10**9)))
    config = {
        "minimum_stake_amount": MINIMUM,
        "bounty_amount_per_round": per_round,
        "total_bounty_amount": per_round * draw(st.integers(1, 3))
        + draw(st.integers(0, per_round - 1)),
        "auditors_per_submission": draw(st.integers(1, 5)),
        "slash_fraction": draw(st.sampled_from([0.0, 0.25, 0.7, 1.0])),
        "allowed_failed_distributions": draw(st.integers(0, 3)),
    }
    return Drawn(
        nodes=tuple(NodeSpec(b, s) for b, s in zip(behaviours, stakes, strict=True)),
        config=config,
        rounds=draw(st.integers(1, 4)),
        seed=draw(st.integers(0, 2**16)),
    )


@pytest.fixture(scope="module")
def echo(tmp_path_factory: pytest.TempPathFactory) -> LoadedTask:
    return load_task(write_task(tmp_path_factory.mktemp("adversaries") / "echo", ECHO_TASK))


def play(echo: LoadedTask, drawn: Drawn) -> tuple[Sandbox, list[RoundResult], list[Expected]]:
    """Run the drawn network's rounds, and what the rules say each must come to."""
    # A named memory store, so `koiitasks ledger show --store memory://...` reads it in-process.
    store = open_store(f"memory://adversaries-{next(_names)}")
    box = network_sandbox(echo, drawn.nodes, seed=drawn.seed, config=drawn.config, store=store)
    rules = Rules(
        box.loaded.task_id,
        box.loaded.config,
        behaviours={n: r.behaviour for n, r in box.network.nodes.items()},
        stakes={n: r.stake for n, r in box.network.nodes.items()},
    )
    results = [box.run_round(n) for n in range(drawn.rounds)]
    return box, results, [rules.round(n) for n in range(drawn.rounds)]


def assert_follows_the_rules(result: RoundResult, expected: Expected) -> None:
    """Every node's outcome, credit and slash, the bounty and the distribution, as the rules say."""
    assert {n: r.outcome for n, r in result.nodes.items()} == expected.outcomes
    assert {n: r.credit for n, r in result.nodes.items()} == {
        n: expected.credit(n) for n in result.nodes
    }
    assert {n: r.slash for n, r in result.nodes.items() if r.slash} == expected.slashes
    assert result.bounty == expected.bounty
    assert result.distribution_accepted == expected.distribution_accepted
    assert result.attempts == expected.attempts


def assert_invariants(box: Sandbox, results: list[RoundResult]) -> None:
    """What holds whoever cheats: conservation, exactly-once, no negative stake or balance,
    a ledger that verifies and replays to the balances `ledger show` prints."""
    config, store, task_id = box.loaded.config, box.store, box.loaded.task_id
    state = read_ledger(store, task_id, orchestrator=box.engine.orchestrator_id)
    assert [e.body.round for e in state.entries] == [r.round for r in results]
    for entry in state.entries:
        assert entry.body.round_credited <= entry.body.bounty <= config.bounty_amount_per_round
    assert state.total_credited <= config.total_bounty_amount
    registered = {n: r.stake for n, r in box.network.nodes.items()}
    assert all(stake >= 0 for stake in state.stakes(registered).values())
    assert all(balance >= 0 for balance in state.balances().values())
    for result in results:
        for node in result.nodes.values():
            if node.behaviour in REFUSED_AT_INGEST | {"offline"}:
                assert (node.credit, node.slash) == (0, 0)

    before = snapshot(store)
    assert all(box.run_round(r.round).already_settled for r in results)
    assert snapshot(store) == before

    verified = verify_task(store, task_id)
    assert verified.rounds_replayed == len(results)
    replayed: dict[str, int] = {}
    for replay in Replayer(store, task_id).replay_all():
        assert replay.matches, replay.differences
        for node_id, amount in replay.credits.items():
            replayed[node_id] = replayed.get(node_id, 0) + amount
    shown = invoke("ledger", "show", "--store", store.url, "--json")
    assert shown.exit_code == 0, shown.stderr
    balances = json.loads(shown.stdout)["balances"]
    assert balances == {n: replayed.get(n, 0) for n in box.network.nodes}


def record(results: list[RoundResult], expected: list[Expected]) -> None:
    figures.record("adversarial_networks")
    figures.record("adversarial_rounds", len(results))
    figures.record("rounds_replayed", len(results))
    if any(e.colluded for e in expected):
        figures.record("colluding_majority_networks")


def nodes_of(
    results: list[RoundResult], expected: list[Expected]
) -> Iterator[tuple[str, NodeResult, RoundResult, Expected]]:
    """Every node of every round, with its round's result and what the rules expected."""
    for result, exp in zip(results, expected, strict=True):
        for node_id, node in result.nodes.items():
            yield node_id, node, result, exp


class TestRandomNetworks:
    """Random networks of every adversary kind settle exactly as the rules say."""

    @PROPERTIES
    @given(drawn=networks())
    def test_every_round_follows_the_rules_and_keeps_the_invariants(
        self, echo: LoadedTask, drawn: Drawn
    ) -> None:
        """Outcomes, credits, slashes, bounties and distributions are the rules'; honest nodes
        judged by an honest majority are approved and paid when the bounty allows; cheaters
        judged by one are not paid and are slashed as configured; nothing is paid twice."""
        box, results, expected = play(echo, drawn)
        for result, exp in zip(results, expected, strict=True):
            assert_follows_the_rules(result, exp)
        for node_id, node, result, exp in nodes_of(results, expected):
            judged_fairly = (
                node_id in exp.votes and node_id not in exp.colluded and sum(exp.votes[node_id]) > 0
            )
            if node.behaviour == "honest" and judged_fairly:
                assert node.outcome == Outcome.APPROVED
                approved = sum(o == Outcome.APPROVED for o in exp.outcomes.values())
                if result.distribution_accepted and result.bounty >= approved:
                    assert node.credit > 0
            if node.behaviour == "lazy" and judged_fairly:
                assert node.outcome == Outcome.REJECTED
                assert node.credit == 0
                assert node.slash == exp.slashes.get(node_id, 0)
        assert_invariants(box, results)
        record(results, expected)


class TestColludingMajority:
    """What happens when colluding auditors are the majority: documented, not prevented."""

    @PROPERTIES
    @given(drawn=networks(colluders=True))
    def test_a_colluding_majority_decides_the_submissions_it_audits_and_nothing_more(
        self, echo: LoadedTask, drawn: Drawn
    ) -> None:
        """Colluders that are the majority of a submission's auditors decide it: an honest node
        is rejected (and slashed when they outnumber its honest auditors), a lazy one approved
        and paid; colluders that are the majority of a list's auditors reject it, and the round
        may pay nobody. Conservation, exactly-once and refusals still hold, and the ledger
        verifies and replays: the records are genuine, so replay cannot see the collusion."""
        box, results, expected = play(echo, drawn)
        for result, exp in zip(results, expected, strict=True):
            assert_follows_the_rules(result, exp)
        for node_id, node, _, exp in nodes_of(results, expected):
            if node_id not in exp.colluded:
                continue
            yes, no = exp.votes[node_id]
            if node.behaviour == "honest":  # colluders voted "no": a tie rejects, more slash
                assert node.outcome == Outcome.REJECTED
                assert node.slash == (exp.slashes.get(node_id, 0) if no > yes else 0)
            elif node.behaviour == "lazy":  # colluders voted "yes": more approve and pay
                assert node.outcome == (Outcome.APPROVED if yes > no else Outcome.REJECTED)
                assert node.slash == 0
        assert_invariants(box, results)
        record(results, expected)
