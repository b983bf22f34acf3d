"""One logical round, step by step: execute, ingest, audit, tally, distribute, settle.

Each step is a method a Prefect task can call (``flows/round.py``) or a test can call directly.
Every step reads what the store already holds before asking any node, and every write is
create-only, so rerunning a round that stopped half way finishes it with the bytes an
uninterrupted run would have written, and rerunning a settled round changes nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from koiitasks.audit import Verdict, assign_audits, slash_amount, tally_votes
from koiitasks.clock import Schedule, SlotClock
from koiitasks.collector import round_collection
from koiitasks.config import TaskConfig
from koiitasks.distribution import (
    ApprovedNode,
    DistributionInputs,
    check_credits,
    choose_builder,
    choose_list_auditors,
)
from koiitasks.errors import RecordConflict, RecordError, RoundError, RoundMissed
from koiitasks.identity import Keypair
from koiitasks.ingest import (
    ENVELOPE_BYTES,
    LIST_ENTRY_BYTES,
    VOTE_BYTES,
    Accepted,
    IngestRules,
    ingest,
)
from koiitasks.ledger import LedgerState, append_entry, build_entry, read_ledger
from koiitasks.model import Outcome, Phase
from koiitasks.network import Network
from koiitasks.nodes.base import NodePool, Reply
from koiitasks.protocol import (
    AcceptedSubmission,
    AuditReport,
    B,
    DistributionAudit,
    DistributionList,
    LedgerEntry,
    Refusal,
    RoundRequest,
    Signed,
    decode,
    sign,
)
from koiitasks.round_result import NodeResult, RoundResult
from koiitasks.storage import Layout, Store

log = logging.getLogger("koiitasks.round")

#: Nodes per shard: one Prefect task run each. A task run costs about 15 ms of the flow's time
#: besides its work, and a node about 0.4 ms: 500 nodes a shard keeps that below 10%, and a
#: 10,000-node round took 0.8 s less than with 250 (measured; docs/performance.md).
DEFAULT_SHARD_SIZE = 500


@dataclass
class Tally:
    """A round's submissions, refusals and votes, as the store holds them."""

    round: int
    stakes: dict[str, int]
    eligible: list[str]
    accepted: dict[str, Signed[AcceptedSubmission]]
    refused: dict[str, str]
    verdicts: dict[str, Verdict]
    slashes: dict[str, int] = field(default_factory=dict)

    @property
    def approved(self) -> list[str]:
        return sorted(n for n, v in self.verdicts.items() if v.approved)


@dataclass
class DistributionOutcome:
    accepted: Signed[DistributionList] | None
    attempts: int
    reasons: list[str]


class RoundEngine:
    """Runs the rounds of one task on one store with one pool of nodes."""

    def __init__(
        self,
        *,
        config: TaskConfig,
        store: Store,
        network: Network,
        orchestrator: Keypair | str,
        pool: NodePool,
        slot_clock: SlotClock,
        shard_size: int = DEFAULT_SHARD_SIZE,
        skew_tolerance_slots: int = 1,
    ) -> None:
        # A public id alone makes a read-only engine (replay): it recomputes from the store and
        # refuses, with a RoundError, anything that would need the orchestrator to sign.
        key = orchestrator if isinstance(orchestrator, Keypair) else None
        self.orchestrator_id = key.public_id if key else str(orchestrator)
        if self.orchestrator_id != network.record.signer:
            raise RecordError(
                f"orchestrator key {self.orchestrator_id} is not the one that created task "
                f"{network.task.task_id!r} ({network.record.signer})"
            )
        self._orchestrator_key = key
        self.config = config
        self.store = store
        self.network = network
        self.task_id = network.task.task_id
        self.layout = Layout(self.task_id)
        self.pool = pool
        self.slot_clock = slot_clock
        self.shard_size = shard_size
        # How far ahead of the orchestrator's clock a node's response slot may be (remote nodes).
        self.skew_tolerance_slots = skew_tolerance_slots
        self.schedule = Schedule(
            starting_slot=network.task.starting_slot,
            round_time=config.round_time,
            submission_window=config.submission_window,
            audit_window=config.audit_window,
        )
        self.ledger: LedgerState = read_ledger(
            store, self.task_id, orchestrator=self.orchestrator_id
        )
        self._tallies: dict[int, Tally] = {}
        self._accepted: dict[int, dict[str, Signed[AcceptedSubmission]]] = {}
        self._answered_nodes: dict[int, set[str]] = {}
        self._accepted_listed: set[int] = set()
        self._eligible: dict[int, list[str]] = {}
        self._assignments: dict[int, dict[str, list[str]]] = {}
        self._reports: dict[int, dict[str, Signed[AuditReport]]] = {}
        #: Why nodes gave no answer, as this engine saw it (nothing is stored for them): the
        #: round's result says it, rather than only "no answer".
        self._silence: dict[int, dict[str, str]] = {}

    @property
    def orchestrator(self) -> Keypair:
        """The orchestrator's key pair; a read-only engine (public id only) has none."""
        if self._orchestrator_key is None:
            raise RoundError(
                f"the engine of task {self.task_id!r} holds only the orchestrator's public key "
                f"{self.orchestrator_id} and cannot sign: a record it needs is not in the store",
                hint="a read-only engine (replay) only recomputes settled rounds; "
                "run the round with the orchestrator's key",
            )
        return self._orchestrator_key

    # --- records ---------------------------------------------------------------------------

    def _store(self, key: str, record: Signed[Any]) -> None:
        self.store.create(key, record.encode())

    def _load(self, key: str, body_type: type[B]) -> Signed[B] | None:
        raw = self.store.read_or_none(key)
        return None if raw is None else decode(raw, body_type, where=key)

    def _nonce(self, round_number: int, phase: Phase) -> str:
        """Unpredictable to nodes, the same on every rerun: an HMAC under the orchestrator key."""
        secret = bytes(self.orchestrator.signing_key)
        message = f"{self.task_id}/{round_number}/{phase.value}".encode()
        return hmac.new(secret, message, hashlib.sha256).hexdigest()

    def request(self, round_number: int, phase: Phase, slot: int) -> Signed[RoundRequest]:
        """The signed request for a phase: made once, then read back on reruns."""
        key = f"{self.layout.round(round_number)}requests/{phase.value}.json"
        stored = self._load(key, RoundRequest)
        if stored is not None:
            return stored
        settled = self.layout.ledger_entry(round_number)
        if self._orchestrator_key is None and self.store.exists(settled):
            # A read-only engine replaying a settled round: the request was lost, not unmade.
            raise RecordError(
                f"record {key} is missing from {self.store.url}",
                hint="every record of a round that ran must stay in the store: restore it "
                "from a backup",
            )
        request = sign(
            RoundRequest(
                task_id=self.task_id,
                round=round_number,
                phase=phase,
                request_slot=slot,
                nonce=self._nonce(round_number, phase),
            ),
            self.orchestrator,
        )
        self._store(key, request)
        return request

    # --- state -----------------------------------------------------------------------------

    def is_settled(self, round_number: int) -> bool:
        """Whether the round has a ledger entry (re-reading the ledger if another run wrote it)."""
        if self.ledger.entry(round_number) is not None:
            return True
        if self.store.exists(self.layout.ledger_entry(round_number)):
            self.refresh()
            return True
        return False

    def refresh(self) -> None:
        """Re-read the ledger from the store."""
        self.use_ledger(read_ledger(self.store, self.task_id, orchestrator=self.orchestrator_id))

    def use_ledger(self, state: LedgerState) -> None:
        """Derive stakes, bounties and slashes from ``state`` from now on, forgetting what was
        read or computed before (a replay looks at round N as the ledger stood before N)."""
        self.ledger = state
        self._tallies.clear()
        self._accepted.clear()
        self._answered_nodes.clear()
        self._accepted_listed.clear()
        self._eligible.clear()
        self._assignments.clear()
        self._reports.clear()

    def forget_round_cache(self, round_number: int) -> None:
        """Drop what this engine listed about one round, so the next step re-reads the store.

        Call it after shards of the round ran in other processes (Dask workers): this engine
        then sees the submissions, refusals and audit reports they stored. Stakes and the
        ledger are not touched (:meth:`refresh` re-reads those).
        """
        for cache in (
            self._tallies,
            self._accepted,
            self._answered_nodes,
            self._assignments,
            self._reports,
        ):
            cache.pop(round_number, None)
        self._accepted_listed.discard(round_number)

    def next_round(self) -> int:
        """The round after the last settled one (0 on a new ledger)."""
        head = self.ledger.head
        return head.body.round + 1 if head else 0

    def _registered(self) -> dict[str, int]:
        return {node: reg.stake for node, reg in self.network.nodes.items()}

    def stakes(self, round_number: int) -> dict[str, int]:
        """Stakes as round N sees them: slashes settled by its first slot (rounds up to N-3)."""
        return self.ledger.stakes(self._registered(), through_round=round_number - 3)

    def eligible(self, round_number: int) -> list[str]:
        """Nodes staked at least the minimum as round N sees it (fixed by rounds up to N-3)."""
        if round_number not in self._eligible:
            minimum = self.config.minimum_stake_amount
            self._eligible[round_number] = sorted(
                n for n, s in self.stakes(round_number).items() if s >= minimum and s > 0
            )
        return self._eligible[round_number]

    def shards(self, node_ids: Sequence[str]) -> list[list[str]]:
        ids = list(node_ids)
        return [ids[i : i + self.shard_size] for i in range(0, len(ids), self.shard_size)]

    def check_runnable(self, round_number: int) -> None:
        """Refuse a round that would break the ledger's order or whose window has passed."""
        head = self.ledger.head
        if (
            head is not None
            and head.body.round > round_number
            and not self.is_settled(round_number)
        ):
            raise RoundError(
                f"round {round_number} of task {self.task_id!r} was never settled and the "
                f"ledger has moved on to round {head.body.round}",
                hint="rounds settle in order; run a later round instead",
            )

    # --- execute ---------------------------------------------------------------------------

    def open_round(self, round_number: int) -> Signed[RoundRequest]:
        """Wait for the round's first slot and make (or read back) its execute request.

        The request carries the slot it goes out in: the round's first slot, or a later one if
        the orchestrator got here late (a slow flow start, a busy machine). Completion times
        are measured from it, so nodes are not charged for the orchestrator's lateness.
        """
        self.check_runnable(round_number)
        start = self.schedule.round_start(round_number)
        window = self.schedule.execute_window(round_number)
        now = self.slot_clock.get_slot()
        key = f"{self.layout.round(round_number)}requests/{Phase.EXECUTE.value}.json"
        if now >= window.end and not self.store.exists(key):
            raise RoundMissed(
                f"round {round_number} of task {self.task_id!r} can no longer run: its "
                f"submission window closed at slot {window.end} and the clock is at slot {now}",
                hint="a round runs only in its own window: leave out --round to run the next "
                "one (a deployment records such a round as missed)",
            )
        self.slot_clock.wait_for_slot(start)
        sent = max(start, self.slot_clock.get_slot())
        if sent > start and not self.store.exists(key):
            log.warning(
                "round %d of task %r: its execute request goes out at slot %d, %d slot(s) after "
                "the round's first slot (the orchestrator started late); completion times count "
                "from slot %d",
                round_number, self.task_id, sent, sent - start, sent,
            )  # fmt: skip
        return self.request(round_number, Phase.EXECUTE, sent)

    def execute_shard(self, round_number: int, node_ids: Sequence[str]) -> dict[str, int]:
        """Ask the shard's nodes that have no stored answer yet; store what passes ingest."""
        request = self._execute_request(round_number)
        answered = self._answered(round_number)
        todo = [node for node in node_ids if node not in answered]
        counts = {"accepted": 0, "refused": 0, "missing": 0, "skipped": len(node_ids) - len(todo)}
        if not todo:
            return counts
        rules = IngestRules(
            request=request,
            eligible=set(self.eligible(round_number)),
            schedule=self.schedule,
            slot_clock=self.slot_clock,
            max_result_bytes=self.config.max_result_bytes,
            skew_tolerance_slots=self.skew_tolerance_slots,
        )
        records: list[tuple[str, Signed[Any]]] = []
        for reply in self.pool.execute(request, todo):
            outcome, keyed = self._ingest_one(round_number, reply, rules)
            counts[outcome] += 1
            if keyed is not None:
                records.append(keyed)
        records = self._create_first_wins(round_number, records)
        accepted = self._accepted.setdefault(round_number, {})
        for key, record in records:
            answered.add(Layout.name_of(key))
            if isinstance(record.body, AcceptedSubmission):
                accepted[record.body.node_id] = record
        return counts

    def _create_first_wins(
        self, round_number: int, records: list[tuple[str, Signed[Any]]]
    ) -> list[tuple[str, Signed[Any]]]:
        """Store a shard's records in one batch (the store makes them durable at once, one
        folder fsync); the ones it created or already held are returned.

        Two runs of one round (a re-run beside a late scheduled run, or a Dask shard re-run)
        may ask the same node: their records differ in receipt slots. The first stored stands,
        as create-only storage decides; this run keeps going with it, and re-reads the round.
        """
        try:
            self.store.create_many([(key, record.encode()) for key, record in records])
        except RecordConflict:
            pass
        else:
            return records
        kept = []
        for key, record in records:
            try:
                self.store.create(key, record.encode())
                kept.append((key, record))
            except RecordConflict:
                log.info(
                    "%s: another run of round %d stored it first; it stands", key, round_number
                )
        self.forget_round_cache(round_number)
        return kept

    def _answered(self, round_number: int) -> set[str]:
        """Nodes with a stored submission or refusal: listed once per round, then kept."""
        if round_number not in self._answered_nodes:
            self._answered_nodes[round_number] = {
                Layout.name_of(key)
                for prefix in (self.layout.submissions, self.layout.refusals)
                for key in self.store.list(prefix(round_number))
            }
        return self._answered_nodes[round_number]

    def _execute_request(self, round_number: int) -> Signed[RoundRequest]:
        key = f"{self.layout.round(round_number)}requests/{Phase.EXECUTE.value}.json"
        stored = self._load(key, RoundRequest)
        if stored is None:
            raise RoundError(f"round {round_number} was not opened; call open_round first")
        return stored

    def _ingest_one(
        self, round_number: int, reply: Reply, rules: IngestRules
    ) -> tuple[str, tuple[str, Signed[Any]] | None]:
        """Check one answer: its outcome, and the record to store (with its key) if any."""
        checked = ingest(reply, rules)
        if checked is None:
            log.info(
                "node %s: no answer in round %d (%s)", reply.node_id, round_number, reply.error
            )
            if reply.error:
                self._silence.setdefault(round_number, {})[reply.node_id] = reply.error
            return "missing", None
        if isinstance(checked, Accepted):
            record = sign(
                AcceptedSubmission(
                    task_id=self.task_id,
                    round=round_number,
                    node_id=reply.node_id,
                    submission=checked.submission,
                    received_slot=checked.received_slot,
                    completion_slots=checked.completion_slots,
                    completion_ms=checked.completion_ms,
                ),
                self.orchestrator,
            )
            return "accepted", (self.layout.submission(round_number, reply.node_id), record)
        log.warning("node %s: refused in round %d: %s", reply.node_id, round_number, checked.reason)
        refusal = sign(
            Refusal(
                task_id=self.task_id,
                round=round_number,
                node_id=reply.node_id,
                reason=checked.reason,
                received_slot=checked.received_slot,
            ),
            self.orchestrator,
        )
        return "refused", (self.layout.refusal(round_number, reply.node_id), refusal)

    # --- audit -----------------------------------------------------------------------------

    def accepted(self, round_number: int) -> dict[str, Signed[AcceptedSubmission]]:
        """The round's accepted submissions: listed, read and verified once per round (records
        another run stored included), then kept up to date as this engine stores more."""
        cache = self._accepted.setdefault(round_number, {})
        if round_number in self._accepted_listed:
            return cache
        for key in self.store.list(self.layout.submissions(round_number)):
            node = Layout.name_of(key)
            if node in cache:
                continue
            record = decode(self.store.read(key), AcceptedSubmission, where=key)
            if record.signer != self.orchestrator_id or record.body.node_id != node:
                raise RecordError(f"{key} is not the orchestrator's record of {node}")
            cache[node] = record
        self._accepted_listed.add(round_number)
        return cache

    def plan_audits(self, round_number: int) -> dict[str, list[str]]:
        """Wait for the audit window; every auditor with the submitters it must audit."""
        self.slot_clock.wait_for_slot(self.schedule.audit_window_of(round_number).start)
        return self.assignments(round_number)

    def assignments(self, round_number: int) -> dict[str, list[str]]:
        """Every auditor with its submitters, from the accepted submissions (computed once;
        the accepted set no longer changes once the submission window has closed)."""
        if round_number not in self._assignments:
            self._assignments[round_number] = assign_audits(
                self.accepted(round_number),
                task_id=self.task_id,
                round_number=round_number,
                k=self.config.auditors_per_submission,
            )
        return self._assignments[round_number]

    def audit_shard(
        self, round_number: int, assignments: dict[str, list[str]], auditors: Sequence[str]
    ) -> int:
        """Ask the shard's auditors that have no stored report; store the reports that check."""
        accepted = self.accepted(round_number) if auditors else {}
        request = self.request(
            round_number, Phase.AUDIT, self.schedule.audit_window_of(round_number).start
        )
        reports = self.audit_reports(round_number)
        todo = {
            a: [accepted[s] for s in assignments[a] if s in accepted]
            for a in auditors
            if a not in reports
        }
        checked: list[Signed[AuditReport]] = []
        for reply in self.pool.audit(request, todo) if todo else []:
            report = self._check_reply(
                reply,
                AuditReport,
                round_number,
                signer_field="auditor",
                nonce=request.body.nonce,
                max_bytes=ENVELOPE_BYTES + VOTE_BYTES * len(todo.get(reply.node_id, ())),
            )
            if report is not None:
                checked.append(report)
        keyed = [(self.layout.audit(round_number, r.body.auditor), r) for r in checked]
        for _key, report in self._create_first_wins(round_number, keyed):
            reports[report.body.auditor] = report
        return len(checked)

    def audit_reports(self, round_number: int) -> dict[str, Signed[AuditReport]]:
        """The round's stored audit reports by auditor: listed and verified once, then kept."""
        if round_number not in self._reports:
            reports = {}
            for key in self.store.list(self.layout.audits(round_number)):
                report = decode(self.store.read(key), AuditReport, where=key)
                if report.signer == report.body.auditor == Layout.name_of(key):
                    reports[report.body.auditor] = report
            self._reports[round_number] = reports
        return self._reports[round_number]

    def _check_reply(
        self,
        reply: Reply,
        body_type: type[B],
        round_number: int,
        *,
        signer_field: str,
        max_bytes: int,
        nonce: str | None = None,
    ) -> Signed[B] | None:
        """Decode a vote-like reply; log and drop it when it is not the asked node's own."""
        if reply.data is None:
            log.info("node %s: no answer (%s)", reply.node_id, reply.error)
            return None
        if len(reply.data) > max_bytes:
            log.warning(
                "node %s: reply refused: %d bytes, over the %d-byte cap",
                reply.node_id,
                len(reply.data),
                max_bytes,
            )
            return None
        try:
            record = decode(reply.data, body_type, where=f"from node {reply.node_id}")
        except RecordError as e:
            log.warning("node %s: reply refused: %s", reply.node_id, e.message)
            return None
        body = record.body
        if (
            record.signer != reply.node_id
            or getattr(body, signer_field) != reply.node_id
            or getattr(body, "task_id", None) != self.task_id
            or getattr(body, "round", None) != round_number
            or (nonce is not None and getattr(body, "nonce", None) != nonce)
        ):
            log.warning("node %s: reply refused: not its own for this round", reply.node_id)
            return None
        return record

    def tally(self, round_number: int) -> Tally:
        """Count the stored votes into verdicts and slashes (from the store: rerun-safe)."""
        if round_number in self._tallies:
            return self._tallies[round_number]
        stakes = self.stakes(round_number)
        accepted = self.accepted(round_number)
        verdicts = tally_votes(
            list(self.audit_reports(round_number).values()),
            assignments=self.assignments(round_number),
            submission_hashes={n: r.body.submission.hash for n, r in accepted.items()},
        )
        refused = {}
        for key in self.store.list(self.layout.refusals(round_number)):
            refusal = decode(self.store.read(key), Refusal, where=key)
            refused[refusal.body.node_id] = refusal.body.reason
        # Slashes take a fraction of what is left after every earlier round's slashes; by the
        # time round N's list is built (round N+2), round N-1 has settled.
        left = self.ledger.stakes(self._registered(), through_round=round_number - 1)
        slashes = {
            node: amount
            for node, verdict in sorted(verdicts.items())
            if verdict.slashable
            and (amount := slash_amount(max(0, left.get(node, 0)), self.config.slash_fraction)) > 0
        }
        tally = Tally(
            round=round_number,
            stakes=stakes,
            eligible=self.eligible(round_number),
            accepted=accepted,
            refused=refused,
            verdicts=verdicts,
            slashes=slashes,
        )
        self._tallies[round_number] = tally
        return tally

    # --- distribution ----------------------------------------------------------------------

    def bounty(self, round_number: int) -> int:
        remaining = self.config.total_bounty_amount - self.ledger.credited_before(round_number)
        return max(0, min(self.config.bounty_amount_per_round, remaining))

    def distribution_inputs(self, tally: Tally) -> DistributionInputs:
        approved = []
        for node in tally.approved:
            record = tally.accepted[node].body
            verdict = tally.verdicts[node]
            approved.append(
                ApprovedNode(
                    node_id=node,
                    stake=tally.stakes.get(node, 0),
                    result=record.submission.body.result,
                    request_slot=record.submission.body.request_slot,
                    response_slot=record.submission.body.response_slot,
                    completion_slots=record.completion_slots,
                    completion_ms=record.completion_ms,
                    votes_for=verdict.votes_for,
                    votes_against=verdict.votes_against,
                )
            )
        return DistributionInputs(
            task_id=self.task_id,
            round=tally.round,
            bounty=self.bounty(tally.round),
            approved=tuple(approved),
            slashes=tally.slashes,
        )

    def distribute(self, round_number: int) -> DistributionOutcome:
        """Build and audit the list, retrying with other builders; at most one is accepted."""
        window = self.schedule.distribution_window_of(round_number)
        self.slot_clock.wait_for_slot(window.start)
        tally = self.tally(round_number)
        inputs = self.distribution_inputs(tally)
        if not inputs.approved:
            return DistributionOutcome(None, 0, ["no submission was approved this round"])
        request = self.request(round_number, Phase.DISTRIBUTION, window.start)
        builders: list[str] = []
        reasons: list[str] = []
        for attempt in range(self.config.allowed_failed_distributions + 1):
            builder = choose_builder(
                tuple(tally.approved),
                task_id=self.task_id,
                round_number=round_number,
                exclude=builders,
            )
            if builder is None:
                reasons.append(f"attempt {attempt}: no approved node left to build the list")
                break
            builders.append(builder)
            listed = self._distribution_list(request, inputs, builder, attempt)
            if isinstance(listed, str):
                reasons.append(f"attempt {attempt} by {builder}: {listed}")
                continue
            verdict = self._audit_list(round_number, attempt, inputs, listed, builder, tally)
            if verdict is None:
                return DistributionOutcome(listed, attempt + 1, reasons)
            reasons.append(f"attempt {attempt} by {builder}: {verdict}")
        return DistributionOutcome(None, len(builders), reasons)

    def _distribution_list(
        self,
        request: Signed[RoundRequest],
        inputs: DistributionInputs,
        builder: str,
        attempt: int,
    ) -> Signed[DistributionList] | str:
        key = self.layout.distribution(inputs.round, attempt)
        stored = self._load(key, DistributionList)
        if stored is not None:
            return stored
        reply = self.pool.build_distribution(request, builder, inputs, attempt)
        entries = len(inputs.approved) + len(inputs.slashes)
        listed = self._check_reply(
            reply,
            DistributionList,
            inputs.round,
            signer_field="builder",
            max_bytes=ENVELOPE_BYTES + LIST_ENTRY_BYTES * entries,
        )
        if listed is None:
            return f"no valid list ({reply.error or 'malformed or not its own'})"
        if listed.body.attempt != attempt:
            return "list is for another attempt"
        self._store(key, listed)
        return listed

    def _audit_list(
        self,
        round_number: int,
        attempt: int,
        inputs: DistributionInputs,
        listed: Signed[DistributionList],
        builder: str,
        tally: Tally,
    ) -> str | None:
        """None when the list is accepted, else why not."""
        self.slot_clock.wait_for_slot(
            self.schedule.distribution_audit_window_of(round_number).start
        )
        auditors = choose_list_auditors(
            tally.approved,
            task_id=self.task_id,
            round_number=round_number,
            attempt=attempt,
            builder=builder,
            k=self.config.auditors_per_submission,
        )
        request = self.request(
            round_number,
            Phase.DISTRIBUTION_AUDIT,
            self.schedule.distribution_audit_window_of(round_number).start,
        )
        votes: dict[str, DistributionAudit] = {}
        for auditor in auditors:
            stored = self._load(
                self.layout.distribution_audit(round_number, attempt, auditor), DistributionAudit
            )
            if stored is not None:
                votes[auditor] = stored.body
        todo = [a for a in auditors if a not in votes]
        for reply in self.pool.audit_distribution(request, todo, inputs, listed) if todo else []:
            vote = self._check_reply(
                reply,
                DistributionAudit,
                round_number,
                signer_field="auditor",
                max_bytes=ENVELOPE_BYTES + VOTE_BYTES,
            )
            if vote is None or vote.body.distribution_hash != listed.hash:
                continue
            self._store(self.layout.distribution_audit(round_number, attempt, reply.node_id), vote)
            votes[reply.node_id] = vote.body
        against = [v for v in votes.values() if not v.valid]
        in_favour = len(votes) - len(against)
        rule = check_credits(listed.body.credits, inputs)
        if rule is not None:
            return f"rejected: {rule}"
        if listed.body.inputs_hash != inputs.hash or listed.body.slashes != inputs.slashes:
            return "rejected: list was not built from this round's inputs"
        if auditors and in_favour <= len(against):
            why = against[0].reason if against else "no auditor answered"
            return f"rejected by {len(against)} of {len(votes)} auditors: {why}"
        return None

    # --- settle ----------------------------------------------------------------------------

    def settle(self, round_number: int, outcome: DistributionOutcome) -> Signed[LedgerEntry]:
        """Wait for the end of the distribution audit; append the round's ledger entry."""
        self.slot_clock.wait_for_slot(self.schedule.settle_slot(round_number))
        existing = self.ledger.entry(round_number)
        if existing is not None:
            return existing
        return append_entry(
            self.store,
            self.ledger,
            self.orchestrator,
            **self._entry_fields(round_number, outcome),
        )

    def entry_body(self, round_number: int, outcome: DistributionOutcome) -> LedgerEntry:
        """The round's ledger entry as its records say it must be, unsigned (what settle signs
        and appends; what a replay compares with the stored entry)."""
        return build_entry(self.ledger, **self._entry_fields(round_number, outcome))

    def _entry_fields(self, round_number: int, outcome: DistributionOutcome) -> dict[str, Any]:
        tally = self.tally(round_number)
        # Never slash more than is left, even if an earlier round settled late.
        left = self.ledger.stakes(self._registered())
        slashes = {n: min(a, max(0, left.get(n, 0))) for n, a in tally.slashes.items()}
        return {
            "task_id": self.task_id,
            "round_number": round_number,
            "bounty": self.bounty(round_number),
            "distribution": outcome.accepted,
            "attempts": outcome.attempts,
            "slashes": {n: a for n, a in slashes.items() if a > 0},
        }

    def result(
        self,
        round_number: int,
        *,
        already_settled: bool = False,
        reasons: Sequence[str] = (),
    ) -> RoundResult:
        """What happened to every registered node in a settled round, from the store."""
        entry = self.ledger.entry(round_number)
        if entry is None:
            raise RoundError(f"round {round_number} of task {self.task_id!r} is not settled")
        tally = self.tally(round_number)
        nodes = {}
        eligible = set(tally.eligible)
        minimum = self.config.minimum_stake_amount
        for node, reg in sorted(self.network.nodes.items()):
            reason = ""
            if node not in eligible:
                outcome, reason = Outcome.REFUSED, f"stake below minimum_stake_amount {minimum}"
            elif node in tally.verdicts:
                verdict = tally.verdicts[node]
                outcome = Outcome.APPROVED if verdict.approved else Outcome.REJECTED
                if not verdict.approved:
                    reason = "; ".join(sorted(set(verdict.reasons))) or "no majority of valid votes"
            elif node in tally.refused:
                outcome, reason = Outcome.REFUSED, tally.refused[node]
            else:
                outcome = Outcome.MISSING
                reason = self._silence.get(round_number, {}).get(node, "no answer")
            # Built from values checked when they were stored: not validated again (at 10,000
            # nodes validating them was 4% of a round, measured).
            nodes[node] = NodeResult.model_construct(
                behaviour=reg.behaviour,
                outcome=outcome,
                credit=entry.body.credits.get(node, 0),
                slash=entry.body.slashes.get(node, 0),
                reason=reason,
            )
        return RoundResult(
            task_id=self.task_id,
            round=round_number,
            bounty=entry.body.bounty,
            distribution_accepted=entry.body.distribution_accepted,
            attempts=entry.body.attempts,
            already_settled=already_settled,
            sequence=entry.body.sequence,
            ledger_hash=entry.hash,
            reasons=list(reasons),
            nodes=nodes,
        )

    # --- the whole round without Prefect ---------------------------------------------------

    def run(
        self, round_number: int, *, on_step: Callable[[str], None] | None = None
    ) -> RoundResult:
        """Run a round start to finish in this thread (the flow does the same, fanned out)."""
        with round_collection():
            return self._run(round_number, on_step or (lambda _name: None))

    def _run(self, round_number: int, step: Callable[[str], None]) -> RoundResult:
        if self.is_settled(round_number):
            return self.result(round_number, already_settled=True)
        self.open_round(round_number)
        for shard in self.shards(self.eligible(round_number)):
            self.execute_shard(round_number, shard)
        step("execute")
        assignments = self.plan_audits(round_number)
        for shard in self.shards(sorted(assignments)):
            self.audit_shard(round_number, assignments, shard)
        step("audit")
        outcome = self.distribute(round_number)
        step("distribute")
        self.settle(round_number, outcome)
        step("settle")
        return self.result(round_number, reasons=outcome.reasons)
