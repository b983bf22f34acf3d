"""The benchmark task: each node returns its own id and the round; auditors compare."""

from __future__ import annotations

from koiitasks import Context, SubmissionView, Task

task = Task()


@task.execute
def execute(ctx: Context) -> dict[str, object]:
    return {"node": ctx.node_id, "round": ctx.round}


@task.audit
def audit(ctx: Context, submission: SubmissionView) -> bool:
    return submission.result == {"node": submission.node_id, "round": submission.round}
