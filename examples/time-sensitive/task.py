"""A time-sensitive task: every node takes a reading at one slot of each round.

The seed's advice for time-sensitive tasks is to act at specific slots using ``getSlot``; here
each node waits for slot ``SNAPSHOT_SLOT`` of the round (``ctx.get_slot()`` and the node's slot
clock), reads a value that depends on that slot, and stamps the answer with it. Auditors check:

- the stamp in the result is the slot the node signed its answer in (``response_slot``);
- that slot lies in the snapshot window: ``SNAPSHOT_SLOT`` to ``SNAPSHOT_SLOT + TOLERANCE``;
- the orchestrator received the answer no later than one slot after the window (it records
  ``completion_slots`` itself, so a node cannot claim an earlier slot than it answered in);
- the reading is what the feed said at that slot.

Distribute pays a reading taken on the snapshot slot twice the weight of one taken a slot late.
``reading`` stands in for a real feed (a price, a sensor); a real task would fetch it, and its
auditors would compare it with their own record of the feed at that slot.
"""

from __future__ import annotations

import hashlib

from koiitasks import Context, SubmissionView, Task

SNAPSHOT_SLOT = 2  # the slot of each round, counted from its first, when the reading is due
TOLERANCE = 1  # slots after SNAPSHOT_SLOT that still count, with a smaller share

task = Task()


class MissedSnapshotError(RuntimeError):
    """The node reached the round after its snapshot window closed: it does not answer."""


def snapshot_window(ctx: Context, round_number: int) -> tuple[int, int]:
    """The first and last slot at which round ``round_number``'s reading may be taken."""
    first = ctx.schedule.round_start(round_number) + SNAPSHOT_SLOT
    return first, first + TOLERANCE


def reading(task_id: str, slot: int) -> int:
    """The feed's value at ``slot``: a stand-in that every node and auditor can recompute."""
    digest = hashlib.sha256(f"{task_id}:feed:{slot}".encode()).digest()
    return 100_000 + int.from_bytes(digest[:4]) % 1_000


@task.execute
def execute(ctx: Context) -> dict[str, int]:
    first, last = snapshot_window(ctx, ctx.round)
    if ctx.get_slot() < first:
        ctx.slot_clock.wait_for_slot(first)  # sleeps on the wall clock; instant in the sandbox
    slot = ctx.get_slot()
    if slot > last:
        raise MissedSnapshotError(
            f"node {ctx.node_id} reached slot {slot}, after round {ctx.round}'s snapshot window "
            f"(slots {first}..{last})"
        )
    return {"slot": slot, "reading": reading(ctx.task_id, slot)}


@task.audit
def audit(ctx: Context, submission: SubmissionView) -> bool:
    result = submission.result
    if not isinstance(result, dict):
        return False
    slot, value = result.get("slot"), result.get("reading")
    if not isinstance(slot, int) or not isinstance(value, int):
        return False
    first, last = snapshot_window(ctx, submission.round)
    received = submission.request_slot + submission.completion_slots
    return (
        slot == submission.response_slot
        and first <= slot <= last
        and received <= last + 1
        and value == reading(ctx.task_id, slot)
    )


@task.distribute
def distribute(ctx: Context, approved: list[SubmissionView], bounty: int) -> dict[str, int]:
    """Shares weighted by punctuality: TOLERANCE + 1 on the snapshot slot, 1 at the last."""
    weights = {}
    for s in approved:
        first, last = snapshot_window(ctx, s.round)
        weights[s.node_id] = max(1, last + 1 - min(max(s.response_slot, first), last + 1))
    total = sum(weights.values())
    credits = {node: bounty * w // total for node, w in weights.items()}
    # The units integer division leaves go one each to the most punctual, then by node id.
    leftover = bounty - sum(credits.values())
    for node in sorted(weights, key=lambda n: (-weights[n], n))[:leftover]:
        credits[node] += 1
    return credits
