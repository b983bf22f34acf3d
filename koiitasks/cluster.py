"""Shards of a round on a Dask cluster: self-contained shard jobs and the cluster they run on.

In one process a shard task is handed the round engine itself. On a cluster it cannot be: a
shard runs in another process, perhaps on another machine. So a shard job carries only simple,
picklable values: how to open the sandbox (:class:`SandboxSpec`: task folder, store URL, the
simulated network's parameters), where the orchestrator stands in the round
(:class:`RoundMoment`), and the shard's node ids. A worker process opens the sandbox from the
store once and keeps it (:func:`koiitasks.sandbox.open_sandbox` caches it per process), then
runs the engine's own shard step. The store is the only shared state: a folder every process
sees on one machine, S3 across machines::

    orchestrator (the flow run)                      Dask workers, any machine
    open_round ─▶ execute jobs ── DaskTaskRunner ──▶ execute_shard(job) ─▶ store
    forget_round_cache ◀──────────── counts ◀─────┘
    plan_audits ─▶ audit jobs ─────────────────────▶ audit_shard(job) ─▶ store
    forget_round_cache, distribute, settle ─▶ store (the ledger: only the orchestrator writes it)

Records are create-only and every step reads the store before asking a node, so a shard that
Dask re-runs after its worker died, or runs twice, writes the same bytes or nothing. Simulated
answers depend only on (seed, node, round), so a shard computes the same bytes in any process.
"""

from __future__ import annotations

import importlib
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from pydantic import ConfigDict

from koiitasks.errors import ClusterError, ConfigError
from koiitasks.model import KoiiModel
from koiitasks.sandbox import Sandbox, open_sandbox

if TYPE_CHECKING:
    from prefect_dask.task_runners import DaskTaskRunner

    from koiitasks.round import RoundEngine

#: Nodes per shard on a cluster. A Dask task costs about 61 ms of orchestration (measured,
#: prefect-measured.md section 5), four times a thread pool's share, so shards are larger.
DASK_SHARD_SIZE = 1000

#: Worker processes of ``local`` when no count is given.
LOCAL_WORKERS = 2

LOOPBACK = "127.0.0.1"

INSTALL_HINT = "install the extra: pip install 'koiitasks[dask]' (prefect-dask and distributed)"


class SandboxSpec(KoiiModel):
    """How any process opens the same sandbox: plain values, so a shard job pickles."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    task_dir: str
    store: str
    nodes: int | None = None
    seed: int | None = None
    adversaries: dict[str, int] | None = None
    workers: int = 4
    shard_size: int | None = None
    s3_endpoint_url: str | None = None

    def open(self) -> Sandbox:
        """The sandbox, made once per process (a worker's later shards reuse it)."""
        return open_sandbox(
            self.task_dir,
            store=self.store,
            nodes=self.nodes,
            seed=self.seed,
            adversaries=self.adversaries,
            workers=self.workers,
            shard_size=self.shard_size,
            s3_endpoint_url=self.s3_endpoint_url,
        )


class RoundMoment(KoiiModel):
    """Where the orchestrator stands when it fans a step out: a worker puts its own simulated
    clock there, and re-reads the ledger when it has not seen the same number of entries."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    round: int
    at_ms: int
    settled: int

    @classmethod
    def of(cls, engine: RoundEngine, round_number: int) -> RoundMoment:
        return cls(
            round=round_number,
            at_ms=engine.slot_clock.clock.now_ms(),
            settled=len(engine.ledger.entries),
        )


# --- in the worker ---------------------------------------------------------------------------

_sync_lock = threading.Lock()


def _engine_at(spec: SandboxSpec, moment: RoundMoment) -> RoundEngine:
    """This process's engine for the spec, caught up with the orchestrator."""
    box = spec.open()
    with _sync_lock:
        if len(box.engine.ledger.entries) != moment.settled:
            box.engine.refresh()  # rounds settled since this worker last looked
        box.clock.set_ms(moment.at_ms)
    return box.engine


def execute_shard(spec: SandboxSpec, moment: RoundMoment, node_ids: list[str]) -> dict[str, int]:
    """Run one execute shard in this process (a Dask worker): counts by outcome."""
    return _engine_at(spec, moment).execute_shard(moment.round, node_ids)


def audit_shard(
    spec: SandboxSpec,
    moment: RoundMoment,
    assignments: dict[str, list[str]],
    auditors: list[str],
) -> int:
    """Run one audit shard in this process (a Dask worker): how many reports it stored."""
    return _engine_at(spec, moment).audit_shard(moment.round, assignments, auditors)


# --- the cluster -----------------------------------------------------------------------------


def check_prefect_api(api_url: str | None) -> None:
    """Refuse to fan out to Dask without a real Prefect API: workers would each start their own
    temporary server and the run fails (measured, prefect-measured.md section 5)."""
    if not api_url:
        raise ConfigError(
            "rounds on Dask need a Prefect server that every Dask worker can reach, and "
            "PREFECT_API_URL is not set",
            hint="start one with `prefect server start` and set "
            "PREFECT_API_URL=http://HOST:4200/api for the run and the Dask workers",
        )


def check_shared_store(url: str) -> None:
    """Refuse a store only this process sees: Dask workers would write where nobody reads."""
    scheme = url.partition("://")[0] if "://" in url else "file"
    if scheme in {"memory", "moto"}:
        raise ConfigError(
            f"store {url!r} lives inside one process; Dask workers cannot share it",
            hint="use a folder every worker sees (one machine, or a shared mount) or "
            "s3://BUCKET[/PREFIX] (with KOII_S3_ENDPOINT_URL for MinIO or a moto server)",
        )


def local_workers(address: str) -> int | None:
    """The worker count when ``address`` asks for a local cluster (``local`` or ``local:N``)."""
    name, sep, count = address.partition(":")
    if name != "local":
        return None
    if not sep:
        return LOCAL_WORKERS
    if not count.isdigit() or int(count) < 1:
        raise ConfigError(
            f"Dask address {address!r} is not local:N",
            hint="use local, local:N with N worker processes, or tcp://HOST:PORT",
        )
    return int(count)


@contextmanager
def local_cluster(
    workers: int = LOCAL_WORKERS, *, env: dict[str, str] | None = None
) -> Iterator[str]:
    """A Dask cluster of ``workers`` processes on 127.0.0.1 for trying rounds on Dask; yields
    the scheduler's address and stops every process on exit."""
    distributed = _import("distributed")
    with distributed.LocalCluster(
        n_workers=workers,
        threads_per_worker=1,  # hooks already run on the node pool's own threads
        processes=True,
        host=LOOPBACK,
        # Any free port for the scheduler's HTTP server: the default 8787 may be taken, and
        # taking another then is a warning.
        dashboard_address=f"{LOOPBACK}:0",
        env=env or {},
    ) as cluster:
        yield str(cluster.scheduler_address)


@contextmanager
def scheduler(address: str) -> Iterator[str]:
    """The scheduler address to use: ``address`` itself, or a local cluster's for ``local[:N]``."""
    workers = local_workers(address)
    if workers is None:
        yield address
        return
    with local_cluster(workers) as started:
        yield started


def check_reachable(address: str, *, timeout_s: float = 10.0) -> None:
    """Refuse an address that is not ``tcp://HOST:PORT`` (or ``tls://``), or where nothing
    listens, before Dask tries for its whole timeout and leaves a half-made client behind."""
    parts = urlsplit(address)
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme not in {"tcp", "tls"} or not parts.hostname or port is None:
        raise ConfigError(
            f"Dask address {address!r} is not tcp://HOST:PORT",
            hint="give the scheduler's address as `dask scheduler` prints it "
            "(tcp://HOST:8786), or local[:N] for a cluster on this machine",
        )
    try:
        socket.create_connection((parts.hostname, port), timeout=timeout_s).close()
    except OSError as e:
        raise ClusterError(
            f"Dask scheduler {address} is unreachable: {e}",
            hint="check KOII_DASK_ADDRESS (tcp://HOST:8786) and that `dask scheduler` runs "
            "there; `koiitasks run --dask local` starts a local cluster to try it out",
        ) from e


@contextmanager
def dask_runner(address: str, *, timeout_s: float = 10.0) -> Iterator[DaskTaskRunner]:
    """prefect-dask's task runner, started and connected to the scheduler at ``address``."""
    runner_class: type[DaskTaskRunner] = _import("prefect_dask.task_runners").DaskTaskRunner
    check_reachable(address, timeout_s=timeout_s)
    runner = runner_class(address=address, client_kwargs={"timeout": f"{timeout_s}s"})
    with runner:
        try:
            runner.client  # noqa: B018 - connects now, so a failure is named here
        except (OSError, TimeoutError) as e:
            raise ClusterError(
                f"cannot connect to the Dask scheduler at {address}: {e}",
                hint="it answered on its port but not as a Dask scheduler of a compatible "
                "version: check KOII_DASK_ADDRESS and `dask --version` on both sides",
            ) from e
        yield runner


def _import(module: str) -> Any:
    """An optional heavy import, with the install hint when it is missing."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ConfigError(f"rounds on Dask need {module!r}: {e}", hint=INSTALL_HINT) from e
