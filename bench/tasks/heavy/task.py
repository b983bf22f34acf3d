"""The scale-out benchmark's CPU-heavy task: a hash puzzle of difficulty 4.

Each node looks for a nonce such that ``sha256("{task}:{round}:{node}:{nonce}")`` starts with
four zero hex digits (about 65,000 tries); auditors check the one hash.
"""

from __future__ import annotations

import hashlib

from koiitasks import Context, SubmissionView, Task

DIFFICULTY = 4

task = Task()


def digest(ctx: Context, node_id: str, nonce: int) -> str:
    return hashlib.sha256(f"{ctx.task_id}:{ctx.round}:{node_id}:{nonce}".encode()).hexdigest()


@task.execute
def execute(ctx: Context) -> dict[str, object]:
    nonce = 0
    while not (found := digest(ctx, ctx.node_id, nonce)).startswith("0" * DIFFICULTY):
        nonce += 1
    return {"nonce": nonce, "digest": found}


@task.audit
def audit(ctx: Context, submission: SubmissionView) -> bool:
    result = submission.result
    if not isinstance(result, dict) or not isinstance(nonce := result.get("nonce"), int):
        return False
    found = digest(ctx, submission.node_id, nonce)
    return found == result.get("digest") and found.startswith("0" * DIFFICULTY)
