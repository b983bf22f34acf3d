"""Specifications of `koiitasks node keygen | serve | register` and the argument errors of
`koiitasks run --remote`, run as a user runs them: in a subprocess."""

from __future__ import annotations

import json
import signal
import socket
import stat
from pathlib import Path

import httpx
import pytest

from koiitasks.identity import Keypair, load_key
from koiitasks.protocol import NodeRegistration, decode
from koiitasks.storage import Layout
from koiitasks.testing.nodes import make_keys, serve_nodes
from tests.conftest import HASH_PUZZLE, koiitasks

MIN_STAKE = 1_000_000_000  # hash-puzzle's minimum_stake_amount


class TestKeygen:
    """`node keygen`: a new key file for a node or the orchestrator."""

    def test_writes_a_key_only_its_owner_reads_and_prints_the_public_key(
        self, cli_env: dict[str, str], tmp_path: Path
    ) -> None:
        """The file has mode 0600 and stdout is its public key in base58, alone."""
        proc = koiitasks(
            "node", "keygen", "--out", "me.json", env=cli_env, cwd=tmp_path, check=True
        )
        key = tmp_path / "me.json"
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        assert proc.stdout.strip() == load_key(key).public_id

    def test_never_overwrites_a_key_file(self, cli_env: dict[str, str], tmp_path: Path) -> None:
        """An existing file is left as it is; the command exits 2 saying so."""
        koiitasks("node", "keygen", "--out", "me.json", env=cli_env, cwd=tmp_path, check=True)
        before = (tmp_path / "me.json").read_bytes()
        proc = koiitasks("node", "keygen", "--out", "me.json", env=cli_env, cwd=tmp_path)
        assert proc.returncode == 2
        assert "already exists" in proc.stderr
        assert (tmp_path / "me.json").read_bytes() == before

    @pytest.mark.parametrize(
        "out", [pytest.param("keys", id="a-folder"), pytest.param("", id="empty")]
    )
    def test_a_folder_for_out_is_refused_with_a_file_name_to_use(
        self, cli_env: dict[str, str], tmp_path: Path, out: str
    ) -> None:
        """--out naming a folder (or nothing) says so and suggests a file in it, instead of
        "key file keys already exists"."""
        (tmp_path / "keys").mkdir()
        proc = koiitasks("node", "keygen", "--out", out, env=cli_env, cwd=tmp_path)
        assert proc.returncode == 2
        assert "names a folder, not a key file" in proc.stderr
        assert "node.json" in proc.stderr


class TestRegister:
    """`node register`: a node's signed registration in the store."""

    def test_writes_a_registration_signed_by_the_node(
        self, cli_env: dict[str, str], tmp_path: Path
    ) -> None:
        """--json prints the registration; the stored record is signed by the node's key."""
        (key,) = make_keys(tmp_path, 1)
        proc = koiitasks(
            "node", "register", "--store", "st", "--task", str(HASH_PUZZLE), "--key", str(key),
            "--url", "http://127.0.0.1:8001/", "--stake", str(2 * MIN_STAKE), "--json",
            env=cli_env, cwd=tmp_path, check=True,
        )  # fmt: skip
        node_id = load_key(key).public_id
        assert json.loads(proc.stdout)["url"] == "http://127.0.0.1:8001"
        path = tmp_path / "st" / Layout("hash-puzzle").node(node_id)
        record = decode(path.read_bytes(), NodeRegistration, where=str(path))
        assert (record.signer, record.body.stake) == (node_id, 2 * MIN_STAKE)

    def test_refuses_a_stake_under_the_minimum(
        self, cli_env: dict[str, str], tmp_path: Path
    ) -> None:
        """A stake under minimum_stake_amount exits 2 naming both amounts."""
        (key,) = make_keys(tmp_path, 1)
        proc = koiitasks(
            "node", "register", "--store", "st", "--task", str(HASH_PUZZLE), "--key", str(key),
            "--url", "http://127.0.0.1:8001", "--stake", "5", env=cli_env, cwd=tmp_path,
        )  # fmt: skip
        assert proc.returncode == 2
        assert "stake 5 is below the minimum_stake_amount 1,000,000,000" in proc.stderr


class TestServe:
    """`node serve`: a node process."""

    def test_serves_health_and_stops_cleanly_on_sigterm(self, tmp_path: Path) -> None:
        """The process answers `GET /` as a Koii node does; on SIGTERM it shuts down by itself
        (uvicorn then exits by the signal, as is conventional), not killed after 5 s."""
        orchestrator, key = make_keys(tmp_path / "keys", 2)
        with serve_nodes(
            HASH_PUZZLE, [[key]], orchestrator=load_key(orchestrator).public_id, logs=tmp_path
        ) as (node,):
            health = httpx.get(node.url + "/", trust_env=False, timeout=10).json()
            node.stop()
        assert (health["status"], health["message"]) == (200, "Running")
        assert health["nodes"] == [load_key(key).public_id]
        assert node.process.returncode == -signal.SIGTERM
        assert "Traceback" not in node.log()

    def test_a_port_in_use_is_a_clear_error(self, cli_env: dict[str, str], tmp_path: Path) -> None:
        """Another process on the port: exit 2 naming host and port, no traceback."""
        orchestrator, key = make_keys(tmp_path / "keys", 2)
        with socket.create_server(("127.0.0.1", 0)) as taken:
            port = str(taken.getsockname()[1])
            proc = koiitasks(
                "node", "serve", str(HASH_PUZZLE), "--key", str(key), "--port", port,
                "--orchestrator", load_key(orchestrator).public_id, env=cli_env, cwd=tmp_path,
            )  # fmt: skip
        assert proc.returncode == 2
        assert f"cannot listen on 127.0.0.1:{port}" in proc.stderr
        assert "Traceback" not in proc.stderr


#: A public key to name as the orchestrator where no node must obey it.
ORCHESTRATOR_ID = Keypair.from_seed(b"test orchestrator").public_id


class TestBadArguments:
    """Bad arguments exit 2 with a message that says what to do."""

    @pytest.mark.parametrize(
        ("args", "expected"),
        [
            pytest.param(
                ["node", "serve", str(HASH_PUZZLE), "--key", "k.json", "--orchestrator", "0xdead"],
                "is not a base58 ed25519 public key",
                id="serve-orchestrator-not-a-key",
            ),
            pytest.param(
                [
                    "node",
                    "serve",
                    str(HASH_PUZZLE),
                    "--keys-dir",
                    "empty",
                    "--orchestrator",
                    ORCHESTRATOR_ID,
                ],
                "holds no key file (*.json)",
                id="serve-keys-dir-without-keys",
            ),
            *(
                pytest.param(
                    ["node", "serve", str(HASH_PUZZLE), "--key", "k.json", "--port", port],
                    f"Invalid value for '--port': Input should be {bound}",
                    id=f"serve-port-{port}",
                )
                for port, bound in (
                    ("65536", "less than or equal to 65535"),
                    ("-1", "greater than or equal to 0"),
                )
            ),
            pytest.param(
                ["run", str(HASH_PUZZLE), "--remote"],
                "--remote needs the orchestrator's key",
                id="remote-without-key",
            ),
            pytest.param(
                ["run", str(HASH_PUZZLE), "--remote", "--key", "k.json", "--nodes", "5"],
                "--nodes is for sandbox runs",
                id="remote-with-sandbox-options",
            ),
            pytest.param(
                ["run", str(HASH_PUZZLE), "--remote", "--key", "k.json", "--plain"],
                "no node is registered for task 'hash-puzzle'",
                id="remote-with-no-registered-node",
            ),
        ],
    )
    def test_bad_arguments(
        self, cli_env: dict[str, str], tmp_path: Path, args: list[str], expected: str
    ) -> None:
        """Each exits 2 with the message, never a traceback."""
        make_keys(tmp_path / "k", 1)[0].rename(tmp_path / "k.json")
        (tmp_path / "empty").mkdir()
        proc = koiitasks(*args, env=cli_env, cwd=tmp_path)
        assert proc.returncode == 2, proc.stderr
        assert expected in proc.stderr
        assert "Traceback" not in proc.stderr

    def test_a_remote_run_refused_for_want_of_nodes_writes_no_task_record(
        self, cli_env: dict[str, str], tmp_path: Path
    ) -> None:
        """`run --remote` with no node registered writes nothing: a task record made then would
        tie the store to the key given, and a wrong key would lock the right one out."""
        make_keys(tmp_path / "k", 1)[0].rename(tmp_path / "k.json")
        proc = koiitasks(
            "run", str(HASH_PUZZLE), "--remote", "--key", "k.json", "--plain",
            env=cli_env, cwd=tmp_path,
        )  # fmt: skip
        assert proc.returncode == 2, proc.stderr
        assert "no node is registered" in proc.stderr
        assert not (tmp_path / ".koiitasks" / "tasks" / "hash-puzzle" / "task.json").exists()

    def test_serving_the_orchestrators_own_key_is_refused(
        self, cli_env: dict[str, str], tmp_path: Path
    ) -> None:
        """A node cannot be the orchestrator it obeys: its key is refused before serving."""
        (key,) = make_keys(tmp_path / "k", 1)
        proc = koiitasks(
            "node", "serve", str(HASH_PUZZLE), "--key", str(key),
            "--orchestrator", load_key(key).public_id, env=cli_env, cwd=tmp_path,
        )  # fmt: skip
        assert proc.returncode == 2, proc.stderr
        assert "is the orchestrator's own key" in proc.stderr
