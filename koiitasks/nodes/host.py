"""A node host: the identities one ``koiitasks node serve`` process runs, and the checks every
call must pass before a hook runs.

A call is refused (:class:`~koiitasks.errors.RequestRefused`, with the HTTP status the server
answers with) unless:

1. it is for an identity this process serves (404);
2. it parses as the phase's call (400);
3. its task record is signed by the orchestrator key the node was started with, is for the
   node's task, and holds the same config as the node's own ``config-task.yml`` (403, 409);
4. its request is signed by that orchestrator, for this task and for the phase it was posted to
   (403, 400);
5. its phase is open now on the node's own clock, within ``skew_tolerance_slots`` (409);
6. it was not answered before: a request nonce is answered once per identity, phase and
   distribution attempt (409, replay).

Then the phase's hook runs through :class:`~koiitasks.nodes.runtime.NodeRuntime`, exactly as in
the sandbox, and the answer is the bytes of the signed record.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import JsonValue

from koiitasks.clock import Clock, Schedule, SlotClock
from koiitasks.errors import (
    ConfigError,
    NetworkMismatchError,
    RecordError,
    RequestRefused,
    SignatureError,
)
from koiitasks.identity import Keypair
from koiitasks.model import Phase
from koiitasks.network import check_task_config
from koiitasks.nodes.runtime import NodeRuntime
from koiitasks.nodes.wire import (
    AuditCall,
    Call,
    DistributionAuditCall,
    DistributionCall,
    decode_call,
    phase_window,
)
from koiitasks.protocol import Signed, TaskRecord
from koiitasks.task import LoadedTask, NodeStore

log = logging.getLogger("koiitasks.node")

_CLOCK_HINT = "synchronise this machine's clock (NTP) with the orchestrator's"


@dataclass(frozen=True)
class _Following:
    """The task record this host follows, and what it derived from it."""

    record: Signed[TaskRecord]
    record_hash: str
    schedule: Schedule
    slot_clock: SlotClock
    runtimes: dict[str, NodeRuntime]


class NodeHost:
    """The node identities of one process, for one task and one orchestrator."""

    def __init__(
        self,
        loaded: LoadedTask,
        keypairs: Sequence[Keypair],
        *,
        orchestrator: str,
        clock: Clock,
        skew_tolerance_slots: int = 1,
    ) -> None:
        if not keypairs:
            raise ConfigError("a node host needs at least one key", hint="pass --key FILE")
        self.loaded = loaded
        self.orchestrator = orchestrator
        self.clock = clock
        self.skew_tolerance_slots = skew_tolerance_slots
        self.keypairs = {k.public_id: k for k in keypairs}
        # Each identity's own store outlives task-record changes, as a Koii node's does.
        self.stores = {node: NodeStore() for node in self.keypairs}
        self._lock = threading.Lock()
        self._following: _Following | None = None
        self._seen: dict[tuple[str, str, str, str, int], int] = {}
        self._pruned_at = 0

    @property
    def node_ids(self) -> list[str]:
        return sorted(self.keypairs)

    def health(self) -> dict[str, JsonValue]:
        """Koii's ``GET /`` answer, with who answers and where its clock is."""
        doc: dict[str, JsonValue] = {
            "status": 200,
            "message": "Running",
            "task_id": self.loaded.task_id,
            "nodes": list(self.node_ids),
            "orchestrator": self.orchestrator,
        }
        following = self._following
        if following is not None:
            slot = following.slot_clock.get_slot()
            doc["slot"] = slot
            doc["round"] = following.schedule.round_of(slot)
        return doc

    # --- one call --------------------------------------------------------------------------

    def call(self, node_id: str, phase: Phase, raw: bytes) -> bytes:
        """Check a call and answer it; raise :class:`RequestRefused` saying why not.

        A failing hook raises :class:`~koiitasks.nodes.runtime.HookFailed`.
        """
        if node_id not in self.keypairs:
            raise RequestRefused(
                f"no node {node_id} is served here (this process serves "
                f"{', '.join(self.node_ids)})",
                status=404,
            )
        call = decode_call(raw, phase)
        following = self._follow(call.task)
        runtime = following.runtimes[node_id]
        self._check_request(runtime, call, phase, following)
        self._check_records(call)
        self._admit_once(node_id, phase, call, following)
        return _answer(runtime, call)

    def _follow(self, record: Signed[TaskRecord]) -> _Following:
        """The host's state for this task record: adopted once it is checked."""
        current = self._following
        if current is not None and current.record == record:
            return current
        if record.signer != self.orchestrator or record.body.orchestrator != self.orchestrator:
            raise RequestRefused(
                f"task record is signed by {record.signer}, not by this node's orchestrator "
                f"{self.orchestrator}",
                status=403,
                hint="start `koiitasks node serve` with the --orchestrator key that runs the task",
            )
        try:
            record.verify()
        except SignatureError as e:
            raise RequestRefused(f"task record: {e.message}", status=403) from e
        if record.body.task_id != self.loaded.task_id:
            raise RequestRefused(
                f"call is for task {record.body.task_id!r}; this node serves task "
                f"{self.loaded.task_id!r}",
                status=409,
            )
        try:
            check_task_config(record.body, self.loaded, where="the orchestrator's task record")
        except NetworkMismatchError as e:
            raise RequestRefused(
                e.message, status=409, hint="serve the same config-task.yml as the orchestrator"
            ) from e
        config = self.loaded.config
        slot_clock = SlotClock(
            self.clock, genesis_ms=record.body.genesis_ms, slot_ms=config.slot_ms
        )
        schedule = Schedule(
            starting_slot=record.body.starting_slot,
            round_time=config.round_time,
            submission_window=config.submission_window,
            audit_window=config.audit_window,
        )
        runtimes = {}
        for node_id, keypair in self.keypairs.items():
            runtime = NodeRuntime(
                self.loaded,
                keypair,
                schedule=schedule,
                slot_clock=slot_clock,
                orchestrator=self.orchestrator,
            )
            runtime.store = self.stores[node_id]
            runtimes[node_id] = runtime
        following = _Following(record, record.hash, schedule, slot_clock, runtimes)
        with self._lock:
            self._following = following
        log.info(
            "following task %s of orchestrator %s: genesis %d ms, starting slot %d",
            record.body.task_id,
            self.orchestrator,
            record.body.genesis_ms,
            record.body.starting_slot,
        )
        return following

    def _check_request(
        self, runtime: NodeRuntime, call: Call, phase: Phase, following: _Following
    ) -> None:
        try:
            runtime.check_request(call.request)
        except SignatureError as e:
            raise RequestRefused(
                f"request is not signed by this task's orchestrator: {e.message}", status=403
            ) from e
        except RecordError as e:
            raise RequestRefused(e.message, status=409) from e
        body = call.request.body
        if body.phase is not phase:
            raise RequestRefused(
                f"request is for phase {body.phase.value!r} but was posted to {phase.value!r}",
                status=400,
            )
        window = phase_window(following.schedule, phase, body.round)
        name = f"round {body.round}'s {phase.value} window"
        # Stamped with the slot it went out in: the window's first, or later when the
        # orchestrator was late (completion times then count from that slot).
        if body.request_slot not in window:
            raise RequestRefused(
                f"request is stamped slot {body.request_slot}, outside {name} "
                f"(slots {window.start}..{window.end - 1})",
                status=409,
            )
        now = following.slot_clock.get_slot()
        tolerance = self.skew_tolerance_slots
        if now + tolerance < window.start:
            raise RequestRefused(
                f"{name} opens at slot {window.start}, but this node's clock is at slot {now}: "
                f"its clock differs from the orchestrator's by more than {tolerance} slot(s)",
                status=409,
                hint=_CLOCK_HINT,
            )
        if now >= window.end + tolerance:
            raise RequestRefused(
                f"{name} closed at slot {window.end} and this node's clock is at slot {now}: "
                "the request is stale (replayed, or the clocks differ)",
                status=409,
                hint=_CLOCK_HINT,
            )

    def _check_records(self, call: Call) -> None:
        """What the orchestrator passes along must be its own, for this round."""
        request = call.request.body
        if isinstance(call, AuditCall):
            for record in call.submissions:
                body = record.body
                if record.signer != self.orchestrator or (body.task_id, body.round) != (
                    request.task_id,
                    request.round,
                ):
                    raise RequestRefused(
                        f"submission of {body.node_id} is not the orchestrator's record of "
                        f"round {request.round}",
                        status=400,
                    )
                try:
                    record.verify()
                except SignatureError as e:
                    raise RequestRefused(
                        f"accepted submission of {body.node_id}: {e.message}", status=403
                    ) from e
        if isinstance(call, DistributionCall | DistributionAuditCall) and (
            call.inputs.task_id,
            call.inputs.round,
        ) != (request.task_id, request.round):
            raise RequestRefused(
                f"distribution inputs are for task {call.inputs.task_id!r} round "
                f"{call.inputs.round}, not the request's",
                status=400,
            )

    def _admit_once(self, node_id: str, phase: Phase, call: Call, following: _Following) -> None:
        """Remember the request until its window closes; refuse it if it was seen before."""
        attempt = 0
        if isinstance(call, DistributionCall):
            attempt = call.attempt
        elif isinstance(call, DistributionAuditCall):
            attempt = call.distribution.body.attempt
        body = call.request.body
        key = (following.record_hash, node_id, phase.value, body.nonce, attempt)
        expires = phase_window(following.schedule, phase, body.round).end
        expires += self.skew_tolerance_slots
        now = following.slot_clock.get_slot()
        with self._lock:
            if now >= self._pruned_at:  # forget closed windows once per slot, not per call
                self._seen = {k: end for k, end in self._seen.items() if end > now}
                self._pruned_at = now + 1
            if key in self._seen:
                raise RequestRefused(
                    f"node {node_id} already answered this {phase.value} request of round "
                    f"{body.round}: a replayed request",
                    status=409,
                )
            self._seen[key] = expires


def _answer(runtime: NodeRuntime, call: Call) -> bytes:
    """Run the phase's hook through the node's runtime; the bytes of the signed answer."""
    if isinstance(call, AuditCall):
        return runtime.audit(call.request, call.submissions).encode()
    if isinstance(call, DistributionCall):
        return runtime.build_distribution(call.request, call.inputs, call.attempt).encode()
    if isinstance(call, DistributionAuditCall):
        return runtime.audit_distribution(call.request, call.inputs, call.distribution).encode()
    return runtime.execute(call.request).encode()
