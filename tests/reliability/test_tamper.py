"""Specifications of tamper evidence: whatever changes in a store, `ledger verify` says where.

The ledger is signed and hash-chained; every round record is signed by the party its key
names; `ledger verify` checks the chain and conservation, then replays every settled round from
its records. Each test changes a copy of a settled store the way an attacker with write access
would, around the store's create-only interface, and expects a failure that names the record.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from koiitasks.errors import LedgerError, RecordError
from koiitasks.identity import Keypair
from koiitasks.ledger import verify_ledger
from koiitasks.protocol import (
    AcceptedSubmission,
    AuditReport,
    DistributionAudit,
    DistributionList,
    LedgerEntry,
    NodeRegistration,
    Refusal,
    RoundRequest,
    Signed,
    TaskRecord,
    decode,
    sign,
)
from koiitasks.replay import Replayer, verify_task
from koiitasks.sandbox import Sandbox
from koiitasks.storage import FileStore, Layout, MemoryStore, Store
from koiitasks.testing import figures, sandbox, write_task
from koiitasks.testing.cli import invoke
from koiitasks.testing.tamper import byte_changes, copy_store, overwrite, snapshot
from tests.conftest import ECHO_TASK

TASK = "test-task"
LAYOUT = Layout(TASK)
SETTLED = (0, 1, 3)  # round 2 skipped, so an entry can be slipped in between two others
STRANGER = Keypair.from_seed(b"a stranger with write access")

KeyOf = Callable[[Store], str]
RECORDS: list[tuple[str, KeyOf, type[Any]]] = [
    ("task-record", lambda _: LAYOUT.task, TaskRecord),
    ("node-registration", lambda s: s.list(LAYOUT.nodes)[0], NodeRegistration),
    ("request", lambda _: LAYOUT.round(0) + "requests/audit.json", RoundRequest),
    ("accepted-submission", lambda s: s.list(LAYOUT.submissions(0))[0], AcceptedSubmission),
    ("refusal", lambda s: s.list(LAYOUT.refusals(0))[0], Refusal),
    ("audit-report", lambda s: s.list(LAYOUT.audits(0))[0], AuditReport),
    ("distribution-list", lambda _: LAYOUT.distribution(0, 0), DistributionList),
    ("list-vote", lambda s: s.list(LAYOUT.distribution_audits(0, 0))[0], DistributionAudit),
    ("ledger-entry", lambda _: LAYOUT.ledger_entry(1), LedgerEntry),
]


@pytest.fixture(scope="module")
def settled(tmp_path_factory: pytest.TempPathFactory) -> Sandbox:
    """Rounds 0, 1 and 3 settled on eight nodes with a lazy, a late and a bad-auditor node."""
    task_dir = write_task(tmp_path_factory.mktemp("tamper") / "echo", ECHO_TASK)
    box = sandbox(task_dir, nodes=8, seed=3, adversaries={"lazy": 1, "late": 1, "bad-auditor": 1})
    for number in SETTLED:
        box.run_round(number)
    verify_task(box.store, TASK)
    return box


@pytest.fixture
def store(settled: Sandbox) -> MemoryStore:
    """A copy of the settled store to tamper with."""
    return copy_store(settled.store)


def orchestrator(box: Sandbox) -> Keypair:
    key = box.network.orchestrator_key
    assert key is not None
    return key


def entry(store: Store, number: int) -> Signed[LedgerEntry]:
    key = LAYOUT.ledger_entry(number)
    return decode(store.read(key), LedgerEntry, where=key)


def detected(store: Store, key: str) -> None:
    """`ledger verify`'s check fails and names ``key``."""
    with pytest.raises(LedgerError) as failure:
        verify_task(store, TASK)
    assert key in str(failure.value)


class TestLedgerEntries:
    """Changing, removing, reordering or inserting ledger entries is detected."""

    def test_every_single_byte_change_of_an_entry_is_detected(self, store: MemoryStore) -> None:
        """Each of an entry's bytes changed in turn makes verify fail, naming that entry."""
        key = LAYOUT.ledger_entry(1)
        original = store.read(key)
        cases = 0
        for _, tampered in byte_changes(original):
            overwrite(store, key, tampered)
            detected(store, key)
            cases += 1
        overwrite(store, key, original)
        verify_task(store, TASK)
        figures.record("tamper_cases", cases)

    @pytest.mark.parametrize("number", [pytest.param(n, id=f"round-{n}") for n in SETTLED[:-1]])
    def test_removing_an_entry_before_the_newest_breaks_the_chain(
        self, store: MemoryStore, number: int
    ) -> None:
        """The entry after a removed one names the broken chain."""
        overwrite(store, LAYOUT.ledger_entry(number), None)
        following = SETTLED[SETTLED.index(number) + 1]
        with pytest.raises(LedgerError, match="breaks the hash chain"):
            verify_task(store, TASK)
        detected(store, LAYOUT.ledger_entry(following))
        figures.record("tamper_cases")

    def test_cutting_off_the_newest_entry_is_detected_against_the_head(
        self, settled: Sandbox, store: MemoryStore
    ) -> None:
        """Without an anchor a cut-off newest entry looks like a round still settling; with the
        head hash an earlier verify printed, verify fails; a rerun writes the same entry back."""
        head = verify_task(store, TASK).head_hash
        assert head is not None
        overwrite(store, LAYOUT.ledger_entry(3), None)
        verify_task(store, TASK)  # the chain alone cannot tell a cut from a round in progress
        with pytest.raises(LedgerError, match=f"has no entry {head[:16]}"):
            verify_task(store, TASK, head=head[:16])
        rerun = sandbox(settled.loaded.directory, nodes=8, seed=3, store=store)
        rerun.run_round(3)
        assert verify_task(store, TASK, head=head).head_hash == head
        figures.record("tamper_cases")

    @pytest.mark.parametrize(
        ("a", "b"), [pytest.param(a, b, id=f"{a}-{b}") for a, b in [(0, 1), (1, 3), (0, 3)]]
    )
    def test_reordering_entries_is_detected(self, store: MemoryStore, a: int, b: int) -> None:
        """Two entries swapped between their keys fail on the first of them."""
        first, second = store.read(LAYOUT.ledger_entry(a)), store.read(LAYOUT.ledger_entry(b))
        overwrite(store, LAYOUT.ledger_entry(a), second)
        overwrite(store, LAYOUT.ledger_entry(b), first)
        detected(store, LAYOUT.ledger_entry(a))
        figures.record("tamper_cases")

    def test_an_entry_inserted_between_two_is_detected(
        self, settled: Sandbox, store: MemoryStore
    ) -> None:
        """An orchestrator-signed entry for the skipped round 2 breaks round 3's link."""
        body = entry(store, 1).body.model_copy(
            update={"round": 2, "sequence": 2, "prev_hash": entry(store, 1).hash}
        )
        store.create(LAYOUT.ledger_entry(2), sign(body, orchestrator(settled)).encode())
        detected(store, LAYOUT.ledger_entry(3))
        figures.record("tamper_cases")

    def test_a_payment_no_record_calls_for_is_refused_even_when_the_orchestrator_signs_it(
        self, settled: Sandbox, store: MemoryStore
    ) -> None:
        """With the orchestrator's own key, a list and an entry paying someone for the skipped
        round 2, with the chain and totals after it re-signed, pass the chain and conservation
        check; the records check does not: no registered node built that list."""
        key = orchestrator(settled)
        one, three = entry(store, 1), entry(store, 3)
        payee, bounty = sorted(one.body.credits)[0], one.body.bounty
        listed = decode(store.read(LAYOUT.distribution(1, 0)), DistributionList, where="list")
        fake_list = sign(
            listed.body.model_copy(
                update={"round": 2, "builder": key.public_id, "credits": {payee: bounty}}
            ),
            key,
        )
        forged = one.body.model_copy(
            update={
                "round": 2, "sequence": 2, "prev_hash": one.hash, "credits": {payee: bounty},
                "slashes": {}, "round_credited": bounty, "attempts": 1,
                "distribution_hash": fake_list.hash,
                "total_credited": one.body.total_credited + bounty,
                "total_slashed": one.body.total_slashed,
            }
        )  # fmt: skip
        inserted = sign(forged, key)
        rechained = three.body.model_copy(
            update={
                "sequence": 3,
                "prev_hash": inserted.hash,
                "total_credited": three.body.total_credited + bounty,
            }
        )
        store.create(LAYOUT.distribution(2, 0), fake_list.encode())
        store.create(LAYOUT.ledger_entry(2), inserted.encode())
        overwrite(store, LAYOUT.ledger_entry(3), sign(rechained, key).encode())
        verify_ledger(store, TASK)
        with pytest.raises(LedgerError, match="is not a registered node"):
            verify_task(store, TASK)
        detected(store, LAYOUT.distribution(2, 0))
        figures.record("tamper_cases")


class TestRoundRecords:
    """Every stored record, of every kind, is covered by a signature that verify checks."""

    @pytest.mark.parametrize(
        ("key_of", "body_type"),
        [pytest.param(k, b, id=name) for name, k, b in RECORDS if b is not LedgerEntry],
    )
    def test_every_single_byte_change_is_detected_and_named(
        self, store: MemoryStore, key_of: KeyOf, body_type: type[Any]
    ) -> None:
        """Each byte of the record changed in turn makes verify fail naming the record; for the
        round's own records, replay refuses it too."""
        key = key_of(store)
        original = store.read(key)
        replayer = Replayer(store, TASK) if body_type in {AcceptedSubmission, AuditReport} else None
        cases = 0
        for _, tampered in byte_changes(original):
            overwrite(store, key, tampered)
            detected(store, key)
            if replayer is not None:
                with pytest.raises(RecordError, match=key):
                    replayer.replay(0)
            cases += 1
        overwrite(store, key, original)
        verify_task(store, TASK)
        figures.record("tamper_cases", cases)

    @pytest.mark.parametrize(
        "keep_signer",
        [pytest.param(True, id="forged-signature"), pytest.param(False, id="stranger-signer")],
    )
    @pytest.mark.parametrize(
        ("key_of", "body_type"), [pytest.param(k, b, id=name) for name, k, b in RECORDS]
    )
    def test_a_record_not_signed_by_the_right_key_is_refused(
        self, store: MemoryStore, key_of: KeyOf, body_type: type[Any], keep_signer: bool
    ) -> None:
        """The same body signed by a stranger (claiming the right signer, or not) is refused."""
        key = key_of(store)
        record = decode(store.read(key), body_type, where=key)
        forged = sign(record.body, STRANGER)
        if keep_signer:
            forged = forged.model_copy(update={"signer": record.signer})
        overwrite(store, key, forged.encode())
        detected(store, key)
        figures.record("tamper_cases")

    def test_a_submission_the_orchestrator_accepted_must_carry_the_nodes_own_signature(
        self, settled: Sandbox, store: MemoryStore
    ) -> None:
        """An accepted-submission record re-signed by the orchestrator around a submission the
        node never signed is refused: the node's signature inside is checked too."""
        key = store.list(LAYOUT.submissions(0))[0]
        record = decode(store.read(key), AcceptedSubmission, where=key)
        inner = record.body.submission
        fake = sign(inner.body.model_copy(update={"result": "made up"}), STRANGER)
        fake = fake.model_copy(update={"signer": inner.signer})
        rewrapped = sign(record.body.model_copy(update={"submission": fake}), orchestrator(settled))
        overwrite(store, key, rewrapped.encode())
        with pytest.raises(LedgerError, match="the node's submission: signature by"):
            verify_task(store, TASK)
        figures.record("tamper_cases")


class TestCommandLine:
    """`koiitasks ledger verify` on a file store, as a user runs it."""

    @pytest.mark.parametrize(
        "name", ["accepted-submission", "audit-report", "list-vote", "ledger-entry"]
    )
    def test_verify_exits_1_naming_the_changed_record(
        self, settled: Sandbox, tmp_path: Path, name: str
    ) -> None:
        """One flipped bit in a stored file: exit 1, the file's key on stderr, no traceback."""
        folder = tmp_path / "store"
        files = FileStore(folder)
        files.create_many(list(snapshot(settled.store).items()))
        key_of = next(k for n, k, _ in RECORDS if n == name)
        key = key_of(files)
        raw = bytearray(files.read(key))
        raw[len(raw) // 2] ^= 1
        overwrite(files, key, bytes(raw))
        result = invoke("ledger", "verify", "--store", str(folder))
        assert result.exit_code == 1
        assert key in result.stderr
        assert "Traceback" not in result.output
        figures.record("tamper_cases")

    def test_verify_prints_the_head_and_checks_it_when_given(
        self, settled: Sandbox, tmp_path: Path
    ) -> None:
        """verify prints the head hash; `--head` with it passes, then fails once cut off."""
        folder = tmp_path / "store"
        FileStore(folder).create_many(list(snapshot(settled.store).items()))
        first = invoke("ledger", "verify", "--store", str(folder))
        assert first.exit_code == 0, first.stderr
        head = first.stdout.split("head ")[1].strip()
        assert invoke("ledger", "verify", "--store", str(folder), "--head", head).exit_code == 0
        (folder / LAYOUT.ledger_entry(3)).unlink()
        cut = invoke("ledger", "verify", "--store", str(folder), "--head", head[:12])
        assert cut.exit_code == 1
        assert f"has no entry {head[:12]}" in cut.stderr
        figures.record("tamper_cases")

    @pytest.mark.parametrize(
        ("option", "value"),
        [
            pytest.param("--orchestrator", "not a key", id="orchestrator-not-base58"),
            pytest.param("--orchestrator", "1" * 80, id="orchestrator-too-long"),
            pytest.param("--head", "xyz", id="head-not-hex"),
            pytest.param("--head", "abc123", id="head-too-short"),
        ],
    )
    def test_a_malformed_expectation_is_an_input_error_not_a_failed_check(
        self, settled: Sandbox, tmp_path: Path, option: str, value: str
    ) -> None:
        """A --orchestrator or --head that cannot be a key or a hash exits 2 saying so; exit
        1 stays for a store that fails the check."""
        folder = tmp_path / "store"
        FileStore(folder).create_many(list(snapshot(settled.store).items()))
        result = invoke("ledger", "verify", "--store", str(folder), option, value)
        assert result.exit_code == 2, result.stderr
        assert f"{option} {value!r} is not a" in result.stderr
