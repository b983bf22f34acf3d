"""Simulated nodes for the sandbox: real keys and hooks, simulated time, chosen adversaries.

Each simulated node runs the task's real hooks through :class:`NodeRuntime` and answers with
bytes, which the round engine checks like bytes from the network. Answer slots are drawn
deterministically from the seed, so a seeded run gives the same records every time. Adversaries
(``--adversary KIND=COUNT``):

==============  ==================================================================
``offline``     never answers
``lazy``        returns a made-up result instead of running execute
``forger``      signs with a key that is not its registered one
``replayer``    resends a submission made for an earlier round
``late``        answers with a slot after the submission window closed
``bad-auditor`` executes honestly but votes the opposite of its honest verdict
==============  ==================================================================
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import functools
import hashlib
import itertools
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

from pydantic import JsonValue

from koiitasks.clock import Clock, Schedule, SimulatedClock, SlotClock
from koiitasks.distribution import DistributionInputs
from koiitasks.identity import Keypair
from koiitasks.nodes.base import NodePool, Reply
from koiitasks.nodes.failures import FailureLog
from koiitasks.nodes.runtime import HookFailed, NodeRuntime
from koiitasks.protocol import (
    AcceptedSubmission,
    DistributionList,
    RoundRequest,
    Signed,
    sign,
)

log = logging.getLogger("koiitasks.sim")

HONEST = "honest"
ADVERSARIES = ("offline", "lazy", "forger", "replayer", "late", "bad-auditor")
BEHAVIOURS = (HONEST, *ADVERSARIES)

T = TypeVar("T")


def _draw(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()[:8])


#: How often a call looks at its hooks' pace, and the share of their time hooks may spend
#: computing and still count as waiting (on I/O, a sleep, a lock): a hook that computes gets
#: at least half of its time on a core even beside another shard's, so a quarter is waiting.
PROBE_S = 0.01
WAITING_SHARE = 0.25
#: A call none of whose hooks has finished for this long is stalled (a slow or hung hook).
STALL_S = 0.1


class HookPace:
    """How a call's hooks spend their time: computing, or waiting on something else.

    Each job times the hooks it runs, in wall time and in its thread's CPU time; a call adds a
    job when its hooks mostly wait, or when none has finished for :data:`STALL_S`.

    Native code that releases the GIL (hashing large inputs, numpy) counts as computing, so
    such hooks stay on one thread per call, where more threads would have run them side by
    side; with more than two shard threads (4 or more cores) computing hooks each get less
    than a quarter of the GIL and may count as waiting, up to ``workers`` threads.
    """

    def __init__(
        self,
        *,
        wall: Callable[[], float] = time.monotonic,
        cpu: Callable[[], float] = time.thread_time,
    ) -> None:
        self._wall, self._cpu = wall, cpu
        self._lock = threading.Lock()
        self._wall_s = 0.0
        self._cpu_s = 0.0
        self._last_done = wall()

    def start(self) -> tuple[float, float]:
        """The instant a hook starts, for :meth:`done` (called in the hook's thread)."""
        return self._wall(), self._cpu()

    def done(self, started: tuple[float, float]) -> None:
        """Count a finished hook (called in its thread, with what :meth:`start` returned)."""
        now = self._wall()
        wall, cpu = now - started[0], self._cpu() - started[1]
        with self._lock:
            self._wall_s += wall
            self._cpu_s += cpu
            self._last_done = now

    def waiting(self) -> bool:
        """True when the hooks finished so far mostly waited, or none finished for a while."""
        with self._lock:
            mostly_waited = self._wall_s > 0 and self._cpu_s < WAITING_SHARE * self._wall_s
            return mostly_waited or self._wall() - self._last_done > STALL_S


class SimulatedPool(NodePool):
    """In-process nodes with behaviours, their hooks on at most ``workers`` threads a call.

    ``workers=1`` runs every hook in the calling thread, so a breakpoint in a hook stops there.
    ``hook_timeout_s`` bounds how long a call waits for hooks; a hook still running then counts as
    no answer (its thread cannot be killed and finishes in the background).
    """

    def __init__(
        self,
        runtimes: Mapping[str, NodeRuntime],
        behaviours: Mapping[str, str],
        *,
        schedule: Schedule,
        slot_ms: int,
        clock: Clock,
        seed: int,
        workers: int = 4,
        hook_timeout_s: float = 30.0,
        live: SlotClock | None = None,
    ) -> None:
        self.runtimes = dict(runtimes)
        # Many simulated nodes failing the same way: say it once per round, not once per node.
        self.failures = FailureLog(log)
        for runtime in self.runtimes.values():
            runtime.on_hook_failure = self.failures
        self.behaviours = dict(behaviours)
        self.schedule = schedule
        self.slot_ms = slot_ms
        self.clock = clock
        self.seed = seed
        self.workers = max(1, workers)
        self.hook_timeout_s = hook_timeout_s
        # On the wall clock (a deployed sandbox) a node stamps its answer with the live slot, as
        # a real node does when it answers; only ``late`` nodes still claim a drawn late slot.
        self.live = live
        self._jobs = itertools.count(1)

    def close(self) -> None:
        """Nothing to stop: each job's thread ends with its call (or with its hung hook)."""

    def _start(self, job: Callable[[], None]) -> cf.Future[None]:
        """Run ``job`` on a daemon thread of its own. A pool's threads are joined when Python
        exits, so a hook that never returns kept the process alive after its round had long
        counted the node as missing; a daemon thread does not."""
        future: cf.Future[None] = cf.Future()

        def run() -> None:
            future.set_running_or_notify_cancel()
            try:
                job()
            except BaseException as e:  # noqa: BLE001 - handed to the caller, which raises it
                future.set_exception(e)
            else:
                future.set_result(None)

        name = f"koii-node-{next(self._jobs)}"
        threading.Thread(target=run, name=name, daemon=True).start()
        return future

    def behaviour(self, node_id: str) -> str:
        return self.behaviours.get(node_id, HONEST)

    # --- helpers ---------------------------------------------------------------------------

    def _reply(
        self, node_id: str, data: bytes | None, error: str = "", *, at_ms: int | None = None
    ) -> Reply:
        at = self.clock.now_ms() if at_ms is None else at_ms
        return Reply(node_id=node_id, data=data, received_ms=at, error=error)

    def _run_all(self, calls: Mapping[str, Callable[[], Reply]]) -> list[Reply]:
        """Run one call per node, bounded by the pool and the timeout; hook errors are replies.

        A few long-lived jobs per call take nodes one after another from a shared queue, not
        one pool job per node: a job per node cost more than a trivial node's own work (a
        quarter of a 10,000-node round, measured). A call starts with one job and adds one, up
        to ``workers``, only while its hooks wait rather than compute (:class:`HookPace`):
        hooks that compute only fight over the GIL on more threads (a 10,000-node round of a
        trivial task took a fifth longer on four hook threads than on one). A hung hook still
        holds up only its own job: it stalls the call, which adds a job, and when the timeout
        passes every node not answered yet counts as no answer.
        """

        def guarded(node_id: str, call: Callable[[], Reply]) -> Reply:
            try:
                return call()
            except HookFailed as e:
                self.failures(e)
                return self._reply(node_id, None, str(e))

        if self.workers == 1 or not calls:
            return [guarded(node_id, call) for node_id, call in calls.items()]
        queue = collections.deque(calls.items())
        replies: dict[str, Reply] = {}
        deadline = time.monotonic() + self.hook_timeout_s
        pace = HookPace()

        def drain() -> None:
            while time.monotonic() < deadline:
                try:
                    node_id, call = queue.popleft()  # atomic: safe between jobs
                except IndexError:
                    return
                started = pace.start()
                replies[node_id] = guarded(node_id, call)  # one dict store: atomic
                pace.done(started)

        limit = min(self.workers, len(calls))
        jobs = [self._start(drain)]
        while (remaining := deadline - time.monotonic()) > 0:
            growing = len(jobs) < limit and bool(queue)
            _, pending = cf.wait(jobs, timeout=min(remaining, PROBE_S) if growing else remaining)
            if not pending:
                break
            if growing and pace.waiting():
                jobs.append(self._start(drain))
        queue.clear()  # a job still in a hung hook takes no other node afterwards
        for job in jobs:
            if job.done() and (error := job.exception()) is not None:
                raise error  # not a hook's failure (those are replies): a bug to see
        answered = dict(replies)  # one copy: a hook finishing after it is too late
        late = [node_id for node_id in calls if node_id not in answered]
        for node_id in late:
            log.warning("node %s: hook did not finish within %.1fs", node_id, self.hook_timeout_s)
        return [
            *answered.values(),
            *(self._reply(node_id, None, "hook timed out") for node_id in late),
        ]

    def _answer_clock(self, node_id: str, request: Signed[RoundRequest]) -> SlotClock:
        """A clock stopped at the slot this node answers in: 1-3 slots after the request (or the
        live slot clock, on the wall clock)."""
        if self.live is not None and self.behaviour(node_id) != "late":
            return self.live
        body = request.body
        window_end = self.schedule.execute_window(body.round).end
        if self.behaviour(node_id) == "late":
            slot = window_end + 1 + _draw(self.seed, node_id, body.round, "late") % 3
        else:
            latency = 1 + _draw(self.seed, node_id, body.round, "latency") % 3
            slot = min(body.request_slot + latency, window_end - 1)
        genesis = self.live.genesis_ms if self.live is not None else 0
        return SlotClock(
            SimulatedClock(genesis + slot * self.slot_ms), genesis_ms=genesis, slot_ms=self.slot_ms
        )

    # --- execute ---------------------------------------------------------------------------

    def _execute_one(self, node_id: str, request: Signed[RoundRequest]) -> Reply:
        runtime = self.runtimes[node_id]
        behaviour = self.behaviour(node_id)
        body = request.body
        clock = self._answer_clock(node_id, request)
        if behaviour == "offline":
            return self._reply(node_id, None, "no answer")
        result: JsonValue
        if behaviour == "lazy":
            result = f"lazy-{node_id[:8]}-{body.round}"
            submission = runtime.sign_submission(request, result, clock.get_slot())
        elif behaviour == "forger":
            result = runtime.run_execute(body.round, clock)
            honest = runtime.sign_submission(request, result, clock.get_slot())
            forged_key = Keypair.from_seed(f"forger/{self.seed}/{node_id}".encode())
            submission = sign(honest.body, forged_key).model_copy(update={"signer": node_id})
        elif behaviour == "replayer":
            stale_round = body.round - 1 if body.round > 0 else body.round
            stale = body.model_copy(
                update={
                    "round": stale_round,
                    "nonce": hashlib.sha256(f"stale/{node_id}/{stale_round}".encode()).hexdigest(),
                }
            )
            old_request = Signed[RoundRequest](
                body=stale, signer=request.signer, signature=request.signature
            )
            result = runtime.run_execute(stale_round, clock)
            submission = runtime.sign_submission(old_request, result, clock.get_slot())
        else:  # honest, late, bad-auditor execute honestly
            submission = runtime.execute(request, slot_clock=clock)
        # Simulated transport is instant: the answer arrives in the slot it was stamped with.
        return self._reply(node_id, submission.encode(), at_ms=clock.clock.now_ms())

    def execute(self, request: Signed[RoundRequest], node_ids: Sequence[str]) -> list[Reply]:
        return self._run_all(
            {node: functools.partial(self._execute_one, node, request) for node in node_ids}
        )

    # --- audits ----------------------------------------------------------------------------

    def _signing_runtime(self, node_id: str) -> NodeRuntime:
        """A forger signs everything with a key that is not its own."""
        runtime = self.runtimes[node_id]
        if self.behaviour(node_id) != "forger":
            return runtime
        forged = NodeRuntime(
            runtime.loaded,
            Keypair.from_seed(f"forger/{self.seed}/{node_id}".encode()),
            schedule=runtime.schedule,
            slot_clock=runtime.slot_clock,
        )
        forged.node_id = node_id  # claims the registered id, signs with another key
        forged.on_hook_failure = runtime.on_hook_failure
        return forged

    def audit(
        self,
        request: Signed[RoundRequest],
        assignments: Mapping[str, Sequence[Signed[AcceptedSubmission]]],
    ) -> list[Reply]:
        def one(auditor: str, records: Sequence[Signed[AcceptedSubmission]]) -> Reply:
            if self.behaviour(auditor) == "offline":
                return self._reply(auditor, None, "no answer")
            runtime = self._signing_runtime(auditor)
            flip = self.behaviour(auditor) == "bad-auditor"
            return self._reply(auditor, runtime.audit(request, records, flip=flip).encode())

        return self._run_all({a: functools.partial(one, a, r) for a, r in assignments.items()})

    def build_distribution(
        self, request: Signed[RoundRequest], builder: str, inputs: DistributionInputs, attempt: int
    ) -> Reply:
        if self.behaviour(builder) == "offline":
            return self._reply(builder, None, "no answer")
        runtime = self._signing_runtime(builder)
        (reply,) = self._run_all(
            {
                builder: lambda: self._reply(
                    builder, runtime.build_distribution(request, inputs, attempt).encode()
                )
            }
        )
        return reply

    def audit_distribution(
        self,
        request: Signed[RoundRequest],
        auditors: Sequence[str],
        inputs: DistributionInputs,
        distribution: Signed[DistributionList],
    ) -> list[Reply]:
        def one(auditor: str) -> Reply:
            if self.behaviour(auditor) == "offline":
                return self._reply(auditor, None, "no answer")
            runtime = self._signing_runtime(auditor)
            flip = self.behaviour(auditor) == "bad-auditor"
            vote = runtime.audit_distribution(request, inputs, distribution, flip=flip)
            return self._reply(auditor, vote.encode())

        return self._run_all({a: functools.partial(one, a) for a in auditors})
