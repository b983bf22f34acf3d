"""Specifications of replay: a settled round recomputed from its signed records alone."""

from __future__ import annotations

import contextlib
import json
import os
import pty
import re
import select
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from koiitasks.clock import SimulatedClock
from koiitasks.deployment import open_deployed_engine, prepare_deployed_task
from koiitasks.errors import LedgerError, RecordError, RoundError, StorageError
from koiitasks.identity import Keypair
from koiitasks.ledger import LedgerState, verify_ledger
from koiitasks.live import LiveEngine
from koiitasks.nodes.silent import SilentPool
from koiitasks.protocol import AuditReport, LedgerEntry, decode, sign
from koiitasks.replay import Replayer, compare_entries, verify_task
from koiitasks.round import RoundEngine
from koiitasks.sandbox import Sandbox
from koiitasks.storage import FileStore, Layout, Store, open_store
from koiitasks.storage.readonly import ReadOnlyStore
from koiitasks.task import load_task
from koiitasks.testing import figures, sandbox, write_task
from koiitasks.testing.cli import invoke
from koiitasks.testing.tamper import copy_store, overwrite, snapshot
from tests.conftest import ECHO_TASK, HASH_PUZZLE

TASK = "hash-puzzle"
START_MS = 1_800_000_000_000  # when the deployed task of TestMissedRounds was deployed
MIX = {"lazy": 1, "offline": 1, "forger": 1, "late": 1, "bad-auditor": 1}

FIRST_TASK = (
    ECHO_TASK
    + """
@task.distribute
def distribute(ctx, approved, bounty):
    return {min(a.node_id for a in approved): bounty}
"""
)


@pytest.fixture(scope="module")
def settled() -> Sandbox:
    """Three settled rounds of every adversary kind on ten nodes."""
    box = sandbox(HASH_PUZZLE, nodes=10, seed=21, adversaries=MIX)
    for n in range(3):
        box.run_round(n)
    return box


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A file store with two rounds settled by `koiitasks run`."""
    folder = tmp_path_factory.mktemp("replay") / "store"
    ran = invoke(
        "run", str(HASH_PUZZLE), "--plain", "--nodes", "6", "--rounds", "2", "--seed", "3",
        "--adversary", "lazy=1", "--store", str(folder), "--workers", "1",
    )  # fmt: skip
    assert ran.exit_code == 0, ran.stderr
    return folder


#: Environment variables that make rich draw on a pipe or not draw on a terminal.
RICH_OVERRIDES = ("FORCE_COLOR", "NO_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "COLUMNS")


def orchestrator_of(box: Sandbox) -> Keypair:
    key = box.network.orchestrator_key
    assert key is not None
    return key


def resign_head(box: Sandbox, store: Store, **changes: object) -> None:
    """Replace the head ledger entry by one the orchestrator signed with ``changes``."""
    key = Layout(TASK).ledger_entry(2)
    entry = decode(store.read(key), LedgerEntry, where=key)
    changed = sign(entry.body.model_copy(update=changes), orchestrator_of(box))
    overwrite(store, key, changed.encode())


class TestReplayMatches:
    """A round settled by koiitasks replays to exactly its ledger entry."""

    def test_every_settled_round_matches_its_entry(self, settled: Sandbox) -> None:
        """Verdicts, slashes, attempts and credits recomputed from the records equal the ledger."""
        results = list(Replayer(settled.store, TASK).replay_all())
        assert [r.round for r in results] == [0, 1, 2]
        for result in results:
            assert result.matches, result.differences
            assert len(result.approved) == 6  # the five honest nodes and the bad auditor
            assert len(result.rejected) == 1  # the lazy one
            assert len(result.refused) == 2  # the forger and the late one
            assert len(result.missing) == 1  # the offline one
            assert result.slashes
            assert result.records_checked > 20
        figures.record("rounds_replayed", len(results))

    def test_verifying_a_task_reports_its_progress_round_by_round(self, settled: Sandbox) -> None:
        """``verify_task`` tells its progress as rounds replayed of rounds settled: none before
        the first, then one more after each."""
        calls: list[tuple[int, int]] = []
        verified = verify_task(settled.store, TASK, progress=lambda *done: calls.append(done))
        assert verified.rounds_replayed == 3
        assert calls == [(0, 3), (1, 3), (2, 3), (3, 3)]

    def test_ledger_verify_on_a_terminal_shows_rounds_replayed_then_clears_them(
        self, store_dir: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """On a terminal `ledger verify` draws rounds replayed of settled on stderr while it
        works, and leaves only its verdict; piped, stderr stays empty."""
        command = [sys.executable, "-m", "koiitasks", "ledger", "verify", "--store", str(store_dir)]
        env = {k: v for k, v in os.environ.items() if k not in RICH_OVERRIDES} | {"TERM": "xterm"}
        main, terminal = pty.openpty()
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=terminal, env=env)
        os.close(terminal)
        drawn, deadline = b"", time.monotonic() + 120
        try:
            with contextlib.suppress(OSError):  # EIO once the process has closed the terminal
                while time.monotonic() < deadline:
                    if not select.select([main], [], [], 1)[0]:
                        continue
                    chunk = os.read(main, 4096)
                    if not chunk:
                        break
                    drawn += chunk
            stdout, _ = proc.communicate(timeout=60)
        finally:
            proc.kill()
            proc.wait(timeout=10)
            os.close(main)
        assert proc.returncode == 0
        text = re.sub(rb"\x1b\[[0-9;?]*[A-Za-z]", b"", drawn)
        assert b"verifying hash-puzzle" in text
        assert b"2/2 rounds" in text
        assert b"\x1b[2K" in drawn[drawn.rindex(b"rounds") :]  # the bar's line erased at the end
        assert stdout.decode().startswith("ok: 2 ledger entries")
        for name in RICH_OVERRIDES:
            monkeypatch.delenv(name, raising=False)
        piped = invoke("ledger", "verify", "--store", str(store_dir))
        assert (piped.exit_code, piped.stderr) == (0, "")

    def test_replay_writes_nothing(self, settled: Sandbox) -> None:
        """Replaying changes no byte of the store: it reads through a read-only view."""
        before = snapshot(settled.store)
        list(Replayer(settled.store, TASK).replay_all())
        assert snapshot(settled.store) == before

    def test_the_task_folder_lets_replay_recompute_the_credits(self, tmp_path: Path) -> None:
        """With the task folder, the paid list is recomputed with the task's distribute hook."""
        task_dir = write_task(tmp_path / "first", FIRST_TASK)
        box = sandbox(task_dir, nodes=5, seed=2)
        box.run_round(0)
        (result,) = Replayer(box.store, "test-task", task=load_task(task_dir)).replay_all()
        assert result.matches
        assert list(result.credits.values()) == [1_000]

    def test_a_round_that_paid_nobody_replays_too(self, tmp_path: Path) -> None:
        """A round whose every list was rejected replays to its empty entry."""
        task_dir = write_task(
            tmp_path / "greedy",
            FIRST_TASK.replace("{min(a.node_id for a in approved): bounty}", "{'x': 1}"),
        )
        box = sandbox(task_dir, nodes=5, seed=2)
        assert not box.run_round(0).distribution_accepted
        (result,) = Replayer(box.store, "test-task", task=load_task(task_dir)).replay_all()
        assert result.matches
        assert not result.distribution_accepted
        assert result.attempts == 3


class TestReplayFindsDifferences:
    """What the chain check cannot see, the replay does."""

    def test_credit_moved_between_nodes_in_a_validly_signed_entry(self, settled: Sandbox) -> None:
        """An entry the orchestrator signed that moves credit from one node to another (and keeps
        conservation) is reported by replay, naming both nodes."""
        store = copy_store(settled.store)
        key = Layout(TASK).ledger_entry(2)
        credits = dict(decode(store.read(key), LedgerEntry, where=key).body.credits)
        first, second = sorted(credits)[:2]
        credits[first], credits[second] = credits[first] + 5, credits[second] - 5
        resign_head(settled, store, credits=credits)
        (result,) = Replayer(store, TASK).replay_all([2])
        assert not result.matches
        assert f"credits of {first}" in result.differences[0]
        assert any(second in d for d in result.differences)

    def test_a_slash_left_out_of_a_validly_signed_entry(self, settled: Sandbox) -> None:
        """An entry that spares a node the records say must be slashed (which the chain and
        conservation checks accept) is reported."""
        store = copy_store(settled.store)
        key = Layout(TASK).ledger_entry(2)
        head = decode(store.read(key), LedgerEntry, where=key).body
        spared = head.total_slashed - sum(head.slashes.values())
        resign_head(settled, store, slashes={}, total_slashed=spared)
        verify_ledger(store, TASK)
        (result,) = Replayer(store, TASK).replay_all([2])
        assert any(d.startswith("slashes of ") for d in result.differences)
        assert any(d.startswith("total_slashed:") for d in result.differences)
        with pytest.raises(LedgerError, match="round 2 of task 'hash-puzzle' does not match"):
            verify_task(store, TASK)

    def test_a_removed_vote_changes_the_inputs_the_list_was_built_from(
        self, settled: Sandbox
    ) -> None:
        """Removing an auditor's report changes the vote counts the paid list was built from,
        so the list no longer matches and the round no longer replays to its entry."""
        store = copy_store(settled.store)
        layout = Layout(TASK)
        report_key = store.list(layout.audits(1))[0]
        overwrite(store, report_key, None)
        (result,) = Replayer(store, TASK).replay_all([1])
        assert not result.matches
        assert any("distribution" in d for d in result.differences)

    def test_an_audit_report_under_another_auditors_key_is_refused(self, settled: Sandbox) -> None:
        """A validly signed report copied to another auditor's key names the record."""
        store = copy_store(settled.store)
        first, second = store.list(Layout(TASK).audits(1))[:2]
        overwrite(store, second, store.read(first))
        with pytest.raises(RecordError, match=r"audits/.*is signed by"):
            Replayer(store, TASK).replay(1)

    def test_a_record_from_another_round_is_refused(self, settled: Sandbox) -> None:
        """A record copied from round 0 into round 1 names the record and both rounds."""
        store = copy_store(settled.store)
        layout = Layout(TASK)
        key0 = store.list(layout.submissions(0))[0]
        overwrite(store, key0.replace(layout.round(0), layout.round(1)), store.read(key0))
        with pytest.raises(RecordError, match="round 0, not 'hash-puzzle' round 1"):
            Replayer(store, TASK).replay(1)

    def test_an_unknown_record_kind_must_still_be_signed(self, settled: Sandbox) -> None:
        """A record of a kind this version does not know passes only when a registered party
        signed it; a stranger's is refused."""
        store = copy_store(settled.store)
        key = Layout(TASK).round(1) + "notes/extra.json"
        report = decode(store.read(store.list(Layout(TASK).audits(1))[0]), AuditReport, where="r")
        overwrite(store, key, report.encode())
        assert Replayer(store, TASK).replay(1).matches
        stranger = sign(report.body, Keypair.from_seed(b"stranger"))
        overwrite(store, key, stranger.encode())
        with pytest.raises(RecordError, match="neither the orchestrator nor a registered node"):
            Replayer(store, TASK).replay(1)


class TestReplayRefuses:
    """Replay says clearly what it cannot do."""

    def test_a_round_that_is_not_settled(self, settled: Sandbox) -> None:
        """Replaying an unsettled round is a RoundError naming the last settled round."""
        with pytest.raises(RoundError, match=r"round 7 .* is not settled .* the last is round 2"):
            Replayer(settled.store, TASK).replay(7)

    def test_the_folder_of_another_task(self, settled: Sandbox, tmp_path: Path) -> None:
        """A task folder of another task is refused rather than used to judge this one."""
        other = load_task(write_task(tmp_path / "other", FIRST_TASK))
        with pytest.raises(RoundError, match="holds task 'test-task', not 'hash-puzzle'"):
            Replayer(settled.store, TASK, task=other)

    def test_a_read_only_engine_refuses_to_sign(self, settled: Sandbox) -> None:
        """An engine holding only the orchestrator's public key cannot open a new round."""
        engine = RoundEngine(
            config=settled.loaded.config,
            store=ReadOnlyStore(settled.store),
            network=settled.network,
            orchestrator=orchestrator_of(settled).public_id,
            pool=SilentPool(),
            slot_clock=settled.engine.slot_clock,
        )
        engine.use_ledger(LedgerState())
        with pytest.raises(RoundError, match="holds only the orchestrator's public key"):
            engine.open_round(9)

    def test_a_settled_round_whose_request_was_deleted_names_the_record(
        self, tmp_path: Path
    ) -> None:
        """Verifying a store where a settled round's distribution request is gone names that
        record, not 'the engine cannot sign'."""
        box = sandbox(HASH_PUZZLE, nodes=4, seed=2, store=FileStore(tmp_path))
        box.run_round(0)
        key = f"{Layout(TASK).round(0)}requests/distribution.json"
        (tmp_path / key).unlink()
        with pytest.raises(LedgerError, match=f"record {key} is missing from") as caught:
            verify_task(FileStore(tmp_path), TASK)
        assert "cannot sign" not in caught.value.message

    def test_a_read_only_store_refuses_writes(self, settled: Sandbox) -> None:
        """The read-only view names the key it was asked to create."""
        with pytest.raises(StorageError, match="does not write, but was about to create 'x'"):
            ReadOnlyStore(settled.store).create("x", b"")

    def test_entries_that_are_equal_have_no_differences(self, settled: Sandbox) -> None:
        """compare_entries is empty for an entry and itself."""
        key = Layout(TASK).ledger_entry(0)
        body = decode(settled.store.read(key), LedgerEntry, where=key).body
        assert compare_entries(body, body) == []


class TestReplayCommand:
    """`koiitasks rounds replay`."""

    def test_prints_a_line_per_round_and_exits_0(self, store_dir: Path) -> None:
        """Each settled round gets one line ending in `matches ledger entry`."""
        result = invoke("rounds", "replay", "--store", str(store_dir), "--task", str(HASH_PUZZLE))
        assert result.exit_code == 0, result.stderr
        lines = result.stdout.splitlines()
        assert [line.split(":")[0] for line in lines] == [f"round {n} of {TASK}" for n in (0, 1)]
        assert all("matches ledger entry" in line for line in lines)

    def test_json_has_one_object_per_round(self, store_dir: Path) -> None:
        """--json prints the recomputed outcome of each round for scripts."""
        result = invoke("rounds", "replay", "--store", str(store_dir), "--round", "1", "--json")
        (doc,) = [json.loads(line) for line in result.stdout.splitlines()]
        assert doc["round"] == 1
        assert doc["matches"] is True
        assert len(doc["approved"]) == 5
        assert len(doc["slashes"]) == 1

    def test_a_mismatch_exits_1_and_lists_each_difference(
        self, store_dir: Path, tmp_path: Path
    ) -> None:
        """After a validly signed entry moves credit, replay exits 1 and names both nodes."""
        copy = tmp_path / "store"
        for path in store_dir.rglob("*.json"):
            target = copy / path.relative_to(store_dir)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(path.read_bytes())
        box = sandbox(HASH_PUZZLE, nodes=6, seed=3, adversaries={"lazy": 1})
        key = Layout(TASK).ledger_entry(1)
        entry = decode((copy / key).read_bytes(), LedgerEntry, where=key)
        credits = dict(entry.body.credits)
        a, b = sorted(credits)[:2]
        credits[a], credits[b] = credits[a] + 1, credits[b] - 1
        moved = sign(entry.body.model_copy(update={"credits": credits}), orchestrator_of(box))
        (copy / key).write_bytes(moved.encode())
        result = invoke("rounds", "replay", "--store", str(copy))
        assert result.exit_code == 1
        assert "round 1 of hash-puzzle" in result.stdout
        assert "DOES NOT MATCH" in result.stdout
        assert f"  - credits of {a}: the ledger says" in result.stdout
        assert "Traceback" not in result.output
        verified = invoke("ledger", "verify", "--store", str(copy))
        assert verified.exit_code == 1
        assert "ledger/0000000001.json" in verified.stderr

    def test_verify_with_the_task_folder_checks_the_distribute_hook_as_replay_does(
        self, tmp_path: Path
    ) -> None:
        """`ledger verify --task FOLDER` recomputes each paid list with the folder's distribute
        hook, as `rounds replay --task FOLDER` does: a hook that would pay otherwise fails both
        (verify passed it)."""
        task_dir = write_task(tmp_path / "first", FIRST_TASK)
        store = tmp_path / "store"
        ran = invoke("run", str(task_dir), "--plain", "--nodes", "5", "--seed", "2",
                     "--store", str(store))  # fmt: skip
        assert ran.exit_code == 0, ran.stderr
        assert (
            invoke("ledger", "verify", "--store", str(store), "--task", str(task_dir)).exit_code
            == 0
        )
        other = write_task(
            tmp_path / "other",
            FIRST_TASK.replace(
                "min(a.node_id for a in approved)", "max(a.node_id for a in approved)"
            ),
        )
        replayed = invoke("rounds", "replay", "--store", str(store), "--task", str(other))
        assert replayed.exit_code == 1
        verified = invoke("ledger", "verify", "--store", str(store), "--task", str(other))
        assert verified.exit_code == 1, verified.stdout
        assert "round 0 of task 'test-task' does not match its records" in verified.stderr
        assert "credits" in verified.stderr

    def test_an_unsettled_round_exits_2(self, store_dir: Path) -> None:
        """Asking for a round that is not settled is an input error."""
        result = invoke("rounds", "replay", "--store", str(store_dir), "--round", "9")
        assert result.exit_code == 2
        assert "round 9 of task 'hash-puzzle' is not settled" in result.stderr


class TestMissedRounds:
    """A deployed task records a round it gave up on as missed: a signed reason and an empty
    entry. Replay and `ledger verify` hold such a round to exactly that."""

    @pytest.fixture
    def deployed(self, tmp_path: Path) -> tuple[str, Callable[[int], LiveEngine]]:
        """Round 0 paid, round 1 never run and recorded missed when round 2 needed it; and a
        way to start the engine of another round's process."""
        task_dir = write_task(tmp_path / "echo", FIRST_TASK)
        url = f"memory://replay-deployed-{tmp_path.name}"
        prepare_deployed_task(task_dir, url, nodes=5, seed=5, clock=SimulatedClock(START_MS))

        def process_at_round(number: int) -> LiveEngine:
            clock = SimulatedClock()
            engine = open_deployed_engine(task_dir, url, workers=1, clock=clock)
            clock.set_ms(engine.slot_clock.ms_of_slot(engine.schedule.round_start(number)))
            return engine

        process_at_round(0).run(0)
        later = process_at_round(2)
        later.resolve_before(2)
        assert later.is_missed(1)
        return url, process_at_round

    def test_a_missed_round_replays_to_its_empty_entry(
        self, deployed: tuple[str, Callable[[int], LiveEngine]]
    ) -> None:
        """The missed round matches its empty entry and says why it was missed; the rounds
        around it replay as usual, and `ledger verify` passes."""
        url, process_at_round = deployed
        engine = process_at_round(2)
        engine.run(2)
        store = open_store(url)
        results = list(Replayer(store, engine.task_id).replay_all())
        assert [(r.round, r.matches) for r in results] == [(0, True), (1, True), (2, True)]
        assert results[1].missed is not None
        assert "had not settled by slot" in results[1].missed
        assert results[0].missed is None
        assert verify_task(store, engine.task_id).rounds_replayed == 3

    def test_a_missed_round_whose_entry_pays_someone_is_reported(
        self, deployed: tuple[str, Callable[[int], LiveEngine]]
    ) -> None:
        """An entry for a missed round that pays, even signed by the orchestrator with the
        chain kept, is not the empty entry the missed record calls for."""
        url, process_at_round = deployed
        engine = process_at_round(2)
        store = copy_store(open_store(url))
        key = Layout(engine.task_id).ledger_entry(1)
        entry = decode(store.read(key), LedgerEntry, where=key)
        paying = sign(entry.body.model_copy(update={"bounty": 1_000}), engine.orchestrator)
        overwrite(store, key, paying.encode())
        replay = Replayer(store, engine.task_id).replay(1)
        assert "bounty: the ledger says 1000, the records say 0" in replay.differences
