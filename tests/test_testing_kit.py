"""Specifications of koiitasks.testing for task authors: hooks on a fake clock, and the
property-based check of a distribute hook."""

from __future__ import annotations

import random
import re
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import strategies as st

from koiitasks.errors import ConfigError
from koiitasks.model import NodeId
from koiitasks.nodes.runtime import HookFailed
from koiitasks.testing import (
    FakeClock,
    call_audit,
    call_distribute,
    call_execute,
    check_distribute,
    context,
    node_id,
    run_rounds,
    submission,
    write_task,
)
from tests.conftest import HASH_PUZZLE

HOOKS = """
from koiitasks import Task

task = Task()


@task.execute
def execute(ctx):
    seen = int(ctx.store.get("seen", "0")) + 1
    ctx.store.set("seen", str(seen))
    return {"node": ctx.node_id, "round": ctx.round, "slot": ctx.get_slot(), "seen": seen}


@task.audit
def audit(ctx, submission):
    return submission.result["node"] == submission.node_id and ctx.get_slot() >= 0
"""

SCORED = """
from koiitasks import Task

task = Task()


@task.execute
def execute(ctx):
    return {"score": len(ctx.node_id)}


@task.audit
def audit(ctx, submission):
    return submission.result == {"score": len(submission.node_id)}


@task.distribute
def distribute(ctx, approved, bounty):
{BODY}
"""

# Distribute hooks that break one rule each, and the words the check's message must contain.
BROKEN_HOOKS = [
    pytest.param(
        "ids = [s.node_id for s in approved]\n"
        "return {n: bounty // len(ids) + (1 if len(ids) > 2 else 0) for n in ids}",
        "more than the round's bounty",
        id="overpays",
    ),
    pytest.param(
        "return {**{s.node_id: 0 for s in approved}, '1' * 32: bounty}",
        "which is not an approved node of this round",
        id="pays-an-unknown-node",
    ),
    pytest.param(
        "return {s.node_id: bounty / len(approved) for s in approved}",
        "a non-integer amount",
        id="pays-fractions",
    ),
    pytest.param(
        "return {s.node_id: bounty - 2 * (bounty // 3) * len(approved) for s in approved}",
        "a negative amount",
        id="pays-negative-amounts",
    ),
    pytest.param(
        "import random\nreturn {random.choice(approved).node_id: bounty}",
        "is not deterministic",
        id="random",
    ),
    pytest.param(
        "return {approved[ctx.get_slot() % len(approved)].node_id: bounty}",
        "is not deterministic",
        id="depends-on-the-clock",
    ),
    pytest.param(
        "return {s.node_id: bounty if s.node_id == ctx.node_id else 0 for s in approved}",
        "is not deterministic",
        id="depends-on-which-node-computes-it",
    ),
    pytest.param(
        "return {s.node_id: bounty // s.votes_against for s in approved}",
        "raised ZeroDivisionError",
        id="raises",
    ),
]

GOOD_HOOK = """\
weights = {s.node_id: s.votes_for + s.stake % 7 for s in approved}
total = sum(weights.values())
credits = {n: bounty * w // total for n, w in weights.items()}
for n in sorted(weights)[: bounty - sum(credits.values())]:
    credits[n] += 1
return credits"""


def scored_task(tmp_path: Path, body: str) -> Path:
    return write_task(tmp_path / "scored", SCORED.replace("{BODY}", textwrap.indent(body, "    ")))


class TestWriteTask:
    """write_task: a task folder for a test."""

    def test_it_never_overwrites_a_task_with_other_contents(self, tmp_path: Path) -> None:
        """Pointed at a folder holding another task.py (the author's own task, by mistake), it
        refuses and leaves the file as it was; writing the same files again is harmless."""
        task_dir = write_task(str(tmp_path / "mine"), HOOKS)
        assert write_task(task_dir, HOOKS) == task_dir
        with pytest.raises(ConfigError, match=r"task\.py already exists") as caught:
            write_task(task_dir, HOOKS.replace("seen", "count"))
        assert "tmp_path" in (caught.value.hint or "")
        assert (task_dir / "task.py").read_text() == textwrap.dedent(HOOKS)


class TestKitMistakes:
    """A task author's common mistakes with the kit are errors that say what to pass."""

    @pytest.mark.parametrize(
        ("options", "said"),
        [
            pytest.param(
                {"store": "somewhere"}, "store= takes a Store, not a str", id="store-path"
            ),
            pytest.param({"nodes": "5"}, "nodes= takes a whole number, not '5'", id="nodes-text"),
            pytest.param({"rounds": 1.5}, "rounds= takes a whole number, not 1.5", id="rounds"),
            pytest.param({"seed": True}, "seed= takes a whole number, not True", id="seed-bool"),
        ],
    )
    def test_run_rounds_names_the_option_and_what_it_takes(
        self, options: dict[str, object], said: str
    ) -> None:
        """Instead of an AttributeError or TypeError from deep inside."""
        with pytest.raises(ConfigError, match=re.escape(said)):
            run_rounds(HASH_PUZZLE, **options)  # type: ignore[arg-type]

    def test_check_distribute_takes_a_strategy_not_a_list(self) -> None:
        """A plain list of results is refused with how to draw from one."""
        with pytest.raises(ConfigError, match="takes a hypothesis strategy, not a list") as caught:
            check_distribute(HASH_PUZZLE, results=[{"n": 1}])  # type: ignore[arg-type]
        assert "st.sampled_from" in (caught.value.hint or "")


class TestFakeClock:
    """A slot clock tests move by hand."""

    def test_starts_at_the_given_slot_and_moves_by_whole_slots(self) -> None:
        """set_slot and advance move it; the time is the first millisecond of the slot."""
        clock = FakeClock(12, slot_ms=400)
        assert clock.slot == clock.get_slot() == 12
        clock.advance(3)
        assert clock.slot == 15
        assert clock.clock.now_ms() == 15 * 400
        clock.set_slot(2)
        assert clock.slot == 2

    def test_waiting_for_a_slot_moves_the_clock_there_at_once(self) -> None:
        """A hook that waits on it returns immediately, at the slot it waited for."""
        clock = FakeClock(5)
        clock.wait_for_slot(9)
        assert clock.slot == 9
        clock.wait_for_slot(3)  # a slot in the past: no wait, no move back
        assert clock.slot == 9

    @pytest.mark.parametrize(
        ("make", "said"),
        [
            pytest.param(lambda: FakeClock(-5), "slot -5 is before the first slot", id="new"),
            pytest.param(lambda: FakeClock(3).set_slot(-1), "slot -1 is before", id="set_slot"),
            pytest.param(lambda: FakeClock(3).advance(-2), "advance(-2) would move", id="advance"),
        ],
    )
    def test_a_slot_before_the_first_is_refused_not_shown_as_slot_0(
        self, make: Callable[[], object], said: str
    ) -> None:
        """A clock never shows slot 0 for a slot it was asked to be before it."""
        with pytest.raises(ConfigError, match=re.escape(said)) as raised:
            make()
        assert raised.value.hint


class TestCallingHooks:
    """call_execute, call_audit, call_distribute: one hook, one node, chosen slots."""

    def test_execute_runs_as_the_node_in_the_round_a_slot_after_it_starts(
        self, tmp_path: Path
    ) -> None:
        """Defaults put a node one slot after the round's first; node numbers are node ids."""
        task_dir = write_task(tmp_path / "hooks", HOOKS)
        result = call_execute(task_dir, round=3, node=2)
        assert result == {"node": node_id(2), "round": 3, "slot": 31, "seen": 1}

    def test_execute_reads_the_clock_and_store_it_is_given(self, tmp_path: Path) -> None:
        """A shared store carries a node's state between calls; a clock sets the slot."""
        task_dir = write_task(tmp_path / "hooks", HOOKS)
        ctx = context(task_dir)
        first = call_execute(task_dir, store=ctx.store, clock=FakeClock(77))
        second = call_execute(task_dir, store=ctx.store, slot=78)
        assert isinstance(first, dict)
        assert isinstance(second, dict)
        assert (first["slot"], first["seen"]) == (77, 1)
        assert (second["slot"], second["seen"]) == (78, 2)

    def test_node_ids_are_valid_and_the_same_every_run(self) -> None:
        """node_id(n) is a base58 ed25519 public key, fixed for n, distinct across n."""
        from pydantic import TypeAdapter  # noqa: PLC0415

        ids = [node_id(n) for n in range(5)]
        assert len(set(ids)) == 5
        assert all(TypeAdapter(NodeId).validate_python(i) == i for i in ids)
        assert node_id(3) == ids[3]

    def test_submission_views_carry_the_slots_a_round_would_give(self) -> None:
        """Asked at the round's first slot, answered a slot later unless told otherwise."""
        view = submission(HASH_PUZZLE, {"x": 1}, round=2, node=1, response_slot=23)
        assert (view.node_id, view.round, view.request_slot, view.response_slot) == (
            node_id(1),
            2,
            20,
            23,
        )
        assert (view.completion_slots, view.completion_ms) == (3, 1200)

    def test_audit_judges_a_submission_on_another_node(self, tmp_path: Path) -> None:
        """call_audit runs the audit hook; a result naming another node fails."""
        task_dir = write_task(tmp_path / "hooks", HOOKS)
        result = call_execute(task_dir, node=0)
        assert call_audit(task_dir, submission(task_dir, result, node=0))
        assert not call_audit(task_dir, submission(task_dir, result, node=4))

    @pytest.mark.parametrize(
        ("returned", "said"),
        [
            pytest.param("(1, 2)", "returned a tuple (JSON has lists", id="tuple"),
            pytest.param('float("nan")', "returned NaN or an infinity", id="nan"),
            pytest.param("{1, 2}", "returned a value that is not JSON", id="set"),
        ],
    )
    def test_execute_fails_on_a_result_a_round_would_not_take(
        self, tmp_path: Path, returned: str, said: str
    ) -> None:
        """A result that would cost the node its round in a real one fails call_execute with
        the round's own message, so a unit test cannot pass on it."""
        task_dir = write_task(
            tmp_path / "shaped",
            HOOKS.replace(
                'return {"node": ctx.node_id,', f"return {returned}\n    {{'node': ctx.node_id,"
            ),
        )
        with pytest.raises(HookFailed, match=re.escape(said)):
            call_execute(task_dir, node=0)

    def test_audit_fails_on_a_verdict_that_is_not_a_bool(self, tmp_path: Path) -> None:
        """An audit hook returning "yes" is no vote in a round; call_audit says so instead of
        letting `assert call_audit(...)` pass on a truthy string."""
        task_dir = write_task(
            tmp_path / "yes", HOOKS.replace("return submission.result[", 'return "yes"  # ')
        )
        answer = call_execute(task_dir, node=0)
        with pytest.raises(HookFailed, match="returned str, not bool"):
            call_audit(task_dir, submission(task_dir, answer, node=0))

    def test_audit_of_an_answer_not_wrapped_in_a_submission_says_how_to_wrap_it(self) -> None:
        """Passing call_execute's answer straight to call_audit names the mistake."""
        answer = call_execute(HASH_PUZZLE, node=0)
        with pytest.raises(ConfigError, match="judges a submission, not a dict") as caught:
            call_audit(HASH_PUZZLE, answer)  # type: ignore[arg-type]
        assert "submission(TASK, answer" in (caught.value.hint or "")

    def test_a_submission_of_what_no_round_could_carry_is_refused(self) -> None:
        """submission() of a result no node could send (a set) is refused, naming it."""
        with pytest.raises(ConfigError, match="submission result holds a value that is not JSON"):
            submission(HASH_PUZZLE, {"x": {1, 2}}, node=0)

    def test_distribute_without_a_hook_is_the_default_equal_split(self) -> None:
        """The hash puzzle has no distribute hook: call_distribute gives Koii's equal split."""
        views = [submission(HASH_PUZZLE, None, node=n) for n in range(3)]
        credits = call_distribute(HASH_PUZZLE, views, 10)
        assert sorted(credits.values()) == [3, 3, 4]
        assert set(credits) == {v.node_id for v in views}


class TestCheckDistribute:
    """check_distribute: the rules of a distribute hook, on many drawn rounds, in one line."""

    @pytest.mark.parametrize(("body", "message"), BROKEN_HOOKS)
    def test_a_hook_that_breaks_a_rule_fails_with_the_rule_and_the_inputs(
        self, tmp_path: Path, body: str, message: str
    ) -> None:
        """The AssertionError names the broken rule, the task and the inputs that break it."""
        task_dir = scored_task(tmp_path, body)
        with pytest.raises(AssertionError, match=message) as caught:
            check_distribute(task_dir, max_examples=40)
        assert str(caught.value).startswith("distribute hook of test-task ")
        assert "inputs: round" in str(caught.value)

    @pytest.mark.parametrize(
        "task_dir",
        [
            pytest.param(HASH_PUZZLE, id="default-equal-split"),
            pytest.param(None, id="stake-and-vote-weighted-hook"),
        ],
    )
    def test_a_hook_that_keeps_the_rules_passes(
        self, tmp_path: Path, task_dir: Path | None
    ) -> None:
        """Integer shares of at most the bounty, to approved nodes, the same on every node."""
        check_distribute(task_dir or scored_task(tmp_path, GOOD_HOOK), max_examples=40)

    @pytest.mark.filterwarnings("error::hypothesis.errors.HypothesisDeprecationWarning")
    def test_another_thread_drawing_from_random_does_not_fail_the_check(self) -> None:
        """Prefect's and Dask's background threads draw jitter from the global random
        generator; while one does, a deterministic hook still passes in a suite that makes
        warnings errors (this spec undoes pyproject.toml's own filter for that warning)."""
        stop = threading.Event()

        def jitter() -> None:
            while not stop.is_set():
                random.random()  # what a retry's backoff does
                time.sleep(0)

        thread = threading.Thread(target=jitter, daemon=True)
        thread.start()
        try:
            check_distribute(HASH_PUZZLE, max_examples=40)
        finally:
            stop.set()
            thread.join()

    def test_results_can_be_drawn_instead_of_executed(self, tmp_path: Path) -> None:
        """With results=, execute never runs: a hook reading the result's shape is checked."""
        body = (
            "return {s.node_id: bounty // len(approved) if s.result['ok'] else 0 for s in approved}"
        )
        task_dir = scored_task(tmp_path, body)
        check_distribute(
            task_dir, max_examples=30, results=st.fixed_dictionaries({"ok": st.booleans()})
        )

    def test_an_audit_that_rejects_every_honest_answer_is_reported(self, tmp_path: Path) -> None:
        """When no drawn answer passes the task's own audit, the check says so and why."""
        task_dir = write_task(
            tmp_path / "strict",
            SCORED.replace("{BODY}", "    return {}").replace(
                "return submission.result == {", "return False and submission.result == {"
            ),
        )
        with pytest.raises(AssertionError, match="rejected every answer its execute hook made"):
            check_distribute(task_dir, max_examples=10)

    def test_without_hypothesis_the_error_says_what_to_install(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Hypothesis is an extra: missing, the check raises a ConfigError with the pip line."""
        monkeypatch.setitem(sys.modules, "hypothesis", None)
        with pytest.raises(ConfigError, match="needs hypothesis") as caught:
            check_distribute(HASH_PUZZLE)
        assert caught.value.hint is not None
        assert "koiitasks[testing]" in caught.value.hint
