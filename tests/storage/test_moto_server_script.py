"""``infra/moto-server.sh``: start, status and stop a moto server on loopback for s3:// stores."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from koiitasks.storage.s3 import open_s3_store
from koiitasks.storage.s3_init import init_s3_store

SCRIPT = Path(__file__).parents[2] / "infra" / "moto-server.sh"


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def script_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    """Settings for the script: a free port, a state dir in tmp, this interpreter."""
    env = os.environ | {
        "MOTO_PORT": str(free_port()),
        "KOII_INFRA_DIR": str(tmp_path / "infra"),
        "KOII_PYTHON": sys.executable,
        "MOTO_STOP_TIMEOUT": "5",
    }
    yield env
    subprocess.run(["bash", str(SCRIPT), "stop"], env=env, check=False, capture_output=True)


def run(env: dict[str, str], command: str) -> subprocess.CompletedProcess[str]:
    """Run the script with ``command``."""
    return subprocess.run(
        ["bash", str(SCRIPT), command],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


class TestMotoServerScript:
    def test_start_status_stop_cycle(self, script_env: dict[str, str]) -> None:
        """start serves S3 on loopback with a pid file, status tells, stop ends it and cleans up."""
        state = Path(script_env["KOII_INFRA_DIR"])
        endpoint = f"http://127.0.0.1:{script_env['MOTO_PORT']}"
        assert run(script_env, "status").returncode == 3
        started = run(script_env, "start")
        assert started.returncode == 0, started.stderr
        assert f"KOII_S3_ENDPOINT_URL={endpoint}" in started.stdout
        assert (state / "moto-server.pid").read_text().strip().isdigit()
        assert run(script_env, "start").stdout.startswith("moto server already running")
        assert run(script_env, "status").returncode == 0
        init_s3_store("s3://koii-script", endpoint)
        with open_s3_store("s3://koii-script", endpoint) as store:
            assert store.create("a.json", b"1") is True
        stopped = run(script_env, "stop")
        assert stopped.returncode == 0, stopped.stderr
        assert run(script_env, "status").returncode == 3
        assert not (state / "moto-server.pid").exists()
        assert (state / "moto-server.log").exists()

    def test_unknown_commands_print_usage(self, script_env: dict[str, str]) -> None:
        """Anything but start, stop or status is a usage error (exit 2)."""
        done = run(script_env, "restart")
        assert done.returncode == 2
        assert "usage:" in done.stderr
