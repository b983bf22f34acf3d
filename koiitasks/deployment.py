"""A deployed task: its real slot clock, its schedule, and the engine its rounds run on.

``koiitasks deploy`` gives a task a genesis: a real instant, on a slot boundary and a little
ahead, so that round 0 has a flow run waiting for it. From then on round N starts at
``genesis + (starting_slot + N * round_time) * slot_ms``, to the millisecond. The Prefect
schedule is an interval of ``round_time * slot_ms`` anchored at round 0's first slot, so every
scheduled run is due at its round's first slot, and works out its round from its scheduled
start (not from when it happened to start), so a late run still knows which round it is.

:func:`open_deployed_engine` is the seam between a deployment and its nodes: it builds the engine
that the task record in the store calls for. A record of a sandbox network means simulated nodes
run inside the flow on the wall clock (demos and tests); a record without one means the nodes
registered in the store (``koiitasks node register``), reached over HTTP as ``koiitasks run
--remote`` reaches them. Their rounds are signed with the orchestrator's key: the deployment's
flow runs are given the key file's path (a parameter, shown in the UI), never the key, and read
it on the machine that runs them.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from koiitasks.clock import Clock, Schedule, WallClock
from koiitasks.errors import ConfigError, KeyFileError, NetworkMismatchError, RecordError
from koiitasks.identity import Keypair, load_key
from koiitasks.live import LiveEngine
from koiitasks.network import (
    Network,
    no_registered_node,
    open_remote_network,
    open_sandbox_network,
    read_task_record,
)
from koiitasks.protocol import TaskRecord
from koiitasks.remote import build_remote
from koiitasks.sandbox import simulated_nodes
from koiitasks.storage import Layout, Store, open_store
from koiitasks.task import LoadedTask, load_task

#: The name of the deployed round flow: a task's deployment is ``FLOW_NAME/TASK_ID``.
FLOW_NAME = "koii-deployed-round"

#: How far ahead of ``koiitasks deploy`` round 0 starts: time for the server to schedule it
#: and for the serve process to start its flow run.
DEFAULT_LEAD_MS = 20_000

#: Genesis falls on a whole second as well as a slot boundary if that costs at most this much.
ALIGN_WITHIN_MS = 10_000

#: How long before its round a flow run's process is started (Prefect's prefetch). A flow-run
#: process needs a few seconds of CPU to import Prefect and start, far more on a busy machine;
#: it then waits, idle, for its round's first slot. Each waiting process holds ~150 MB.
DEFAULT_PREFETCH_S = 15.0


@dataclass(frozen=True)
class DeploymentPlan:
    """What Prefect needs to know to start one flow run per round of a deployed task."""

    task_id: str
    task_dir: str
    store: str
    genesis_ms: int
    schedule: Schedule
    slot_ms: int
    prefetch_s: float = DEFAULT_PREFETCH_S
    #: The orchestrator's key file (an absolute path) for rounds on registered remote nodes.
    key_file: str | None = None

    @property
    def name(self) -> str:
        """The deployment's name: the task id."""
        return self.task_id

    @property
    def round_ms(self) -> int:
        return self.schedule.round_time * self.slot_ms

    @property
    def interval(self) -> dt.timedelta:
        return dt.timedelta(milliseconds=self.round_ms)

    @property
    def anchor(self) -> dt.datetime:
        """Round 0's first slot, as the schedule's anchor date."""
        start_ms = self.genesis_ms + self.schedule.round_start(0) * self.slot_ms
        return dt.datetime.fromtimestamp(start_ms / 1000, tz=dt.UTC)

    @property
    def tags(self) -> list[str]:
        return [self.task_id, "koiitasks"]

    @property
    def parameters(self) -> dict[str, Any]:
        given = {"task_dir": self.task_dir, "store": self.store}
        return given if self.key_file is None else {**given, "key_file": self.key_file}

    @property
    def live_rounds(self) -> int:
        """Rounds alive at once: each lives from its first slot to N+2's distribution audit."""
        s = self.schedule
        return math.ceil((2 * s.round_time + s.submission_window + s.audit_window) / s.round_time)

    @property
    def concurrency_limit(self) -> int:
        """Flow runs of the deployment at once: the live rounds, the ones already started and
        waiting for their first slot, and one for a rerun after a restart."""
        waiting = math.ceil(self.prefetch_s * 1000 / self.round_ms)
        return self.live_rounds + waiting + 1

    @property
    def poll_s(self) -> float:
        """How often the serve process asks the server for due runs."""
        return max(1.0, min(5.0, self.prefetch_s / 3))

    def round_at_ms(self, ms: int) -> int:
        """The round whose first slot is nearest ``ms`` (a scheduled start is exactly one)."""
        slot = (ms - self.genesis_ms + self.slot_ms // 2) // self.slot_ms
        return max(0, self.schedule.round_of(slot))

    def round_starting_at_ms(self, ms: int) -> int | None:
        """The round that starts at ``ms`` (to half a slot), or None: a start from another
        schedule (an earlier deploy of the task to another store) or before round 0."""
        number = self.round_at_ms(ms)
        if abs(ms - self.round_start_ms(number)) > self.slot_ms // 2:
            return None
        return number

    def round_start_ms(self, round_number: int) -> int:
        return self.genesis_ms + self.schedule.round_start(round_number) * self.slot_ms


def unserved_rounds(engine: LiveEngine) -> range:
    """The rounds from the first unsettled one whose execute windows have closed: after a
    deploy that recorded the task's genesis but never served its rounds, every round since
    (later rounds record them as missed). Counted from the schedule, not round by round in the
    store: a genesis a month old is hundreds of thousands of rounds."""
    first = engine.next_round()
    now = engine.slot_clock.get_slot()
    last = max(first, engine.schedule.round_of(now) - 2)  # execute windows span under 2 rounds
    while engine.schedule.execute_window(last).end <= now:
        last += 1
    return range(first, last)


def aligned_genesis(now_ms: int, slot_ms: int, lead_ms: int = DEFAULT_LEAD_MS) -> int:
    """The first slot boundary at least ``lead_ms`` from now; on a whole second too when that
    is at most :data:`ALIGN_WITHIN_MS` away, so the UI's times read cleanly."""
    both = math.lcm(slot_ms, 1000)
    step = both if both <= ALIGN_WITHIN_MS else slot_ms
    return -(-(now_ms + lead_ms) // step) * step


def load_orchestrator_key(
    key_file: Path | str, record: TaskRecord | None, *, where: str
) -> Keypair:
    """The orchestrator's key from its file; refused, naming the file, if the task record in the
    store (``where``) was made by another orchestrator."""
    path = Path(key_file)
    try:
        key = load_key(path)
    except KeyFileError as e:
        if record is None or not isinstance(e.__cause__, FileNotFoundError):
            raise
        raise KeyFileError(
            f"key file {path} does not exist",
            hint=f"restore the key file of orchestrator {record.orchestrator}, which made task "
            f"{record.task_id!r} in {where}: a new key cannot run it",
        ) from e
    if record is not None and key.public_id != record.orchestrator:
        raise NetworkMismatchError(
            f"key file {path} is orchestrator {key.public_id}, but task {record.task_id!r} in "
            f"{where} was made by orchestrator {record.orchestrator}",
            hint="pass the key file that made the task (its public key is the task's "
            "orchestrator), or deploy to another --store",
        )
    return key


def prepare_deployed_task(
    task_dir: Path | str,
    store_url: str,
    *,
    nodes: int | None = None,
    seed: int | None = None,
    adversaries: dict[str, int] | None = None,
    key_file: Path | str | None = None,
    lead_ms: int = DEFAULT_LEAD_MS,
    clock: Clock | None = None,
    before_writing: Callable[[], object] = lambda: None,
    s3_endpoint_url: str | None = None,
) -> Network:
    """The task record a deployment runs from: made on the first deploy (with a real genesis),
    checked on the next ones.

    ``nodes`` makes simulated nodes; ``key_file`` (the orchestrator's) runs on the nodes
    registered in the store, and must be the key that made the task record if there is one.
    ``before_writing`` is called once the arguments are checked, before the store is written:
    an error it raises leaves the store as it was (``koiitasks deploy`` asks the Prefect API
    there, so that a server that does not answer leaves no genesis behind). An ``s3://`` store
    is reached through ``s3_endpoint_url`` when given (MinIO, a moto server), here and in
    :func:`plan_deployment` and :func:`open_deployed_engine`.
    """
    loaded = load_task(task_dir)
    store = open_store(store_url, s3_endpoint_url=s3_endpoint_url)
    record = read_task_record(store, loaded.task_id)
    simulated = nodes is not None or seed is not None or bool(adversaries)
    if key_file is not None and simulated:
        raise ConfigError(
            "--key runs the rounds on the nodes registered in the store; --nodes, --seed and "
            "--adversary make simulated nodes",
            hint="give either --key ORCHESTRATOR_KEY_FILE or --nodes N, not both",
        )
    if record is None and nodes is None and key_file is None:
        raise ConfigError(
            f"no task {loaded.task_id!r} in {store.url} and no --nodes or --key",
            hint="give --nodes N to run N simulated nodes on the wall clock, or --key "
            "ORCHESTRATOR_KEY_FILE to run on the nodes registered in the store "
            "(`koiitasks node register`)",
        )
    clock = clock or WallClock()
    if key_file is not None:
        return _prepare_remote(
            store,
            loaded,
            record,
            key_file,
            lead_ms=lead_ms,
            clock=clock,
            before_writing=before_writing,
        )
    if record is not None and record.network is None:
        error = NetworkMismatchError if simulated else ConfigError
        raise error(
            f"task {loaded.task_id!r} in {store.url} runs on registered remote nodes: deploying "
            "it needs the orchestrator's key file",
            hint=f"give --key FILE, the key of orchestrator {record.orchestrator} that made the "
            "task, and drop --nodes, --seed and --adversary (or use another --store)",
        )
    if record is not None and record.genesis_ms == 0:
        raise NetworkMismatchError(
            f"{store.url} holds sandbox rounds of task {loaded.task_id!r} on simulated time "
            "(koiitasks run); a deployment runs on the wall clock",
            hint="deploy with another --store",
        )
    before_writing()
    genesis = aligned_genesis(clock.now_ms(), loaded.config.slot_ms, lead_ms)
    return open_sandbox_network(
        store, loaded, nodes=nodes, seed=seed, adversaries=adversaries, genesis_ms=genesis
    )


def _prepare_remote(
    store: Store,
    loaded: LoadedTask,
    record: TaskRecord | None,
    key_file: Path | str,
    *,
    lead_ms: int,
    clock: Clock,
    before_writing: Callable[[], object],
) -> Network:
    """The task record for registered nodes: made with a genesis ``lead_ms`` ahead, once some
    node has registered (a record made earlier would leave its first rounds to be missed)."""
    if record is not None and record.network is not None:
        raise NetworkMismatchError(
            f"task {loaded.task_id!r} in {store.url} runs on simulated nodes (deployed with "
            "--nodes), not on registered ones",
            hint="drop --key to deploy it as it is, or use another --store for registered nodes",
        )
    key = load_orchestrator_key(key_file, record, where=store.url)
    if record is None and not store.list(Layout(loaded.task_id).nodes):
        raise no_registered_node(loaded.task_id, store.url, then=" in this store, then deploy")
    before_writing()
    now_ms = clock.now_ms()
    genesis = aligned_genesis(now_ms, loaded.config.slot_ms, lead_ms)
    return open_remote_network(store, loaded, key, now_ms=now_ms, genesis_ms=genesis)


def plan_deployment(
    task_dir: Path | str,
    store_url: str,
    *,
    prefetch_s: float = DEFAULT_PREFETCH_S,
    key_file: Path | str | None = None,
    s3_endpoint_url: str | None = None,
) -> DeploymentPlan:
    """The deployment of a task that ``koiitasks deploy`` prepared in the store; ``key_file``
    (made absolute) is the orchestrator's, for rounds on registered remote nodes."""
    loaded = load_task(task_dir)
    store = open_store(store_url, s3_endpoint_url=s3_endpoint_url)
    record = read_task_record(store, loaded.task_id)
    if record is None:
        raise RecordError(
            f"task {loaded.task_id!r} was never deployed to {store.url}",
            hint="run `koiitasks deploy TASK_DIR --store ...` first",
        )
    config = loaded.config
    return DeploymentPlan(
        task_id=loaded.task_id,
        task_dir=str(loaded.directory),
        store=store_url,
        genesis_ms=record.genesis_ms,
        schedule=Schedule(
            starting_slot=record.starting_slot,
            round_time=config.round_time,
            submission_window=config.submission_window,
            audit_window=config.audit_window,
        ),
        slot_ms=config.slot_ms,
        prefetch_s=prefetch_s,
        key_file=None if key_file is None else str(Path(key_file).absolute()),
    )


def open_deployed_engine(
    task_dir: Path | str,
    store_url: str,
    *,
    key_file: Path | str | None = None,
    workers: int = 4,
    clock: Clock | None = None,
    s3_endpoint_url: str | None = None,
) -> LiveEngine:
    """The engine for a deployed task's rounds, on the nodes its task record names: simulated
    ones, or the registered ones (which need the orchestrator's ``key_file``)."""
    loaded = load_task(task_dir)
    store = open_store(store_url, s3_endpoint_url=s3_endpoint_url)
    record = read_task_record(store, loaded.task_id)
    if record is None or record.genesis_ms == 0:
        raise RecordError(
            f"task {loaded.task_id!r} is not deployed in {store.url}",
            hint="run `koiitasks deploy TASK_DIR --store ...` first",
        )
    if record.network is None:
        if key_file is None:
            raise ConfigError(
                f"task {loaded.task_id!r} in {store.url} runs on registered remote nodes, and "
                "no orchestrator key file was given to sign its rounds",
                hint="deploy it with `koiitasks deploy TASK_DIR --store ... --key "
                "ORCHESTRATOR_KEY_FILE`: its flow runs then get the file's path",
            )
        key = load_orchestrator_key(key_file, record, where=store.url)
        remote = build_remote(loaded, store, key, clock=clock, engine_type=LiveEngine)
        assert isinstance(remote.engine, LiveEngine)
        return remote.engine
    if key_file is not None:
        raise NetworkMismatchError(
            f"task {loaded.task_id!r} in {store.url} runs on simulated nodes; an orchestrator "
            f"key file ({key_file}) is for registered ones",
            hint="deploy it again without --key",
        )
    return _simulated_on_wall_clock(loaded, store, workers=workers, clock=clock or WallClock())


def _simulated_on_wall_clock(
    loaded: LoadedTask, store: Store, *, workers: int, clock: Clock
) -> LiveEngine:
    """Simulated nodes, run inside the flow, answering on the real slot clock."""
    network = open_sandbox_network(store, loaded, nodes=None, seed=None, adversaries=None)
    assert network.orchestrator_key is not None
    slot_clock, pool = simulated_nodes(loaded, network, clock, workers=workers, live=True)
    return LiveEngine(
        config=loaded.config,
        store=store,
        network=network,
        orchestrator=network.orchestrator_key,
        pool=pool,
        slot_clock=slot_clock,
    )
