"""The remote orchestrator: rounds of a task on registered ``koiitasks node serve`` processes,
on the wall clock.

The orchestrator's key makes (first run) or opens the task record in the store; the nodes that
registered themselves for the task (``koiitasks node register``) are the network; calls reach
them through :class:`~koiitasks.nodes.http.HttpPool`; the same :class:`RoundEngine` steps as the
sandbox's check, store and pay. Slots are real: a round's phases wait for their windows.

Rounds start in the future. A round's request goes out at its first slot (or, if the flow run
started late, is stamped with the slot it does go out in), so the completion time measured from
it is the node's, not the orchestrator's lateness: :meth:`Remote.upcoming_round` is the first
round that has not started yet. ``koiitasks run --remote --rounds R`` runs one round
at a time, so a round that starts while another is still being audited or paid is left out (it
never appears in the ledger); ``koiitasks deploy --key`` starts one flow run per round and runs
them all (:func:`koiitasks.deployment.open_deployed_engine`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from koiitasks.clock import Clock, Schedule, SlotClock, WallClock
from koiitasks.errors import ConfigError, RoundMissed
from koiitasks.identity import Keypair, load_key
from koiitasks.network import Network, no_registered_node, open_remote_network
from koiitasks.nodes.http import DEFAULT_CONCURRENCY, HttpPool
from koiitasks.round import RoundEngine
from koiitasks.round_result import RoundResult
from koiitasks.storage import Layout, Store, open_store
from koiitasks.task import LoadedTask, load_task


@dataclass
class Remote:
    """A task, its registered nodes, and the engine that runs its rounds over HTTP."""

    loaded: LoadedTask
    store: Store
    network: Network
    clock: Clock
    pool: HttpPool
    engine: RoundEngine

    def upcoming_round(self, *, lead_ms: int = 0) -> int:
        """The first round after the last settled one that starts at least ``lead_ms`` from now
        (the time it takes to get to the round's first step, e.g. a flow run's start)."""
        engine = self.engine
        start_ms = engine.slot_clock.ms_of_slot(engine.schedule.starting_slot)
        round_ms = engine.schedule.round_time * engine.slot_clock.slot_ms
        elapsed = self.clock.now_ms() + lead_ms - start_ms
        started = -(-elapsed // round_ms) if elapsed > 0 else 0  # ceil: next start after that
        return max(engine.next_round(), started)

    def starts_in_ms(self, round_number: int) -> int:
        """Milliseconds until the round's first slot (0 if it has begun)."""
        engine = self.engine
        start = engine.slot_clock.ms_of_slot(engine.schedule.round_start(round_number))
        return max(0, start - self.clock.now_ms())

    def run_upcoming(
        self,
        runner: Callable[[int], RoundResult],
        *,
        count: int,
        lead_ms: int = 0,
        max_missed: int = 3,
        on_start: Callable[[int], None] | None = None,
        on_missed: Callable[[RoundMissed], None] | None = None,
    ) -> Iterator[RoundResult]:
        """Run ``count`` upcoming rounds, one after another, with ``runner``.

        The wall clock does not wait: a round whose start came too late (a slow flow start, a
        busy machine) is missed, and a later round is run in its place with twice the lead, up
        to ``max_missed`` misses in a row.
        """
        done = missed = 0
        while done < count:
            number = self.upcoming_round(lead_ms=lead_ms)
            if on_start is not None:
                on_start(number)
            try:
                result = runner(number)
            except RoundMissed as e:
                missed += 1
                if missed >= max_missed:
                    raise
                if on_missed is not None:
                    on_missed(e)
                lead_ms = 2 * max(lead_ms, self.engine.slot_clock.slot_ms)
                continue
            missed = 0
            done += 1
            yield result

    def run_round(self, round_number: int) -> RoundResult:
        """One whole round in this thread, without Prefect (waits for its windows)."""
        return self.engine.run(round_number)

    def close(self) -> None:
        self.pool.close()


def build_remote(
    loaded: LoadedTask,
    store: Store,
    orchestrator: Keypair,
    *,
    clock: Clock | None = None,
    skew_tolerance_slots: int = 1,
    concurrency: int = DEFAULT_CONCURRENCY,
    engine_type: type[RoundEngine] = RoundEngine,
) -> Remote:
    """A new remote orchestrator (not cached): the task record, the registry, pool and engine.

    ``engine_type`` is :class:`~koiitasks.live.LiveEngine` for a deployment's rounds, which
    overlap, one flow-run process each."""
    if skew_tolerance_slots < 0:
        raise ConfigError(f"--skew-tolerance-slots must be 0 or more, got {skew_tolerance_slots}")
    clock = clock or WallClock()
    layout = Layout(loaded.task_id)
    # Checked before the task record is made: a run refused for want of nodes must not tie the
    # store to the key it was given (a wrong one would lock the right one out for good).
    if not store.exists(layout.task) and not store.list(layout.nodes):
        raise no_registered_node(loaded.task_id, store.url)
    network = open_remote_network(store, loaded, orchestrator, now_ms=clock.now_ms())
    if not network.nodes:
        raise no_registered_node(loaded.task_id, store.url)
    config = loaded.config
    slot_clock = SlotClock(clock, genesis_ms=network.task.genesis_ms, slot_ms=config.slot_ms)
    schedule = Schedule(
        starting_slot=network.task.starting_slot,
        round_time=config.round_time,
        submission_window=config.submission_window,
        audit_window=config.audit_window,
    )
    pool = HttpPool(
        {node: reg.url for node, reg in network.nodes.items()},
        task_record=network.record,
        schedule=schedule,
        slot_clock=slot_clock,
        max_result_bytes=config.max_result_bytes,
        concurrency=concurrency,
    )
    try:
        engine = engine_type(
            config=config,
            store=store,
            network=network,
            orchestrator=orchestrator,
            pool=pool,
            slot_clock=slot_clock,
            skew_tolerance_slots=skew_tolerance_slots,
        )
    except BaseException:
        pool.close()
        raise
    return Remote(
        loaded=loaded, store=store, network=network, clock=clock, pool=pool, engine=engine
    )


_cache: dict[tuple[object, ...], Remote] = {}
_cache_lock = threading.Lock()


def open_remote(
    task_dir: Path | str,
    *,
    store: str,
    key_file: Path | str,
    skew_tolerance_slots: int = 1,
    concurrency: int = DEFAULT_CONCURRENCY,
    s3_endpoint_url: str | None = None,
) -> Remote:
    """The remote orchestrator for a task dir, store and key, made once per process (so every
    round flow in the process reuses its connections); an ``s3://`` store is reached through
    ``s3_endpoint_url`` when given (MinIO, a moto server)."""
    loaded = load_task(task_dir)
    the_store = open_store(store, s3_endpoint_url=s3_endpoint_url)
    key_path = Path(key_file).absolute()
    cache_key = (loaded.directory, the_store.url, key_path, skew_tolerance_slots, concurrency)
    with _cache_lock:
        if cache_key not in _cache:
            _cache[cache_key] = build_remote(
                loaded,
                the_store,
                load_key(key_path),
                skew_tolerance_slots=skew_tolerance_slots,
                concurrency=concurrency,
            )
        return _cache[cache_key]
