"""A koiitasks task: what every node does each round, how other nodes check it, who is paid.

Replace ``work`` with the task's real work; keep execute's result small (a hash, an id, a
number) and make sure another node can check it in ``audit``. Run it and test it::

    koiitasks run . --nodes 10 --rounds 3 --plain
    pytest
"""

from __future__ import annotations

import hashlib

from koiitasks import Context, SubmissionView, Task

task = Task()


def work(task_id: str, round_number: int, node_id: str) -> str:
    """The work itself. Binding it to the round and the node stops replays and copying."""
    return hashlib.sha256(f"{task_id}:{round_number}:{node_id}".encode()).hexdigest()


@task.execute
def execute(ctx: Context) -> dict[str, str]:
    """Runs on every node each round; its JSON result is signed and submitted."""
    ctx.log.info("node %s works on round %d at slot %d", ctx.node_id, ctx.round, ctx.get_slot())
    return {"answer": work(ctx.task_id, ctx.round, ctx.node_id)}


@task.audit
def audit(ctx: Context, submission: SubmissionView) -> bool:
    """Runs on the nodes chosen to audit a submission: True when it is valid."""
    expected = work(ctx.task_id, submission.round, submission.node_id)
    return submission.result == {"answer": expected}


@task.distribute
def distribute(ctx: Context, approved: list[SubmissionView], bounty: int) -> dict[str, int]:
    """Splits the round's bounty among the approved nodes.

    The rules (check_distribute in tests/ checks them): whole numbers, at most ``bounty`` in
    all, only approved nodes, and the same list on every node, since other nodes recompute
    it. Delete this hook to get the default, an equal split.
    """
    share, remainder = divmod(bounty, len(approved))
    ordered = sorted(s.node_id for s in approved)
    return {node: share + (1 if i < remainder else 0) for i, node in enumerate(ordered)}
