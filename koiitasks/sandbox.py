"""The local sandbox: simulated nodes on a simulated slot clock, records in a local store.

Each round replays its own timeline on a :class:`SimulatedClock`, so waiting for a window costs
nothing and a seeded run writes the same bytes every time. Sandboxes are cached per process, so
the Prefect flow of each round reuses the nodes and registry the previous round loaded.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from koiitasks.clock import Clock, Schedule, SimulatedClock, SlotClock
from koiitasks.errors import NetworkMismatchError, RoundError
from koiitasks.network import Network, open_sandbox_network
from koiitasks.nodes.runtime import NodeRuntime
from koiitasks.nodes.sim import SimulatedPool
from koiitasks.round import RoundEngine
from koiitasks.round_result import RoundResult
from koiitasks.storage import Store, open_store
from koiitasks.storage.layout import MAX_ROUND
from koiitasks.task import LoadedTask, load_task

#: Rounds one run plans at most (``--rounds``); the next run continues after them.
MAX_PLANNED_ROUNDS = 1_000_000


@dataclass
class Sandbox:
    """A task, its simulated network and the engine that runs its rounds."""

    loaded: LoadedTask
    store: Store
    network: Network
    clock: SimulatedClock
    engine: RoundEngine

    def begin(self, round_number: int) -> None:
        """Put the simulated clock at the round's first slot."""
        engine = self.engine
        self.clock.set_ms(engine.slot_clock.ms_of_slot(engine.schedule.round_start(round_number)))

    def plan(self, *, rounds: int | None, round_number: int | None) -> list[int]:
        """The rounds a run covers: ``--round N`` alone, or the next ``--rounds R``."""
        if round_number is not None:
            if not 0 <= round_number <= MAX_ROUND:
                raise RoundError(f"--round must be 0 to {MAX_ROUND:,}, got {round_number}")
            return [round_number]
        start = self.engine.next_round()
        count = 1 if rounds is None else rounds
        if not 0 < count <= MAX_PLANNED_ROUNDS or start + count - 1 > MAX_ROUND:
            raise RoundError(
                f"--rounds {count} from round {start}: a run plans 1 to "
                f"{MAX_PLANNED_ROUNDS:,} rounds, up to round {MAX_ROUND:,}",
                hint="run again to continue after the last settled round",
            )
        return list(range(start, start + count))

    def run_round(self, round_number: int) -> RoundResult:
        """One whole round in this thread, without Prefect."""
        self.begin(round_number)
        return self.engine.run(round_number)

    def close(self) -> None:
        """Stop the nodes' threads and forget this sandbox, so that :func:`open_sandbox` builds a
        new one; a long-lived process that opens many sandboxes calls it to free their memory.
        Only the sandbox's sole user may close it: a round still running on it fails."""
        self.engine.pool.close()
        with _cache_lock:
            for key in [key for key, cached in _cache.items() if cached is self]:
                del _cache[key]


_cache: dict[tuple[object, ...], Sandbox] = {}
_cache_lock = threading.Lock()


def open_sandbox(
    task_dir: Path | str,
    *,
    store: str | None = None,
    nodes: int | None = None,
    seed: int | None = None,
    adversaries: dict[str, int] | None = None,
    workers: int = 4,
    shard_size: int | None = None,
    s3_endpoint_url: str | None = None,
) -> Sandbox:
    """The sandbox for a task directory and store, made once per process."""
    loaded = load_task(task_dir)
    the_store = open_store(store, s3_endpoint_url=s3_endpoint_url)
    key = (
        loaded.directory,
        the_store.url,
        nodes,
        seed,
        tuple(sorted((adversaries or {}).items())),
        workers,
        shard_size,
    )
    with _cache_lock:
        if key not in _cache:
            _cache[key] = build_sandbox(
                loaded,
                the_store,
                nodes=nodes,
                seed=seed,
                adversaries=adversaries,
                workers=workers,
                shard_size=shard_size,
            )
        return _cache[key]


def simulated_nodes(
    loaded: LoadedTask,
    network: Network,
    clock: Clock,
    *,
    workers: int,
    hook_timeout_s: float | None = None,
    live: bool = False,
) -> tuple[SlotClock, SimulatedPool]:
    """The network's nodes simulated in this process on ``clock``: a runtime per node key
    behind one pool, and the slot clock they answer on. Hooks time out when the submission
    window closes unless ``hook_timeout_s`` says otherwise; ``live`` nodes answer on the real
    slot clock (a deployment) instead of simulated time."""
    assert network.orchestrator_key is not None
    config = loaded.config
    slot_clock = SlotClock(clock, genesis_ms=network.task.genesis_ms, slot_ms=config.slot_ms)
    schedule = Schedule(
        starting_slot=network.task.starting_slot,
        round_time=config.round_time,
        submission_window=config.submission_window,
        audit_window=config.audit_window,
    )
    runtimes = {
        node_id: NodeRuntime(
            loaded,
            key,
            schedule=schedule,
            slot_clock=slot_clock,
            orchestrator=network.orchestrator_key.public_id,
        )
        for node_id, key in network.keys.items()
    }
    window_s = (config.round_time + config.submission_window) * config.slot_ms / 1000
    pool = SimulatedPool(
        runtimes,
        network.behaviours(),
        schedule=schedule,
        slot_ms=config.slot_ms,
        clock=clock,
        seed=network.task.network.seed if network.task.network else 0,
        workers=workers,
        hook_timeout_s=hook_timeout_s if hook_timeout_s is not None else max(1.0, window_s),
        live=slot_clock if live else None,
    )
    return slot_clock, pool


def build_sandbox(
    loaded: LoadedTask,
    store: Store,
    *,
    nodes: int | None = None,
    seed: int | None = None,
    adversaries: dict[str, int] | None = None,
    stake: int | None = None,
    workers: int = 4,
    shard_size: int | None = None,
    hook_timeout_s: float | None = None,
    network: Network | None = None,
) -> Sandbox:
    """A new sandbox (not cached): a fresh engine over ``store``, as a new process would make.

    ``network`` (with its nodes' and orchestrator's keys) replaces the seeded sandbox network:
    ``koiitasks.testing.networks`` makes ones whose nodes each have their own stake.
    """
    if network is None:
        network = open_sandbox_network(
            store, loaded, nodes=nodes, seed=seed, adversaries=adversaries, stake=stake
        )
    assert network.orchestrator_key is not None
    if network.task.genesis_ms != 0:
        raise NetworkMismatchError(
            f"task {loaded.task_id!r} in {store.url} is deployed on the wall clock "
            "(koiitasks deploy); a sandbox run on simulated time would write into its rounds",
            hint="use another --store for sandbox runs",
        )
    config = loaded.config
    clock = SimulatedClock()
    slot_clock, pool = simulated_nodes(
        loaded, network, clock, workers=workers, hook_timeout_s=hook_timeout_s
    )
    engine = RoundEngine(
        config=config,
        store=store,
        network=network,
        orchestrator=network.orchestrator_key,
        pool=pool,
        slot_clock=slot_clock,
        **({"shard_size": shard_size} if shard_size else {}),
    )
    return Sandbox(loaded=loaded, store=store, network=network, clock=clock, engine=engine)
