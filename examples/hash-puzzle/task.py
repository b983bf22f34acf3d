"""Hash puzzle: costly to solve, one hash to check.

Each node looks for a nonce such that ``sha256("{task}:{round}:{node}:{nonce}")`` starts with
``DIFFICULTY`` zero hex digits. The puzzle depends on the round and the node, so an answer can
neither be reused in another round nor copied from another node.
"""

from __future__ import annotations

import hashlib

from koiitasks import Context, SubmissionView, Task

DIFFICULTY = 2  # zero hex digits: about 256 hashes to solve

task = Task()


def puzzle_digest(ctx: Context, node_id: str, nonce: int) -> str:
    return hashlib.sha256(f"{ctx.task_id}:{ctx.round}:{node_id}:{nonce}".encode()).hexdigest()


@task.execute
def execute(ctx: Context) -> dict[str, object]:
    nonce = 0
    while not (digest := puzzle_digest(ctx, ctx.node_id, nonce)).startswith("0" * DIFFICULTY):
        nonce += 1
    return {"nonce": nonce, "digest": digest}


@task.audit
def audit(ctx: Context, submission: SubmissionView) -> bool:
    result = submission.result
    if not isinstance(result, dict) or not isinstance(nonce := result.get("nonce"), int):
        return False
    digest = puzzle_digest(ctx, submission.node_id, nonce)
    return digest == result.get("digest") and digest.startswith("0" * DIFFICULTY)
