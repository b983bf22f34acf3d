"""Specifications of a task's timeline (Koii's getSlot and getRound, and the open windows),
and of the `koiitasks slot` and `koiitasks round` commands."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from koiitasks.clock import Schedule, SimulatedClock
from koiitasks.deployment import prepare_deployed_task
from koiitasks.errors import ConfigError
from koiitasks.identity import Keypair
from koiitasks.protocol import TaskRecord, sign
from koiitasks.storage import Layout, Store, open_store
from koiitasks.testing import memory_store, sandbox
from koiitasks.timeline import Timeline, locate_clock, read_timeline, windows_of
from tests.conftest import HASH_PUZZLE, koiitasks

# The hash puzzle's: rounds of 10 slots, 4 to submit, 4 to audit.
SCHEDULE = Schedule(starting_slot=0, round_time=10, submission_window=4, audit_window=4)


def timeline_at(slot: int, schedule: Schedule = SCHEDULE) -> Timeline:
    return read_timeline(schedule, slot, task_id="hash-puzzle", slot_ms=400)


def open_windows(timeline: Timeline) -> list[tuple[int, str, int]]:
    return [(w.round, w.name, w.slots_remaining) for w in timeline.open]


def deployed(store: Store, *, genesis_ms: int, starting_slot: int) -> Store:
    """A store holding a deployed (not sandbox) task record for the hash puzzle."""
    orchestrator = Keypair.from_seed(b"deployed-orchestrator")
    record = TaskRecord(
        task_id="hash-puzzle",
        task_name="Hash Puzzle",
        config={},
        orchestrator=orchestrator.public_id,
        genesis_ms=genesis_ms,
        starting_slot=starting_slot,
    )
    store.create(Layout("hash-puzzle").task, sign(record, orchestrator).encode())
    return store


class TestWindows:
    """The five windows of a logical round follow each other without gaps or overlap."""

    def test_windows_of_round_three(self) -> None:
        """Work is all of round 3; submission and audit open round 4; distribution round 5."""
        windows = {n: (w.start, w.end) for n, w in windows_of(SCHEDULE, 3).items()}
        assert windows == {
            "work": (30, 40),
            "submission": (40, 44),
            "audit": (44, 48),
            "distribution": (50, 54),
            "distribution-audit": (54, 58),
        }


class TestReadTimeline:
    """What is open at a slot: three logical rounds live at once."""

    @pytest.mark.parametrize(
        ("slot", "round_number", "expected_open", "next_window"),
        [
            pytest.param(0, 0, [(0, "work", 10)], (0, "submission", 10), id="first-slot"),
            pytest.param(
                45,
                4,
                [(4, "work", 5), (3, "audit", 3), (2, "distribution-audit", 3)],
                (3, "distribution", 5),
                id="slot-45-three-rounds-live",
            ),
            pytest.param(
                41,
                4,
                [(4, "work", 9), (3, "submission", 3), (2, "distribution", 3)],
                (2, "distribution-audit", 3),
                id="submission-window",
            ),
            pytest.param(
                49,
                4,
                [(4, "work", 1)],
                (3, "distribution", 1),
                id="gap-after-the-audit-window",
            ),
        ],
    )
    def test_round_open_windows_and_next(
        self,
        slot: int,
        round_number: int,
        expected_open: list[tuple[int, str, int]],
        next_window: tuple[int, str, int],
    ) -> None:
        """The round is floor(slot / round_time); each open window says how long it has left;
        the next window says how soon it opens."""
        timeline = timeline_at(slot)
        assert timeline.round == round_number
        assert open_windows(timeline) == expected_open
        assert timeline.next is not None
        assert (timeline.next.round, timeline.next.name, timeline.next.slots_remaining) == (
            next_window
        )
        # Windows opening at the same slot come with it, older rounds first.
        together = [timeline.next, *timeline.next_also]
        assert {w.start for w in together} == {timeline.next.start}
        assert [w.round for w in together] == sorted(w.round for w in together)
        assert timeline.next_round_in == (round_number + 1) * 10 - slot

    def test_before_the_starting_slot_there_is_no_round(self) -> None:
        """Before starting_slot the round is -1, nothing is open, round 0's work is next."""
        late_start = Schedule(starting_slot=100, round_time=10, submission_window=4, audit_window=4)
        timeline = timeline_at(60, late_start)
        assert timeline.round == -1
        assert timeline.open == []
        assert timeline.next is not None
        assert (timeline.next.round, timeline.next.name, timeline.next.start) == (0, "work", 100)
        assert timeline.next_also == []
        assert "next: round 0 work opens in 40 slots (slot 100)" in timeline.lines()
        assert timeline.next_round_in == 40

    def test_lines_say_it_in_words(self) -> None:
        """The readable form names the slot, the round and every open window."""
        text = "\n".join(timeline_at(45).lines())
        assert "hash-puzzle at slot 45" in text
        assert "round 4 (slots 40...49); next round in 5 slots (2 s)" in text
        assert "distribution-audit" in text
        # Three windows open at slot 50: each is named, not only the oldest round's.
        assert (
            "next: round 3 distribution, round 4 submission and round 5 work open in 5 slots "
            "(slot 50)" in text
        )


class TestLocateClock:
    """Which slot is "now" for a task: wall clock from its genesis, or the sandbox's clock."""

    def test_without_a_deployed_task_the_wall_clock_counts_from_the_epoch(self) -> None:
        """An empty store: slots since the Unix epoch, and the note says so."""
        wall = SimulatedClock(1_000_000)
        position = locate_clock(
            memory_store(), "hash-puzzle", slot_ms=400, round_time=10, wall=wall
        )
        assert (position.clock, position.slot, position.genesis_ms) == ("wall", 2500, 0)
        assert "Unix epoch" in position.note

    def test_a_deployed_task_counts_from_its_own_genesis(self) -> None:
        """A stored task record without a sandbox network gives genesis and starting slot."""
        store = deployed(memory_store(), genesis_ms=600_000, starting_slot=7)
        wall = SimulatedClock(600_000 + 40 * 400 + 399)
        position = locate_clock(store, "hash-puzzle", slot_ms=400, round_time=10, wall=wall)
        assert (position.slot, position.genesis_ms, position.starting_slot) == (40, 600_000, 7)
        assert "as deployed" in position.note

    def test_simulated_nodes_deployed_count_from_their_genesis_not_as_a_sandbox(self) -> None:
        """`deploy --nodes` keeps a sandbox network on the wall clock: slots count from its
        genesis (not from the epoch), and the sandbox clock, which `run` would refuse, is
        refused with the reason."""
        url = f"memory://timeline-deployed-{time.time_ns()}"
        genesis = 1_800_000_000_000
        network = prepare_deployed_task(
            HASH_PUZZLE, url, nodes=4, clock=SimulatedClock(genesis - 20_000)
        )
        assert network.task.network is not None
        assert network.task.genesis_ms == genesis
        store = open_store(url)
        wall = SimulatedClock(genesis + 12 * 400)
        position = locate_clock(store, "hash-puzzle", slot_ms=400, round_time=10, wall=wall)
        assert (position.clock, position.slot, position.genesis_ms) == ("wall", 12, genesis)
        with pytest.raises(ConfigError, match="runs on the wall clock") as refused:
            locate_clock(store, "hash-puzzle", slot_ms=400, round_time=10, sandbox=True)
        assert "leave out --sandbox" in (refused.value.hint or "")

    def test_the_sandbox_clock_stands_where_its_next_round_starts(self) -> None:
        """After two settled rounds the sandbox's next run starts round 2 at slot 20."""
        box = sandbox(HASH_PUZZLE, nodes=4)
        for n in range(2):
            box.run_round(n)
        box.close()
        position = locate_clock(box.store, "hash-puzzle", slot_ms=400, round_time=10, sandbox=True)
        assert (position.clock, position.slot) == ("sandbox", 20)
        assert "starts round 2" in position.note

    def test_a_fresh_sandbox_starts_at_slot_zero(self) -> None:
        """No sandbox run yet: slot 0, and the note says why."""
        position = locate_clock(
            memory_store(), "hash-puzzle", slot_ms=400, round_time=10, sandbox=True
        )
        assert (position.clock, position.slot) == ("sandbox", 0)
        assert "fresh sandbox" in position.note


class TestClockCommands:
    """`koiitasks slot` and `koiitasks round TASK_DIR`."""

    def test_round_at_a_given_slot_as_json(self, cli_env: dict[str, str], tmp_path: Path) -> None:
        """--slot 45 --json prints the timeline's fields for scripts."""
        proc = koiitasks(
            "round", str(HASH_PUZZLE), "--slot", "45", "--json", env=cli_env, cwd=tmp_path,
            check=True,
        )  # fmt: skip
        doc = json.loads(proc.stdout)
        assert (doc["slot"], doc["round"], doc["clock"], doc["next_round_in"]) == (
            45,
            4,
            "given",
            5,
        )
        assert [(w["round"], w["name"]) for w in doc["open"]] == [
            (4, "work"),
            (3, "audit"),
            (2, "distribution-audit"),
        ]

    def test_round_on_the_sandbox_clock_after_a_run(
        self, cli_env: dict[str, str], tmp_path: Path
    ) -> None:
        """After `run --rounds 2`, `round --sandbox` is at round 2's first slot."""
        koiitasks(
            "run", str(HASH_PUZZLE), "--plain", "--nodes", "3", "--rounds", "2",
            env=cli_env, cwd=tmp_path, check=True,
        )  # fmt: skip
        proc = koiitasks("round", str(HASH_PUZZLE), "--sandbox", env=cli_env, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.startswith("hash-puzzle at slot 20 (sandbox clock")
        assert "round 2 (slots 20...29)" in proc.stdout
        assert "round 1" in proc.stdout  # round 1 submits and is audited now

    def test_a_store_of_several_tasks_asks_which(
        self, cli_env: dict[str, str], tmp_path: Path
    ) -> None:
        """`slot --sandbox` on a store holding two tasks names them and asks for --task (it
        said no sandbox had run)."""
        other = tmp_path / "other"
        shutil.copytree(HASH_PUZZLE, other)
        config = other / "config-task.yml"
        config.write_text(config.read_text().replace("Hash Puzzle", "Other Puzzle"))
        for task in (HASH_PUZZLE, other):
            koiitasks("run", str(task), "--plain", "--nodes", "3", env=cli_env, cwd=tmp_path,
                      check=True)  # fmt: skip
        proc = koiitasks("slot", "--sandbox", env=cli_env, cwd=tmp_path)
        assert proc.returncode == 2, proc.stderr
        assert "holds 2 tasks (hash-puzzle, other-puzzle)" in proc.stderr
        assert "--task" in proc.stderr
        chosen = koiitasks("slot", "--sandbox", "--task", "other-puzzle", "--json",
                           env=cli_env, cwd=tmp_path, check=True)  # fmt: skip
        assert json.loads(chosen.stdout)["slot"] == 10

    def test_a_folder_with_another_config_than_its_store_is_refused(
        self, cli_env: dict[str, str], tmp_path: Path
    ) -> None:
        """`round FOLDER` refuses a folder whose config-task.yml is not the one its task was
        made with in the store, as `run` does: its windows would not be the task's."""
        changed = tmp_path / "hash-puzzle"
        shutil.copytree(HASH_PUZZLE, changed)
        koiitasks("run", str(changed), "--plain", "--nodes", "3", env=cli_env, cwd=tmp_path,
                  check=True)  # fmt: skip
        config = changed / "config-task.yml"
        config.write_text(config.read_text().replace("round_time: 10", "round_time: 20"))
        proc = koiitasks("round", str(changed), "--sandbox", env=cli_env, cwd=tmp_path)
        assert proc.returncode == 2, proc.stdout
        assert "created with another config-task.yml (changed: round_time)" in proc.stderr

    def test_slot_on_the_wall_clock(self, cli_env: dict[str, str], tmp_path: Path) -> None:
        """`koiitasks slot --json` on an empty store: slots of 400 ms since the Unix epoch."""
        before = time.time_ns() // 1_000_000 // 400
        doc = json.loads(koiitasks("slot", "--json", env=cli_env, cwd=tmp_path, check=True).stdout)
        after = time.time_ns() // 1_000_000 // 400
        assert before <= doc["slot"] <= after
        assert (doc["clock"], doc["slot_ms"], doc["genesis_ms"], doc["task_id"]) == (
            "wall",
            400,
            0,
            None,
        )

    def test_round_of_a_missing_folder_exits_2(
        self, cli_env: dict[str, str], tmp_path: Path
    ) -> None:
        """A task folder that does not exist is named in the error, never a traceback."""
        proc = koiitasks("round", "no-such-task", env=cli_env, cwd=tmp_path)
        assert proc.returncode == 2
        assert "no-such-task does not exist" in proc.stderr
        assert "Traceback" not in proc.stderr
