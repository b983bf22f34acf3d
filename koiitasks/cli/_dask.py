"""`koiitasks run --dask`: rounds whose execute and audit shards run on a Dask cluster.

Kept apart from :mod:`koiitasks.cli.run` so the plain and thread-pool paths never import Dask.
A ``local[:N]`` cluster is started once for the whole run and stopped when it ends.
Dask's own INFO chatter (workers starting and stopping) is shown only with ``--verbose``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from koiitasks.round_result import RoundResult


def dask_options(address: str | None) -> dict[str, Any]:
    """Options a run adds on Dask: its shard size, so the run and its flow runs share one
    sandbox in this process (the sandbox cache is keyed on it)."""
    if not address:
        return {}
    from koiitasks.cluster import DASK_SHARD_SIZE  # noqa: PLC0415

    return {"shard_size": DASK_SHARD_SIZE}


def check_dask_ready(store: str, address: str) -> None:
    """What a run on Dask needs, checked before the store is written or a flow run started: a
    real Prefect server, a store the workers share, a scheduler that answers. The flow checks
    them too (a deployment has no command line), but from inside a flow run, which Prefect
    reports as a crash with its traceback."""
    from prefect.settings import PREFECT_API_URL  # noqa: PLC0415

    from koiitasks import cluster  # noqa: PLC0415

    cluster.check_prefect_api(PREFECT_API_URL.value())
    cluster.check_shared_store(store)
    if cluster.local_workers(address) is None:
        cluster.check_reachable(address)


@contextmanager
def dask_round_runner(
    task_dir: str, options: dict[str, Any], address: str, *, verbose: bool = False
) -> Iterator[Callable[[int], RoundResult]]:
    """A function that runs one round as a ``koii-dask-round`` flow on the cluster at
    ``address`` (a scheduler's ``tcp://HOST:PORT`` or ``local[:N]``)."""
    # Read by distributed when it is first imported, here and in local worker processes.
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "info" if verbose else "warning")
    from prefect.settings import (  # noqa: PLC0415 - keep --help fast
        PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
        temporary_settings,
    )

    from flows.dask_round import dask_round  # noqa: PLC0415
    from koiitasks import cluster  # noqa: PLC0415

    with cluster.scheduler(address) as scheduler:

        def run_one(number: int) -> RoundResult:
            # The heartbeat only matters to a server watching long runs; it adds ~1 s per run.
            with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
                data = dask_round(
                    task_dir=task_dir, round_number=number, dask_address=scheduler, **options
                )
            return RoundResult.model_validate_json(data)

        yield run_one
