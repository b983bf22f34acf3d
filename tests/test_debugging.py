"""Specifications of debugging a task: hook tracebacks, and hooks in the main thread."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from prefect.context import SyncClientContext
from prefect.settings import PREFECT_API_URL, temporary_settings

from flows.round import sandbox_round
from koiitasks.cli import _prefect as prefect_start
from koiitasks.cli.run import _flow_runner
from koiitasks.errors import ConfigError
from koiitasks.nodes.failures import ONCE_NOTE, is_library_frame
from koiitasks.round_result import RoundResult
from koiitasks.testing import run_rounds, sandbox, write_task
from tests.conftest import HASH_PUZZLE, ROOT, koiitasks
from tests.test_cli import json_lines

FAILING_TASK = """
from koiitasks import Task

task = Task()


def lookup(ctx):
    prices = {"KOII": 1}
    return prices[ctx.config.task_name]  # KeyError on every node


@task.execute
def execute(ctx):
    if {KIND_BY_NODE}:
        raise ValueError("odd node")
    return lookup(ctx)


@task.audit
def audit(ctx, submission):
    return True
"""

FAILING_AUDIT = """
from koiitasks import Task

task = Task()


@task.execute
def execute(ctx):
    return {"node": ctx.node_id}


@task.audit
def audit(ctx, submission):
    return submission.result["missing"]  # KeyError on every auditor
"""

# Each hook records whether it runs in the main thread; audit approves only those that did.
THREAD_TASK = """
import threading

from koiitasks import Task

task = Task()


@task.execute
def execute(ctx):
    return {"main": threading.current_thread() is threading.main_thread()}


@task.audit
def audit(ctx, submission):
    return submission.result == {"main": True}
"""


def failing_task(tmp_path: Path, *, odd_nodes_differ: bool = False) -> Path:
    condition = "ctx.node_id[-1] in '13579ACEGJLNQSUWYbdfhjmoqsuwy'" if odd_nodes_differ else "0"
    return write_task(tmp_path / "failing", FAILING_TASK.replace("{KIND_BY_NODE}", condition))


@pytest.fixture
def node_logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Warnings of the koiitasks loggers, even when a CLI set-up stopped their propagation."""
    logger = logging.getLogger("koiitasks")
    propagate, logger.propagate = logger.propagate, True
    caplog.set_level(logging.WARNING, logger="koiitasks")
    yield caplog
    logger.propagate = propagate


def hook_failures(caplog: pytest.LogCaptureFixture, hook: str) -> list[str]:
    """The warnings that report a failure of ``hook``."""
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and r.getMessage().startswith(f"{hook} hook failed")
    ]


class TestHookTracebacks:
    """A failing hook is shown with the task's own frames, once per distinct error per round."""

    def test_one_report_per_round_with_the_tasks_frames(
        self, tmp_path: Path, node_logs: pytest.LogCaptureFixture
    ) -> None:
        """Six nodes failing the same way in two rounds give two reports, each naming the
        node, the round and the task's lines, none of koiitasks' own."""
        task_dir = failing_task(tmp_path)
        results = run_rounds(task_dir, nodes=6, rounds=2)
        assert all(n.outcome == "missing" for r in results for n in r.nodes.values())
        reports = hook_failures(node_logs, "execute")
        assert len(reports) == 2
        for round_number, report in enumerate(reports):
            assert f"in round {round_number}: KeyError: 'Test Task'" in report
            assert f'{task_dir / "task.py"}", line 9, in lookup' in report
            assert "return prices[ctx.config.task_name]" in report
            assert ", in execute" in report
            assert "koiitasks/nodes" not in report
            assert ONCE_NOTE in report

    def test_each_distinct_failure_is_reported(
        self, tmp_path: Path, node_logs: pytest.LogCaptureFixture
    ) -> None:
        """Nodes failing two different ways in one round give one report for each way."""
        run_rounds(failing_task(tmp_path, odd_nodes_differ=True), nodes=12, rounds=1)
        reports = hook_failures(node_logs, "execute")
        assert len(reports) == 2
        assert sum("ValueError: odd node" in r for r in reports) == 1
        assert sum("KeyError" in r for r in reports) == 1

    def test_verbose_logging_reports_every_node_with_every_frame(
        self, tmp_path: Path, node_logs: pytest.LogCaptureFixture
    ) -> None:
        """With the koiitasks loggers at INFO (`run -v`), each node's failure is reported with
        the whole traceback, koiitasks' frames included."""
        node_logs.set_level(logging.INFO, logger="koiitasks")
        run_rounds(failing_task(tmp_path), nodes=5, rounds=1)
        reports = hook_failures(node_logs, "execute")
        assert len(reports) == 5
        assert len({r.split(" in round")[0] for r in reports}) == 5
        assert all("koiitasks/nodes/runtime.py" in r and "in lookup" in r for r in reports)

    def test_audit_hook_failures_are_reported_once_per_round(
        self, tmp_path: Path, node_logs: pytest.LogCaptureFixture
    ) -> None:
        """Every auditor failing the same way leaves its votes out and is reported once."""
        task_dir = write_task(tmp_path / "bad-audit", FAILING_AUDIT)
        (result,) = run_rounds(task_dir, nodes=6, rounds=1)
        assert all(n.outcome == "rejected" and n.slash == 0 for n in result.nodes.values())
        reports = hook_failures(node_logs, "audit")
        assert len(reports) == 1
        assert "KeyError: 'missing'" in reports[0]
        assert 'return submission.result["missing"]' in reports[0]

    @pytest.mark.parametrize(
        ("filename", "library"),
        [
            pytest.param(str(ROOT / "koiitasks" / "round.py"), True, id="engine"),
            pytest.param(str(ROOT / "koiitasks" / "nodes" / "sim.py"), True, id="nodes"),
            pytest.param(
                str(ROOT / "koiitasks" / "templates" / "task" / "task.py"), False, id="template"
            ),
            pytest.param(str(ROOT / "examples" / "hash-puzzle" / "task.py"), False, id="task"),
            pytest.param("<string>", False, id="not-a-file"),
        ],
    )
    def test_which_frames_are_koiitasks_own(self, filename: str, library: bool) -> None:
        """Frames of the package are left out; tasks, templates and anything else are kept."""
        assert is_library_frame(filename) is library

    def test_the_cli_shows_the_tasks_frames_once_per_round(
        self, cli_env: dict[str, str], tmp_path: Path
    ) -> None:
        """`koiitasks run` prints the failure line and the task's frames on stderr, once."""
        task_dir = failing_task(tmp_path)
        proc = koiitasks(
            "run", str(task_dir), "--nodes", "8", "--plain", env=cli_env, cwd=tmp_path, check=True
        )
        assert proc.stderr.count("execute hook failed") == 1
        assert proc.stderr.count("in lookup") == 1
        assert "return prices[ctx.config.task_name]" in proc.stderr
        assert "8 missing" in proc.stdout


class TestWorkersOne:
    """`--workers 1` runs every hook in the main thread, so a breakpoint stops there."""

    @pytest.mark.parametrize(
        ("workers", "in_main_thread"),
        [
            pytest.param(1, True, id="one-worker-runs-hooks-in-the-main-thread"),
            pytest.param(4, False, id="more-workers-run-hooks-on-a-pool"),
        ],
    )
    def test_library_path(self, tmp_path: Path, workers: int, in_main_thread: bool) -> None:
        """Without Prefect (--plain), hooks run in the calling thread only with one worker."""
        box = sandbox(write_task(tmp_path / "threads", THREAD_TASK), nodes=6, workers=workers)
        result = box.run_round(0)
        box.close()
        expected = "approved" if in_main_thread else "rejected"
        assert all(n.outcome == expected for n in result.nodes.values())

    @pytest.mark.usefixtures("prefect_api")
    def test_flow_path(self, tmp_path: Path) -> None:
        """In the round flow, workers=1 runs the shard tasks in the flow's own (main) thread."""
        task_dir = write_task(tmp_path / "threads", THREAD_TASK)
        data = sandbox_round(
            task_dir=str(task_dir),
            round_number=0,
            store=str(tmp_path / "store"),
            nodes=6,
            seed=3,
            workers=1,
        )
        result = RoundResult.model_validate_json(data)
        assert all(n.outcome == "approved" for n in result.nodes.values())

    def test_cli(self, cli_env: dict[str, str], prefect_api: str, tmp_path: Path) -> None:
        """`koiitasks run --workers 1` (a Prefect flow run) runs every hook in the main thread."""
        task_dir = write_task(tmp_path / "threads", THREAD_TASK)
        proc = koiitasks(
            "run", str(task_dir), "--nodes", "5", "--workers", "1", "--json",
            env={**cli_env, "PREFECT_API_URL": prefect_api}, cwd=tmp_path, check=True,
        )  # fmt: skip
        (result,) = json_lines(proc.stdout)
        assert {n["outcome"] for n in result["nodes"].values()} == {"approved"}


class TestPrefectStart:
    """A Prefect server too slow to start, or gone mid-run, is the machine's state, not a
    koiitasks bug."""

    def test_a_temporary_server_that_does_not_start_in_time_is_explained(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Before anything is written the run stops with a ConfigError (exit 2) naming three
        ways out, instead of an 'internal error ... a bug in koiitasks'."""

        def slow_server() -> None:
            raise RuntimeError("Timed out while attempting to connect to ephemeral Prefect API")

        monkeypatch.setattr(prefect_start, "start_temporary_server", slow_server)
        with (
            temporary_settings(restore_defaults={PREFECT_API_URL}),  # no server named
            pytest.raises(ConfigError) as caught,
        ):
            prefect_start.reach_prefect_api()
        assert "did not answer: Timed out" in caught.value.message
        assert caught.value.hint is not None
        for way_out in ("--plain", "PREFECT_API_URL", "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT"):
            assert way_out in caught.value.hint

    @pytest.mark.parametrize(
        ("message", "explained"),
        [
            pytest.param("Failed to reach API at http://127.0.0.1:9/api/", True, id="gone"),
            pytest.param("something else broke", False, id="other-errors-pass-through"),
        ],
    )
    def test_a_server_that_stops_answering_mid_run_is_explained(
        self, monkeypatch: pytest.MonkeyPatch, message: str, explained: bool
    ) -> None:
        """A Prefect API lost between rounds stops the run with a ConfigError saying the
        records are kept and how to go on; other RuntimeErrors are left alone."""
        import flows.round  # noqa: PLC0415

        def gone(**_options: object) -> dict[str, object]:
            raise RuntimeError(message)

        monkeypatch.setattr(flows.round, "sandbox_round", gone)
        monkeypatch.setattr(SyncClientContext, "get_or_create", contextlib.nullcontext)
        run_one = _flow_runner(contextlib.ExitStack(), str(HASH_PUZZLE), {})
        expected = ConfigError if explained else RuntimeError
        with pytest.raises(expected) as caught:
            run_one(0)
        if explained:
            assert isinstance(caught.value, ConfigError)
            assert "stopped answering in round 0" in caught.value.message
            assert "run again to go on" in str(caught.value.hint)
