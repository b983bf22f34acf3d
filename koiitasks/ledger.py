"""The reward ledger: one signed, hash-chained, create-only entry per settled round.

Entries live at ``tasks/{task}/ledger/{round:010d}.json``; the key is per round, and stores are
create-only, so a round is paid at most once whatever crashes and reruns happen. Each entry
carries its sequence number and the hash of the entry before it, so removing, reordering or
inserting entries breaks the chain, and every byte is covered by the orchestrator's signature.
:func:`verify_ledger` checks all of that offline, plus conservation.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from koiitasks.config import TaskConfig
from koiitasks.errors import LedgerError, RecordError, RecordNotFound
from koiitasks.identity import Keypair
from koiitasks.network import Network, load_network
from koiitasks.protocol import (
    ZERO_DIGEST,
    DistributionList,
    LedgerEntry,
    Signed,
    decode,
    sign,
)
from koiitasks.storage import Layout, Store


@dataclass
class LedgerState:
    """The ledger's entries in round order and the totals they add up to."""

    entries: list[Signed[LedgerEntry]] = field(default_factory=list)

    @property
    def head(self) -> Signed[LedgerEntry] | None:
        return self.entries[-1] if self.entries else None

    @property
    def total_credited(self) -> int:
        return self.head.body.total_credited if self.head else 0

    @property
    def total_slashed(self) -> int:
        return self.head.body.total_slashed if self.head else 0

    def entry(self, round_number: int) -> Signed[LedgerEntry] | None:
        for entry in self.entries:
            if entry.body.round == round_number:
                return entry
        return None

    def balances(self) -> dict[str, int]:
        balances: dict[str, int] = {}
        for entry in self.entries:
            for node, amount in entry.body.credits.items():
                balances[node] = balances.get(node, 0) + amount
        return balances

    def stakes(
        self, registered: Mapping[str, int], *, through_round: int | None = None
    ) -> dict[str, int]:
        """Registered stakes less the slashes of entries up to ``through_round`` (all if None)."""
        stakes = dict(registered)
        for entry in self.entries:
            if through_round is not None and entry.body.round > through_round:
                break
            for node, amount in entry.body.slashes.items():
                stakes[node] = stakes.get(node, 0) - amount
        return stakes

    def credited_before(self, round_number: int) -> int:
        return sum(e.body.round_credited for e in self.entries if e.body.round < round_number)


def read_ledger(store: Store, task_id: str, *, orchestrator: str) -> LedgerState:
    """Every entry, checked for signature, key, sequence and chain (conservation: see verify)."""
    layout = Layout(task_id)
    state = LedgerState()
    for key in store.list(layout.ledger):
        entry = decode(store.read(key), LedgerEntry, where=key)
        _check_link(entry, key, state, task_id=task_id, orchestrator=orchestrator)
        state.entries.append(entry)
    return state


def _check_link(
    entry: Signed[LedgerEntry], key: str, state: LedgerState, *, task_id: str, orchestrator: str
) -> None:
    body = entry.body
    if entry.signer != orchestrator:
        raise LedgerError(f"ledger record {key}: signed by {entry.signer}, not the orchestrator")
    if body.task_id != task_id or Layout.round_of_ledger_key(key) != body.round:
        raise LedgerError(f"ledger record {key}: holds task {body.task_id} round {body.round}")
    expected_prev = state.head.hash if state.head else ZERO_DIGEST
    if body.sequence != len(state.entries) or body.prev_hash != expected_prev:
        raise LedgerError(
            f"ledger record {key}: breaks the hash chain (sequence {body.sequence}, expected "
            f"{len(state.entries)}); an entry before it was removed, reordered or inserted"
        )


def build_entry(
    state: LedgerState,
    *,
    task_id: str,
    round_number: int,
    bounty: int,
    distribution: Signed[DistributionList] | None,
    attempts: int,
    slashes: Mapping[str, int],
) -> LedgerEntry:
    """The round's next ledger entry body, unsigned: what :func:`append_entry` signs and what a
    replay compares with the stored entry."""
    head = state.head
    if head is not None and head.body.round >= round_number:
        raise LedgerError(
            f"round {round_number} cannot be settled after round {head.body.round}: "
            "the ledger settles rounds in order"
        )
    credits = dict(sorted((distribution.body.credits if distribution else {}).items()))
    round_credited = sum(credits.values())
    return LedgerEntry(
        task_id=task_id,
        round=round_number,
        sequence=len(state.entries),
        prev_hash=head.hash if head else ZERO_DIGEST,
        bounty=bounty,
        distribution_accepted=distribution is not None,
        distribution_hash=distribution.hash if distribution else None,
        attempts=attempts,
        credits=credits,
        slashes=dict(sorted(slashes.items())),
        round_credited=round_credited,
        total_credited=state.total_credited + round_credited,
        total_slashed=state.total_slashed + sum(slashes.values()),
    )


def append_entry(
    store: Store,
    state: LedgerState,
    orchestrator: Keypair,
    *,
    task_id: str,
    round_number: int,
    bounty: int,
    distribution: Signed[DistributionList] | None,
    attempts: int,
    slashes: Mapping[str, int],
) -> Signed[LedgerEntry]:
    """Append round's entry, or return it if it is already there (exactly once per round)."""
    existing = state.entry(round_number)
    if existing is not None:
        return existing
    body = build_entry(
        state,
        task_id=task_id,
        round_number=round_number,
        bounty=bounty,
        distribution=distribution,
        attempts=attempts,
        slashes=slashes,
    )
    entry = sign(body, orchestrator)
    store.create(Layout(task_id).ledger_entry(round_number), entry.encode())
    state.entries.append(entry)
    return entry


@dataclass(frozen=True)
class VerifyReport:
    """What :func:`verify_ledger` checked."""

    task_id: str
    orchestrator: str
    entries: int
    total_credited: int
    total_slashed: int
    records_checked: int


def verify_ledger(store: Store, task_id: str, *, orchestrator: str | None = None) -> VerifyReport:
    """Check every signature, the chain and conservation; raise naming the first bad record."""
    try:
        network = load_network(store, task_id, orchestrator=orchestrator)
        state = read_ledger(store, task_id, orchestrator=network.record.signer)
    except RecordError as e:
        raise LedgerError(e.message, hint=e.hint) from e
    checked = 1 + len(network.nodes) + len(state.entries)
    checked += _check_conservation(store, network, state)
    return VerifyReport(
        task_id=task_id,
        orchestrator=network.record.signer,
        entries=len(state.entries),
        total_credited=state.total_credited,
        total_slashed=state.total_slashed,
        records_checked=checked,
    )


def _check_conservation(store: Store, network: Network, state: LedgerState) -> int:
    config = TaskConfig.model_validate(network.task.config)
    per_round, total_bounty = config.bounty_amount_per_round, config.total_bounty_amount
    stakes = {node: reg.stake for node, reg in network.nodes.items()}
    layout = Layout(network.task.task_id)
    credited = slashed = checked = 0
    for entry in state.entries:
        body = entry.body
        key = layout.ledger_entry(body.round)
        unknown = sorted(set(body.credits) - set(stakes))
        if unknown:
            raise LedgerError(f"ledger record {key}: credits unregistered node {unknown[0]}")
        if sum(body.credits.values()) != body.round_credited:
            raise LedgerError(f"ledger record {key}: credits do not add up to round_credited")
        if body.round_credited > body.bounty or body.bounty > per_round:
            raise LedgerError(f"ledger record {key}: pays more than the round's bounty")
        credited += body.round_credited
        if credited != body.total_credited or credited > total_bounty:
            raise LedgerError(f"ledger record {key}: total_credited breaks conservation")
        for node, amount in body.slashes.items():
            if amount > stakes.get(node, 0):
                raise LedgerError(f"ledger record {key}: slashes {node} more than its stake")
            stakes[node] -= amount
            slashed += amount
        if slashed != body.total_slashed:
            raise LedgerError(f"ledger record {key}: total_slashed does not add up")
        if body.distribution_accepted != (body.distribution_hash is not None):
            raise LedgerError(
                f"ledger record {key}: says a distribution list was "
                f"{'accepted' if body.distribution_accepted else 'not accepted'} but "
                f"{'names none' if body.distribution_hash is None else 'names one'}"
            )
        if body.distribution_hash is not None:
            checked += _check_distribution(store, layout, entry)
        elif body.credits:
            raise LedgerError(
                f"ledger record {key}: credits {len(body.credits)} nodes without an accepted "
                "distribution list"
            )
    return checked


def _check_distribution(store: Store, layout: Layout, entry: Signed[LedgerEntry]) -> int:
    body = entry.body
    key = layout.distribution(body.round, body.attempts - 1)
    try:
        distribution = decode(store.read(key), DistributionList, where=key)
    except (RecordError, RecordNotFound) as e:
        raise LedgerError(f"distribution list for round {body.round}: {e.message}") from e
    if distribution.hash != body.distribution_hash or distribution.body.credits != body.credits:
        raise LedgerError(
            f"ledger record {layout.ledger_entry(body.round)}: does not match the distribution "
            f"list {key}"
        )
    return 1
