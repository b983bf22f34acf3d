"""How close a round comes to its cryptographic floor, and how far ahead of naive Prefect mapping.

For a node count N it runs, in one process and one run:

- ``wall_s``: a complete round (execute, audits by 3 auditors each, distribution and its audit,
  ledger) of a trivial task, all nodes honest, on the file store, through the real Prefect round
  flow; ``per_node_us`` is ``wall_s / N``; ``peak_rss_mb`` the process's peak after it;
- ``floor_s``: the same number of ed25519 signatures and verifications the round performed (it
  counts them) and the same create-only writes of the same sizes, in a tight loop with the same
  parallelism; ``vs_floor = wall_s / floor_s``;
- ``plain_s``: the same round as plain library calls without Prefect; ``vs_plain``;
- with ``--naive``: the same round as a naive Prefect flow with one task run per node execute
  and one per audit: ``naive_s``, ``vs_naive = naive_s / wall_s``, and whether the Prefect API
  recorded every one of its task runs (``naive_all_recorded``).

    python bench/round_bench.py --nodes 1000 --naive
    python bench/round_bench.py --nodes 10000 --json
    python bench/round_bench.py --quick --json     # what CI runs: asserts nothing about time

It asserts nothing about time; ratios are measured against baselines in the same run.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import logging
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

import httpx
from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.context import SyncClientContext
from prefect.futures import wait
from prefect.runtime import flow_run
from prefect.settings import (
    PREFECT_API_URL,
    PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
    temporary_settings,
)
from prefect.task_runners import ThreadPoolTaskRunner
from prefect.testing.utilities import prefect_test_harness

from flows.round import SHARD_CONCURRENCY, sandbox_round
from koiitasks import identity
from koiitasks.identity import Keypair
from koiitasks.round import RoundEngine
from koiitasks.sandbox import open_sandbox
from koiitasks.storage import FileStore, Layout

TASK_DIR = Path(__file__).resolve().parent / "tasks" / "trivial"
SEED = 1


class CryptoCounter:
    """Counts the ed25519 operations the process really performs (cache hits excluded)."""

    def __init__(self) -> None:
        self.signs: list[int] = []  # message sizes
        self.verifies: list[tuple[str, int]] = []  # (signer, message size)

    def __enter__(self) -> CryptoCounter:
        self._sign, self._verify = Keypair.sign, identity._verify_key
        counter = self
        original_sign = self._sign

        def counting_sign(keypair: Keypair, message: bytes) -> str:
            counter.signs.append(len(message))
            return original_sign(keypair, message)

        original_verify_key = self._verify

        class CountingKey:
            def __init__(self, public_id: str) -> None:
                self.public_id = public_id
                self.key = original_verify_key(public_id)

            def verify(self, message: bytes, signature: bytes) -> Any:
                counter.verifies.append((self.public_id, len(message)))
                return self.key.verify(message, signature)

        setattr(Keypair, "sign", counting_sign)  # noqa: B010 - patching a method on purpose
        setattr(identity, "_verify_key", CountingKey)  # noqa: B010
        identity._verified.clear()
        return self

    def __exit__(self, *exc: object) -> None:
        setattr(Keypair, "sign", self._sign)  # noqa: B010
        setattr(identity, "_verify_key", self._verify)  # noqa: B010


def round_writes(store_root: Path, task_id: str, round_number: int) -> list[int]:
    """Sizes of the records a round created: its round folder and its ledger entry."""
    store = FileStore(store_root)
    layout = Layout(task_id)
    keys = [*store.list(layout.round(round_number)), layout.ledger_entry(round_number)]
    return [len(store.read(k)) for k in keys if store.exists(k)]


def floor(signs: list[int], verifies: list[tuple[str, int]], writes: list[int]) -> float:
    """The round's signatures, verifications and create-only writes, and nothing else, on the
    same number of threads as the flow's shards."""
    key = Keypair.from_seed(b"floor")
    sign_messages = [os.urandom(n) for n in signs]
    signed = [(key.public_id, m, key.sign(m)) for m in (os.urandom(n) for _, n in verifies)]
    root = Path(tempfile.mkdtemp(prefix="koiitasks-floor-"))
    store = FileStore(root)
    batch = 250
    records = [(f"f/{i // batch:05d}/{i:08d}.json", os.urandom(n)) for i, n in enumerate(writes)]
    chunks = [records[i : i + batch] for i in range(0, len(records), batch)]
    identity._verified.clear()

    def work(part: int) -> None:
        for message in sign_messages[part::SHARD_CONCURRENCY]:
            key.sign(message)
        for signer, message, signature in signed[part::SHARD_CONCURRENCY]:
            identity._verify_key(signer).verify(message, bytes.fromhex(signature))
        for chunk in chunks[part::SHARD_CONCURRENCY]:
            store.create_many(chunk)

    start = time.perf_counter()
    with cf.ThreadPoolExecutor(SHARD_CONCURRENCY) as pool:
        list(pool.map(work, range(SHARD_CONCURRENCY)))
    return time.perf_counter() - start


@task(name="naive-execute", cache_policy=NO_CACHE)
def naive_execute(engine: RoundEngine, round_number: int, node: str) -> None:
    engine.execute_shard(round_number, [node])


@task(name="naive-audit", cache_policy=NO_CACHE)
def naive_audit(
    engine: RoundEngine, round_number: int, assignments: dict[str, list[str]], auditor: str
) -> None:
    engine.audit_shard(round_number, assignments, [auditor])


@task(name="naive-settle", cache_policy=NO_CACHE)
def naive_settle(engine: RoundEngine, round_number: int) -> None:
    engine.settle(round_number, engine.distribute(round_number))


@flow(
    name="naive-round",
    task_runner=ThreadPoolTaskRunner[Any](max_workers=8),  # type: ignore[arg-type]
    persist_result=False,
)
def naive_round(store: str, nodes: int) -> str:
    """The naive design: one Prefect task run per node execute and per auditor."""
    engine = open_sandbox(TASK_DIR, store=store, nodes=nodes, seed=SEED, workers=1).engine
    engine.open_round(0)
    wait([naive_execute.submit(engine, 0, node) for node in engine.eligible(0)])
    assignments = engine.plan_audits(0)
    wait([naive_audit.submit(engine, 0, assignments, a) for a in sorted(assignments)])
    naive_settle(engine, 0)
    return str(flow_run.id)


def recorded_task_runs(flow_run_id: str, expected: int, *, patience_s: float) -> int:
    """Task runs the API has recorded for a flow run, polled until ``expected`` or patience."""
    url = f"{PREFECT_API_URL.value()}/task_runs/count"
    body = {"flow_runs": {"id": {"any_": [flow_run_id]}}}
    deadline = time.monotonic() + patience_s
    count = -1
    while time.monotonic() < deadline:
        count = int(httpx.post(url, json=body, timeout=30).json())
        if count >= expected:
            break
        time.sleep(1)
    return count


def fresh_network(work: Path, name: str, nodes: int) -> str:
    """A store holding a new network of ``nodes`` (keys and registrations: set-up, not round
    cost, so made before any timing), its sandbox opened and kept by this process."""
    store = str(work / name)
    open_sandbox(TASK_DIR, store=store, nodes=nodes, seed=SEED)
    return store


def flow_round(store: str, nodes: int) -> float:
    """Seconds for round 0 through the real Prefect flow."""
    identity._verified.clear()  # no verdict remembered from another run of the same records
    start = time.perf_counter()
    result = json.loads(
        sandbox_round(task_dir=str(TASK_DIR), round_number=0, store=store, nodes=nodes, seed=SEED)
    )
    elapsed = time.perf_counter() - start
    assert result["distribution_accepted"], "the benchmark round did not settle"
    return elapsed


def plain_round(store: str, nodes: int) -> float:
    """Seconds for round 0 as plain library calls: the same engine, no Prefect."""
    identity._verified.clear()
    sandbox = open_sandbox(TASK_DIR, store=store, nodes=nodes, seed=SEED)
    start = time.perf_counter()
    sandbox.run_round(0)
    return time.perf_counter() - start


def measure(nodes: int, *, naive: bool, repeat: int = 1) -> dict[str, Any]:
    """One report for ``nodes``: the best of ``repeat`` runs of each way, interleaved.

    Both ways are warmed up first on a small network (imports, Prefect's first flow run), every
    run starts from a fresh store with no remembered verdicts, and the operations the floor
    repeats are counted in a separate, untimed round, so counting slows neither."""
    logging.getLogger("koiitasks").setLevel(logging.ERROR)
    work = Path(tempfile.mkdtemp(prefix="koiitasks-round-bench-"))
    warm = min(nodes, 50)
    flow_round(fresh_network(work, "warm-flow", warm), warm)
    plain_round(fresh_network(work, "warm-plain", warm), warm)

    walls, plains = [], []
    for i in range(repeat):
        walls.append(flow_round(fresh_network(work, f"flow-{i}", nodes), nodes))
        if i == 0:  # later runs keep earlier networks open in this process
            peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        plains.append(plain_round(fresh_network(work, f"plain-{i}", nodes), nodes))
    wall_s, plain_s = min(walls), min(plains)

    counted = fresh_network(work, "counted", nodes)
    with CryptoCounter() as crypto:
        plain_round(counted, nodes)
    task_id = open_sandbox(TASK_DIR, store=counted, nodes=nodes, seed=SEED).loaded.task_id
    writes = round_writes(Path(counted), task_id, 0)
    floor_s = min(floor(crypto.signs, crypto.verifies, writes) for _ in range(repeat))
    report: dict[str, Any] = {
        "nodes": nodes,
        "wall_s": round(wall_s, 3),
        "per_node_us": round(wall_s / nodes * 1e6, 1),
        "peak_rss_mb": round(peak_rss_mb, 1),
        "floor_s": round(floor_s, 3),
        "vs_floor": round(wall_s / floor_s, 3),
        "plain_s": round(plain_s, 3),
        "vs_plain": round(wall_s / plain_s, 3),
        "naive_s": None,
        "vs_naive": None,
        "naive_all_recorded": None,
    }
    if naive:
        naive_store = str(work / "naive")
        open_sandbox(TASK_DIR, store=naive_store, nodes=nodes, seed=SEED, workers=1)
        start = time.perf_counter()
        run_id = naive_round(store=naive_store, nodes=nodes)
        naive_s = time.perf_counter() - start
        expected = 2 * nodes + 1
        recorded = recorded_task_runs(run_id, expected, patience_s=max(60.0, nodes / 20))
        report |= {
            "naive_s": round(naive_s, 3),
            "vs_naive": round(naive_s / wall_s, 3),
            "naive_all_recorded": recorded >= expected,
        }
    print(
        f"{nodes} nodes: signs {len(crypto.signs)}, verifies {len(crypto.verifies)}, "
        f"writes {len(writes)}; flow runs {[round(w, 2) for w in walls]}, "
        f"plain runs {[round(p, 2) for p in plains]}",
        file=sys.stderr,
    )
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=1000, help="simulated nodes (default 1000)")
    parser.add_argument("--naive", action="store_true", help="also run the naive mapped flow")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--quick", action="store_true", help="200 nodes with --naive (CI)")
    parser.add_argument(
        "--repeat", type=int, default=1, help="runs of each way; the best is reported (default 1)"
    )
    args = parser.parse_args()
    nodes, naive = (200, True) if args.quick else (args.nodes, args.naive)
    # One API client for every flow run, as `koiitasks run` keeps one for all its rounds.
    with (
        prefect_test_harness(server_startup_timeout=120),
        temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}),
        SyncClientContext.get_or_create(),
    ):
        report = measure(nodes, naive=naive, repeat=args.repeat)
    if args.json:
        print(json.dumps(report))
        return
    width = max(map(len, report))
    for key, value in report.items():
        print(f"{key:<{width}}  {value}")


if __name__ == "__main__":
    main()
