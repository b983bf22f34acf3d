"""Monitor API health: the REST task of Koii's "Task Development Concepts".

Each round, every node calls a target HTTP API and reports its status and latency, stamped with
the slot it checked in. Auditors check the stamps against what the orchestrator measured, then
spot-check the target themselves:

- the check happened between the request's slot and the node's answer's slot;
- the latency the node reports fits inside the completion time the orchestrator measured from
  its own clock (a node cannot claim a call took longer than its whole answer did);
- the answer came within ``MAX_COMPLETION_SLOTS`` slots: a monitor that answers late is no use;
- the target is up or down for the auditor as the node said it was.

The target's URL comes from ``API_HEALTH_TARGET`` (as Koii's task variables come from the
environment); ``target.py`` next to this file is a service to point it at.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import httpx

from koiitasks import Context, SubmissionView, Task

TARGET_ENV = "API_HEALTH_TARGET"
DEFAULT_TARGET = "http://127.0.0.1:8900/health"
TIMEOUT_S = 2.0
MAX_COMPLETION_SLOTS = 5
FIELDS = {"target": str, "status": int, "latency_ms": float, "checked_slot": int}

task = Task()


def target_url() -> str:
    return os.environ.get(TARGET_ENV, DEFAULT_TARGET)


# One client for the process, made once: making one (TLS context and all) takes longer than a
# call on loopback, and is no part of the target's latency.
_client = httpx.Client(timeout=TIMEOUT_S, trust_env=False)


def probe(url: str) -> tuple[int, float]:
    """The target's HTTP status (0: unreachable) and how long the call took, in ms."""
    started = time.perf_counter()  # a duration, not a time of day: the slot clock is for those
    try:
        status = _client.get(url).status_code
    except httpx.HTTPError:
        status = 0
    return status, round((time.perf_counter() - started) * 1000, 3)


def is_up(status: int) -> bool:
    return 200 <= status < 300


@task.execute
def execute(ctx: Context) -> dict[str, Any]:
    checked_slot = ctx.get_slot()
    url = target_url()
    status, latency_ms = probe(url)
    result = {
        "target": url,
        "status": status,
        "latency_ms": latency_ms,
        "checked_slot": checked_slot,
    }
    ctx.store.set("last", json.dumps(result))
    return result


def _spot_check(ctx: Context) -> int:
    """The auditor's own view of the target: one call per round, whatever it audits."""
    key = f"spot-check/{ctx.round}"
    seen = ctx.store.get(key)
    if seen is None:
        seen = str(probe(target_url())[0])
        ctx.store.set(key, seen)
    return int(seen)


@task.audit
def audit(ctx: Context, submission: SubmissionView) -> bool:
    result = submission.result
    if not isinstance(result, dict) or set(result) != set(FIELDS):
        return False
    if not all(isinstance(result[name], kind) for name, kind in FIELDS.items()):
        return False
    if result["target"] != target_url():
        return False
    checked = result["checked_slot"]
    assert isinstance(checked, int)
    if not submission.request_slot <= checked <= submission.response_slot:
        return False
    latency = result["latency_ms"]
    assert isinstance(latency, float)
    if not 0 <= latency <= submission.completion_ms:
        return False
    if submission.completion_slots > MAX_COMPLETION_SLOTS:
        return False
    status = result["status"]
    assert isinstance(status, int)
    return is_up(status) == is_up(_spot_check(ctx))


@task.routes
def routes(app: Any) -> None:
    """``GET /api-health/{node_id}``: what that node saw last."""

    @app.get("/api-health/{node_id}")  # type: ignore[untyped-decorator]
    def last(node_id: str) -> Any:
        stored = app.state.stores[node_id].get("last") if node_id in app.state.stores else None
        return json.loads(stored) if stored else {"last": None}
