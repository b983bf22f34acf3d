"""Replay: recompute a settled round from its signed records alone and compare it with the ledger.

A ledger entry says who was paid and slashed; the round's records say why. A replay reads the
records back (every request, accepted submission, refusal, audit report, distribution list and
list audit), checks each one's signature and that it sits under the key of its signer, then runs
the round engine over them read-only, with the orchestrator's public key and nodes that never
answer, exactly as a rerun of a settled round would: votes are tallied into verdicts and slashes,
the distribution inputs are rebuilt and the stored lists and list audits judged again. The
ledger entry those records call for is compared, field by field, with the one stored.

Nothing is written and nobody is asked. With the task folder at hand, the accepted list's
credits are recomputed with the task's own distribute hook too, as its auditors did.

``koiitasks rounds replay`` runs one round or all; ``koiitasks ledger verify`` replays every
settled round after checking the chain, so a changed submission or vote is never quiet.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from koiitasks.clock import SimulatedClock, SlotClock
from koiitasks.config import TaskConfig
from koiitasks.errors import ConfigError, LedgerError, RecordError, RoundError
from koiitasks.identity import Keypair
from koiitasks.ledger import (
    LedgerState,
    VerifyReport,
    build_entry,
    read_ledger,
    verify_ledger,
)
from koiitasks.network import load_network
from koiitasks.nodes.runtime import HookFailed, NodeRuntime
from koiitasks.nodes.silent import SilentPool
from koiitasks.protocol import DistributionList, LedgerEntry, RoundMissed, Signed, decode
from koiitasks.round import RoundEngine, Tally
from koiitasks.round_records import check_round_records
from koiitasks.storage import Layout, Store
from koiitasks.storage.readonly import ReadOnlyStore
from koiitasks.task import LoadedTask

#: Differences listed per dictionary field before the rest is counted.
_MAX_LISTED = 5


@dataclass(frozen=True)
class RoundReplay:
    """What the records of one settled round say, and where the ledger entry differs."""

    task_id: str
    round: int
    sequence: int
    ledger_hash: str
    records_checked: int
    approved: tuple[str, ...]
    rejected: tuple[str, ...]
    refused: tuple[str, ...]
    missing: tuple[str, ...]
    slashes: dict[str, int]
    credits: dict[str, int]
    distribution_accepted: bool
    attempts: int
    differences: tuple[str, ...] = field(default=())
    missed: str | None = None
    """Why a deployment recorded the round as missed (its entry must then be the empty one)."""

    @property
    def matches(self) -> bool:
        """Whether the stored ledger entry is exactly what the records call for."""
        return not self.differences

    def to_json(self) -> dict[str, Any]:
        return {
            "task_id": self.task_id,
            "round": self.round,
            "matches": self.matches,
            "differences": list(self.differences),
            "sequence": self.sequence,
            "ledger_hash": self.ledger_hash,
            "records_checked": self.records_checked,
            "approved": list(self.approved),
            "rejected": list(self.rejected),
            "refused": list(self.refused),
            "missing": list(self.missing),
            "slashes": self.slashes,
            "credits": self.credits,
            "distribution_accepted": self.distribution_accepted,
            "attempts": self.attempts,
            "missed": self.missed,
        }

    def summary(self) -> str:
        """One line a person reads."""
        paid = f"paid {sum(self.credits.values()):,} to {len(self.credits)} nodes"
        status = (
            f"list accepted at attempt {self.attempts}, {paid}"
            if self.distribution_accepted
            else "no list accepted, nobody paid"
        )
        slashed = f"; slashed {len(self.slashes)} nodes" if self.slashes else ""
        verdict = "matches" if self.matches else "DOES NOT MATCH"
        if self.missed is not None:
            return (
                f"round {self.round} of {self.task_id}: {self.records_checked} signed records; "
                f"recorded missed ({self.missed}), nobody paid: {verdict} ledger entry "
                f"#{self.sequence} {self.ledger_hash[:12]}"
            )
        return (
            f"round {self.round} of {self.task_id}: {self.records_checked} signed records; "
            f"{len(self.approved)} approved, {len(self.rejected)} rejected, "
            f"{len(self.refused)} refused, {len(self.missing)} missing{slashed}; {status}: "
            f"{verdict} ledger entry #{self.sequence} {self.ledger_hash[:12]}"
        )


@dataclass(frozen=True)
class TaskVerification:
    """What :func:`verify_task` checked: the chain, then every settled round's records."""

    ledger: VerifyReport
    rounds_replayed: int
    round_records_checked: int
    head_hash: str | None
    #: Rounds whose records the store holds but the ledger has no entry for: a run stopped
    #: before it settled them (the next run does), or a ledger whose newest entries were cut.
    unsettled: tuple[int, ...] = ()

    @property
    def records_checked(self) -> int:
        return self.ledger.records_checked + self.round_records_checked


class Replayer:
    """Replays the settled rounds of one task in a store, reading only."""

    def __init__(
        self,
        store: Store,
        task_id: str,
        *,
        orchestrator: str | None = None,
        task: LoadedTask | None = None,
    ) -> None:
        self.store = store
        self.network = load_network(store, task_id, orchestrator=orchestrator)
        self.task_id = task_id
        self.layout = Layout(task_id)
        self.config = TaskConfig.model_validate(self.network.task.config)
        self.ledger = read_ledger(store, task_id, orchestrator=self.network.record.signer)
        if task is not None and task.task_id != task_id:
            raise RoundError(
                f"task folder {task.directory} holds task {task.task_id!r}, not {task_id!r}",
                hint="pass the folder of the task whose rounds are replayed",
            )
        self.task = task
        self.engine = RoundEngine(
            config=self.config,
            store=ReadOnlyStore(store, purpose="a replay"),
            network=self.network,
            orchestrator=self.network.record.signer,
            pool=SilentPool("not asked: a replay reads only the store"),
            slot_clock=SlotClock(
                SimulatedClock(),
                genesis_ms=self.network.task.genesis_ms,
                slot_ms=self.config.slot_ms,
            ),
        )

    @property
    def settled(self) -> list[int]:
        return [entry.body.round for entry in self.ledger.entries]

    @property
    def unsettled(self) -> tuple[int, ...]:
        """Rounds whose records the store holds but the ledger has no entry for: a run stopped
        before it settled them (the next run does), or a ledger whose newest entries were cut."""
        settled = set(self.settled)
        held = (int(name) for name in self.store.children(self.layout.rounds) if name.isdigit())
        return tuple(sorted(n for n in held if n not in settled))

    def replay(self, round_number: int) -> RoundReplay:
        """Recompute one settled round and compare it with its ledger entry."""
        entry = self.ledger.entry(round_number)
        if entry is None:
            raise RoundError(
                f"round {round_number} of task {self.task_id!r} is not settled in "
                f"{self.store.url} ({_settled_text(self.settled)})",
                hint="replay checks settled rounds; run the round first",
            )
        checked = check_round_records(self.store, self.network, round_number)
        before = LedgerState([e for e in self.ledger.entries if e.body.round < round_number])
        missed = self._missed(round_number)
        if missed is not None:
            # A deployment gave up on the round: whatever it stored, it pays and slashes
            # nobody, and its entry is the empty one.
            empty = build_entry(
                before,
                task_id=self.task_id,
                round_number=round_number,
                bounty=0,
                distribution=None,
                attempts=0,
                slashes={},
            )
            mismatches = tuple(compare_entries(entry.body, empty))
            return self._result(entry, checked, mismatches, missed=missed.reason)
        engine = self.engine
        engine.use_ledger(before)
        try:
            tally = engine.tally(round_number)
            outcome = engine.distribute(round_number)
            expected = engine.entry_body(round_number, outcome)
        except (RoundError, LedgerError) as e:
            # The records call for a step the round never took (a request that was never
            # signed, an order the ledger cannot hold): they are not the round's records.
            return self._result(entry, checked, (f"the records cannot be replayed: {e.message}",))
        differences = compare_entries(entry.body, expected)
        if self.task is not None and outcome.accepted is not None:
            differences += self._recompute_credits(engine, tally, outcome.accepted)
        return self._result(entry, checked, tuple(differences), tally=tally)

    def _missed(self, round_number: int) -> RoundMissed | None:
        """The round's missed record (checked with the round's other records), if any."""
        key = self.layout.missed(round_number)
        raw = self.store.read_or_none(key)
        return None if raw is None else decode(raw, RoundMissed, where=key).body

    def replay_all(self, rounds: Iterable[int] | None = None) -> Iterator[RoundReplay]:
        for round_number in self.settled if rounds is None else rounds:
            yield self.replay(round_number)

    def _recompute_credits(
        self, engine: RoundEngine, tally: Tally, listed: Signed[DistributionList]
    ) -> list[str]:
        assert self.task is not None
        runtime = NodeRuntime(
            self.task,
            Keypair.from_seed(b"koiitasks-replay"),
            schedule=engine.schedule,
            slot_clock=engine.slot_clock,
        )
        try:
            expected = runtime.compute_credits(engine.distribution_inputs(tally))
        except HookFailed as e:
            return [f"credits: the task's distribute hook fails on the round's inputs: {e}"]
        return _dict_differences(
            "credits", listed.body.credits, expected, "the accepted list", "the distribute hook"
        )

    def _result(
        self,
        entry: Signed[LedgerEntry],
        checked: int,
        differences: tuple[str, ...],
        *,
        tally: Tally | None = None,
        missed: str | None = None,
    ) -> RoundReplay:
        body = entry.body
        verdicts = tally.verdicts if tally is not None else {}
        refused = set(tally.refused) if tally is not None else set()
        eligible = set(tally.eligible) if tally is not None else set()
        # Registered nodes below the minimum stake were refused before being asked.
        refused |= set(self.network.nodes) - eligible if tally is not None else set()
        missing = eligible - refused - set(verdicts)
        return RoundReplay(
            task_id=self.task_id,
            round=body.round,
            sequence=body.sequence,
            ledger_hash=entry.hash,
            records_checked=checked + 1,
            approved=tuple(sorted(n for n, v in verdicts.items() if v.approved)),
            rejected=tuple(sorted(n for n, v in verdicts.items() if not v.approved)),
            refused=tuple(sorted(refused)),
            missing=tuple(sorted(missing)),
            slashes=dict(body.slashes),
            credits=dict(body.credits),
            distribution_accepted=body.distribution_accepted,
            attempts=body.attempts,
            differences=differences,
            missed=missed,
        )


def verify_task(
    store: Store,
    task_id: str,
    *,
    orchestrator: str | None = None,
    head: str | None = None,
    progress: Callable[[int, int], None] | None = None,
    task: LoadedTask | None = None,
) -> TaskVerification:
    """``ledger verify``: the chain and conservation, then every settled round replayed from its
    records; raise :class:`LedgerError` naming the first round whose records disagree.

    ``head`` is the hash (or its first 12 or more hex digits) of an entry seen earlier: the
    chain shows any entry removed before the newest, but only such an anchor shows that the
    newest entries were cut off. ``progress(done, total)`` is called before the first round is
    replayed and after each (a store of 10,000 nodes replays about 3 s a round). ``task``, the
    task's folder loaded, also recomputes each paid list with its distribute hook, as
    ``rounds replay --task FOLDER`` does.
    """
    report = verify_ledger(store, task_id, orchestrator=orchestrator)
    try:
        replayer = Replayer(store, task_id, orchestrator=report.orchestrator, task=task)
        _check_anchor(replayer.ledger, task_id, head)
        replayed = records = 0
        total = len(replayer.settled)
        if progress is not None:
            progress(0, total)
        for result in replayer.replay_all():
            if not result.matches:
                raise LedgerError(
                    f"round {result.round} of task {task_id!r} does not match its records "
                    f"(ledger entry {Layout(task_id).ledger_entry(result.round)}): "
                    f"{result.differences[0]}",
                    hint=f"`koiitasks rounds replay --round {result.round}` lists every difference",
                )
            replayed += 1
            records += result.records_checked - 1  # the entry itself is counted by the chain
            if progress is not None:
                progress(replayed, total)
    except RecordError as e:
        raise LedgerError(e.message, hint=e.hint) from e
    newest = replayer.ledger.head
    return TaskVerification(
        ledger=report,
        rounds_replayed=replayed,
        round_records_checked=records,
        head_hash=newest.hash if newest else None,
        unsettled=replayer.unsettled,
    )


def _check_anchor(state: LedgerState, task_id: str, head: str | None) -> None:
    if head is None:
        return
    if not re.fullmatch(r"[0-9a-f]{12,64}", head):
        raise ConfigError(
            f"--head {head!r} is not an entry hash",
            hint="give the 12 or more lowercase hex digits `ledger verify` printed as the head",
        )
    if not any(entry.hash.startswith(head) for entry in state.entries):
        last = state.head
        raise LedgerError(
            f"the ledger of task {task_id!r} has no entry {head}: entries up to it were removed "
            f"or the ledger was rewritten (its newest entry is now "
            f"{f'#{last.body.sequence} {last.hash}' if last else 'none'})",
            hint="a rerun of the missing rounds writes the same entries again",
        )


# --- comparing entries --------------------------------------------------------------------------


def compare_entries(stored: LedgerEntry, expected: LedgerEntry) -> list[str]:
    """Every field where the stored entry differs from the one the records call for."""
    differences: list[str] = []
    for name in type(stored).model_fields:
        ours, theirs = getattr(stored, name), getattr(expected, name)
        if ours == theirs:
            continue
        if isinstance(ours, dict) and isinstance(theirs, dict):
            differences += _dict_differences(name, ours, theirs, "the ledger", "the records")
        else:
            differences.append(f"{name}: the ledger says {ours!r}, the records say {theirs!r}")
    return differences


def _dict_differences(
    name: str, ours: Mapping[str, int], theirs: Mapping[str, int], our_side: str, their_side: str
) -> list[str]:
    keys = sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))
    lines = [
        f"{name} of {k}: {our_side} says {ours.get(k, 0)}, {their_side} say {theirs.get(k, 0)}"
        for k in keys[:_MAX_LISTED]
    ]
    if len(keys) > _MAX_LISTED:
        lines.append(f"{name}: {len(keys) - _MAX_LISTED} more nodes differ")
    return lines


def _settled_text(rounds: Sequence[int]) -> str:
    if not rounds:
        return "no round is settled"
    return f"{len(rounds)} settled rounds, the last is round {rounds[-1]}"
