"""A task's network as the store remembers it: the task record and the node registry.

The task record (``task.json``) holds the config, the orchestrator's public key, the slot clock's
genesis and, for the sandbox, how the simulated network was made. It is written last when a
network is created, so a crash half way leaves a store that the next run completes with the
same bytes. A later run on the same store reuses the network; asking for a different one is an
error that says so.

A task run on remote nodes (``koiitasks run --remote``) has no simulated network: its record is
made by the first remote run, with the genesis at the next slot boundary of the wall clock, and
its nodes register themselves (``koiitasks node register``) with a signed record naming their
URL and stake. There is no chain here, so a stake is what the node declares.
"""

from __future__ import annotations

import random
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

from koiitasks.config import TaskConfig
from koiitasks.errors import (
    ConfigError,
    NetworkMismatchError,
    RecordConflict,
    RecordError,
    RecordNotFound,
)
from koiitasks.identity import Keypair
from koiitasks.nodes.sim import ADVERSARIES, HONEST
from koiitasks.protocol import NodeRegistration, SandboxNetwork, Signed, TaskRecord, decode, sign
from koiitasks.storage import Layout, Store
from koiitasks.task import LoadedTask

#: Simulated nodes a sandbox makes at most: each has a key pair derived when the network opens.
MAX_SANDBOX_NODES = 100_000


@dataclass
class Network:
    """A task record and its verified node registry."""

    record: Signed[TaskRecord]
    nodes: dict[str, NodeRegistration]
    keys: dict[str, Keypair] = field(default_factory=dict)  # sandbox only: the nodes' keys
    orchestrator_key: Keypair | None = None

    @property
    def task(self) -> TaskRecord:
        return self.record.body

    def behaviours(self) -> dict[str, str]:
        return {node: reg.behaviour for node, reg in self.nodes.items()}


def parse_adversaries(specs: list[str]) -> dict[str, int]:
    """``["lazy=2", "offline=1"]`` to ``{"lazy": 2, "offline": 1}``, with clear errors."""
    counts: dict[str, int] = {}
    for spec in specs:
        kind, sep, count = spec.partition("=")
        # isdigit() alone takes "²" (which int() refuses) and "٣" (which it reads as 3).
        if not sep or kind not in ADVERSARIES or not (count.isascii() and count.isdigit()):
            raise ConfigError(
                f"--adversary {spec!r} is not KIND=COUNT",
                hint=f"KIND is one of {', '.join(ADVERSARIES)}; COUNT a whole number",
            )
        counts[kind] = counts.get(kind, 0) + int(count)
    return {k: v for k, v in sorted(counts.items()) if v}


def check_adversaries(adversaries: object) -> dict[str, int]:
    """``adversaries`` as given to the library (``{"lazy": 2}``), held to the rules
    ``--adversary`` has: a known kind, a whole count of zero or more. A typo would otherwise
    make honest nodes under an unknown name, and a test of them pass without testing."""
    hint = f"give {{KIND: COUNT}} with KIND one of {', '.join(ADVERSARIES)}, e.g. {{'lazy': 2}}"
    if not isinstance(adversaries, dict):
        raise ConfigError(
            f"adversaries {adversaries!r} is not a dict of kinds and counts", hint=hint
        )
    for kind, count in adversaries.items():
        if kind not in ADVERSARIES:
            raise ConfigError(f"adversary kind {kind!r} is unknown", hint=hint)
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ConfigError(
                f"adversary count {count!r} for {kind!r} is not a whole number >= 0", hint=hint
            )
    return {kind: count for kind, count in sorted(adversaries.items()) if count}


def _sandbox_keys(seed: int, nodes: int) -> tuple[Keypair, list[Keypair]]:
    orchestrator = Keypair.from_seed(f"koiitasks-sandbox/{seed}/orchestrator".encode())
    keys = [Keypair.from_seed(f"koiitasks-sandbox/{seed}/node/{i}".encode()) for i in range(nodes)]
    return orchestrator, keys


def _behaviours(seed: int, node_ids: list[str], adversaries: dict[str, int]) -> dict[str, str]:
    order = sorted(node_ids)
    random.Random(seed).shuffle(order)  # noqa: S311 - a fair, reproducible draw, not a secret
    behaviours = dict.fromkeys(node_ids, HONEST)
    position = 0
    for kind, count in sorted(adversaries.items()):
        for node in order[position : position + count]:
            behaviours[node] = kind
        position += count
    return behaviours


def open_sandbox_network(
    store: Store,
    loaded: LoadedTask,
    *,
    nodes: int | None,
    seed: int | None,
    adversaries: dict[str, int] | None,
    stake: int | None = None,
    genesis_ms: int = 0,
) -> Network:
    """The sandbox network in ``store``: reused when it exists, made when it does not.

    ``None`` for a parameter means "whatever the store has" (or the default on a new store).
    ``genesis_ms`` is the slot clock's origin of a new network: 0 for simulated time, a real
    instant for simulated nodes on the wall clock (a deployed sandbox).
    """
    if adversaries is not None:
        adversaries = check_adversaries(adversaries)
    layout = Layout(loaded.task_id)
    raw = store.read_or_none(layout.task)
    if raw is not None:
        record = decode(raw, TaskRecord, where=layout.task)
        existing = record.body.network
        if existing is None:
            raise NetworkMismatchError(
                f"task {loaded.task_id!r} in {store.url} runs on registered remote nodes, "
                "not a sandbox network",
                hint="use another --store for a sandbox run",
            )
        _check_same(
            existing,
            nodes=nodes,
            seed=seed,
            adversaries=adversaries,
            stake=stake,
            where=store.url,
        )
        _check_config(record.body, loaded, store.url)
        spec = existing
    else:
        _check_not_orphaned(store, layout)
        nodes = 10 if nodes is None else nodes
        if nodes < 2:
            raise ConfigError("--nodes must be at least 2 (audits need another node)")
        if nodes > MAX_SANDBOX_NODES:
            raise ConfigError(
                f"--nodes {nodes} is more than a sandbox simulates ({MAX_SANDBOX_NODES:,})",
                hint="bench/round_bench.py measures rounds of up to 10,000 nodes",
            )
        spec = SandboxNetwork(
            seed=random.SystemRandom().randrange(2**31) if seed is None else seed,
            nodes=nodes,
            stake=stake if stake is not None else max(1, 2 * loaded.config.minimum_stake_amount),
            adversaries=adversaries or {},
        )
        if sum(spec.adversaries.values()) > spec.nodes:
            raise ConfigError(
                f"{sum(spec.adversaries.values())} adversaries asked for a network of "
                f"{spec.nodes} nodes",
                hint="raise --nodes or lower the --adversary counts",
            )
    orchestrator, keys = _sandbox_keys(spec.seed, spec.nodes)
    by_id = {k.public_id: k for k in keys}
    behaviours = _behaviours(spec.seed, list(by_id), spec.adversaries)
    registrations = {
        node_id: NodeRegistration(
            task_id=loaded.task_id, node_id=node_id, stake=spec.stake, behaviour=behaviours[node_id]
        )
        for node_id in by_id
    }
    if raw is None:
        store.create_many(
            [
                (layout.node(node_id), sign(reg, by_id[node_id]).encode())
                for node_id, reg in registrations.items()
            ]
        )
        record = sign(
            TaskRecord(
                task_id=loaded.task_id,
                task_name=loaded.config.task_name,
                config=_config_doc(loaded.config),
                orchestrator=orchestrator.public_id,
                genesis_ms=genesis_ms,
                starting_slot=0,
                network=spec,
            ),
            orchestrator,
        )
        store.create(layout.task, record.encode())
    return Network(record=record, nodes=registrations, keys=by_id, orchestrator_key=orchestrator)


def _check_not_orphaned(store: Store, layout: Layout) -> None:
    """Refuse to start a task afresh where the store holds its rounds or ledger: its
    ``task.json`` was deleted or lost, and a new one (another orchestrator, other nodes) would
    leave every stored record failing to verify; a command that reads the task says the same.
    Node registrations alone do not count: they are written before ``task.json``, and remote
    nodes may register before the first round."""
    held = sorted({"ledger", "rounds"} & set(store.children(layout.root)))
    if held:
        raise RecordError(
            f"{layout.task} is missing from {store.url}, which holds task "
            f"{layout.task_id!r}'s {' and '.join(held)}",
            hint="restore task.json from a backup (nothing was written), or give another "
            "--store for a new network",
        )


def read_task_record(store: Store, task_id: str) -> TaskRecord | None:
    """The task record a store holds for ``task_id`` (decoded, its signature not checked), or
    None if it holds none."""
    key = Layout(task_id).task
    raw = store.read_or_none(key)
    return None if raw is None else decode(raw, TaskRecord, where=key).body


def load_network(store: Store, task_id: str, *, orchestrator: str | None = None) -> Network:
    """The task record and registry as stored, every signature checked."""
    layout = Layout(task_id)
    raw = store.read_or_none(layout.task)
    if raw is None:
        _check_not_orphaned(store, layout)  # its rounds or ledger without it: say so
        raise RecordNotFound(
            f"no task {task_id!r} in {store.url}",
            hint="run `koiitasks run TASK_DIR --store ...` first, or check --store and --task",
        )
    record = decode(raw, TaskRecord, where=layout.task)
    if record.signer != record.body.orchestrator:
        raise RecordError(f"{layout.task} is not signed by the orchestrator it names")
    if orchestrator is not None and record.signer != orchestrator:
        raise RecordError(
            f"{layout.task} is signed by {record.signer}, not the expected orchestrator "
            f"{orchestrator}"
        )
    nodes: dict[str, NodeRegistration] = {}
    for key in store.list(layout.nodes):
        reg = decode(store.read(key), NodeRegistration, where=key)
        if reg.signer != reg.body.node_id or Layout.name_of(key) != reg.body.node_id:
            raise RecordError(f"{key} is not signed by the node it registers")
        nodes[reg.body.node_id] = reg.body
    return Network(record=record, nodes=nodes)


def open_remote_network(
    store: Store,
    loaded: LoadedTask,
    orchestrator: Keypair,
    *,
    now_ms: int,
    genesis_ms: int | None = None,
) -> Network:
    """The task record for remote nodes (made on first use) and the nodes registered so far.

    A new record's genesis is ``genesis_ms`` if given (a deployment's, on a slot boundary a
    little ahead), else the first slot boundary after ``now_ms``, so round 0 starts within a
    slot. A store made by another orchestrator key, or for a sandbox, is refused.
    """
    layout = Layout(loaded.task_id)
    raw = store.read_or_none(layout.task)
    if raw is None:
        _check_not_orphaned(store, layout)
        slot_ms = loaded.config.slot_ms
        record = sign(
            TaskRecord(
                task_id=loaded.task_id,
                task_name=loaded.config.task_name,
                config=_config_doc(loaded.config),
                orchestrator=orchestrator.public_id,
                genesis_ms=(now_ms // slot_ms + 1) * slot_ms if genesis_ms is None else genesis_ms,
                starting_slot=0,
            ),
            orchestrator,
        )
        store.create(layout.task, record.encode())
    else:
        record = decode(raw, TaskRecord, where=layout.task)
        _check_not_sandbox(record.body, loaded.task_id, store.url)
        if record.signer != orchestrator.public_id:
            raise NetworkMismatchError(
                f"task {loaded.task_id!r} in {store.url} was created by orchestrator "
                f"{record.signer}, but the --key given is {orchestrator.public_id}",
                hint="pass the orchestrator key file that created the task, or another --store",
            )
        _check_config(record.body, loaded, store.url)
    network = load_network(store, loaded.task_id, orchestrator=orchestrator.public_id)
    network.orchestrator_key = orchestrator
    return network


def register_node(
    store: Store, loaded: LoadedTask, keypair: Keypair, *, url: str, stake: int
) -> Signed[NodeRegistration]:
    """Write a node's signed registration for a task: where to reach it and what it stakes."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in {"http", "https"} or not parsed.hostname or parsed.query:
        raise ConfigError(
            f"--url {url!r} is not a node URL",
            hint="give the base URL `koiitasks node serve` prints, e.g. http://127.0.0.1:8001",
        )
    minimum = loaded.config.minimum_stake_amount
    if stake < minimum or stake <= 0:
        raise ConfigError(
            f"stake {stake:,} is below the minimum_stake_amount {minimum:,} of task "
            f"{loaded.task_id!r}",
            hint="amounts are in base units (1 KOII = 10^9 ROE)",
        )
    layout = Layout(loaded.task_id)
    if (raw := store.read_or_none(layout.task)) is not None:
        # The task already runs here: a registration it could never use is refused now, not
        # answered with 409s every round (registrations cannot be taken back).
        record = decode(raw, TaskRecord, where=layout.task).body
        _check_not_sandbox(record, loaded.task_id, store.url)
        _check_config(record, loaded, store.url)
    registration = sign(
        NodeRegistration(
            task_id=loaded.task_id, node_id=keypair.public_id, stake=stake, url=url.rstrip("/")
        ),
        keypair,
    )
    key = layout.node(keypair.public_id)
    try:
        store.create(key, registration.encode())
    except RecordConflict as e:
        old = decode(store.read(key), NodeRegistration, where=key).body
        raise RecordConflict(
            f"node {keypair.public_id} is already registered for task {loaded.task_id!r} in "
            f"{store.url} (stake {old.stake:,}, url {old.url})",
            hint="registrations are create-only; make a new key with `koiitasks node keygen`",
        ) from e
    return registration


def check_task_config(record: TaskRecord, loaded: LoadedTask, *, where: str) -> None:
    """Raise :class:`NetworkMismatchError` unless ``record`` holds the task dir's config."""
    _check_config(record, loaded, where)


def _config_doc(config: TaskConfig) -> dict[str, Any]:
    """A config as the task record keeps it (its descriptive metadata left out)."""
    return config.model_dump(mode="json", exclude={"metadata"})


def _check_not_sandbox(record: TaskRecord, task_id: str, where: str) -> None:
    """Refuse registered nodes a task that runs on simulated ones."""
    if record.network is not None:
        raise NetworkMismatchError(
            f"task {task_id!r} in {where} runs on a sandbox network of simulated nodes, not on "
            "registered remote nodes",
            hint="use another --store for remote nodes",
        )


def no_registered_node(task_id: str, where: str, *, then: str = "") -> ConfigError:
    """The error of a remote run or deployment with no node to ask."""
    return ConfigError(
        f"no node is registered for task {task_id!r} in {where}",
        hint="start nodes with `koiitasks node serve`, then `koiitasks node register` each" + then,
    )


def _check_config(record: TaskRecord, loaded: LoadedTask, where: str) -> None:
    check_same_config(record, loaded.config, where=where)


def check_same_config(record: TaskRecord, config: TaskConfig, *, where: str) -> None:
    """Raise :class:`NetworkMismatchError` unless ``record`` was made with ``config``."""
    doc = _config_doc(config)
    if record.config != doc:
        changed = sorted(k for k, v in doc.items() if record.config.get(k) != v)
        raise NetworkMismatchError(
            f"task {config.id!r} in {where} was created with another config-task.yml "
            f"(changed: {', '.join(changed)})",
            hint="use a new --store for a changed config; a store keeps one task's history",
        )


def _check_same(
    existing: SandboxNetwork,
    *,
    nodes: int | None,
    seed: int | None,
    adversaries: dict[str, int] | None,
    stake: int | None,
    where: str,
) -> None:
    asked = {"nodes": nodes, "seed": seed, "adversaries": adversaries, "stake": stake}
    for name, value in asked.items():
        if value is not None and value != getattr(existing, name):
            raise NetworkMismatchError(
                f"{where} holds a network with {name}={getattr(existing, name)!r}, "
                f"but this run asks for {name}={value!r}",
                hint="drop the option to reuse the stored network, or use another --store",
            )
