"""Specifications of stopping `koiitasks deploy` from its terminal: a Ctrl-C (SIGINT to its
process group, as a terminal sends it) stops it as SIGTERM does, with one line and exit 130."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from koiitasks.cli import INTERRUPTED, INTERRUPTED_CODE
from koiitasks.ledger import verify_ledger
from koiitasks.storage import FileStore
from koiitasks.testing.processes import PrefectServer
from tests.deploy.conftest import deploy_process, deployed_task

pytestmark = pytest.mark.slow


class TestCtrlC:
    """A Ctrl-C in the terminal of a serving `koiitasks deploy`."""

    def test_ctrl_c_pauses_the_deployment_and_exits_130_without_tracebacks(
        self, sqlite_server: PrefectServer, tmp_path: Path
    ) -> None:
        """The runner stops as on SIGTERM (its schedule paused), the process says it was
        interrupted and exits 130, Prefect's event loop prints no cancelled tasks, and the
        ledger written so far verifies."""
        task_dir = deployed_task(tmp_path, "Interrupted")
        deployed = deploy_process(tmp_path, task_dir, sqlite_server, "--nodes", "4")
        with deployed:
            deployed.wait_for(
                lambda: len(deployed.ledger_rounds()) >= 1, timeout_s=180, what="a paid round"
            )
            assert deployed.process is not None
            os.killpg(deployed.process.pid, signal.SIGINT)
            code = deployed.wait_exit(timeout_s=120)
        log = deployed.log()
        assert code == INTERRUPTED_CODE, log[-4000:]
        assert log.rstrip().splitlines()[-1] == INTERRUPTED
        assert "All deployments have been paused!" in log
        assert "asyncio.exceptions.CancelledError" not in log
        assert "Exception in callback" not in log
        assert "Engine execution interrupted by base exception\nTraceback" not in log
        store = FileStore(tmp_path / "store")
        assert verify_ledger(store, deployed.task_id).entries == len(deployed.ledger_rounds())
