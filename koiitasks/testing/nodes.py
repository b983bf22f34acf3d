"""Real node processes for tests: start ``koiitasks node serve`` on loopback, stop them after.

::

    from koiitasks.testing.nodes import make_keys, serve_nodes

    def test_my_task_on_real_nodes(tmp_path):
        orchestrator, *nodes = make_keys(tmp_path / "keys", 4)
        with serve_nodes("path/to/task", [[k] for k in nodes], orchestrator=...) as running:
            ...  # register running[i].url, run rounds with koiitasks.remote

Every process listens on a free port of 127.0.0.1 and is stopped (SIGTERM, then SIGKILL) when
the block ends, whatever happened in it, so no test leaves a process behind.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from koiitasks.errors import KoiiTasksError
from koiitasks.identity import Keypair, save_key

_READY = re.compile(r"serving task \S+ at (http://\S+) as ")


@dataclass
class NodeProcess:
    """One running ``koiitasks node serve`` process."""

    process: subprocess.Popen[bytes]
    keys: list[Path]
    node_ids: list[str]
    stdout: Path
    stderr: Path
    url: str = ""
    extra_args: list[str] = field(default_factory=list)

    @property
    def node_id(self) -> str:
        """The identity of a one-identity process."""
        return self.node_ids[0]

    def log(self) -> str:
        """What the process wrote to stderr so far."""
        return self.stderr.read_text(errors="replace") if self.stderr.exists() else ""

    def kill(self) -> None:
        """Kill the process at once (SIGKILL), as a crashed machine would stop."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)

    def stop(self) -> None:
        """Stop the process: SIGTERM, then SIGKILL if it is still there after 5 s."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.process.wait(timeout=10)


def make_keys(directory: Path, count: int) -> list[Path]:
    """``count`` new key files in ``directory`` (mode 0600), named ``key-{i}.json``."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = directory / f"key-{i}.json"
        save_key(Keypair.generate(), path)
        paths.append(path)
    return paths


@contextmanager
def serve_nodes(
    task_dir: Path | str,
    keys: Sequence[Sequence[Path]],
    *,
    orchestrator: str,
    logs: Path,
    extra_args: Sequence[Sequence[str]] | None = None,
    env: Mapping[str, str] | None = None,
    envs: Sequence[Mapping[str, str]] | None = None,
    startup_timeout_s: float = 60,
) -> Iterator[list[NodeProcess]]:
    """Start one ``node serve`` process per entry of ``keys`` (its identities), all at once;
    yield them once each answers ``GET /``; stop them all when the block ends."""
    from koiitasks.identity import load_key  # noqa: PLC0415

    logs.mkdir(parents=True, exist_ok=True)
    base_env = dict(os.environ if env is None else env)
    running: list[NodeProcess] = []
    try:
        for i, identity_keys in enumerate(keys):
            args = [sys.executable, "-m", "koiitasks", "node", "serve", str(task_dir)]
            for key in identity_keys:
                args += ["--key", str(key)]
            args += ["--orchestrator", orchestrator, "--host", "127.0.0.1", "--port", "0"]
            more = list(extra_args[i]) if extra_args else []
            stdout, stderr = logs / f"node-{i}.out", logs / f"node-{i}.err"
            process_env = {**base_env, **(envs[i] if envs else {})}
            with stdout.open("wb") as out, stderr.open("wb") as err:
                process = subprocess.Popen(  # noqa: S603 - our own CLI, fixed arguments
                    [*args, *more], stdout=out, stderr=err, env=process_env
                )
            running.append(
                NodeProcess(
                    process=process,
                    keys=list(identity_keys),
                    node_ids=[load_key(k).public_id for k in identity_keys],
                    stdout=stdout,
                    stderr=stderr,
                    extra_args=more,
                )
            )
        deadline = time.monotonic() + startup_timeout_s
        for node in running:
            node.url = _wait_ready(node, deadline)
        yield running
    finally:
        for node in running:
            node.stop()


def _wait_ready(node: NodeProcess, deadline: float) -> str:
    """The process's URL once it answers ``GET /``."""
    while time.monotonic() < deadline:
        if node.process.poll() is not None:
            raise KoiiTasksError(
                f"node process exited with {node.process.returncode} before serving:\n{node.log()}"
            )
        found = _READY.search(node.stdout.read_text(errors="replace"))
        if found:
            try:
                if httpx.get(found.group(1) + "/", timeout=2, trust_env=False).status_code == 200:
                    return found.group(1)
            except httpx.HTTPError:
                pass
        time.sleep(0.05)
    raise KoiiTasksError(f"node process did not serve within the startup timeout:\n{node.log()}")
