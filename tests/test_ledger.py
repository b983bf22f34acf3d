"""Specifications of the ledger: balances, and that verify catches any tampering."""

from __future__ import annotations

import pytest

from koiitasks.errors import LedgerError
from koiitasks.identity import Keypair
from koiitasks.ledger import read_ledger, verify_ledger
from koiitasks.protocol import LedgerEntry, decode, sign
from koiitasks.sandbox import Sandbox
from koiitasks.storage import Layout, MemoryStore, Store
from koiitasks.testing import memory_store, sandbox
from tests.conftest import HASH_PUZZLE


@pytest.fixture(scope="module")
def settled() -> Sandbox:
    """Three settled rounds with a lazy node (so the ledger holds slashes too)."""
    box = sandbox(HASH_PUZZLE, nodes=5, seed=3, adversaries={"lazy": 1})
    for n in range(3):
        box.run_round(n)
    return box


def copy_store(source: Store) -> MemoryStore:
    target = memory_store()
    for key in source.list():
        target.create(key, source.read(key))
    return target


def replace_record(store: MemoryStore, key: str, data: bytes | None) -> None:
    """Tamper with a record behind the store's back (what an attacker with disk access does)."""
    records = store._records
    if data is None:
        del records[key]
    else:
        records[key] = data


class TestLedger:
    """What the ledger says."""

    def test_balances_add_up_to_credits(self, settled: Sandbox) -> None:
        """Balances are the sum of every round's credits; totals match the head entry."""
        state = read_ledger(
            settled.store, "hash-puzzle", orchestrator=settled.engine.orchestrator.public_id
        )
        assert sum(state.balances().values()) == state.total_credited == 3_000_000_000
        assert state.total_slashed > 0
        assert [e.body.sequence for e in state.entries] == [0, 1, 2]

    def test_fresh_ledger_verifies(self, settled: Sandbox) -> None:
        """A ledger written by koiitasks verifies."""
        report = verify_ledger(settled.store, "hash-puzzle")
        assert report.entries == 3
        assert report.orchestrator == settled.engine.orchestrator.public_id


class TestTamperEvidence:
    """Every change to a ledger record, or to the chain, is detected and named."""

    def test_every_single_byte_change_of_an_entry_is_detected(self, settled: Sandbox) -> None:
        """Changing any one byte of a ledger entry makes verify fail, naming that record."""
        key = Layout("hash-puzzle").ledger_entry(1)
        original = settled.store.read(key)
        store = copy_store(settled.store)
        for position in range(len(original)):
            for delta in (1, 0x20):
                tampered = bytearray(original)
                tampered[position] = (tampered[position] + delta) % 256
                replace_record(store, key, bytes(tampered))
                with pytest.raises(LedgerError) as caught:
                    verify_ledger(store, "hash-puzzle")
                assert "ledger" in str(caught.value)
        replace_record(store, key, original)
        verify_ledger(store, "hash-puzzle")

    def test_removing_an_entry_breaks_the_chain(self, settled: Sandbox) -> None:
        """Removing an entry from the middle is detected at the next entry."""
        store = copy_store(settled.store)
        replace_record(store, Layout("hash-puzzle").ledger_entry(1), None)
        with pytest.raises(LedgerError, match=r"0000000002\.json: breaks the hash chain"):
            verify_ledger(store, "hash-puzzle")

    def test_swapping_entries_is_detected(self, settled: Sandbox) -> None:
        """Putting one round's entry under another round's key is detected."""
        layout = Layout("hash-puzzle")
        store = copy_store(settled.store)
        first, second = store.read(layout.ledger_entry(0)), store.read(layout.ledger_entry(1))
        replace_record(store, layout.ledger_entry(0), second)
        replace_record(store, layout.ledger_entry(1), first)
        with pytest.raises(LedgerError, match=r"0000000000\.json"):
            verify_ledger(store, "hash-puzzle")

    def test_an_entry_signed_by_another_key_is_refused(self, settled: Sandbox) -> None:
        """A well-formed entry re-signed by a stranger is refused."""
        key = Layout("hash-puzzle").ledger_entry(2)
        store = copy_store(settled.store)
        entry = decode(store.read(key), LedgerEntry, where=key)
        forged = sign(entry.body, Keypair.from_seed(b"stranger"))
        replace_record(store, key, forged.encode())
        with pytest.raises(LedgerError, match="not the orchestrator"):
            verify_ledger(store, "hash-puzzle")

    def test_an_inserted_entry_is_detected(self, settled: Sandbox) -> None:
        """An entry added after the head with a wrong sequence or link is refused."""
        layout = Layout("hash-puzzle")
        store = copy_store(settled.store)
        head = decode(store.read(layout.ledger_entry(2)), LedgerEntry, where="head")
        orchestrator = settled.engine.orchestrator
        inserted = sign(head.body.model_copy(update={"round": 5}), orchestrator)
        store.create(layout.ledger_entry(5), inserted.encode())
        with pytest.raises(LedgerError, match=r"0000000005\.json: breaks the hash chain"):
            verify_ledger(store, "hash-puzzle")

    def test_overpaying_entry_signed_by_the_orchestrator_breaks_conservation(
        self, settled: Sandbox
    ) -> None:
        """Even a validly signed entry that pays more than the bounty fails verification."""
        layout = Layout("hash-puzzle")
        store = copy_store(settled.store)
        key = layout.ledger_entry(2)
        entry = decode(store.read(key), LedgerEntry, where=key)
        node = next(iter(entry.body.credits))
        credits = {**entry.body.credits, node: entry.body.credits[node] + entry.body.bounty}
        greedy = entry.body.model_copy(
            update={
                "credits": credits,
                "round_credited": sum(credits.values()),
                "total_credited": entry.body.total_credited + entry.body.bounty,
            }
        )
        replace_record(store, key, sign(greedy, settled.engine.orchestrator).encode())
        with pytest.raises(LedgerError, match="more than the round's bounty"):
            verify_ledger(store, "hash-puzzle")

    def test_a_changed_distribution_list_is_detected(self, settled: Sandbox) -> None:
        """The ledger entry is bound to the distribution list it paid; changing it is caught."""
        layout = Layout("hash-puzzle")
        store = copy_store(settled.store)
        key = layout.distribution(1, 0)
        raw = bytearray(store.read(key))
        raw[raw.index(b'"bounty":') + 9] ^= 1
        replace_record(store, key, bytes(raw))
        with pytest.raises(LedgerError, match="distribution list for round 1"):
            verify_ledger(store, "hash-puzzle")


class TestEntryConsistency:
    """An entry's payments agree with whether a distribution list was accepted."""

    @pytest.mark.parametrize(
        "update",
        [
            pytest.param(
                {"distribution_accepted": False, "distribution_hash": None},
                id="credits-without-a-list",
            ),
            pytest.param({"distribution_hash": None}, id="accepted-list-without-its-hash"),
        ],
    )
    def test_an_entry_that_pays_without_an_accepted_list_fails_verification(
        self, settled: Sandbox, update: dict[str, object]
    ) -> None:
        """A validly signed entry whose credits no accepted list backs is refused by the chain
        check itself, not only by a replay."""
        layout = Layout("hash-puzzle")
        store = copy_store(settled.store)
        key = layout.ledger_entry(2)
        entry = decode(store.read(key), LedgerEntry, where=key)
        assert entry.body.credits
        unbacked = sign(entry.body.model_copy(update=update), settled.engine.orchestrator)
        replace_record(store, key, unbacked.encode())
        with pytest.raises(LedgerError, match=r"0000000002\.json: .*distribution"):
            verify_ledger(store, "hash-puzzle")
