"""Specifications of the `koiitasks` command line, run as a user runs it: in a subprocess."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from koiitasks.storage import Layout
from koiitasks.testing import write_task
from koiitasks.testing.cli import invoke
from tests.conftest import ECHO_TASK, HASH_PUZZLE, koiitasks

ALL_KINDS = ("offline", "lazy", "forger", "replayer", "late", "bad-auditor")


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@pytest.fixture
def env(cli_env: dict[str, str], prefect_api: str) -> dict[str, str]:
    """A CLI environment whose flows report to the session's Prefect API."""
    return {**cli_env, "PREFECT_API_URL": prefect_api}


class TestRun:
    """`koiitasks run`."""

    def test_json_contract_with_every_adversary_kind(
        self, env: dict[str, str], tmp_path: Path
    ) -> None:
        """--json prints one object per settled round with the contracted keys and outcomes."""
        adversaries = [arg for kind in ALL_KINDS for arg in ("--adversary", f"{kind}=1")]
        proc = koiitasks(
            "run", str(HASH_PUZZLE), "--nodes", "18", "--rounds", "2", "--seed", "4",
            *adversaries, "--json", env=env, cwd=tmp_path, check=True,
        )  # fmt: skip
        rounds = json_lines(proc.stdout)
        assert [r["round"] for r in rounds] == [0, 1]
        expected = {
            "honest": "approved",
            "bad-auditor": "approved",
            "offline": "missing",
            "lazy": "rejected",
            "forger": "refused",
            "replayer": "refused",
            "late": "refused",
        }
        for r in rounds:
            assert {"task_id", "round", "bounty", "distribution_accepted", "nodes"} <= set(r)
            assert r["task_id"] == "hash-puzzle"
            assert r["distribution_accepted"] is True
            assert sum(n["credit"] for n in r["nodes"].values()) <= r["bounty"]
            for node in r["nodes"].values():
                assert {"behaviour", "outcome", "credit", "slash"} <= set(node)
                assert node["outcome"] == expected[node["behaviour"]]
                assert (node["credit"] > 0) == (node["outcome"] == "approved")
                assert (node["slash"] > 0) == (node["behaviour"] == "lazy")
        assert (tmp_path / ".koiitasks" / "tasks" / "hash-puzzle" / "task.json").is_file()

    def test_human_output_summarises_each_round(self, env: dict[str, str], tmp_path: Path) -> None:
        """Without --json each round gets a readable line and the run ends with the ledger."""
        proc = koiitasks(
            "run", str(HASH_PUZZLE), "--nodes", "5", "--rounds", "2", "--plain",
            env=env, cwd=tmp_path, check=True,
        )  # fmt: skip
        lines = proc.stdout.splitlines()
        assert lines[0].startswith("round 0: 5 approved; paid 1,000,000,000")
        assert lines[1].startswith("round 1: ")
        assert "koiitasks ledger verify" in lines[-1]
        assert "Traceback" not in proc.stderr

    def test_each_round_says_why_answers_were_refused(self) -> None:
        """Under a round's line, one line per refusal reason, so "2 refused" is never left
        unexplained (the reasons used to be only in --json and `koiitasks trace`)."""
        ran = invoke(
            "run", str(HASH_PUZZLE), "--nodes", "6", "--plain", "--store", "memory://refusals",
            "--adversary", "forger=1", "--adversary", "late=1",
        )  # fmt: skip
        assert ran.exit_code == 0, ran.stderr
        lines = ran.stdout.splitlines()
        assert "2 refused" in lines[0]
        forged = "  - 1 refused: signature does not verify with the node's registered key (forged)"
        assert forged in lines[1:3]
        assert any(line.startswith("  - 1 refused: ") and "(late)" in line for line in lines[1:3])
        assert lines[3].startswith("ledger: ")

    def test_a_store_that_ends_with_the_run_gets_no_hint_to_check_it_later(self) -> None:
        """After a run on memory:// the closing line gives the ledger's totals but no
        `ledger verify --store memory://...` command, which could never find it."""
        ran = invoke("run", str(HASH_PUZZLE), "--nodes", "3", "--plain", "--store", "memory://x")
        assert ran.exit_code == 0, ran.stderr
        last = ran.stdout.splitlines()[-1]
        assert last.startswith("ledger: 1 settled rounds")
        assert "ledger verify" not in last

    def test_a_round_that_paid_nobody_says_why_each_list_was_refused(self, tmp_path: Path) -> None:
        """When every distribution list is refused, the round's line is followed by one line
        per attempt saying why, so "nobody paid" is never left unexplained."""
        task_dir = write_task(
            tmp_path / "negative",
            ECHO_TASK + "\n\n@task.distribute\ndef distribute(ctx, approved, bounty):\n"
            "    return {ctx.node_id: -5}\n",
        )
        ran = invoke(
            "run", str(task_dir), "--nodes", "4", "--plain", "--store", str(tmp_path / "s")
        )  # fmt: skip
        assert ran.exit_code == 0, ran.stderr
        lines = ran.stdout.splitlines()
        assert "distribution failed, nobody paid" in lines[0]
        reasons = [line for line in lines if line.startswith("  - attempt ")]
        assert reasons
        assert all("a negative amount -5" in line for line in reasons)

    def test_a_hook_that_never_returns_does_not_keep_the_run_from_exiting(
        self, cli_env: dict[str, str], tmp_path: Path
    ) -> None:
        """A hung execute hook costs its node the round; once the round is settled the command
        exits, though the hook's thread is still sleeping (it used to wait for it forever)."""
        task_dir = write_task(
            tmp_path / "hangs",
            ECHO_TASK.replace(
                'return {"node": ctx.node_id, "round": ctx.round}',
                'if ctx.node_id < "5":\n        import time; time.sleep(3600)\n'
                '    return {"node": ctx.node_id, "round": ctx.round}',
            ),
        )
        proc = koiitasks(
            "run", str(task_dir), "--nodes", "8", "--seed", "1", "--plain", "--json",
            env=cli_env, cwd=tmp_path,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        (settled,) = json_lines(proc.stdout)
        hung = [n for node, n in settled["nodes"].items() if node < "5"]
        assert hung
        assert all(n["outcome"] == "missing" for n in hung)
        assert "hook did not finish within" in proc.stderr

    def test_json_output_stays_json_when_hooks_print(
        self, cli_env: dict[str, str], tmp_path: Path
    ) -> None:
        """With --json, what a task's hooks print goes to stderr: stdout holds one JSON object
        per round and nothing else, so `--json | jq` keeps working."""
        task_dir = write_task(
            tmp_path / "chatty",
            ECHO_TASK.replace(
                'return {"node": ctx.node_id, "round": ctx.round}',
                'print("HELLO from", ctx.node_id)\n'
                '    return {"node": ctx.node_id, "round": ctx.round}',
            ),
        )
        proc = koiitasks(
            "run", str(task_dir), "--nodes", "4", "--rounds", "2", "--plain", "--json",
            env=cli_env, cwd=tmp_path, check=True,
        )  # fmt: skip
        assert [r["round"] for r in json_lines(proc.stdout)] == [0, 1]
        assert "HELLO from" in proc.stderr

    def test_ctrl_c_says_what_was_kept_and_a_rerun_goes_on(
        self, cli_env: dict[str, str], tmp_path: Path
    ) -> None:
        """Ctrl-C during a long run exits 130 saying the records are kept (typer used to end
        it silently); the ledger verifies and the next run continues after the last round."""
        run = [sys.executable, "-m", "koiitasks", "run", str(HASH_PUZZLE), "--plain"]
        proc = subprocess.Popen(
            [*run, "--nodes", "20", "--rounds", "100000"],
            env=cli_env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().startswith("round 0: ")
            proc.send_signal(signal.SIGINT)
            _, stderr = proc.communicate(timeout=120)
        finally:
            proc.kill()
            proc.wait()
        assert proc.returncode == 130
        assert "interrupted: records written so far are kept; run again to go on" in stderr
        assert "Traceback" not in stderr
        koiitasks("ledger", "verify", env=cli_env, cwd=tmp_path, check=True)
        ledger = tmp_path / ".koiitasks" / "tasks" / "hash-puzzle" / "ledger"
        settled = len(list(ledger.iterdir()))
        again = koiitasks(*run[3:], "--rounds", "1", "--json", env=cli_env, cwd=tmp_path)
        assert [r["round"] for r in json_lines(again.stdout)] == [settled], again.stderr

    @pytest.mark.parametrize(
        ("signum", "to_group"),
        [(signal.SIGTERM, False), (signal.SIGHUP, True), (signal.SIGKILL, False)],
        ids=["kill-of-the-run", "terminal-hang-up", "kill-9"],
    )
    def test_a_killed_run_takes_prefects_temporary_server_with_it(
        self, cli_env: dict[str, str], tmp_path: Path, signum: signal.Signals, to_group: bool
    ) -> None:
        """`kill` of a run (its process alone, even SIGKILL), or its terminal hanging up (its
        process group; the server, in a session of its own, is not in it), ends the run as the
        signal always did, and the temporary API server it started ends too (a killed run left
        it running, orphaned)."""
        env = {k: v for k, v in cli_env.items() if k != "PREFECT_API_URL"}
        proc = subprocess.Popen(
            [sys.executable, "-m", "koiitasks", "run", str(HASH_PUZZLE), "--nodes", "500",
             "--rounds", "100000"],
            env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            start_new_session=True,
        )  # fmt: skip
        server = None
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().startswith("round 0: ")
            (server,) = children(proc.pid)
            if to_group:
                os.killpg(proc.pid, signum)
            else:
                proc.send_signal(signum)
            proc.wait(timeout=300)
        finally:
            proc.kill()
            proc.wait()
            if server is not None and not is_zombie(server):
                os.kill(server, signal.SIGKILL)  # not left behind by a failing test
        assert proc.returncode == -signum
        assert gone_within(server, seconds=60)  # SIGTERMed by the kernel as the run ended

    def test_ctrl_c_in_a_terminal_leaves_prefects_server_up_until_the_run_is_reported(
        self, cli_env: dict[str, str], tmp_path: Path
    ) -> None:
        """A terminal's Ctrl-C goes to its whole foreground process group. Prefect's temporary
        API server runs in a session of its own, so that Ctrl-C stops only the run, which
        reports its interrupted flow run to a server still there (when the server stopped
        too, Prefect retried it for over a minute, warning it could not connect): exit 130,
        no connection warning, and the server stopped when the run ends."""
        env = {k: v for k, v in cli_env.items() if k != "PREFECT_API_URL"}  # the temporary one
        proc = subprocess.Popen(
            [sys.executable, "-m", "koiitasks", "run", str(HASH_PUZZLE), "--nodes", "1000",
             "--rounds", "100000"],
            env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            start_new_session=True,  # a terminal's foreground group, led by the run
        )  # fmt: skip
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().startswith("round 0: ")
            (server,) = children(proc.pid)
            assert os.getsid(server) != os.getsid(proc.pid)
            os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in the terminal does
            _, stderr = proc.communicate(timeout=300)
        finally:
            proc.kill()
            proc.wait()
        assert proc.returncode == 130, stderr[-3000:]
        assert "interrupted: records written so far are kept" in stderr
        assert "Unable to connect" not in stderr
        assert "Traceback" not in stderr
        assert not Path(f"/proc/{server}").exists() or is_zombie(server)
        koiitasks("ledger", "verify", env=cli_env, cwd=tmp_path, check=True)

    def test_a_prefect_server_that_does_not_answer_is_said_before_anything_is_written(
        self, cli_env: dict[str, str], tmp_path: Path
    ) -> None:
        """PREFECT_API_URL naming a server that is down exits 2 saying so and what to do (it
        was an "internal error" after the network was written), with --json's error line."""
        with socket.socket() as free:
            free.bind(("127.0.0.1", 0))
            port = free.getsockname()[1]
        env = {**cli_env, "PREFECT_API_URL": f"http://127.0.0.1:{port}/api"}
        proc = koiitasks(
            "run", str(HASH_PUZZLE), "--nodes", "4", "--store", "down", "--json",
            env=env, cwd=tmp_path,
        )  # fmt: skip
        assert proc.returncode == 2, proc.stderr
        failed = json.loads(proc.stdout)
        assert failed["ok"] is False
        assert failed["error"].startswith("the Prefect API did not answer")
        assert "--plain" in failed["hint"]
        assert not (tmp_path / "down").exists()
        # On registered remote nodes too: no task record (and genesis) for a run refused.
        keys = ("node", "keygen", "--out")
        koiitasks(*keys, "node.json", env=cli_env, cwd=tmp_path, check=True)
        koiitasks(*keys, "orchestrator.json", env=cli_env, cwd=tmp_path, check=True)
        koiitasks(
            "node", "register", "--task", str(HASH_PUZZLE), "--key", "node.json", "--url",
            "http://127.0.0.1:9", "--store", "remote", env=cli_env, cwd=tmp_path, check=True,
        )  # fmt: skip
        remote = koiitasks(
            "run", str(HASH_PUZZLE), "--remote", "--key", "orchestrator.json", "--store",
            "remote", env=env, cwd=tmp_path,
        )  # fmt: skip
        assert remote.returncode == 2, remote.stderr
        assert "the Prefect API did not answer" in remote.stderr
        assert not (tmp_path / "remote" / Layout("hash-puzzle").task).exists()

    def test_rounds_continue_and_a_settled_round_is_left_alone(
        self, env: dict[str, str], tmp_path: Path
    ) -> None:
        """--rounds continues after the last settled round; --round N on a settled round says
        so and changes nothing."""
        base = ("run", str(HASH_PUZZLE), "--plain", "--json")
        koiitasks(*base, "--nodes", "4", "--rounds", "2", env=env, cwd=tmp_path, check=True)
        more = json_lines(
            koiitasks(*base, "--rounds", "1", env=env, cwd=tmp_path, check=True).stdout
        )
        assert [r["round"] for r in more] == [2]
        again = json_lines(
            koiitasks(*base, "--round", "1", env=env, cwd=tmp_path, check=True).stdout
        )
        assert again[0]["round"] == 1
        assert again[0]["already_settled"] is True

    def test_a_different_network_on_the_same_store_is_refused(
        self, env: dict[str, str], tmp_path: Path
    ) -> None:
        """Asking an existing store for another node count exits 2 and says what differs."""
        koiitasks(
            "run", str(HASH_PUZZLE), "--nodes", "4", "--plain", env=env, cwd=tmp_path, check=True
        )
        proc = koiitasks("run", str(HASH_PUZZLE), "--nodes", "6", "--plain", env=env, cwd=tmp_path)
        assert proc.returncode == 2
        assert "nodes=4" in proc.stderr
        assert "nodes=6" in proc.stderr
        assert "Traceback" not in proc.stderr


class TestBadInput:
    """Bad input: a clear error, exit code 2, never a traceback."""

    @pytest.mark.parametrize(
        ("config", "expected"),
        [
            pytest.param(
                "task_name: x\n", "missing required field 'round_time'", id="missing-field"
            ),
            pytest.param("round_tme: 3\n", "did you mean 'round_time'", id="unknown-field"),
            pytest.param(
                "task_name: x\nround_time: 5\nsubmission_window: 4\naudit_window: 4\n"
                "minimum_stake_amount: 1\ntotal_bounty_amount: 10\nbounty_amount_per_round: 1\n",
                "round_time (5) must be at least",
                id="windows-longer-than-round",
            ),
            pytest.param(
                "task_name: x\nround_time: 10\nsubmission_window: 4\naudit_window: 4\n"
                "minimum_stake_amount: -1\ntotal_bounty_amount: 10\nbounty_amount_per_round: 1\n",
                "minimum_stake_amount",
                id="negative-amount",
            ),
            pytest.param(
                "task_name: x\nround_time: 10\nsubmission_window: 4\naudit_window: 4\n"
                "minimum_stake_amount: 1\ntotal_bounty_amount: 10\nbounty_amount_per_round: 11\n",
                "must not exceed total_bounty_amount",
                id="round-bounty-above-total",
            ),
            pytest.param("task_name: [unclosed\n", "not valid YAML at line", id="bad-yaml"),
        ],
    )
    def test_malformed_config(
        self, cli_env: dict[str, str], tmp_path: Path, config: str, expected: str
    ) -> None:
        """A malformed config-task.yml names the file and the field."""
        task_dir = tmp_path / "task"
        task_dir.mkdir()
        (task_dir / "config-task.yml").write_text(config)
        (task_dir / "task.py").write_text((HASH_PUZZLE / "task.py").read_text())
        proc = koiitasks("run", str(task_dir), "--plain", env=cli_env, cwd=tmp_path)
        assert proc.returncode == 2
        assert "config-task.yml" in proc.stderr
        assert expected in proc.stderr
        assert "Traceback" not in proc.stderr

    @pytest.mark.parametrize(
        ("source", "expected"),
        [
            pytest.param(None, "task.py: no such file", id="no-task-py"),
            pytest.param("import nothing_here\n", "ModuleNotFoundError", id="import-error"),
            pytest.param("x = 1\n", "defines no module-level `task", id="no-task"),
            pytest.param(
                "from koiitasks import Task\ntask = Task()\n",
                "no execute and no audit hook",
                id="no-hooks",
            ),
        ],
    )
    def test_broken_task_py(
        self, cli_env: dict[str, str], tmp_path: Path, source: str | None, expected: str
    ) -> None:
        """A task.py that is missing, fails to import or registers no hooks is named."""
        task_dir = tmp_path / "task"
        task_dir.mkdir()
        (task_dir / "config-task.yml").write_text((HASH_PUZZLE / "config-task.yml").read_text())
        if source is not None:
            (task_dir / "task.py").write_text(source)
        proc = koiitasks("run", str(task_dir), "--plain", env=cli_env, cwd=tmp_path)
        assert proc.returncode == 2
        assert expected in proc.stderr
        assert "Traceback" not in proc.stderr

    @pytest.mark.parametrize(
        ("args", "expected"),
        [
            pytest.param(["run", "no-such-dir"], "does not exist", id="missing-task-dir"),
            pytest.param(
                ["run", str(HASH_PUZZLE), "--adversary", "evil=2"],
                "is not KIND=COUNT",
                id="unknown-adversary",
            ),
            pytest.param(
                ["run", str(HASH_PUZZLE), "--nodes", "3", "--adversary", "lazy=4"],
                "4 adversaries asked for a network of 3",
                id="more-adversaries-than-nodes",
            ),
            pytest.param(["run", str(HASH_PUZZLE), "--nodes", "1"], "--nodes", id="one-node"),
            pytest.param(["ledger", "show"], "no task in", id="empty-store"),
            pytest.param(
                ["run", str(HASH_PUZZLE), "--store", "ftp://x"],
                "unknown store URL",
                id="bad-store-url",
            ),
            pytest.param(
                ["run", "no:-1:such"], "no:-1:such does not exist", id="emoji-code-in-a-path"
            ),
            pytest.param(
                ["run", str(HASH_PUZZLE), "--store", "file://"],
                "store URL 'file://' names no folder",
                id="file-url-without-a-path",
            ),
        ],
    )
    def test_bad_arguments(
        self, cli_env: dict[str, str], tmp_path: Path, args: list[str], expected: str
    ) -> None:
        """Bad arguments exit 2 with a message that says what was wrong."""
        proc = koiitasks(
            *args, "--plain" if args[0] == "run" else "--json", env=cli_env, cwd=tmp_path
        )
        assert proc.returncode == 2, proc.stderr
        assert expected in proc.stderr
        assert "Traceback" not in proc.stderr

    def test_a_round_count_out_of_range_is_refused_before_the_store_is_touched(
        self, cli_env: dict[str, str], tmp_path: Path
    ) -> None:
        """--rounds above a million exits 2 before a network is made in the store (a later
        run can then still choose its own --nodes)."""
        proc = koiitasks(
            "run", str(HASH_PUZZLE), "--rounds", "1000001", "--plain", env=cli_env, cwd=tmp_path
        )  # fmt: skip
        assert proc.returncode == 2, proc.stderr
        assert "Invalid value for '--rounds'" in proc.stderr
        assert not (tmp_path / ".koiitasks").exists()

    def test_help_teaches_with_examples(self, cli_env: dict[str, str], tmp_path: Path) -> None:
        """`run --help` explains the options and shows example commands."""
        proc = koiitasks("run", "--help", env=cli_env, cwd=tmp_path, check=True)
        assert "--adversary" in proc.stdout
        assert "koiitasks run examples/hash-puzzle" in proc.stdout


class TestLedgerCommands:
    """`koiitasks ledger show` and `ledger verify`."""

    def test_show_json_and_verify(self, cli_env: dict[str, str], tmp_path: Path) -> None:
        """show --json reports balances, stakes and totals; verify passes on a fresh ledger."""
        koiitasks(
            "run", str(HASH_PUZZLE), "--nodes", "6", "--rounds", "2", "--seed", "1",
            "--adversary", "lazy=1", "--plain", env=cli_env, cwd=tmp_path, check=True,
        )  # fmt: skip
        shown = json.loads(
            koiitasks("ledger", "show", "--json", env=cli_env, cwd=tmp_path, check=True).stdout
        )
        assert shown["task_id"] == "hash-puzzle"
        assert sum(shown["balances"].values()) == shown["total_credited"] == 2_000_000_000
        assert shown["bounty_remaining"] == 100_000_000_000 - 2_000_000_000
        assert shown["total_slashed"] > 0
        assert len(shown["stakes"]) == 6
        verified = koiitasks("ledger", "verify", env=cli_env, cwd=tmp_path)
        assert verified.returncode == 0
        assert verified.stdout.startswith("ok: 2 ledger entries")

    @pytest.mark.parametrize(
        ("lost", "code", "said"),
        [
            pytest.param(
                "task.json", 1, "task.json is missing from", id="task-record"
            ),  # it said "no task ... run `koiitasks run` first", exit 2
            pytest.param(
                "ledger", 0, "2 rounds have records but no ledger entry (round 0, 1)", id="ledger"
            ),  # it said "ok: 0 ledger entries" and nothing more
        ],
    )
    def test_verify_of_a_store_that_lost_its_task_record_or_ledger_says_so(
        self, cli_env: dict[str, str], tmp_path: Path, lost: str, code: int, said: str
    ) -> None:
        """A store whose task.json is gone fails verify naming it; one whose ledger is gone
        verifies (and replays) what is left and says which rounds hold records with no ledger
        entry."""
        koiitasks("run", str(HASH_PUZZLE), "--nodes", "4", "--rounds", "2", "--plain",
                  env=cli_env, cwd=tmp_path, check=True)  # fmt: skip
        gone = tmp_path / ".koiitasks" / "tasks" / "hash-puzzle" / lost
        if gone.is_dir():
            shutil.rmtree(gone)
        else:
            gone.unlink()
        proc = koiitasks("ledger", "verify", env=cli_env, cwd=tmp_path)
        assert proc.returncode == code, proc.stderr
        assert said in proc.stderr
        if lost == "ledger":
            scripted = koiitasks("ledger", "verify", "--json", env=cli_env, cwd=tmp_path)
            assert json.loads(scripted.stdout)["unsettled_rounds"] == [0, 1]
            replayed = koiitasks("rounds", "replay", env=cli_env, cwd=tmp_path)
            assert replayed.returncode == 0
            assert said in replayed.stderr  # it printed nothing at all

    def test_verify_fails_naming_a_changed_record(
        self, cli_env: dict[str, str], tmp_path: Path
    ) -> None:
        """After one byte of a ledger record changes, verify exits 1 and names the record."""
        koiitasks(
            "run",
            str(HASH_PUZZLE),
            "--nodes",
            "4",
            "--rounds",
            "2",
            "--plain",
            env=cli_env,
            cwd=tmp_path,
            check=True,
        )
        key = Layout("hash-puzzle").ledger_entry(0)
        path = tmp_path / ".koiitasks" / key
        data = bytearray(path.read_bytes())
        data[data.index(b'"round_credited":') + 17] ^= 1
        path.write_bytes(bytes(data))
        proc = koiitasks("ledger", "verify", env=cli_env, cwd=tmp_path)
        assert proc.returncode == 1
        assert "0000000000.json" in proc.stderr
        assert "Traceback" not in proc.stderr
        # With --json a script reading stdout gets the failure as JSON too.
        scripted = koiitasks("ledger", "verify", "--json", env=cli_env, cwd=tmp_path)
        assert scripted.returncode == 1
        (failed,) = json_lines(scripted.stdout)
        assert failed["ok"] is False
        assert failed["exit_code"] == 1
        assert "0000000000.json" in failed["error"]


def children(pid: int) -> list[int]:
    """The processes ``pid`` started (Linux: each of its threads lists its own)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def is_zombie(pid: int) -> bool:
    """Whether ``pid`` has exited and only waits to be reaped (its parent is gone or slow)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def gone_within(pid: int, *, seconds: float) -> bool:
    """Whether process ``pid`` has exited (or only waits to be reaped) within ``seconds``."""
    deadline = time.monotonic() + seconds
    while not is_zombie(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True
