"""Specifications of the security promises: who may ask, who is paid, caps, keys, logs."""

from __future__ import annotations

from pathlib import Path

import pytest

from koiitasks.ingest import ENVELOPE_BYTES, VOTE_BYTES
from koiitasks.model import Outcome
from koiitasks.protocol import Vote
from koiitasks.replay import verify_task
from koiitasks.sandbox import Sandbox
from koiitasks.storage import Layout
from koiitasks.testing import figures, sandbox, write_task
from koiitasks.testing.hostile import Answer, Call, HostilePool, Phase, resign

TASK = "test-task"
Answers = dict[str, dict[Phase, Answer]]
ECHO_TASK = """
from koiitasks import Task

task = Task()

@task.execute
def execute(ctx):
    return {"node": ctx.node_id, "round": ctx.round}

@task.audit
def audit(ctx, submission):
    return submission.result == {"node": submission.node_id, "round": submission.round}
"""


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_task(tmp_path_factory.mktemp("security") / "echo", ECHO_TASK)


def hostile(task_dir: Path, phase: Phase, answer: Answer, *, nodes: int = 7) -> tuple[Sandbox, str]:
    """A sandbox in which one node (the first by id) answers ``phase`` calls with ``answer``."""
    box = sandbox(task_dir, nodes=nodes, seed=9, workers=1)
    node = sorted(box.network.nodes)[0]
    HostilePool.install(box.engine, {node: {phase: answer}})
    return box, node


def padded_report(call: Call) -> bytes:
    """The node's honest audit report with its votes repeated far past its share."""
    votes: tuple[Vote, ...] = call.record().body.votes
    return resign(call, votes=votes * (4 * VOTE_BYTES))


def chatty_list_vote(call: Call) -> bytes:
    """An honest list vote whose reason is a megabyte of text."""
    return resign(call, reason="x" * 1_000_000)


def bloated_list(call: Call) -> bytes:
    """The first builder's list with credits for ten thousand made-up nodes."""
    listed = call.record().body
    if listed.attempt > 0:
        return resign(call)
    return resign(call, credits={**listed.credits, **{f"n{i:040d}": 0 for i in range(10_000)}})


class TestReplySizeCaps:
    """A node cannot make the orchestrator parse or store more than its share."""

    def test_an_audit_report_over_its_cap_is_dropped(self, task_dir: Path) -> None:
        """A report padded far past its votes' room is neither counted nor stored; the round
        settles on the other auditors' votes."""
        box, node = hostile(task_dir, "audit", padded_report)
        result = box.run_round(0)
        assert box.store.read_or_none(Layout(TASK).audit(0, node)) is None
        assert result.distribution_accepted
        assert all(n.outcome == Outcome.APPROVED for n in result.nodes.values())
        verify_task(box.store, TASK)
        figures.record("security_checks")

    def test_a_list_vote_over_its_cap_is_dropped(self, task_dir: Path) -> None:
        """A list vote with a megabyte of reason is not stored or counted."""
        box = sandbox(task_dir, nodes=7, seed=9, workers=1)
        answers: Answers = {n: {"distribution-audit": chatty_list_vote} for n in box.network.nodes}
        HostilePool.install(box.engine, answers)
        result = box.run_round(0)
        assert box.store.list(Layout(TASK).distribution_audits(0, 0)) == []
        assert not result.distribution_accepted
        assert any("no auditor answered" in reason for reason in result.reasons)
        figures.record("security_checks")

    def test_a_distribution_list_over_its_cap_is_refused_before_it_is_stored(
        self, task_dir: Path
    ) -> None:
        """A list bloated with ten thousand made-up nodes is refused unparsed and unstored;
        another builder's list is paid."""
        box = sandbox(task_dir, nodes=7, seed=9, workers=1)
        answers: Answers = {n: {"distribution": bloated_list} for n in box.network.nodes}
        HostilePool.install(box.engine, answers)
        result = box.run_round(0)
        stored = [len(box.store.read(k)) for k in box.store.list(Layout(TASK).distributions(0))]
        assert stored
        assert all(size < ENVELOPE_BYTES + 128 * 8 for size in stored)
        assert result.distribution_accepted
        assert result.attempts == 2
        figures.record("security_checks")
