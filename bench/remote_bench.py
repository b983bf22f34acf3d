"""Benchmark of the remote-node transport (not a test): dispatch throughput and the error of the
recorded completion time.

Starts ``--processes`` ``koiitasks node serve`` processes on loopback hosting ``--identities``
node identities between them, then, in the same run:

1. **Throughput.** Batches of execute calls to every identity (a fresh signed request each
   batch, so no node refuses a replay) through :class:`koiitasks.nodes.http.HttpPool`,
   interleaved with the same batches sent by plain httpx: one ``AsyncClient`` on one event loop
   with the same concurrency bound (``raw``), the same with 8 connections, httpx's best setting
   on this machine (``raw_8``), and ``raw_8`` again but with ``asyncio.run`` and a new client
   per batch (``run_per_call``: the other way to drive async httpx from sync code, which cannot
   keep connections between calls). Goal: the pool at least 0.7 of plain httpx.
2. **Completion time.** Rounds whose request goes out at their first slot, as the round engine
   sends it: for every answer, the completion time ingest records (from the request's slot to
   receipt, on the orchestrator's clock) against the time the client measured (from the moment
   httpx sent that call to receipt). Goal: within one slot.

    PYTHONPATH=. python bench/remote_bench.py --identities 200 --processes 4
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from koiitasks.clock import Schedule, SlotClock, WallClock
from koiitasks.identity import Keypair, load_key
from koiitasks.ingest import Accepted, IngestRules, ingest
from koiitasks.model import Phase
from koiitasks.nodes.http import DEFAULT_CONCURRENCY, KEEPALIVE_S, HttpPool
from koiitasks.nodes.wire import ExecuteCall, call_url, encode_call
from koiitasks.protocol import RoundRequest, Signed, TaskRecord, digest, sign
from koiitasks.task import load_task
from koiitasks.testing import write_task
from koiitasks.testing.nodes import make_keys, serve_nodes

ECHO_TASK = """
from koiitasks import Task

task = Task()

@task.execute
def execute(ctx):
    return {"node": ctx.node_id, "round": ctx.round}

@task.audit
def audit(ctx, submission):
    return True
"""


class Bench:
    """The task, its record, the node URLs and a pool over them."""

    def __init__(self, task_dir: Path, orchestrator: Keypair, urls: dict[str, str], **opts: Any):
        self.loaded = load_task(task_dir)
        self.orchestrator = orchestrator
        self.urls = urls
        self.concurrency: int = opts["concurrency"]
        self.clock = WallClock()
        config = self.loaded.config
        self.slot_ms = config.slot_ms
        self.schedule = Schedule(
            0, config.round_time, config.submission_window, config.audit_window
        )
        self.sent_ms: dict[str, int] = {}
        self.new_record()

    def new_record(self, lead_ms: int = 0) -> None:
        """A task record whose round 0 starts at the first slot boundary ``lead_ms`` from now."""
        now = self.clock.now_ms() + lead_ms
        genesis = (now // self.slot_ms + 1) * self.slot_ms
        config = self.loaded.config.model_dump(mode="json", exclude={"metadata"})
        self.record: Signed[TaskRecord] = sign(
            TaskRecord(
                task_id=self.loaded.task_id,
                task_name=self.loaded.config.task_name,
                config=config,
                orchestrator=self.orchestrator.public_id,
                genesis_ms=genesis,
                starting_slot=0,
            ),
            self.orchestrator,
        )
        self.slot_clock = SlotClock(self.clock, genesis_ms=genesis, slot_ms=self.slot_ms)

    def pool(self) -> HttpPool:
        async def on_request(request: httpx.Request) -> None:
            self.sent_ms[request.url.path.split("/")[2]] = self.clock.now_ms()

        return HttpPool(
            self.urls,
            task_record=self.record,
            schedule=self.schedule,
            slot_clock=self.slot_clock,
            max_result_bytes=self.loaded.config.max_result_bytes,
            concurrency=self.concurrency,
            event_hooks={"request": [on_request]},
        )

    def request(self, batch: int) -> Signed[RoundRequest]:
        return sign(
            RoundRequest(
                task_id=self.loaded.task_id,
                round=0,
                phase=Phase.EXECUTE,
                request_slot=0,
                nonce=digest(f"bench-{batch}-{time.perf_counter_ns()}".encode()),
            ),
            self.orchestrator,
        )

    async def raw_batch(
        self, client: httpx.AsyncClient, request: Signed[RoundRequest], concurrency: int = 0
    ) -> int:
        """The same calls with plain httpx: POST, read the body, count 200s."""
        body = encode_call(ExecuteCall(task=self.record, request=request))
        semaphore = asyncio.Semaphore(concurrency or self.concurrency)

        async def one(node_id: str, url: str) -> bool:
            async with semaphore:
                response = await client.post(call_url(url, node_id, Phase.EXECUTE), content=body)
                return response.status_code == 200

        return sum(await asyncio.gather(*(one(n, u) for n, u in self.urls.items())))

    def client(self, connections: int = 0) -> httpx.AsyncClient:
        size = connections or self.concurrency
        limits = httpx.Limits(
            max_connections=size, max_keepalive_connections=size, keepalive_expiry=KEEPALIVE_S
        )
        return httpx.AsyncClient(limits=limits, trust_env=False, timeout=30)


def throughput(bench: Bench, batches: int) -> dict[str, Any]:
    """Calls per second through the pool, plain httpx, and asyncio.run per batch."""
    pool = bench.pool()
    loop = asyncio.new_event_loop()
    raw_client = bench.client()
    raw_8_client = bench.client(8)
    spent = {"pool": 0.0, "raw": 0.0, "raw_8": 0.0, "run_per_call": 0.0}
    errors: Counter[str] = Counter()

    def pooled_batch(request: Signed[RoundRequest]) -> int:
        replies = pool.execute(request, nodes)
        errors.update(r.error for r in replies if r.data is None)
        return sum(r.data is not None for r in replies)

    answered = dict.fromkeys(spent, 0)
    nodes = list(bench.urls)

    def timed(name: str, call: Callable[..., int]) -> None:
        started = time.perf_counter()
        answered[name] += call()
        spent[name] += time.perf_counter() - started

    async def run_per_call(request: Signed[RoundRequest]) -> int:
        async with bench.client(8) as client:  # a new loop and client (8 connections) per batch
            return await bench.raw_batch(client, request, 8)

    try:
        # One untimed batch each warms connections and code paths.
        pool.execute(bench.request(-1), nodes)
        loop.run_until_complete(bench.raw_batch(raw_client, bench.request(-2)))
        loop.run_until_complete(bench.raw_batch(raw_8_client, bench.request(-3), 8))
        for batch in range(batches):
            pooled, raw, raw_8, per_call = (bench.request(batch) for _ in range(4))
            timed("pool", lambda r=pooled: pooled_batch(r))
            timed("raw", lambda r=raw: loop.run_until_complete(bench.raw_batch(raw_client, r)))
            timed(
                "raw_8",
                lambda r=raw_8: loop.run_until_complete(bench.raw_batch(raw_8_client, r, 8)),
            )
            timed("run_per_call", lambda r=per_call: asyncio.run(run_per_call(r)))
    finally:
        loop.run_until_complete(raw_client.aclose())
        loop.run_until_complete(raw_8_client.aclose())
        loop.close()
        pool.close()
    rates = {name: answered[name] / spent[name] for name in spent}
    return {
        "calls_per_batch": len(nodes),
        "batches": batches,
        "answered": answered,
        "pool_errors": dict(errors),
        "calls_per_s": {name: round(rate, 1) for name, rate in rates.items()},
        "pool_vs_raw": round(rates["pool"] / rates["raw"], 3),
        "pool_vs_raw_8": round(rates["pool"] / rates["raw_8"], 3),
        "run_per_call_vs_raw_8": round(rates["run_per_call"] / rates["raw_8"], 3),
    }


def completion_error(bench: Bench, rounds: int) -> dict[str, Any]:
    """Recorded completion time against the client's own measure, over ``rounds`` rounds."""
    errors_ms: list[int] = []
    slot_errors: list[int] = []
    nodes = list(bench.urls)
    for _ in range(rounds):
        bench.new_record(lead_ms=3000)  # room to make the pool before round 0 starts
        pool = bench.pool()
        try:
            if (
                bench.slot_clock.get_slot() > 0
                or bench.clock.now_ms() >= bench.record.body.genesis_ms
            ):
                raise SystemExit("the pool took longer to make than the lead: raise lead_ms")
            bench.slot_clock.wait_for_slot(0)
            request = sign(
                RoundRequest(
                    task_id=bench.loaded.task_id,
                    round=0,
                    phase=Phase.EXECUTE,
                    request_slot=0,
                    nonce=digest(bench.record.encode()),
                ),
                bench.orchestrator,
            )
            rules = IngestRules(
                request=request,
                eligible=set(nodes),
                schedule=bench.schedule,
                slot_clock=bench.slot_clock,
                max_result_bytes=bench.loaded.config.max_result_bytes,
            )
            bench.sent_ms.clear()
            for reply in pool.execute(request, nodes):
                checked = ingest(reply, rules)
                if not isinstance(checked, Accepted):
                    raise SystemExit(f"node {reply.node_id} was not accepted: {checked}")
                client_ms = reply.received_ms - bench.sent_ms[reply.node_id]
                errors_ms.append(checked.completion_ms - client_ms)
                client_slots = -(-client_ms // bench.slot_ms)
                slot_errors.append(checked.completion_slots - client_slots)
        finally:
            pool.close()
    ordered = sorted(errors_ms)
    return {
        "answers": len(ordered),
        "slot_ms": bench.slot_ms,
        "error_ms": {
            "median": statistics.median(ordered),
            "p99": ordered[int(0.99 * (len(ordered) - 1))],
            "max": ordered[-1],
        },
        "max_error_slots": round(ordered[-1] / bench.slot_ms, 3),
        "completion_slots_minus_client_slots": sorted(set(slot_errors)),
        "within_one_slot": ordered[-1] < bench.slot_ms,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--identities", type=int, default=200)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5, help="for the completion-time part")
    parser.add_argument("--concurrency", type=int, default=DEFAULT_CONCURRENCY)
    parser.add_argument("--slot-ms", type=int, default=400)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="koii-remote-bench-") as tmp:
        root = Path(tmp)
        # Rounds of 100,000 slots: every batch is a call in round 0's execute window, which
        # stays open however slow the machine is.
        task_dir = write_task(
            root / "task",
            ECHO_TASK,
            slot_ms=args.slot_ms,
            round_time=100_000,
            submission_window=40,
            audit_window=40,
        )
        orchestrator_key, *keys = make_keys(root / "keys", args.identities + 1)
        per_process = [keys[i :: args.processes] for i in range(args.processes)]
        orchestrator = load_key(orchestrator_key)
        started = time.perf_counter()
        with serve_nodes(
            task_dir, per_process, orchestrator=orchestrator.public_id, logs=root / "logs"
        ) as running:
            startup_s = time.perf_counter() - started
            urls = {node: proc.url for proc in running for node in proc.node_ids}
            bench = Bench(task_dir, orchestrator, urls, concurrency=args.concurrency)
            report = {
                "identities": args.identities,
                "processes": args.processes,
                "concurrency": args.concurrency,
                "node_startup_s": round(startup_s, 2),
                "throughput": throughput(bench, args.batches),
                "completion_time": completion_error(bench, args.rounds),
            }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
