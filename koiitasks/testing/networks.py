"""Networks of simulated nodes chosen one by one: each node's behaviour and stake, any config.

The sandbox's own networks are made from a seed, a node count and adversary counts, with one
stake for every node. Property tests need more: nodes staked below the minimum, stakes that
differ, configs drawn at random. :func:`network_sandbox` registers exactly the nodes it is given
(signed registrations and a signed task record, as a deployed task's registry holds them) and
returns a sandbox whose simulated pool plays each node's behaviour::

    from koiitasks.testing.networks import NodeSpec, network_sandbox

    box = network_sandbox(
        "path/to/task",
        [NodeSpec("honest", 500), NodeSpec("lazy", 500), NodeSpec("honest", 10)],
        config={"auditors_per_submission": 1},
    )
    result = box.run_round(0)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from koiitasks.config import TaskConfig
from koiitasks.errors import ConfigError
from koiitasks.identity import Keypair
from koiitasks.network import Network
from koiitasks.nodes.sim import BEHAVIOURS
from koiitasks.protocol import NodeRegistration, TaskRecord, sign
from koiitasks.sandbox import Sandbox, build_sandbox
from koiitasks.storage import Layout, Store
from koiitasks.task import LoadedTask, load_task
from koiitasks.testing import memory_store


@dataclass(frozen=True)
class NodeSpec:
    """One node: how it behaves and what it stakes (None: twice the task's minimum)."""

    behaviour: str = "honest"
    stake: int | None = None


def with_config(loaded: LoadedTask, overrides: Mapping[str, Any]) -> LoadedTask:
    """``loaded`` with some config fields changed, validated as a config-task.yml would be."""
    if not overrides:
        return loaded
    fields = {**loaded.config.model_dump(exclude={"metadata"}), **overrides}
    return dataclasses.replace(loaded, config=TaskConfig.model_validate(fields))


def register_network(
    store: Store, loaded: LoadedTask, nodes: Sequence[NodeSpec], *, seed: int = 0
) -> Network:
    """Write signed registrations of ``nodes`` and the task record; the keys come from ``seed``."""
    unknown = sorted({n.behaviour for n in nodes} - set(BEHAVIOURS))
    if unknown:
        raise ConfigError(f"unknown behaviour {unknown[0]!r}; one of {', '.join(BEHAVIOURS)}")
    layout = Layout(loaded.task_id)
    orchestrator = Keypair.from_seed(f"koiitasks-network/{seed}/orchestrator".encode())
    keys = [
        Keypair.from_seed(f"koiitasks-network/{seed}/node/{i}".encode()) for i in range(len(nodes))
    ]
    default_stake = max(1, 2 * loaded.config.minimum_stake_amount)
    registrations: dict[str, NodeRegistration] = {}
    for key, spec in zip(keys, nodes, strict=True):
        registration = NodeRegistration(
            task_id=loaded.task_id,
            node_id=key.public_id,
            stake=default_stake if spec.stake is None else spec.stake,
            behaviour=spec.behaviour,
        )
        store.create(layout.node(key.public_id), sign(registration, key).encode())
        registrations[key.public_id] = registration
    record = sign(
        TaskRecord(
            task_id=loaded.task_id,
            task_name=loaded.config.task_name,
            config=loaded.config.model_dump(mode="json", exclude={"metadata"}),
            orchestrator=orchestrator.public_id,
            genesis_ms=0,
            starting_slot=0,
        ),
        orchestrator,
    )
    store.create(layout.task, record.encode())
    return Network(
        record=record,
        nodes=registrations,
        keys={key.public_id: key for key in keys},
        orchestrator_key=orchestrator,
    )


def network_sandbox(
    task_dir: Path | str | LoadedTask,
    nodes: Sequence[NodeSpec],
    *,
    seed: int = 0,
    config: Mapping[str, Any] | None = None,
    store: Store | None = None,
    workers: int = 1,
) -> Sandbox:
    """A sandbox over exactly ``nodes`` (a new memory store by default), hooks in this thread."""
    loaded = task_dir if isinstance(task_dir, LoadedTask) else load_task(task_dir)
    loaded = with_config(loaded, config or {})
    the_store = store if store is not None else memory_store()
    network = register_network(the_store, loaded, nodes, seed=seed)
    return build_sandbox(loaded, the_store, network=network, workers=workers)
