"""Scale-out on Dask: a CPU-heavy round on one worker process against two, and the largest
simulated network one round settles within ten minutes.

Both parts run the real ``koii-dask-round`` flow against a real Prefect API (the test harness's
server process) with a local Dask cluster of worker processes (one thread each), on the file
store, seeded:

- ``speedup_2_workers``: a round of ``bench/tasks/heavy`` (a hash puzzle of difficulty 4, about
  65,000 hashes per node) on ``--heavy-nodes`` nodes, timed on a cluster of one worker process
  and of two, interleaved; the best of ``--repeats`` rounds each, every one on a fresh store
  with the same seed (so the same work, and the same ledger bytes, which is checked). Workers
  open the sandbox before the clock starts, as long-running workers have.
  ``least_busy_worker_cpu_share`` is the smaller worker's part of the CPU the two used (0.5: an
  even split), and ``worker_cpu_speedup_2_workers`` one worker's CPU seconds over the busier of
  two workers': whatever other processes take from the wall time, they say whether the work
  spread, and what two free cores would give.
- ``max_nodes_10min``: rounds of ``bench/tasks/trivial`` (all nodes honest) on two worker
  processes at growing sizes (``--sizes``); a size counts when its round settled within
  ``--round-limit-s`` (600) with every node approved. The search stops at the first size that
  does not, or when the next one would not fit in what is left of ``--search-budget-s``
  (predicted linearly from the last one, plus a fifth): it reports what it reached, honestly,
  with each size's round and set-up times.

    python bench/scaleout_bench.py --json
    python bench/scaleout_bench.py --heavy-nodes 60 --sizes 2000,5000 --json   # a few minutes
    python bench/scaleout_bench.py --only speedup --json

It asserts nothing about time. The load average before and after is in the report: on a shared
machine other processes take cores away and the speedup with them.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="koiitasks-bench-prefect-"))

from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
from prefect.testing.utilities import prefect_test_harness

from flows.dask_round import dask_round
from koiitasks.cluster import DASK_SHARD_SIZE, SandboxSpec, local_cluster
from koiitasks.model import Outcome
from koiitasks.round_result import RoundResult
from koiitasks.storage import FileStore, Layout

BENCH = Path(__file__).resolve().parent
HEAVY = BENCH / "tasks" / "heavy"
TRIVIAL = BENCH / "tasks" / "trivial"
SEED = 3
ROOT = BENCH.parent


def worker_env() -> dict[str, str]:
    """The workers import this checkout's koiitasks, whatever is installed."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return {"PYTHONPATH": path}


def _open_here(spec: SandboxSpec) -> int:
    return len(spec.open().network.nodes)


def warm(address: str, spec: SandboxSpec) -> None:
    """Open the sandbox in every worker process, as a long-running worker already has."""
    distributed: Any = importlib.import_module("distributed")
    with distributed.Client(address, timeout="60s") as client:
        client.run(_open_here, spec)


def worker_cpu_s(address: str) -> dict[str, float]:
    """CPU seconds each worker process (by address) has used so far."""
    distributed: Any = importlib.import_module("distributed")
    with distributed.Client(address, timeout="60s") as client:
        return dict(client.run(time.process_time))


def timed_round(address: str, spec: SandboxSpec) -> tuple[float, float, RoundResult]:
    """Set-up seconds (network and sandboxes), round seconds, and the result of round 0."""
    start = time.perf_counter()
    spec.open()  # the orchestrator makes the network in the store
    warm(address, spec)
    ready = time.perf_counter()
    data = dask_round(
        task_dir=spec.task_dir,
        round_number=0,
        store=spec.store,
        nodes=spec.nodes,
        seed=spec.seed,
        shard_size=spec.shard_size or DASK_SHARD_SIZE,
        dask_address=address,
    )
    done = time.perf_counter()
    return ready - start, done - ready, RoundResult.model_validate_json(data)


def ledger_of(store: str, task_id: str) -> list[bytes]:
    files = FileStore(Path(store))
    return [files.read(key) for key in files.list(Layout(task_id).ledger)]


def measure_speedup(work: Path, nodes: int, shard_size: int, repeats: int) -> dict[str, Any]:
    """The heavy round on one worker process and on two, interleaved (1, 2, 1, 2, ...) so that
    load from other processes falls on both alike; the best of each."""
    samples: dict[int, list[float]] = {1: [], 2: []}
    shares: list[float] = []  # the busier-worker-independent check: 0.5 is an even split
    cpu: dict[int, list[list[float]]] = {1: [], 2: []}
    ledgers: list[list[bytes]] = []
    for repeat in range(repeats):
        for workers in (1, 2):
            with local_cluster(workers, env=worker_env()) as address:
                store = str(work / f"heavy-{workers}-{repeat}")
                spec = SandboxSpec(
                    task_dir=str(HEAVY), store=store, nodes=nodes, seed=SEED, shard_size=shard_size
                )
                before = worker_cpu_s(address)
                _, seconds, result = timed_round(address, spec)
                after = worker_cpu_s(address)
                used = [after[worker] - cpu for worker, cpu in before.items()]
            log(
                f"heavy: {nodes} nodes on {workers} worker(s): round in {seconds:.1f} s, "
                f"worker CPU {', '.join(f'{u:.1f}' for u in used)} s"
            )
            samples[workers].append(round(seconds, 2))
            cpu[workers].append([round(u, 2) for u in used])
            if workers == 2:
                shares.append(round(min(used) / sum(used), 3))
            ledgers.append(ledger_of(store, result.task_id))
    best = {workers: min(times) for workers, times in samples.items()}
    return {
        "heavy_nodes": nodes,
        "heavy_round_s_1_worker": best[1],
        "heavy_round_s_2_workers": best[2],
        "heavy_samples_s": {str(workers): times for workers, times in samples.items()},
        "heavy_worker_cpu_s": {str(workers): used for workers, used in cpu.items()},
        "nodes_per_s_1_worker": round(nodes / best[1], 2),
        "nodes_per_s_2_workers": round(nodes / best[2], 2),
        "speedup_2_workers": round(best[1] / best[2], 2),
        "least_busy_worker_cpu_share": min(shares),
        # What two free cores would give: one worker's CPU over the busier of two workers'.
        "worker_cpu_speedup_2_workers": round(
            min(sum(u) for u in cpu[1]) / min(max(u) for u in cpu[2]), 2
        ),
        "same_ledger_1_and_2_workers": all(ledger == ledgers[0] for ledger in ledgers),
    }


def search_max_nodes(
    work: Path, sizes: list[int], round_limit_s: float, budget_s: float
) -> dict[str, Any]:
    steps: list[dict[str, Any]] = []
    reached = 0
    started = time.perf_counter()
    stopped = "all sizes settled"
    for nodes in sizes:
        if steps:
            last = steps[-1]
            predicted = (last["setup_s"] + last["round_s"]) * nodes / last["nodes"] * 1.2
            left = budget_s - (time.perf_counter() - started)
            if predicted > left:
                stopped = f"{nodes} nodes predicted {predicted:.0f} s, {left:.0f} s of budget left"
                break
        with local_cluster(2, env=worker_env()) as address:
            spec = SandboxSpec(
                task_dir=str(TRIVIAL),
                store=str(work / f"net-{nodes}"),
                nodes=nodes,
                seed=SEED,
                shard_size=DASK_SHARD_SIZE,
            )
            setup_s, round_s, result = timed_round(address, spec)
        approved = result.counts()[Outcome.APPROVED]
        steps.append(
            {
                "nodes": nodes,
                "setup_s": round(setup_s, 1),
                "round_s": round(round_s, 1),
                "approved": approved,
            }
        )
        log(
            f"network: {nodes} nodes, set-up {setup_s:.1f} s, round {round_s:.1f} s, "
            f"{approved} approved"
        )
        if round_s > round_limit_s or approved != nodes:
            stopped = f"{nodes} nodes did not settle fully within {round_limit_s:.0f} s"
            break
        reached = nodes
    return {
        "max_nodes_10min": reached,
        "max_nodes_round_s": next((s["round_s"] for s in steps if s["nodes"] == reached), None),
        "search": steps,
        "search_stopped": stopped,
    }


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--heavy-nodes", type=int, default=150, help="nodes of the heavy round")
    parser.add_argument("--heavy-shard-size", type=int, default=10, help="nodes per heavy shard")
    parser.add_argument("--repeats", type=int, default=3, help="heavy rounds per cluster size")
    parser.add_argument(
        "--sizes", default="10000,30000,100000", help="network sizes to try, comma separated"
    )
    parser.add_argument("--round-limit-s", type=float, default=600.0)
    parser.add_argument("--search-budget-s", type=float, default=900.0)
    parser.add_argument(
        "--only", choices=["speedup", "search"], help="run one part (the other's keys are null)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s]
    report: dict[str, Any] = {"cpu_count": os.cpu_count(), "load_avg_start": os.getloadavg()[0]}
    with (
        tempfile.TemporaryDirectory(prefix="koiitasks-scaleout-") as work,
        prefect_test_harness(server_startup_timeout=180),
        temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}),
    ):
        report |= {"speedup_2_workers": None, "max_nodes_10min": None}
        if args.only != "search":
            report |= measure_speedup(
                Path(work), args.heavy_nodes, args.heavy_shard_size, args.repeats
            )
        if args.only != "speedup":
            report |= search_max_nodes(Path(work), sizes, args.round_limit_s, args.search_budget_s)
    report["load_avg_end"] = os.getloadavg()[0]
    report["peak_rss_mb_orchestrator"] = round(
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1
    )
    if args.json:
        print(json.dumps(report))
    else:
        for key, value in report.items():
            print(f"{key}: {value}")


if __name__ == "__main__":
    main()
