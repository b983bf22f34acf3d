"""One node's way through one round, from the records the store holds.

``koiitasks run --trace NODE`` and ``koiitasks trace NODE`` answer "what happened to this node,
and why was it (not) paid?" by reading every record that concerns it, in the order the round
made them: its registration, the execute request, its submission or the refusal with its
reason, each vote cast on it (and whether that vote counted), the report it sent as an auditor,
the distribution lists that name it, its audit votes on those lists, and its line of the
ledger entry. Every record is decoded and its signature checked; the CLI only renders.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from pydantic import JsonValue

from koiitasks.audit import assign_audits, auditors_of
from koiitasks.config import TaskConfig
from koiitasks.errors import ConfigError
from koiitasks.model import KoiiModel, Phase
from koiitasks.network import load_network
from koiitasks.protocol import (
    AcceptedSubmission,
    AuditReport,
    Body,
    DistributionAudit,
    DistributionList,
    LedgerEntry,
    Refusal,
    RoundRequest,
    Signed,
    decode,
)
from koiitasks.storage import Layout, Store


class TraceEvent(KoiiModel):
    """One record that concerns the traced node, and what it says."""

    record: str
    """``registration``, ``request``, ``submission``, ``refusal``, ``missing``, ``vote``,
    ``audit-report``, ``distribution``, ``distribution-audit`` or ``ledger``."""
    key: str | None
    """The record's store key (None for what the store does not hold: a missing answer)."""
    slot: int | None
    text: str
    """One line a person reads."""
    data: dict[str, JsonValue]


class NodeTrace(KoiiModel):
    """Every record of one node in one round, in the order the round made them."""

    task_id: str
    round: int
    node_id: str
    behaviour: str
    events: list[TraceEvent]

    def lines(self) -> list[str]:
        """The trace as text: a heading, then one line per record."""
        heading = f"trace of node {self.node_id} ({self.behaviour}), round {self.round}:"
        rows = [
            f"  {'slot ' + str(e.slot) if e.slot is not None else '':>10}  {e.record:<18} {e.text}"
            for e in self.events
        ]
        return [heading, *rows]

    def json_lines(self) -> list[str]:
        """The trace as JSON lines, one per record, each marked ``"kind": "trace"``."""
        head = {"kind": "trace", "task_id": self.task_id, "round": self.round}
        head["node_id"] = self.node_id
        return [json.dumps({**head, **e.model_dump(mode="json")}) for e in self.events]


def short(node_id: str) -> str:
    """A node id cut to a readable length."""
    return node_id[:8] + "…" if len(node_id) > 9 else node_id


def resolve_node(behaviours: Mapping[str, str], query: str) -> str:
    """The node a ``--trace`` argument names: a behaviour (its first node), or an id prefix."""
    by_behaviour = sorted(node for node, kind in behaviours.items() if kind == query)
    if by_behaviour:
        return by_behaviour[0]
    matches = sorted(node for node in behaviours if node.startswith(query))
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise ConfigError(
            f"no node of this network matches {query!r}",
            hint="give the start of a node id (see `koiitasks ledger show`) or a behaviour "
            f"such as {', '.join(sorted(set(behaviours.values())))}",
        )
    raise ConfigError(
        f"{query!r} matches {len(matches)} nodes ({', '.join(short(m) for m in matches[:4])}"
        f"{', ...' if len(matches) > 4 else ''})",
        hint="give more characters of the node id",
    )


class _Reader:
    """Decodes a round's records, each at most once."""

    def __init__(self, store: Store, layout: Layout) -> None:
        self.store = store
        self.layout = layout

    def one(self, key: str, body_type: type[Body]) -> Signed[Body] | None:
        raw = self.store.read_or_none(key)
        return None if raw is None else decode(raw, body_type, where=key)

    def all(self, prefix: str, body_type: type[Body]) -> dict[str, Signed[Body]]:
        return {
            key: decode(self.store.read(key), body_type, where=key)
            for key in self.store.list(prefix)
        }


def _slots(count: int) -> str:
    return f"{count} slot" if count == 1 else f"{count} slots"


def _result_preview(result: JsonValue, limit: int = 80) -> str:
    text = json.dumps(result, sort_keys=True)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def trace_node(store: Store, task_id: str, round_number: int, node_id: str) -> NodeTrace:
    """Every record in ``store`` that concerns ``node_id`` in round ``round_number``."""
    network = load_network(store, task_id)
    if node_id not in network.nodes:
        raise ConfigError(f"node {node_id} is not registered for task {task_id!r}")
    layout = Layout(task_id)
    read = _Reader(store, layout)
    registration = network.nodes[node_id]
    events = [
        TraceEvent(
            record="registration",
            key=layout.node(node_id),
            slot=None,
            text=f"registered with stake {registration.stake:,}",
            data={"stake": registration.stake, "behaviour": registration.behaviour},
        )
    ]
    request_key = f"{layout.round(round_number)}requests/{Phase.EXECUTE.value}.json"
    request = read.one(request_key, RoundRequest)
    if request is None and not store.children(layout.round(round_number)):
        entries = [k for k in store.list(layout.ledger) if Layout.name_of(k).isdigit()]
        last = (
            f"the last settled is round {Layout.round_of_ledger_key(entries[-1])}"
            if entries
            else "no round has settled yet"
        )
        raise ConfigError(
            f"round {round_number} of task {task_id!r} never ran in {store.url} ({last})",
            hint="trace a round that ran: leave out --round for the last settled one",
        )
    if request is not None:
        body: RoundRequest = request.body  # type: ignore[assignment]
        events.append(
            TraceEvent(
                record="request",
                key=request_key,
                slot=body.request_slot,
                text=f"execute request for every node (nonce {body.nonce[:12]})",
                data={"request_slot": body.request_slot, "nonce": body.nonce},
            )
        )
    accepted = {
        Layout.name_of(key): record
        for key, record in read.all(layout.submissions(round_number), AcceptedSubmission).items()
    }
    events += _answer(read, layout, round_number, node_id, accepted)
    k = TaskConfig.model_validate(network.task.config).auditors_per_submission
    events += _votes(read, layout, task_id, round_number, node_id, accepted, k)
    events += _distributions(read, layout, round_number, node_id)
    events += _ledger(read, layout, round_number, node_id)
    return NodeTrace(
        task_id=task_id,
        round=round_number,
        node_id=node_id,
        behaviour=registration.behaviour,
        events=events,
    )


def _answer(
    read: _Reader,
    layout: Layout,
    round_number: int,
    node_id: str,
    accepted: Mapping[str, Signed[Body]],
) -> list[TraceEvent]:
    record = accepted.get(node_id)
    if record is not None:
        body: AcceptedSubmission = record.body  # type: ignore[assignment]
        sub = body.submission.body
        return [
            TraceEvent(
                record="submission",
                key=layout.submission(round_number, node_id),
                slot=body.received_slot,
                text=f"accepted: asked at slot {sub.request_slot}, answered at slot "
                f"{sub.response_slot} ({_slots(body.completion_slots)}, {body.completion_ms} ms); "
                f"result {_result_preview(sub.result)}",
                data={
                    "request_slot": sub.request_slot,
                    "response_slot": sub.response_slot,
                    "received_slot": body.received_slot,
                    "completion_slots": body.completion_slots,
                    "completion_ms": body.completion_ms,
                    "result": sub.result,
                    "submission_hash": body.submission.hash,
                },
            )
        ]
    refusal = read.one(layout.refusal(round_number, node_id), Refusal)
    if refusal is not None:
        refused: Refusal = refusal.body  # type: ignore[assignment]
        return [
            TraceEvent(
                record="refusal",
                key=layout.refusal(round_number, node_id),
                slot=refused.received_slot,
                text=f"answer refused: {refused.reason}",
                data={"reason": refused.reason, "received_slot": refused.received_slot},
            )
        ]
    return [
        TraceEvent(
            record="missing",
            key=None,
            slot=None,
            text="no answer stored: offline, its execute hook failed, or it timed out",
            data={},
        )
    ]


def _votes(
    read: _Reader,
    layout: Layout,
    task_id: str,
    round_number: int,
    node_id: str,
    accepted: Mapping[str, Signed[Body]],
    k: int,
) -> list[TraceEvent]:
    assignments = assign_audits(accepted, task_id=task_id, round_number=round_number, k=k)
    my_auditors = set(auditors_of(assignments).get(node_id, []))
    my_hash = accepted[node_id].body.submission.hash if node_id in accepted else None  # type: ignore[attr-defined]
    events: list[TraceEvent] = []
    voted: set[str] = set()
    for key, record in read.all(layout.audits(round_number), AuditReport).items():
        report: AuditReport = record.body  # type: ignore[assignment]
        for vote in report.votes:
            if vote.submitter != node_id:
                continue
            voted.add(report.auditor)
            counted = report.auditor in my_auditors and vote.submission_hash == my_hash
            verdict = "valid" if vote.valid else f"invalid ({vote.reason or 'no reason given'})"
            events.append(
                TraceEvent(
                    record="vote",
                    key=key,
                    slot=None,
                    text=f"{short(report.auditor)} voted {verdict}"
                    + ("" if counted else " [not counted: not its assignment]"),
                    data={
                        "auditor": report.auditor,
                        "valid": vote.valid,
                        "reason": vote.reason,
                        "counted": counted,
                    },
                )
            )
        if report.auditor == node_id:
            invalid = [v for v in report.votes if not v.valid]
            events.append(
                TraceEvent(
                    record="audit-report",
                    key=key,
                    slot=None,
                    text=f"as auditor: {len(report.votes)} votes, {len(invalid)} invalid"
                    + "".join(
                        f"; {short(v.submitter)} invalid ({v.reason or 'no reason given'})"
                        for v in invalid
                    ),
                    data={
                        "votes": [v.model_dump(mode="json") for v in report.votes],
                    },
                )
            )
    events.extend(
        TraceEvent(
            record="vote",
            key=None,
            slot=None,
            text=f"{short(auditor)} was to audit it and cast no vote",
            data={"auditor": auditor, "valid": None, "reason": "", "counted": False},
        )
        for auditor in sorted(my_auditors - voted)
    )
    if node_id in assignments and not read.store.exists(layout.audit(round_number, node_id)):
        events.append(
            TraceEvent(
                record="audit-report",
                key=None,
                slot=None,
                text=f"as auditor: was to audit {len(assignments[node_id])} submissions and "
                "sent no report",
                data={"votes": []},
            )
        )
    return events


def _distributions(
    read: _Reader, layout: Layout, round_number: int, node_id: str
) -> list[TraceEvent]:
    events: list[TraceEvent] = []
    for key, record in read.all(layout.distributions(round_number), DistributionList).items():
        listed: DistributionList = record.body  # type: ignore[assignment]
        role = "built by it" if listed.builder == node_id else f"built by {short(listed.builder)}"
        credit = listed.credits.get(node_id)
        slash = listed.slashes.get(node_id)
        events.append(
            TraceEvent(
                record="distribution",
                key=key,
                slot=None,
                text=f"attempt {listed.attempt}, {role}: "
                + (f"lists a credit of {credit:,}" if credit is not None else "no credit for it")
                + (f", a slash of {slash:,}" if slash is not None else ""),
                data={
                    "attempt": listed.attempt,
                    "builder": listed.builder,
                    "credit": credit,
                    "slash": slash,
                },
            )
        )
        own_key = layout.distribution_audit(round_number, listed.attempt, node_id)
        own = read.one(own_key, DistributionAudit)
        if own is not None:
            vote: DistributionAudit = own.body  # type: ignore[assignment]
            events.append(
                TraceEvent(
                    record="distribution-audit",
                    key=own_key,
                    slot=None,
                    text=f"it voted attempt {listed.attempt}'s list "
                    + ("valid" if vote.valid else f"invalid ({vote.reason or 'no reason given'})"),
                    data={"attempt": listed.attempt, "valid": vote.valid, "reason": vote.reason},
                )
            )
    return events


def _ledger(read: _Reader, layout: Layout, round_number: int, node_id: str) -> list[TraceEvent]:
    key = layout.ledger_entry(round_number)
    record = read.one(key, LedgerEntry)
    if record is None:
        return [TraceEvent(record="ledger", key=None, slot=None, text="round not settled", data={})]
    entry: LedgerEntry = record.body  # type: ignore[assignment]
    credit, slash = entry.credits.get(node_id, 0), entry.slashes.get(node_id, 0)
    status = "distribution accepted" if entry.distribution_accepted else "distribution failed"
    return [
        TraceEvent(
            record="ledger",
            key=key,
            slot=None,
            text=f"entry #{entry.sequence} ({status}): credited {credit:,}, slashed {slash:,}",
            data={"sequence": entry.sequence, "credit": credit, "slash": slash},
        )
    ]
