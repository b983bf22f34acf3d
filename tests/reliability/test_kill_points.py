"""Specifications of crash safety: a real `koiitasks run` killed with SIGKILL at any write.

Each kill point stops a real process (forked from a warm parent, see koiitasks.testing.crash)
just before or just after one record is linked into the file store: while the network is
registered, during execute, after some submissions, during audits, between the distribution
list and the ledger write, and inside the ledger write itself. The round is then run again to
completion, as a user would, and the store must hold exactly the bytes of an uninterrupted run
with the same seed: nothing acknowledged lost or changed, no round paid twice.
"""

from __future__ import annotations

import fnmatch
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from koiitasks.replay import verify_task
from koiitasks.storage import FileStore, Layout
from koiitasks.testing import figures, write_task
from koiitasks.testing.crash import CrashLab, KillPoint, When
from koiitasks.testing.tamper import snapshot
from tests.conftest import ECHO_TASK

TASK_ID = "test-task"
# Seven nodes, one lazy (slashed), one late (refused), two bad auditors: with seed 32 round 0's
# first distribution list is voted down and a second builder's list is paid, so the retry path
# has kill points too. Every child runs hooks in its main thread (--workers 1), so the order of
# writes, and so which write the nth match is, is the same in every run.
NETWORK = (
    "--nodes", "7", "--seed", "32", "--workers", "1",
    "--adversary", "lazy=1", "--adversary", "late=1", "--adversary", "bad-auditor=2",
)  # fmt: skip
ROUNDS = (0, 1)
WHEN: tuple[When, ...] = ("before", "after")


def _round_points(r: int) -> list[tuple[str, str, str, int]]:
    """(phase, name, pattern, nth) for the writes of round ``r``."""
    part = f"*/rounds/{r:010d}/"
    points = [
        ("execute", "execute-request", part + "requests/execute.json", 1),
        ("execute", "first-submission", part + "submissions/*", 1),
        ("execute", "third-submission", part + "submissions/*", 3),
        ("execute", "last-submission", part + "submissions/*", 6),
        ("execute", "refusal", part + "refusals/*", 1),
        ("audit", "audit-request", part + "requests/audit.json", 1),
        ("audit", "first-audit", part + "audits/*", 1),
        ("audit", "third-audit", part + "audits/*", 3),
        ("audit", "last-audit", part + "audits/*", 6),
        ("distribution", "list-request", part + "requests/distribution.json", 1),
        ("distribution", "list", part + "distributions/00.json", 1),
        ("list-audit", "list-audit-request", part + "requests/distribution-audit.json", 1),
        ("list-audit", "first-list-vote", part + "distribution-audits/00/*", 1),
        ("list-audit", "last-list-vote", part + "distribution-audits/00/*", 3),
        ("ledger", "ledger-entry", f"*/ledger/{r:010d}.json", 1),
    ]
    if r == 0:  # the retried list and its audit
        points += [
            ("distribution", "second-list", part + "distributions/01.json", 1),
            ("list-audit", "vote-on-second-list", part + "distribution-audits/01/*", 1),
        ]
    return points


def _all_points() -> list[tuple[str, str, KillPoint]]:
    network = [
        ("network", "first-registration", "*/nodes/*", 1),
        ("network", "last-registration", "*/nodes/*", 7),
        ("network", "task-record", "*/task.json", 1),
    ]
    table = [("", *p) for p in network] + [(f"r{r}-", *p) for r in ROUNDS for p in _round_points(r)]
    return [
        (phase, f"{prefix}{name}-{when}", KillPoint(pattern, nth, when))
        for prefix, phase, name, pattern, nth in table
        for when in WHEN
    ]


KILL_POINTS = _all_points()


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A folder for the stores, on tmpfs when there is one.

    SIGKILL ends a process, not the machine: what it wrote is in the page cache and survives,
    so flushing to a disk changes nothing these specifications prove, and on tmpfs the file
    store's fsyncs cost nothing.
    """
    shm = Path("/dev/shm")  # noqa: S108 - a private folder is made inside it
    if shm.is_dir() and os.access(shm, os.W_OK):
        with tempfile.TemporaryDirectory(dir=shm, prefix="koiitasks-kill-") as folder:
            yield Path(folder)
    else:
        yield tmp_path_factory.mktemp("kill")


@pytest.fixture(scope="module")
def task_dir(scratch: Path) -> Path:
    return write_task(scratch / "echo", ECHO_TASK)


@pytest.fixture(scope="module")
def lab() -> Iterator[CrashLab]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KOII_")}
    with CrashLab(env=env) as crash_lab:
        yield crash_lab


def run_args(task_dir: Path, store: Path, *rounds: str) -> list[str]:
    return ["run", str(task_dir), "--plain", "--store", str(store), *NETWORK, *rounds]


@pytest.fixture(scope="module")
def reference(lab: CrashLab, scratch: Path, task_dir: Path) -> tuple[dict[str, bytes], list[str]]:
    """The uninterrupted run: every record it stores, and the keys it linked, in order."""
    store, journal = scratch / "reference", scratch / "reference.journal"
    ending = lab.run(run_args(task_dir, store, "--rounds", "2"), cwd=scratch, journal=journal)
    assert ending.exit_code == 0, ending.output
    linked = [line.split(f"{store}/", 1)[1] for line in journal.read_text().split()]
    return snapshot(FileStore(store)), linked


def temporary_files(store: Path) -> list[Path]:
    return sorted(store.rglob(".tmp-*"))


class TestKillPoints:
    """Killed at any write, a round run again ends with the uninterrupted run's bytes."""

    @pytest.mark.parametrize("point", [pytest.param(p, id=name) for _, name, p in KILL_POINTS])
    def test_a_run_killed_here_resumes_to_the_uninterrupted_bytes(
        self,
        lab: CrashLab,
        scratch: Path,
        task_dir: Path,
        reference: tuple[dict[str, bytes], list[str]],
        point: KillPoint,
        request: pytest.FixtureRequest,
    ) -> None:
        """SIGKILL at this write, then `koiitasks run --round N` for each round: the store
        holds exactly the reference bytes, keeps every record acknowledged before the kill,
        and its ledger verifies and replays."""
        store = scratch / request.node.callspec.id
        killed = lab.run(run_args(task_dir, store, "--rounds", "2"), cwd=scratch, kill=point)
        assert killed.killed, f"the kill point was never reached:\n{killed.output}"
        acknowledged = snapshot(FileStore(store))
        # The kill lands while the record's temporary file still exists (before the link, or
        # after it and before the file's old name is removed); listings must ignore it.
        assert temporary_files(store)

        for number in ROUNDS:
            resumed = lab.run(run_args(task_dir, store, "--round", str(number)), cwd=scratch)
            assert resumed.exit_code == 0, resumed.output

        records, _ = reference
        final = snapshot(FileStore(store))
        assert final == records
        assert all(final[key] == data for key, data in acknowledged.items())
        ledger = FileStore(store).list(Layout(TASK_ID).ledger)
        assert [Layout.round_of_ledger_key(k) for k in ledger] == list(ROUNDS)
        verified = verify_task(FileStore(store), TASK_ID)
        assert verified.rounds_replayed == len(ROUNDS)
        figures.record("kill_points")
        figures.record("records_kept_after_kills", len(acknowledged))
        figures.record("interrupted_writes", int(point.when == "before"))


class TestKillPointTable:
    """The table of kill points covers every kind of write a round makes."""

    def test_every_kind_of_record_written_has_a_kill_point_on_both_sides(
        self, reference: tuple[dict[str, bytes], list[str]]
    ) -> None:
        """Each kind of record the reference run links is matched by a kill point before and
        after its link, and every kill point matches a write of the reference run."""
        _, linked = reference

        def kind(key: str) -> str:
            key = re.sub(r"[1-9A-HJ-NP-Za-km-z]{32,44}", "NODE", key)
            return re.sub(r"rounds/\d{10}/", "rounds/R/", re.sub(r"ledger/\d{10}", "ledger/R", key))

        points = [p for _, _, p in KILL_POINTS]
        for key in linked:
            sides = {p.when for p in points if fnmatch.fnmatchcase(key, p.pattern)}
            assert sides == set(WHEN), f"no kill point on both sides of {kind(key)}"
        for point in points:
            matching = [k for k in linked if fnmatch.fnmatchcase(k, point.pattern)]
            assert len(matching) >= point.nth, f"{point} matches no write of the reference run"
        figures.record("kill_phases", len({phase for phase, _, _ in KILL_POINTS}))

    def test_a_kill_between_write_and_rename_leaves_only_an_unnamed_temporary_file(
        self, lab: CrashLab, scratch: Path, task_dir: Path
    ) -> None:
        """Killed after the ledger entry's bytes are written but before they are named, the
        store holds the whole entry in a temporary file that reads and listings ignore."""
        store = scratch / "torn-ledger"
        point = KillPoint("*/ledger/0000000000.json", when="before")
        assert lab.run(run_args(task_dir, store, "--round", "0"), cwd=scratch, kill=point).killed
        files = FileStore(store)
        assert files.read_or_none(Layout(TASK_ID).ledger_entry(0)) is None
        assert files.list(Layout(TASK_ID).ledger) == []
        (leftover,) = temporary_files(store / "tasks" / TASK_ID / "ledger")
        assert leftover.read_bytes().startswith(b'{"body":{"attempts":')
        assert not any(".tmp-" in key for key in files.list())
