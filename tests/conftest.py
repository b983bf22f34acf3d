"""Shared fixtures: an isolated Prefect home, one Prefect API for the whole session.

Prefect reads its settings when first imported, so the environment is set here, at import time,
before any test module imports prefect. Prefect never phones home from tests.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from koiitasks.storage import Store

_PREFECT_HOME = tempfile.mkdtemp(prefix="koiitasks-prefect-home-")
os.environ.update(
    {
        "PREFECT_HOME": _PREFECT_HOME,
        "DO_NOT_TRACK": "1",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOGGING_LEVEL": "WARNING",
        "PREFECT_SERVER_LOGGING_LEVEL": "WARNING",
    }
)
os.environ.pop("PREFECT_API_URL", None)
os.environ.pop("KOII_STORE", None)

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
HASH_PUZZLE = EXAMPLES / "hash-puzzle"
#: The smallest honest task: a node answers its own id and the round; an audit checks exactly that.
ECHO_TASK = """
from koiitasks import Task

task = Task()

@task.execute
def execute(ctx):
    return {"node": ctx.node_id, "round": ctx.round}

@task.audit
def audit(ctx, submission):
    return submission.result == {"node": submission.node_id, "round": submission.round}
"""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Specs marked slow (a minute or more of wall clock each) first, the rest in file order:
    workers start on the long ones and the short ones fill in around them, so a run takes about
    as long as its longest worker's share rather than a long spec started last."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


def snapshot(store: Store) -> dict[str, bytes]:
    """Every record in a store, by key: two stores hold the same records when equal."""
    return {key: store.read(key) for key in store.list()}


def koiitasks(
    *args: str, env: dict[str, str], cwd: Path, check: bool = False
) -> subprocess.CompletedProcess[str]:
    """Run the CLI in a subprocess with this interpreter; its output is captured. ``check``
    fails the test, with the CLI's stderr, when it exits non-zero."""
    proc = subprocess.run(
        [sys.executable, "-m", "koiitasks", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if check and proc.returncode != 0:
        pytest.fail(f"koiitasks {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}")
    return proc


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[str]:
    """One Prefect API server (the test harness's) for the session; yields its URL.

    Entering the harness costs several seconds, so every flow test and every CLI subprocess
    shares it (subprocesses get it through PREFECT_API_URL).
    """
    from prefect.settings import (  # noqa: PLC0415 - imported after the environment is set
        PREFECT_API_URL,
        PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
        temporary_settings,
    )
    from prefect.testing.utilities import prefect_test_harness  # noqa: PLC0415

    with (
        prefect_test_harness(server_startup_timeout=120),
        temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}),
    ):
        url = PREFECT_API_URL.value()
        assert url, "the Prefect test harness did not set an API URL"
        yield str(url)


@pytest.fixture
def cli_env(tmp_path: Path) -> dict[str, str]:
    """Environment for a `koiitasks` subprocess: no Prefect server of its own, no KOII_*."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KOII_")}
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")
    env["COLUMNS"] = "200"
    return env
