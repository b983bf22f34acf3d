"""Helpers for tests and benchmarks of deployed tasks: a ``koiitasks deploy`` process, and what
the Prefect API and the store say about its rounds.

::

    with DeployProcess(task_dir, store, api_url, home, nodes=6) as deployed:
        deployed.wait_for(lambda: len(deployed.ledger_rounds()) >= 3, timeout_s=180)
    runs = deployment_runs(api_url, "hash-puzzle")

The process runs in a session of its own; leaving the ``with`` block stops it and every
flow-run process it started (SIGTERM, then SIGKILL), even when the block raised.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from koiitasks.errors import KoiiTasksError
from koiitasks.ledger import LedgerState, read_ledger
from koiitasks.protocol import TaskRecord, decode
from koiitasks.storage import Layout, open_store
from koiitasks.task import load_task
from koiitasks.testing.processes import PREFECT_SERVICE_ENV, kill_tree, stop_session

#: The folder holding the koiitasks package these helpers belong to (and ``flows/``).
CHECKOUT = Path(__file__).resolve().parents[2]

#: A config-task.yml body (less task_name) of rounds of 8 s (32 slots of 250 ms): each round's
#: flow run lives about 20 s, so three overlap, and three scheduled rounds are paid within a
#: minute of the deploy.
DEPLOYED_CONFIG = {
    "round_time": 32,
    "submission_window": 8,
    "audit_window": 8,
    "slot_ms": 250,
    "minimum_stake_amount": 100,
    "total_bounty_amount": 1_000_000,
    "bounty_amount_per_round": 1_200,
    "allowed_failed_distributions": 2,
}


class DeployProcess:
    """``koiitasks deploy TASK_DIR --store STORE`` serving against a Prefect server; or, with
    ``work_pool``, registered for that pool and run by a ``prefect worker`` process."""

    def __init__(
        self,
        task_dir: Path,
        store: Path,
        api_url: str,
        home: Path,
        *,
        options: tuple[str, ...] = (),
        work_pool: str | None = None,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.task_dir = Path(task_dir)
        self.extra_env = dict(extra_env or {})
        self.store = Path(store)
        self.api_url = api_url
        self.home = Path(home)
        self.options = options
        self.work_pool = work_pool
        self.task_id = load_task(task_dir).task_id
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = self.home / "deploy.log"
        self._log: IO[bytes] | None = None

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "KOII_"))}
        env.update(PREFECT_SERVICE_ENV)
        env.update(
            {
                "PREFECT_API_URL": self.api_url,
                "PREFECT_HOME": str(self.home),
                "PREFECT_LOGGING_LEVEL": "INFO",
                "PREFECT_WORKER_QUERY_SECONDS": "5",
                # The serve process and its flow-run processes import this very checkout.
                "PYTHONPATH": os.pathsep.join(
                    p for p in (str(CHECKOUT), os.environ.get("PYTHONPATH", "")) if p
                ),
            }
        )
        env.update(self.extra_env)
        return env

    def start(self) -> DeployProcess:
        self.home.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        command = [sys.executable, "-m", "koiitasks", "deploy", str(self.task_dir)]
        command += ["--store", str(self.store), *self.options]
        if self.work_pool is not None:
            registered = subprocess.run(  # noqa: S603
                [*command, "--work-pool", self.work_pool],
                env=self.env(),
                stdout=self._log,
                stderr=subprocess.STDOUT,
                timeout=300,
                check=False,
            )
            if registered.returncode != 0:
                raise KoiiTasksError(f"koiitasks deploy --work-pool failed:\n{self.log()[-4000:]}")
            command = [sys.executable, "-m", "prefect", "worker", "start", "--pool"]
            command += [self.work_pool, "--type", "process", "--prefetch-seconds", "30"]
        self.process = subprocess.Popen(  # noqa: S603 - our own interpreter and arguments
            command,
            env=self.env(),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self

    def stop(self) -> None:
        """SIGTERM (Prefect pauses the schedule and cancels its runs), then SIGKILL."""
        if self.process is not None:
            stop_session(self.process, grace_s=30)
            self.process = None
        self._close_log()

    def crash(self) -> None:
        """SIGKILL the serve process and every flow-run process it started, at once."""
        if self.process is not None:
            kill_tree(self.process)
            self.process = None
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def wait_exit(self, *, timeout_s: float) -> int:
        """Wait for the process to end by itself; its exit code (fails with the log if it is
        still running after ``timeout_s``)."""
        if self.process is None:
            raise KoiiTasksError("koiitasks deploy was not started")
        try:
            code = self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired as e:
            raise KoiiTasksError(
                f"koiitasks deploy still running after {timeout_s:.0f}s:\n{self.log()[-4000:]}"
            ) from e
        stop_session(self.process, grace_s=5)  # flow-run processes it may have left behind
        self.process = None
        self._close_log()
        return code

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    # --- what the store says ---------------------------------------------------------------

    def task_record(self) -> TaskRecord | None:
        raw = open_store(str(self.store)).read_or_none(Layout(self.task_id).task)
        return None if raw is None else decode(raw, TaskRecord, where="task.json").body

    def ledger(self) -> LedgerState:
        record = self.task_record()
        if record is None:
            return LedgerState()
        return read_ledger(
            open_store(str(self.store)), self.task_id, orchestrator=record.orchestrator
        )

    def ledger_rounds(self) -> list[int]:
        return [entry.body.round for entry in self.ledger().entries]

    def wait_for(self, condition: Callable[[], bool], *, timeout_s: float, what: str = "") -> None:
        """Poll ``condition`` until true; fail with the deploy log if the process died or the
        time ran out."""
        deadline = time.monotonic() + timeout_s
        while not condition():
            if self.process is not None and self.process.poll() is not None:
                raise KoiiTasksError(
                    f"koiitasks deploy exited with {self.process.returncode} while waiting for "
                    f"{what or 'a condition'}:\n{self.log()[-4000:]}"
                )
            if time.monotonic() > deadline:
                raise KoiiTasksError(
                    f"timed out after {timeout_s:.0f}s waiting for {what or 'a condition'}:\n"
                    f"{self.log()[-4000:]}"
                )
            time.sleep(0.5)

    def __enter__(self) -> DeployProcess:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


# --- what the Prefect API says ---------------------------------------------------------------


def _run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


def deployment_runs(api_url: str, task_id: str) -> list[Any]:
    """Every flow run of the task's deployment, in scheduled order."""
    return list(_run(_deployment_runs(api_url, task_id)))


async def _deployment_runs(api_url: str, task_id: str) -> list[Any]:
    from prefect.client.orchestration import PrefectClient  # noqa: PLC0415
    from prefect.client.schemas.filters import (  # noqa: PLC0415
        DeploymentFilter,
        DeploymentFilterName,
    )
    from prefect.client.schemas.sorting import FlowRunSort  # noqa: PLC0415

    async with PrefectClient(api_url) as client:
        return list(
            await client.read_flow_runs(
                deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[task_id])),
                sort=FlowRunSort.EXPECTED_START_TIME_ASC,
                limit=200,
            )
        )


def run_artifacts(api_url: str, flow_run_id: Any) -> list[Any]:
    """The artifacts a flow run created."""
    return list(_run(_run_artifacts(api_url, flow_run_id)))


async def _run_artifacts(api_url: str, flow_run_id: Any) -> list[Any]:
    from prefect.client.orchestration import PrefectClient  # noqa: PLC0415
    from prefect.client.schemas.filters import (  # noqa: PLC0415
        ArtifactFilter,
        ArtifactFilterFlowRunId,
    )

    async with PrefectClient(api_url) as client:
        return list(
            await client.read_artifacts(
                artifact_filter=ArtifactFilter(
                    flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])
                )
            )
        )


def state_history(api_url: str, flow_run_id: Any) -> list[Any]:
    """Every state a flow run went through, in order."""
    return list(_run(_state_history(api_url, flow_run_id)))


async def _state_history(api_url: str, flow_run_id: Any) -> list[Any]:
    from prefect.client.orchestration import PrefectClient  # noqa: PLC0415

    async with PrefectClient(api_url) as client:
        return list(await client.read_flow_run_states(flow_run_id))


def events(api_url: str, task_id: str, prefix: str = "koii.") -> list[dict[str, Any]]:
    """A task's events whose name starts with ``prefix``, newest first (the 50 newest)."""
    return list(_run(_events(api_url, task_id, prefix)))


def events_until(
    api_url: str,
    task_id: str,
    prefix: str,
    done: Callable[[list[dict[str, Any]]], bool],
    *,
    timeout_s: float = 60,
) -> list[dict[str, Any]]:
    """Poll a task's events until ``done`` holds for them, and return them; the last ones read
    when the time runs out. Prefect's server stores events a little after they are emitted
    (it batches them), so an event of a run that just completed may not be readable yet."""
    deadline = time.monotonic() + timeout_s
    found = events(api_url, task_id, prefix)
    while not done(found) and time.monotonic() < deadline:
        time.sleep(0.5)
        found = events(api_url, task_id, prefix)
    return found


async def _events(api_url: str, task_id: str, prefix: str) -> list[dict[str, Any]]:
    from prefect.client.orchestration import PrefectClient  # noqa: PLC0415

    query = {
        "filter": {
            "event": {"prefix": [prefix]},
            "related": {"id": [f"koii.task.{task_id}"]},
        },
        "limit": 50,
    }
    async with PrefectClient(api_url) as client:
        response = await client._client.post("/events/filter", json=query)
        response.raise_for_status()
        found: list[dict[str, Any]] = response.json()["events"]
        return found
