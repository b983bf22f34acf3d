"""Specifications of a whole round in the sandbox: adversaries, conservation, exactly-once."""

from __future__ import annotations

from pathlib import Path

import pytest

from koiitasks.errors import NetworkMismatchError, RoundError
from koiitasks.ledger import verify_ledger
from koiitasks.model import Outcome
from koiitasks.sandbox import build_sandbox, open_sandbox, simulated_nodes
from koiitasks.storage import Layout, Store
from koiitasks.task import load_task
from koiitasks.testing import memory_store, run_rounds, sandbox, write_task
from tests.conftest import ECHO_TASK, HASH_PUZZLE


def snapshot(store: Store) -> dict[str, bytes]:
    """Every record in a store, by key."""
    return {key: store.read(key) for key in store.list()}


def ledger_bytes(store: Store, task_id: str) -> list[bytes]:
    return [store.read(key) for key in store.list(Layout(task_id).ledger)]


@pytest.fixture
def echo_task(tmp_path: Path) -> Path:
    return write_task(tmp_path / "echo", ECHO_TASK)


class TestAdversaries:
    """Each kind of misbehaving node gets what Koii's rules say it should."""

    @pytest.mark.parametrize(
        ("kind", "outcome", "slashed"),
        [
            pytest.param("offline", Outcome.MISSING, False, id="offline-is-missing"),
            pytest.param("lazy", Outcome.REJECTED, True, id="lazy-is-rejected-and-slashed"),
            pytest.param("forger", Outcome.REFUSED, False, id="forger-is-refused"),
            pytest.param("replayer", Outcome.REFUSED, False, id="replayer-is-refused"),
            pytest.param("late", Outcome.REFUSED, False, id="late-is-refused"),
            pytest.param("bad-auditor", Outcome.APPROVED, False, id="bad-auditor-executes-fine"),
        ],
    )
    def test_adversary_outcome(self, kind: str, outcome: Outcome, slashed: bool) -> None:
        """An adversary's outcome and slash follow its kind; honest nodes are all paid."""
        # One bad auditor can never be the majority of a submission's three auditors.
        count = 1 if kind == "bad-auditor" else 2
        (result,) = run_rounds(HASH_PUZZLE, nodes=12, rounds=1, adversaries={kind: count})
        bad = [n for n in result.nodes.values() if n.behaviour == kind]
        honest = [n for n in result.nodes.values() if n.behaviour == "honest"]
        assert len(bad) == count
        assert len(honest) == 12 - count
        assert all(n.outcome == outcome for n in bad)
        assert all((n.slash > 0) == slashed for n in bad)
        assert all(n.outcome == Outcome.APPROVED and n.credit > 0 for n in honest)
        assert all(n.credit == 0 for n in bad if outcome != Outcome.APPROVED)

    def test_refusals_name_the_reason(self) -> None:
        """A refused node's reason says what its answer did wrong."""
        (result,) = run_rounds(
            HASH_PUZZLE, nodes=10, rounds=2, adversaries={"forger": 1, "late": 1}
        )[-1:]
        reasons = {n.behaviour: n.reason for n in result.nodes.values()}
        assert "forged" in reasons["forger"]
        assert "late" in reasons["late"]

    def test_replayer_is_refused_as_a_replay_in_later_rounds(self) -> None:
        """A submission for an earlier round is refused as replayed."""
        results = run_rounds(HASH_PUZZLE, nodes=10, rounds=2, adversaries={"replayer": 1})
        (replayer,) = [n for n in results[1].nodes.values() if n.behaviour == "replayer"]
        assert replayer.outcome == Outcome.REFUSED
        assert "replayed" in replayer.reason

    def test_every_kind_at_once_with_an_honest_majority(self) -> None:
        """With all kinds mixed in and an honest majority, honest nodes are paid, no cheater is."""
        adversaries = dict.fromkeys(("offline", "lazy", "forger", "replayer", "late"), 1)
        adversaries["bad-auditor"] = 1
        for result in run_rounds(HASH_PUZZLE, nodes=24, rounds=3, adversaries=adversaries):
            for node in result.nodes.values():
                if node.behaviour in {"honest", "bad-auditor"}:
                    assert node.outcome == Outcome.APPROVED
                    assert node.credit > 0
                else:
                    assert node.credit == 0
            assert result.distribution_accepted

    def test_colluding_auditors_with_a_majority_can_reject_an_honest_node(self) -> None:
        """Documented limit: when bad auditors are the majority of a submission's auditors,
        the honest submission they audit is rejected (and not paid)."""
        results = run_rounds(HASH_PUZZLE, nodes=6, rounds=1, adversaries={"bad-auditor": 4})
        honest = [n for n in results[0].nodes.values() if n.behaviour == "honest"]
        assert any(n.outcome == Outcome.REJECTED for n in honest)


class TestConservation:
    """No round pays more than its bounty; all rounds never more than the total."""

    def test_round_pays_exactly_its_bounty_with_the_default_split(self) -> None:
        """The default distribute splits the whole per-round bounty among approved nodes."""
        for result in run_rounds(HASH_PUZZLE, nodes=7, rounds=2):
            assert result.credited == result.bounty == 1_000_000_000
            credits = [n.credit for n in result.nodes.values()]
            assert max(credits) - min(credits) <= 1

    def test_total_bounty_runs_out(self, tmp_path: Path) -> None:
        """Once total_bounty_amount is spent, later rounds pay only what is left, then nothing."""
        task_dir = write_task(
            tmp_path / "short",
            ECHO_TASK,
            total_bounty_amount=2_500,
            bounty_amount_per_round=1_000,
        )
        results = run_rounds(task_dir, nodes=5, rounds=4)
        assert [r.bounty for r in results] == [1_000, 1_000, 500, 0]
        assert sum(r.credited for r in results) == 2_500

    def test_slashes_never_exceed_stake(self, tmp_path: Path) -> None:
        """A node slashed every round loses a fraction of what is left, never more than it has."""
        lazy_task = write_task(
            tmp_path / "lazy", ECHO_TASK, minimum_stake_amount=1, slash_fraction=1.0
        )
        box = sandbox(lazy_task, nodes=6, adversaries={"lazy": 2}, stake=1_000)
        results = [box.run_round(n) for n in range(4)]
        for node_id in results[0].nodes:
            slashed = sum(r.nodes[node_id].slash for r in results)
            assert slashed <= 1_000
        verify_ledger(box.store, box.loaded.task_id)


class TestExactlyOnce:
    """A round is paid once, whatever reruns and crashes happen."""

    def test_rerunning_a_settled_round_changes_nothing(self) -> None:
        """Running a settled round again reports it as settled and writes no byte."""
        box = sandbox(HASH_PUZZLE, nodes=8, seed=1)
        first = box.run_round(0)
        before = snapshot(box.store)
        again = box.run_round(0)
        assert again.already_settled
        assert not first.already_settled
        assert again.ledger_hash == first.ledger_hash
        assert snapshot(box.store) == before

    def test_answers_another_run_stored_first_stand_and_the_round_settles_once(self) -> None:
        """Two runs of one round asking the same nodes a slot apart (a re-run beside a late
        scheduled run): the answers stored first stand, the later run goes on with them, and
        the round settles once."""
        store = memory_store()
        loaded = load_task(HASH_PUZZLE)
        first = build_sandbox(loaded, store, nodes=6, seed=4)
        later = build_sandbox(loaded, store, nodes=6, seed=4)
        for run in (first, later):  # nodes stamp answers with the run's clock, as deployed
            run.engine.pool = simulated_nodes(loaded, run.network, run.clock, workers=1, live=True)[
                1
            ]
            run.begin(0)
        later.clock.advance(loaded.config.slot_ms)  # its answers arrive a slot later
        first.engine.open_round(0)
        nodes = first.engine.eligible(0)
        later.engine.execute_shard(0, [])  # lists the round while nothing is answered yet
        first.engine.execute_shard(0, nodes[:3])
        stored = {n: store.read(Layout(loaded.task_id).submission(0, n)) for n in nodes[:3]}

        later.engine.execute_shard(0, nodes)
        accepted = later.engine.accepted(0)
        assert sorted(accepted) == nodes
        assert {n: accepted[n].encode() for n in nodes[:3]} == stored

        result = later.engine.run(0)
        assert result.distribution_accepted
        assert sorted(n for n, r in result.nodes.items() if r.credit) == nodes
        assert verify_ledger(store, loaded.task_id).entries == 1

    @pytest.mark.parametrize(
        "stop_after",
        [
            pytest.param("open", id="after-opening"),
            pytest.param("some-submissions", id="after-some-submissions"),
            pytest.param("execute", id="after-execute"),
            pytest.param("some-audits", id="after-some-audits"),
            pytest.param("audits", id="after-audits"),
            pytest.param("distribution", id="before-ledger-write"),
        ],
    )
    def test_crashed_round_finishes_with_the_uninterrupted_bytes(self, stop_after: str) -> None:
        """A round stopped part way and run again by a new engine writes exactly the records an
        uninterrupted run with the same seed writes."""
        adversaries = {"lazy": 1, "offline": 1, "late": 1}
        reference = sandbox(HASH_PUZZLE, nodes=9, seed=5, adversaries=adversaries)
        reference.run_round(0)

        store = memory_store()
        crashed = sandbox(HASH_PUZZLE, nodes=9, seed=5, adversaries=adversaries, store=store)
        engine = crashed.engine
        crashed.begin(0)
        engine.open_round(0)
        eligible = engine.eligible(0)
        if stop_after != "open":
            half = eligible[: len(eligible) // 2]
            engine.execute_shard(0, half if stop_after == "some-submissions" else eligible)
        if stop_after in {"some-audits", "audits", "distribution"}:
            assignments = engine.plan_audits(0)
            auditors = sorted(assignments)
            if stop_after == "some-audits":
                auditors = auditors[:2]
            engine.audit_shard(0, assignments, auditors)
        if stop_after == "distribution":
            engine.distribute(0)

        resumed = sandbox(HASH_PUZZLE, nodes=9, seed=5, adversaries=adversaries, store=store)
        result = resumed.run_round(0)
        assert not result.already_settled
        assert snapshot(store) == snapshot(reference.store)

    def test_same_seed_same_bytes(self) -> None:
        """Two runs with the same seed write byte-identical stores."""
        a = sandbox(HASH_PUZZLE, nodes=8, seed=11, adversaries={"lazy": 1})
        b = sandbox(HASH_PUZZLE, nodes=8, seed=11, adversaries={"lazy": 1})
        for n in range(2):
            a.run_round(n)
            b.run_round(n)
        assert snapshot(a.store) == snapshot(b.store)

    def test_different_seed_different_keys(self) -> None:
        """Another seed makes another network."""
        a = run_rounds(HASH_PUZZLE, nodes=4, seed=1)[0]
        b = run_rounds(HASH_PUZZLE, nodes=4, seed=2)[0]
        assert set(a.nodes).isdisjoint(b.nodes)


class TestRoundOrder:
    """Rounds settle in order and a store keeps one network."""

    def test_next_rounds_continue_after_the_last_settled(self) -> None:
        """`--rounds R` continues from the round after the last settled one."""
        box = sandbox(HASH_PUZZLE, nodes=4)
        assert box.plan(rounds=2, round_number=None) == [0, 1]
        box.run_round(0)
        box.run_round(1)
        assert box.plan(rounds=3, round_number=None) == [2, 3, 4]

    def test_a_skipped_round_cannot_be_settled_after_later_ones(self) -> None:
        """A round skipped while the ledger moved on is refused with a clear error."""
        box = sandbox(HASH_PUZZLE, nodes=4)
        box.run_round(3)
        with pytest.raises(RoundError, match="settle in order"):
            box.run_round(1)

    @pytest.mark.parametrize(
        ("rounds", "round_number"),
        [
            pytest.param(None, 10**10, id="round-beyond-ten-digits"),
            pytest.param(None, -1, id="negative-round"),
            pytest.param(10**30, None, id="rounds-beyond-any-list"),
            pytest.param(0, None, id="no-rounds"),
        ],
    )
    def test_a_run_plans_only_rounds_the_store_can_hold(
        self, rounds: int | None, round_number: int | None
    ) -> None:
        """Asking for a round past the ten-digit round keys, or a plan too long to make, is a
        RoundError saying the limits, never an OverflowError or an endless list."""
        box = sandbox(HASH_PUZZLE, nodes=4)
        with pytest.raises(RoundError, match="9,999,999,999"):
            box.plan(rounds=rounds, round_number=round_number)

    def test_a_store_remembers_its_network(self) -> None:
        """Asking for another network on an existing store is an error naming the difference."""
        store = memory_store()
        sandbox(HASH_PUZZLE, nodes=4, seed=1, store=store).run_round(0)
        with pytest.raises(NetworkMismatchError, match="nodes=4"):
            sandbox(HASH_PUZZLE, nodes=5, seed=1, store=store)
        with pytest.raises(NetworkMismatchError, match="seed=1"):
            sandbox(HASH_PUZZLE, nodes=4, seed=2, store=store)


class TestHooks:
    """Hooks that fail cost their node, never the round."""

    def test_execute_hook_that_raises_counts_as_missing(self, tmp_path: Path) -> None:
        """A node whose execute raises is missing; the others are paid."""
        task_dir = write_task(
            tmp_path / "flaky",
            ECHO_TASK.replace(
                'return {"node": ctx.node_id, "round": ctx.round}',
                'if ctx.node_id < "5": raise ValueError("boom")\n'
                '    return {"node": ctx.node_id, "round": ctx.round}',
            ),
        )
        (result,) = run_rounds(task_dir, nodes=12)
        failed = [n for node, n in result.nodes.items() if node < "5"]
        passed = [n for node, n in result.nodes.items() if node >= "5"]
        assert failed
        assert passed
        assert all(n.outcome == Outcome.MISSING for n in failed)
        assert all(n.outcome == Outcome.APPROVED and n.credit > 0 for n in passed)

    def test_execute_result_that_is_not_strict_json_counts_as_missing(self, tmp_path: Path) -> None:
        """A result holding NaN (no JSON form) is refused at the node, never silently changed."""
        task_dir = write_task(
            tmp_path / "nan",
            ECHO_TASK.replace(
                'return {"node": ctx.node_id, "round": ctx.round}',
                'return {"node": ctx.node_id, "round": ctx.round, '
                '"x": float("nan") if ctx.node_id < "5" else 1.0}',
            ).replace("submission.result == {", "{**submission.result, 'x': 0} == {'x': 0, "),
        )
        (result,) = run_rounds(task_dir, nodes=12)
        assert all(
            (n.outcome == Outcome.MISSING) == (node < "5") for node, n in result.nodes.items()
        )

    @pytest.mark.parametrize(
        ("value", "said"),
        [
            pytest.param('("a", 1)', "returned a tuple (JSON has lists", id="tuple"),
            pytest.param(
                "{1, 2}", "returned a value that is not JSON (Object of type set", id="set"
            ),
            pytest.param('{1: "a"}', "returned a dict with the int key 1", id="int-key"),
            pytest.param('[{"a": (1,)}]', "returned a tuple", id="nested-tuple"),
            pytest.param(
                "functools.reduce(lambda x, _: [x], range(300), 1)",
                "returned lists or dicts nested deeper than 100 levels",
                id="nested-300-deep",
            ),
            pytest.param(
                "functools.reduce(lambda x, _: [x], range(100_000), 1)",
                "returned lists or dicts nested deeper than 100 levels",
                id="nested-past-the-recursion-limit",
            ),
        ],
    )
    def test_execute_result_json_would_change_counts_as_missing_and_says_why(
        self, tmp_path: Path, value: str, said: str, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A result JSON cannot hold as it is (a tuple, a set, a key that is not a string, lists
        nested deeper than a record can be read back with) costs its node the round, with a
        warning naming what it returned, and the round goes on."""
        task_dir = write_task(
            tmp_path / "shape",
            "import functools\n"
            + ECHO_TASK.replace(
                'return {"node": ctx.node_id, "round": ctx.round}',
                f'return {value} if ctx.node_id < "5" else '
                '{"node": ctx.node_id, "round": ctx.round}',
            ),
        )
        (result,) = run_rounds(task_dir, nodes=12)
        assert result.distribution_accepted
        assert all(
            (n.outcome == Outcome.MISSING) == (node < "5") for node, n in result.nodes.items()
        )
        assert said in caplog.text
        assert "return JSON: dicts with string keys, lists" in caplog.text

    def test_execute_result_that_is_not_utf8_counts_as_missing(self, tmp_path: Path) -> None:
        """A result holding a lone surrogate (a str no UTF-8 encodes) costs its node the round,
        not every node: it is refused at the node, like NaN."""
        task_dir = write_task(
            tmp_path / "surrogate",
            ECHO_TASK.replace(
                'return {"node": ctx.node_id, "round": ctx.round}',
                'return {"node": ctx.node_id, "round": ctx.round, '
                '"x": "\\ud800" if ctx.node_id < "5" else "fine"}',
            ).replace("submission.result == {", "{**submission.result, 'x': 0} == {'x': 0, "),
        )
        (result,) = run_rounds(task_dir, nodes=12)
        assert result.distribution_accepted
        assert all(
            (n.outcome == Outcome.MISSING) == (node < "5") for node, n in result.nodes.items()
        )

    @pytest.mark.parametrize(
        ("raised", "said"),
        [
            pytest.param(
                "sys.exit(3)",
                "called sys.exit(3) (a hook cannot end the run: raise an exception)",
                id="sys-exit",
            ),
            pytest.param("raise KeyboardInterrupt", "KeyboardInterrupt", id="keyboard-interrupt"),
        ],
    )
    def test_execute_hook_that_tries_to_end_the_run_counts_as_missing(
        self, tmp_path: Path, raised: str, said: str, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A hook on a pool thread calling sys.exit() or raising KeyboardInterrupt fails like
        any hook: its node is missing and the round goes on (the run used to end silently)."""
        task_dir = write_task(
            tmp_path / "exits",
            "import sys\n"
            + ECHO_TASK.replace(
                'return {"node": ctx.node_id, "round": ctx.round}',
                f'if ctx.node_id < "5":\n        {raised}\n'
                '    return {"node": ctx.node_id, "round": ctx.round}',
            ),
        )
        (result,) = run_rounds(task_dir, nodes=12)
        assert result.distribution_accepted
        assert all(
            (n.outcome == Outcome.MISSING) == (node < "5") for node, n in result.nodes.items()
        )
        assert said in caplog.text

    def test_ctrl_c_in_a_hook_on_the_main_thread_still_stops_the_run(self, tmp_path: Path) -> None:
        """With every hook on the calling thread (workers=1, for a debugger), a KeyboardInterrupt
        there is the user's Ctrl-C and stops the run."""
        task_dir = write_task(
            tmp_path / "ctrl-c",
            ECHO_TASK.replace(
                'return {"node": ctx.node_id, "round": ctx.round}', "raise KeyboardInterrupt"
            ),
        )
        with pytest.raises(KeyboardInterrupt):
            sandbox(task_dir, nodes=3, workers=1).run_round(0)

    def test_execute_hook_that_hangs_counts_as_missing(self, tmp_path: Path) -> None:
        """A node whose execute does not finish in time is missing; the round completes."""
        task_dir = write_task(
            tmp_path / "slow",
            ECHO_TASK.replace(
                'return {"node": ctx.node_id, "round": ctx.round}',
                'if ctx.node_id < "4":\n        import time; time.sleep(3)\n'
                '    return {"node": ctx.node_id, "round": ctx.round}',
            ),
        )
        box = sandbox(task_dir, nodes=10, hook_timeout_s=0.5)
        result = box.run_round(0)
        slow = [n for node, n in result.nodes.items() if node < "4"]
        assert slow
        assert all(n.outcome == Outcome.MISSING for n in slow)
        assert result.distribution_accepted

    @pytest.mark.parametrize(
        ("body", "reason"),
        [
            pytest.param(
                "return {a.node_id: bounty for a in approved}", "more than", id="overpays"
            ),
            pytest.param(
                "return {a.node_id: -1 for a in approved}", "negative", id="negative-amounts"
            ),
            pytest.param(
                "return {a.node_id: 0.5 for a in approved}", "non-integer", id="fractions"
            ),
            pytest.param('return {"stranger": 1}', "not an approved node", id="unknown-node"),
            pytest.param("raise RuntimeError('oops')", "RuntimeError", id="raises"),
        ],
    )
    def test_bad_distribute_hook_pays_nobody(self, tmp_path: Path, body: str, reason: str) -> None:
        """A distribute hook that breaks the rules fails its audit: nobody is paid, the reason
        is reported, and the next round still runs."""
        task_dir = write_task(
            tmp_path / "bad",
            ECHO_TASK + f"\n@task.distribute\ndef distribute(ctx, approved, bounty):\n    {body}\n",
        )
        results = run_rounds(task_dir, nodes=6, rounds=2)
        for result in results:
            assert not result.distribution_accepted
            assert result.credited == 0
            assert result.reasons
            assert all(reason in r for r in result.reasons)
            assert result.attempts == 3  # allowed_failed_distributions: 2, plus the first

    def test_nondeterministic_distribute_hook_fails_recomputation(self, tmp_path: Path) -> None:
        """Auditors recompute the list; a hook that gives another answer each time is rejected."""
        task_dir = write_task(
            tmp_path / "random",
            ECHO_TASK + "\nimport itertools\ncalls = itertools.count()\n"
            "@task.distribute\ndef distribute(ctx, approved, bounty):\n"
            "    # another node on every call: builder and auditors never agree\n"
            "    return {approved[next(calls) % len(approved)].node_id: bounty}\n",
        )
        (result,) = run_rounds(task_dir, nodes=12)
        assert not result.distribution_accepted
        assert any("recomputed" in r for r in result.reasons)

    def test_custom_distribute_hook_decides_the_split(self, tmp_path: Path) -> None:
        """A valid distribute hook's split is what the ledger pays."""
        task_dir = write_task(
            tmp_path / "first",
            ECHO_TASK + "\n@task.distribute\ndef distribute(ctx, approved, bounty):\n"
            "    first = min(a.node_id for a in approved)\n    return {first: bounty}\n",
        )
        (result,) = run_rounds(task_dir, nodes=5)
        assert result.distribution_accepted
        paid = {node: n.credit for node, n in result.nodes.items() if n.credit}
        assert paid == {min(result.nodes): result.bounty}


class TestOpenSandbox:
    """A process keeps one sandbox per task, store and network until it is closed."""

    def test_the_same_arguments_give_the_same_sandbox_until_it_is_closed(
        self, tmp_path: Path
    ) -> None:
        """Closing a sandbox frees it: the next open builds a new one on the same records."""
        store = str(tmp_path / "store")
        first = open_sandbox(HASH_PUZZLE, store=store, nodes=3, seed=1)
        assert open_sandbox(HASH_PUZZLE, store=store, nodes=3, seed=1) is first
        first.run_round(0)
        first.close()
        second = open_sandbox(HASH_PUZZLE, store=store, nodes=3, seed=1)
        try:
            assert second is not first
            assert second.engine.next_round() == 1
        finally:
            second.close()
