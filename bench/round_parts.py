"""Where a round's time goes, and what Python's interpreter lock leaves of two cores.

For a node count N it runs, in one process, the plain round (library calls, no Prefect) of
``bench/tasks/trivial`` that ``round_bench.py`` measures, in eight ways, and that benchmark's
floor:

- ``full_s``: in one shard thread, as it is (the baseline of every ratio);
- ``no_writes_s``: the same on the in-memory store, so no file is written;
- ``no_crypto_s``: the same with ed25519 signing and verification replaced by no-ops;
- ``python_s``: both taken out: only the Python a round runs around its signatures,
  verifications and writes (records, checks, hooks, the simulated nodes);
- ``threads_s``: the round's steps with its shards on ``SHARD_CONCURRENCY`` threads, as the
  Prefect flow runs them, everything real;
- ``threads_no_writes_s``: the same on the in-memory store: what the threads make of the
  round's Python and its cryptography alone;
- ``threads_no_crypto_s``: the same with signing and verification replaced by no-ops: what a
  round's own process would still do if all its cryptography went to a helper process for free;
- ``engine_threads_s``: the same on threads, everything real, but with the simulated nodes'
  execute and audit replies replayed from an identical round recorded before the clock
  starts: the engine's part alone, as if the nodes ran in a process of their own for free
  (the distribution's builder and list auditors, a few nodes, still run live);
- ``engine_no_crypto_s``: that without cryptography: what the round's process would keep if
  both the nodes and the cryptography went elsewhere for free;
- ``floor_s``: ``round_bench.py``'s floor: the round's signatures, verifications and
  create-only writes alone, in a tight loop on the same threads.

From these:

- ``threads_speedup = full_s / threads_s``: what the shard threads gain;
- ``threads_no_writes_speedup = no_writes_s / threads_no_writes_s``: the same without writes;
- ``gil_bound_vs_floor = python_s / floor_s``: a bound on ``vs_floor`` from the lock alone,
  since the round's Python holds it whatever the threads do;
- ``even_split_vs_floor = full_s / SHARD_CONCURRENCY / floor_s``: the round's whole work split
  evenly over the cores, a bound for threads and processes alike (with two cores it is the
  one that binds);
- ``threads_vs_floor = threads_s / floor_s``: where the threads really are;
- ``helper_bound_vs_floor = threads_no_crypto_s / floor_s``: a bound on ``vs_floor`` for any
  design that hands the cryptography to another process and keeps the rest on threads;
- ``engine_vs_floor = engine_threads_s / floor_s``: the same bound for moving the simulated
  nodes out of the round's process;
- ``same_parallelism_bound_vs_floor = full_s / (full_s - python_s)``: a bound for every design
  at once, when the floor is given the same parallelism as the round (as ``round_bench.py``
  asks): whatever runs the round's cryptography and writes side by side (threads, helper
  processes, batches) runs the floor's the same way, so even with perfect overlap in both the
  round does its own Python besides, and the ratio is at least all of the round's work over
  the part of it that is the floor's (``full_s - python_s``, an estimate: one thread's time
  less another way's).

    python bench/round_parts.py --nodes 10000 --repeat 3 --json
    python bench/round_parts.py --quick --json     # what CI runs: asserts nothing about time

Beside each way's time, ``cpu_s`` gives the CPU seconds of the process and ``switches`` its
voluntary context switches (``getrusage``) during that same run: a thread that must wait for
the interpreter lock sleeps and is woken, so the switches count the lock's hand-overs, and
CPU beyond one thread's shows what they cost.

It asserts nothing about time. Each way runs ``--repeat`` times, interleaved (each repeat starts
with the next way, so none always runs first), on a fresh store with no remembered verdicts, its
network made before the clock starts and the sandbox freed after; the best of each is reported.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import gc
import json
import logging
import resource
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: bench's parent

from bench.round_bench import SEED, TASK_DIR, CryptoCounter, floor, round_writes
from flows.round import SHARD_CONCURRENCY
from koiitasks import identity
from koiitasks.collector import round_collection
from koiitasks.distribution import DistributionInputs
from koiitasks.identity import Keypair
from koiitasks.nodes.base import NodePool, Reply
from koiitasks.protocol import AcceptedSubmission, DistributionList, RoundRequest, Signed
from koiitasks.sandbox import Sandbox, open_sandbox
from koiitasks.storage import MemoryStore

#: A well-formed signature (128 lowercase hex digits) for the rounds without cryptography.
NO_SIGNATURE = "ab" * 64


class _AcceptingKey:
    def verify(self, message: bytes, _signature: bytes) -> bytes:
        return message


@contextmanager
def no_crypto() -> Iterator[None]:
    """Signing returns a fixed signature and every signature verifies: no ed25519 at all."""
    sign, verify_key = Keypair.sign, identity._verify_key
    setattr(Keypair, "sign", lambda _keypair, _message: NO_SIGNATURE)  # noqa: B010
    setattr(identity, "_verify_key", lambda _public_id: _AcceptingKey())  # noqa: B010
    try:
        yield
    finally:
        setattr(Keypair, "sign", sign)  # noqa: B010
        setattr(identity, "_verify_key", verify_key)  # noqa: B010
        identity._verified.clear()  # verdicts given without a check must not outlive the stub


def sandbox_on(store: str, nodes: int) -> Sandbox:
    """A sandbox on a new store, its network made (set-up, not round cost), no verdict kept."""
    sandbox = open_sandbox(TASK_DIR, store=store, nodes=nodes, seed=SEED)
    identity._verified.clear()
    sandbox.begin(0)
    return sandbox


def release(sandbox: Sandbox) -> None:
    """Free a timed sandbox and its in-memory records: 10,000-node ways add up. Collected
    now, so the next round's garbage-collector freeze does not keep this one's leftovers."""
    sandbox.close()
    if isinstance(sandbox.store, MemoryStore):
        sandbox.store.clear()
    gc.collect()


def in_one_thread(sandbox: Sandbox) -> None:
    result = sandbox.engine.run(0)
    assert result.distribution_accepted, "the benchmark round did not settle"


def on_threads(sandbox: Sandbox) -> None:
    """The flow's steps (``flows.round``), its shards on a pool of threads, without Prefect."""
    engine = sandbox.engine
    with round_collection(), cf.ThreadPoolExecutor(SHARD_CONCURRENCY) as pool:
        engine.open_round(0)
        list(pool.map(lambda s: engine.execute_shard(0, s), engine.shards(engine.eligible(0))))
        plan = engine.plan_audits(0)
        slices = [({a: plan[a] for a in s}, s) for s in engine.shards(sorted(plan))]
        list(pool.map(lambda part: engine.audit_shard(0, *part), slices))
        outcome = engine.distribute(0)
        engine.settle(0, outcome)
        result = engine.result(0, reasons=outcome.reasons)
    assert result.distribution_accepted, "the benchmark round did not settle"


#: Each way: its store's kind, whether cryptography runs, whether the nodes' replies are
#: replayed, and how the round is run.
WAYS: dict[str, tuple[str, bool, bool, Callable[[Sandbox], None]]] = {
    "full_s": ("file", True, False, in_one_thread),
    "no_writes_s": ("memory", True, False, in_one_thread),
    "no_crypto_s": ("file", False, False, in_one_thread),
    "python_s": ("memory", False, False, in_one_thread),
    "threads_s": ("file", True, False, on_threads),
    "threads_no_writes_s": ("memory", True, False, on_threads),
    "threads_no_crypto_s": ("file", False, False, on_threads),
    "engine_threads_s": ("file", True, True, on_threads),
    "engine_no_crypto_s": ("file", False, True, on_threads),
}


Tape = dict[tuple[str, tuple[str, ...]], tuple[bytes, list[Reply]]]


class ReplayedNodes(NodePool):
    """The nodes' execute and audit replies of an identical earlier round, handed back at no
    cost; recording when given no tape. The distribution's few nodes run live."""

    def __init__(self, live: NodePool, tape: Tape | None = None) -> None:
        self.live = live
        self.recording = tape is None
        self.tape: Tape = {} if tape is None else tape

    def _replies(
        self, key: tuple[str, tuple[str, ...]], request: bytes, call: Callable[[], list[Reply]]
    ) -> list[Reply]:
        # ``request`` is the request's body, not its signature: the ways without cryptography
        # sign with none.
        if self.recording:
            self.tape[key] = (request, call())
        asked, replies = self.tape.get(key, (b"", []))
        if asked != request:
            raise RuntimeError(f"{key[0]}: the round asked otherwise than the recorded one")
        return replies

    def execute(self, request: Signed[RoundRequest], node_ids: Sequence[str]) -> list[Reply]:
        return self._replies(
            ("execute", tuple(node_ids)),
            request.body_bytes(),
            lambda: self.live.execute(request, node_ids),
        )

    def audit(
        self,
        request: Signed[RoundRequest],
        assignments: Mapping[str, Sequence[Signed[AcceptedSubmission]]],
    ) -> list[Reply]:
        return self._replies(
            ("audit", tuple(assignments)),
            request.body_bytes(),
            lambda: self.live.audit(request, assignments),
        )

    def build_distribution(
        self, request: Signed[RoundRequest], builder: str, inputs: DistributionInputs, attempt: int
    ) -> Reply:
        return self.live.build_distribution(request, builder, inputs, attempt)

    def audit_distribution(
        self,
        request: Signed[RoundRequest],
        auditors: Sequence[str],
        inputs: DistributionInputs,
        distribution: Signed[DistributionList],
    ) -> list[Reply]:
        return self.live.audit_distribution(request, auditors, inputs, distribution)

    def close(self) -> None:
        self.live.close()


def record_tape(store: str, nodes: int) -> Tape:
    """The nodes' replies in one round of a network like every timed one (not timed)."""
    sandbox = sandbox_on(store, nodes)
    recorder = ReplayedNodes(sandbox.engine.pool)
    sandbox.engine.pool = recorder
    in_one_thread(sandbox)
    release(sandbox)
    return recorder.tape


@dataclass(frozen=True, order=True)
class Run:
    """One timed run of a way: wall seconds (what orders runs), CPU seconds of the process,
    and its voluntary context switches."""

    wall_s: float
    cpu_s: float
    switches: int


def timed_run(run: Callable[[Sandbox], None], sandbox: Sandbox) -> Run:
    before, cpu = resource.getrusage(resource.RUSAGE_SELF), time.process_time()
    start = time.perf_counter()
    run(sandbox)
    wall_s = time.perf_counter() - start
    cpu_s = time.process_time() - cpu
    switches = resource.getrusage(resource.RUSAGE_SELF).ru_nvcsw - before.ru_nvcsw
    return Run(wall_s, cpu_s, switches)


def measure(nodes: int, *, repeat: int) -> dict[str, Any]:
    logging.getLogger("koiitasks").setLevel(logging.ERROR)
    work = Path(tempfile.mkdtemp(prefix="koiitasks-round-parts-"))
    runs: dict[str, list[Run]] = {way: [] for way in WAYS}
    ways = list(WAYS)
    sizes = {min(nodes, 50), nodes}
    tapes = {size: record_tape(str(work / f"tape-{size}"), size) for size in sizes}
    for i in range(-1, repeat):  # run -1 warms up every way on a small network
        size = min(nodes, 50) if i < 0 else nodes
        turn = (i + 1) % len(ways)  # the warm-up starts with the first way, repeat 0 the next
        for way in ways[turn:] + ways[:turn]:
            kind, signs, replayed, run = WAYS[way]
            name = f"{way}-{i + 1}"
            store = f"memory://{work.name}-{name}" if kind == "memory" else str(work / name)
            sandbox = sandbox_on(store, size)
            if replayed:
                sandbox.engine.pool = ReplayedNodes(sandbox.engine.pool, tapes[size])
            stubbed: AbstractContextManager[None] = nullcontext() if signs else no_crypto()
            with stubbed:
                timed = timed_run(run, sandbox)
            release(sandbox)
            if i >= 0:
                runs[way].append(timed)
    fastest = {way: min(timed) for way, timed in runs.items()}
    best = {way: timed.wall_s for way, timed in fastest.items()}

    counted = str(work / "counted")
    sandbox = sandbox_on(counted, nodes)
    with CryptoCounter() as counter:
        in_one_thread(sandbox)
    writes = round_writes(Path(counted), sandbox.loaded.task_id, 0)
    floor_s = min(floor(counter.signs, counter.verifies, writes) for _ in range(repeat))
    return {
        "nodes": nodes,
        **{way: round(seconds, 3) for way, seconds in best.items()},
        "floor_s": round(floor_s, 3),
        "threads_speedup": round(best["full_s"] / best["threads_s"], 3),
        "threads_no_writes_speedup": round(best["no_writes_s"] / best["threads_no_writes_s"], 3),
        "gil_bound_vs_floor": round(best["python_s"] / floor_s, 3),
        "even_split_vs_floor": round(best["full_s"] / SHARD_CONCURRENCY / floor_s, 3),
        "threads_vs_floor": round(best["threads_s"] / floor_s, 3),
        "helper_bound_vs_floor": round(best["threads_no_crypto_s"] / floor_s, 3),
        "engine_vs_floor": round(best["engine_threads_s"] / floor_s, 3),
        "same_parallelism_bound_vs_floor": round(
            best["full_s"] / (best["full_s"] - best["python_s"]), 3
        ),
        "cpu_s": {way: round(timed.cpu_s, 3) for way, timed in fastest.items()},
        "switches": {way: timed.switches for way, timed in fastest.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=10000, help="simulated nodes (default 10000)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--quick", action="store_true", help="300 nodes, once (CI)")
    parser.add_argument(
        "--repeat", type=int, default=1, help="runs of each way; the best is reported (default 1)"
    )
    args = parser.parse_args()
    nodes, repeat = (300, 1) if args.quick else (args.nodes, args.repeat)
    report = measure(nodes, repeat=repeat)
    if args.json:
        print(json.dumps(report))
        return
    width = max(map(len, report))
    for key, value in report.items():
        print(f"{key:<{width}}  {value}")


if __name__ == "__main__":
    main()
