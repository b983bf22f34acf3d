"""Call a task's hooks directly, one at a time, on a fake clock: unit tests for task authors.

:func:`run_rounds` answers "does the task work on many nodes?"; these answer "what does my
hook do at this slot, for this node?", without a round around it::

    from koiitasks.testing import FakeClock, call_audit, call_execute, submission

    result = call_execute(TASK, round=3, node=0)                  # node 0, a slot into round 3
    assert call_audit(TASK, submission(TASK, result, round=3, node=0), node=1)

    clock = FakeClock(slot=45)                                    # any slot you like
    ctx = context(TASK, round=4, clock=clock)
    clock.advance(2)                                              # ctx.get_slot() is now 47

Nodes are named by a small number (``node=0``) or a full node id; :func:`node_id` turns the one
into the other, the same ids every run. Slots default to where a round puts each hook: execute a
slot after the round starts, audit at the audit window, distribute at the distribution window.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any

from pydantic import JsonValue

from koiitasks.clock import Schedule, SimulatedClock, SlotClock
from koiitasks.distribution import default_distribute
from koiitasks.errors import ConfigError
from koiitasks.identity import Keypair
from koiitasks.nodes.runtime import JSON_TYPES, HookFailed, json_problem
from koiitasks.task import Context, LoadedTask, NodeStore, SubmissionView, load_task

NodeRef = int | str
"""A node: a small number (see :func:`node_id`) or a node id."""


class FakeClock(SlotClock):
    """A slot clock that moves only when told to; waiting on it moves it there at once.

    A hook that waits for a slot (``ctx.slot_clock.wait_for_slot(n)``) returns at once with the
    clock at ``n``, as in the sandbox.
    """

    def __init__(self, slot: int = 0, *, slot_ms: int = 400, genesis_ms: int = 0) -> None:
        self.simulated = SimulatedClock(genesis_ms + _first_or_later(slot) * slot_ms)
        super().__init__(self.simulated, genesis_ms=genesis_ms, slot_ms=slot_ms)

    @property
    def slot(self) -> int:
        """The current slot."""
        return self.get_slot()

    def set_slot(self, slot: int) -> None:
        """Put the clock at the first millisecond of ``slot`` (backwards too)."""
        self.simulated.set_ms(self.ms_of_slot(_first_or_later(slot)))

    def advance(self, slots: int = 1) -> None:
        """Move the clock forward by whole slots."""
        if slots < 0:
            raise ConfigError(
                f"advance({slots}) would move the clock backwards",
                hint="advance moves forward; set_slot(n) puts the clock at any slot",
            )
        self.simulated.advance(slots * self.slot_ms)


def _first_or_later(slot: int) -> int:
    """``slot``, refused if it is before slot 0 (which the clock would show instead)."""
    if slot < 0:
        raise ConfigError(
            f"slot {slot} is before the first slot of the clock",
            hint="slots count from 0 at genesis_ms",
        )
    return slot


@functools.lru_cache(maxsize=1024)
def node_id(index: int) -> str:
    """A valid node id for a small number: the same id for the same number in every run."""
    return Keypair.from_seed(f"koiitasks-testing/node/{index}".encode()).public_id


def _node(node: NodeRef) -> str:
    return node_id(node) if isinstance(node, int) else node


def schedule_of(loaded: LoadedTask, starting_slot: int = 0) -> Schedule:
    """The task's schedule, counted from ``starting_slot``."""
    config = loaded.config
    return Schedule(
        starting_slot=starting_slot,
        round_time=config.round_time,
        submission_window=config.submission_window,
        audit_window=config.audit_window,
    )


def context(
    task_dir: Path | str,
    *,
    round: int = 0,  # noqa: A002 - the hook's own word for it (ctx.round)
    node: NodeRef = 0,
    slot: int | None = None,
    clock: SlotClock | None = None,
    store: NodeStore | None = None,
) -> Context:
    """What a hook of ``task_dir`` is given on ``node`` in ``round``.

    The clock is ``clock`` if given, else a :class:`FakeClock` at ``slot`` (default: one slot
    after the round's first, when a node answers). Pass the same ``store`` to several calls to
    let them share a node's key-value store.
    """
    loaded = load_task(task_dir)
    schedule = schedule_of(loaded)
    if clock is None:
        at = schedule.round_start(round) + 1 if slot is None else slot
        clock = FakeClock(at, slot_ms=loaded.config.slot_ms)
    return Context(
        task_id=loaded.task_id,
        round=round,
        node_id=_node(node),
        config=loaded.config,
        slot_clock=clock,
        schedule=schedule,
        store=store if store is not None else NodeStore(),
        log=logging.getLogger(f"koiitasks.task.{loaded.task_id}"),
    )


def call_execute(
    task_dir: Path | str,
    *,
    round: int = 0,  # noqa: A002
    node: NodeRef = 0,
    slot: int | None = None,
    clock: SlotClock | None = None,
    store: NodeStore | None = None,
) -> JsonValue:
    """Run the execute hook once, as ``node`` would in ``round``; check the result is JSON."""
    loaded = load_task(task_dir)
    loaded.task.ensure_setup()
    hook = loaded.task.execute_hook
    assert hook is not None  # load_task refuses a task without one
    ctx = context(task_dir, round=round, node=node, slot=slot, clock=clock, store=store)
    result = hook(ctx)
    # What a round would make of it: a result JSON would change costs the node the round.
    if (problem := json_problem(result)) is not None:
        raise HookFailed(
            f"execute hook on node {ctx.node_id} in round {round} returned {problem}; "
            f"return JSON: {JSON_TYPES}",
            hook="execute",
            node_id=ctx.node_id,
            round_number=round,
        )
    return result


def submission(
    task_dir: Path | str,
    result: Any,
    *,
    round: int = 0,  # noqa: A002
    node: NodeRef = 0,
    response_slot: int | None = None,
    stake: int = 0,
    votes_for: int = 0,
    votes_against: int = 0,
) -> SubmissionView:
    """A submission of ``result`` (a JSON value) by ``node`` in ``round``, as audit and
    distribute see it.

    It was asked for at the round's first slot and answered at ``response_slot`` (default: one
    slot later); completion times follow from those slots.
    """
    if (problem := json_problem(result)) is not None:
        raise ConfigError(
            f"submission result holds {problem}",
            hint=f"a result is what an execute hook returns: {JSON_TYPES}",
        )
    loaded = load_task(task_dir)
    request_slot = schedule_of(loaded).round_start(round)
    answered = request_slot + 1 if response_slot is None else response_slot
    return SubmissionView(
        node_id=_node(node),
        round=round,
        result=result,
        request_slot=request_slot,
        response_slot=answered,
        completion_slots=answered - request_slot,
        completion_ms=(answered - request_slot) * loaded.config.slot_ms,
        stake=stake,
        votes_for=votes_for,
        votes_against=votes_against,
    )


def call_audit(
    task_dir: Path | str,
    submitted: SubmissionView,
    *,
    node: NodeRef = 1,
    slot: int | None = None,
    clock: SlotClock | None = None,
) -> bool:
    """Run the audit hook once on ``node`` (default: node 1) judging ``submitted``; a verdict
    that is not True or False fails as it would in a round."""
    if not isinstance(submitted, SubmissionView):
        raise ConfigError(
            f"call_audit judges a submission, not a {type(submitted).__name__}",
            hint="wrap the answer: call_audit(TASK, submission(TASK, answer, round=R, node=N))",
        )
    loaded = load_task(task_dir)
    loaded.task.ensure_setup()
    hook = loaded.task.audit_hook
    assert hook is not None
    at = schedule_of(loaded).audit_window_of(submitted.round).start if slot is None else slot
    ctx = context(task_dir, round=submitted.round, node=node, slot=at, clock=clock)
    verdict = hook(ctx, submitted)
    if not isinstance(verdict, bool):
        raise HookFailed(
            f"audit hook on node {ctx.node_id} returned {type(verdict).__name__}, not bool "
            "(a round counts that as no vote)",
            hook="audit",
            node_id=ctx.node_id,
            round_number=submitted.round,
        )
    return verdict


def call_distribute(
    task_dir: Path | str,
    approved: list[SubmissionView],
    bounty: int,
    *,
    round: int = 0,  # noqa: A002
    node: NodeRef = 0,
    slot: int | None = None,
) -> dict[str, int]:
    """Run the distribute hook once (or the default equal split when the task has none)."""
    loaded = load_task(task_dir)
    hook = loaded.task.distribute_hook
    if hook is None:
        from koiitasks.distribution import ApprovedNode, DistributionInputs  # noqa: PLC0415

        inputs = DistributionInputs(
            task_id=loaded.task_id,
            round=round,
            bounty=bounty,
            approved=tuple(
                ApprovedNode(
                    node_id=s.node_id,
                    stake=s.stake,
                    result=s.result,
                    request_slot=s.request_slot,
                    response_slot=s.response_slot,
                    completion_slots=s.completion_slots,
                    completion_ms=s.completion_ms,
                    votes_for=s.votes_for,
                    votes_against=s.votes_against,
                )
                for s in approved
            ),
            slashes={},
        )
        return default_distribute(inputs)
    at = schedule_of(loaded).distribution_window_of(round).start if slot is None else slot
    return hook(context(task_dir, round=round, node=node, slot=at), approved, bounty)
