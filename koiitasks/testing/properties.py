"""A property-based check of a task's distribute hook, in one line of the author's test::

    from koiitasks.testing import check_distribute

    def test_distribute_keeps_the_rules():
        check_distribute("path/to/task")

Hypothesis draws rounds as a round would hand them to the hook (a bounty, from 1 to
``max_nodes`` approved submissions with their slots, stakes and votes) and checks that the hook:

1. conserves the bounty: it pays at most ``bounty`` in all;
2. pays only approved nodes, never one that is unknown or was not approved;
3. pays integers (base units), never fractions, never negative amounts;
4. is deterministic: another node, at another slot, with its own store, computes exactly the
   same list (Koii's auditors recompute the list and vote on an exact match).

A failure raises :class:`AssertionError` with the smallest counterexample hypothesis finds.
By default the submissions' results are made by the task's own execute hook, at slots a node
would answer in, and kept only when the task's audit hook approves them, so the hook sees what
a real round gives it. Pass ``results=`` (a hypothesis strategy of JSON values) when execute is
slow or reaches the network.

Hypothesis is imported when the check runs, not before: it ships with the ``testing`` extra
(``pip install 'koiitasks[testing]'``), which every author's test environment installs; the
runtime does not need it.
"""

from __future__ import annotations

import functools
import random
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import JsonValue

from koiitasks.distribution import ApprovedNode, DistributionInputs, check_credits, equal_split
from koiitasks.errors import ConfigError
from koiitasks.task import Context, LoadedTask, NodeStore, SubmissionView, load_task
from koiitasks.testing.hooks import FakeClock, context, node_id, schedule_of

if TYPE_CHECKING:
    from hypothesis.strategies import SearchStrategy

#: Bounties worth trying whatever the config says: none left, one unit, small primes.
EDGE_BOUNTIES = (0, 1, 2, 3, 7, 1_000_000_007)

_UNAUDITABLE = (
    "the audit hook of {directory} rejected every answer its execute hook made, so no "
    "distribution could be drawn; check that honest answers pass audit (call_execute, then "
    "call_audit), or pass results= to check_distribute"
)

INSTALL_HINT = "pip install 'koiitasks[testing]' (or pip install hypothesis)"


def check_distribute(
    task_dir: Path | str,
    *,
    max_examples: int = 100,
    max_nodes: int = 12,
    results: SearchStrategy[JsonValue] | None = None,
    derandomize: bool = True,
) -> None:
    """Check a task's distribute hook on many drawn rounds; raise AssertionError on a breach.

    ``derandomize`` (the default) draws the same examples every run, so a suite never flakes;
    turn it off to explore further.
    """
    try:
        from hypothesis import HealthCheck, given, settings  # noqa: PLC0415 - optional extra
        from hypothesis.errors import Flaky, Unsatisfiable  # noqa: PLC0415
    except ImportError as e:
        raise ConfigError(
            "check_distribute needs hypothesis, which is not installed", hint=INSTALL_HINT
        ) from e
    from hypothesis.strategies import SearchStrategy  # noqa: PLC0415

    if results is not None and not isinstance(results, SearchStrategy):
        raise ConfigError(
            f"results= takes a hypothesis strategy, not a {type(results).__name__}",
            hint="draw them, e.g. results=st.fixed_dictionaries({'n': st.integers(0, 9)}); "
            "for a fixed list of results, results=st.sampled_from([...])",
        )
    loaded = load_task(task_dir)
    if results is None and _honest_answer(loaded, node_id(0), 0, 1) is None:
        raise AssertionError(_UNAUDITABLE.format(directory=loaded.directory))
    draw_inputs = _inputs_strategy(loaded, max_nodes=max_nodes, results=results)

    @settings(
        max_examples=max_examples,
        deadline=None,
        derandomize=derandomize,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        report_multiple_bugs=False,  # one AssertionError, the simplest breach, not a group
    )
    @given(inputs=draw_inputs)
    def distribute_keeps_the_rules(inputs: DistributionInputs) -> None:
        check_once(loaded, inputs)

    try:
        with warnings.catch_warnings():
            # Hypothesis warns when the global random generator moves while it draws. In a
            # process where Prefect or Dask run background threads (their retries draw jitter
            # from it), that happens without the hook's doing; with warnings as errors it
            # failed the example once and then not again. The hook's own determinism is what
            # the replay below checks.
            warnings.filterwarnings(
                "ignore", message=r"Do not use the `random` module inside strategies"
            )
            distribute_keeps_the_rules()
    except Flaky as e:  # failed once, then not on the same inputs: chance decides the list
        raise AssertionError(
            f"distribute hook of {loaded.task_id} is not deterministic: it broke a rule once and "
            f"not when given the same inputs again; it must depend only on its arguments: {e}"
        ) from e
    except Unsatisfiable as e:
        raise AssertionError(_UNAUDITABLE.format(directory=loaded.directory)) from e


def check_once(loaded: LoadedTask, inputs: DistributionInputs) -> None:
    """The four rules on one set of inputs; AssertionError naming the breach and the inputs."""
    hook = loaded.task.distribute_hook or _default_hook
    views = inputs.views()
    ids = [v.node_id for v in views]
    schedule = schedule_of(loaded)
    slot_ms = loaded.config.slot_ms
    where = (
        f"round {inputs.round}, bounty {inputs.bounty}, {len(ids)} approved nodes {ids}"
        f" (stakes {[v.stake for v in views]}, response slots {[v.response_slot for v in views]})"
    )
    builder, auditor = ids[0], ids[1] if len(ids) > 1 else node_id(10_000)
    built_at = schedule.distribution_window_of(inputs.round).start
    audited_at = schedule.distribution_audit_window_of(inputs.round).start
    credits = _call(hook, loaded, inputs, views, builder, built_at, where, slot_ms)
    reason = check_credits(credits, inputs)
    if reason is not None:
        raise AssertionError(
            f"distribute hook of {loaded.task_id} breaks a rule: {reason}\n"
            f"  inputs: {where}\n  returned: {credits!r}"
        )
    again = _call(hook, loaded, inputs, inputs.views(), auditor, audited_at, where, slot_ms)
    if again != credits:
        raise AssertionError(
            f"distribute hook of {loaded.task_id} is not deterministic: node {builder[:8]} at "
            f"slot {built_at} computed {credits!r}, node {auditor[:8]} at slot {audited_at} "
            f"computed {again!r} from the same inputs; auditors recompute the list and reject "
            "it unless it matches exactly, so it must depend only on its arguments (no random, "
            f"no clock, no node store)\n  inputs: {where}"
        )


def _default_hook(ctx: Context, views: list[SubmissionView], bounty: int) -> dict[str, int]:
    """The engine's equal split when a task has no distribute hook, checked by the same rules."""
    return equal_split((v.node_id for v in views), bounty, salt=f"{ctx.task_id}/{ctx.round}")


def _call(
    hook: Any,
    loaded: LoadedTask,
    inputs: DistributionInputs,
    views: list[SubmissionView],
    node: str,
    slot: int,
    where: str,
    slot_ms: int,
) -> object:
    ctx = context(
        loaded.directory,
        round=inputs.round,
        node=node,
        clock=FakeClock(slot, slot_ms=slot_ms),
        store=NodeStore(),
    )
    # Hypothesis starts every example with the same `random` state; give each node its own,
    # as two machines would have, so a hook that draws from `random` is caught.
    state = random.getstate()
    random.seed(f"{node}/{slot}")
    try:
        return hook(ctx, views, inputs.bounty)
    except Exception as e:
        raise AssertionError(
            f"distribute hook of {loaded.task_id} raised {type(e).__name__}: {e}\n  inputs: {where}"
        ) from e
    finally:
        random.setstate(state)


def _inputs_strategy(
    loaded: LoadedTask, *, max_nodes: int, results: SearchStrategy[JsonValue] | None
) -> SearchStrategy[DistributionInputs]:
    """Distribute inputs as a round makes them: sorted approved nodes, slots in the window."""
    from hypothesis import assume  # noqa: PLC0415 - check_distribute made sure it is there
    from hypothesis import strategies as st  # noqa: PLC0415

    config = loaded.config
    schedule = schedule_of(loaded)
    pool = [node_id(i) for i in range(2 * max_nodes)]
    k = config.auditors_per_submission
    honest = functools.lru_cache(maxsize=4096)(functools.partial(_honest_answer, loaded))
    # Few draws per node keep an example cheap: (for, against) pairs that approve, a few stakes.
    votes = st.sampled_from([(f, a) for a in range(k) for f in range(a + 1, k + 1)])
    minimum = config.minimum_stake_amount
    stakes = st.one_of(
        st.sampled_from((minimum, minimum + 1, 3 * minimum + 7)), st.integers(minimum, 10**15)
    )

    @st.composite
    def draw(draw: st.DrawFn) -> DistributionInputs:
        round_number = draw(st.integers(0, 1_000))
        bounty = draw(
            st.one_of(
                st.sampled_from((config.bounty_amount_per_round, *EDGE_BOUNTIES)),
                st.integers(0, config.bounty_amount_per_round * 10),
            )
        )
        some = st.lists(st.sampled_from(pool), min_size=1, max_size=max_nodes, unique=True)
        ids = sorted(draw(some))
        request_slot = schedule.round_start(round_number)
        approved = []
        for node in ids:
            delay = draw(st.integers(0, 3))
            if results is None:
                answer = honest(node, round_number, delay)
                if answer is None:
                    continue  # the task's audit would not approve it: not a distribute input
                result, response_slot = answer
            else:
                result, response_slot = draw(results), request_slot + delay
            votes_for, votes_against = draw(votes)
            completion_slots = response_slot - request_slot
            approved.append(
                ApprovedNode(
                    node_id=node,
                    stake=draw(stakes),
                    result=result,
                    request_slot=request_slot,
                    response_slot=response_slot,
                    completion_slots=completion_slots,
                    # received within the answer's slot, some way into it
                    completion_ms=completion_slots * config.slot_ms + (delay * 97) % config.slot_ms,
                    votes_for=votes_for,
                    votes_against=votes_against,
                )
            )
        assume(approved)  # a round with no approved node builds no list
        return DistributionInputs(
            task_id=loaded.task_id,
            round=round_number,
            bounty=bounty,
            approved=tuple(approved),
            slashes={},
        )

    return draw()


def _honest_answer(
    loaded: LoadedTask, node: str, round_number: int, delay: int
) -> tuple[JsonValue, int] | None:
    """What ``node`` answers when it starts ``delay`` slots into the round, and the slot it
    answers in; None when the task's own audit would reject it."""
    from koiitasks.testing.hooks import call_audit, call_execute, submission  # noqa: PLC0415

    schedule = schedule_of(loaded)
    clock = FakeClock(schedule.round_start(round_number) + delay, slot_ms=loaded.config.slot_ms)
    try:
        result = call_execute(loaded.directory, round=round_number, node=node, clock=clock)
    except Exception as e:
        raise AssertionError(
            f"execute hook of {loaded.task_id} raised {type(e).__name__}: {e} on node {node} in "
            f"round {round_number} while making answers for distribute; pass results= to "
            "check_distribute to draw results instead"
        ) from e
    view = submission(
        loaded.directory, result, round=round_number, node=node, response_slot=clock.slot
    )
    if not call_audit(loaded.directory, view, node=node_id(10_001)):
        return None
    return result, clock.slot
