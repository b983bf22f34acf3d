"""Readable reports of rounds and ledgers: Prefect artifacts and terminal tables share them."""

from __future__ import annotations

import re
from typing import Any

from koiitasks.ledger import LedgerState
from koiitasks.model import Outcome
from koiitasks.network import Network
from koiitasks.round_result import RoundResult

#: The round summary lists at most this many nodes that were not paid (slashed ones first):
#: a Markdown table of thousands is unreadable, and too large for one Prefect event.
UNPAID_LISTED = 100


def artifact_key(task_id: str, name: str) -> str:
    """A Prefect artifact key: lowercase letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9-]+", "-", f"{task_id}-{name}".lower()).strip("-")


def payouts_table(result: RoundResult) -> list[dict[str, Any]]:
    """One row per node: behaviour, outcome, credit, slash and why."""
    return [
        {
            "node": node,
            "behaviour": n.behaviour,
            "outcome": n.outcome.value,
            "credit": n.credit,
            "slash": n.slash,
            "reason": n.reason,
        }
        for node, n in sorted(result.nodes.items(), key=lambda kv: (-kv[1].credit, kv[0]))
    ]


def payouts_first(row: dict[str, Any]) -> tuple[bool, int, int]:
    """Which payouts rows a table too large to show whole keeps: every node not paid (the
    slashed ones first), then the largest credits."""
    return (row["outcome"] == Outcome.APPROVED.value, -row["slash"], -row["credit"])


def payouts_rest(round_number: int) -> str:
    """What a payouts table too large to show whole says of the rows it kept and the rest."""
    return (
        "Kept first: the nodes not paid (the slashed ones first), then the largest credits;"
        f" `koiitasks trace NODE --round {round_number}` explains any node."
    )


def round_markdown(result: RoundResult) -> str:
    """The round summary as Markdown."""
    counts = result.counts()
    lines = [
        f"# {result.task_id} round {result.round}",
        "",
        result.summary(),
        "",
        "| outcome | nodes |",
        "|---|---|",
        *(f"| {o.value} | {counts.get(o.value, 0)} |" for o in Outcome),
        "",
        f"- bounty: {result.bounty:,}; credited: {result.credited:,}; slashed: {result.slashed:,}",
        f"- distribution accepted: {result.distribution_accepted} after {result.attempts} try",
        f"- ledger entry #{result.sequence}: `{result.ledger_hash}`",
    ]
    if result.reasons:
        lines += ["", "## Distribution attempts that failed", ""]
        lines += [f"- {reason}" for reason in result.reasons]
    unpaid = [
        (node, n) for node, n in sorted(result.nodes.items()) if n.outcome != Outcome.APPROVED
    ]
    if unpaid:
        ranked = sorted(unpaid, key=lambda item: (-item[1].slash, item[0]))
        listed = {node for node, _ in ranked[:UNPAID_LISTED]}
        lines += [
            "",
            "## Nodes not paid",
            "",
            "| node | outcome | slash | reason |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| `{node}` | {n.outcome.value} | {n.slash} | {n.reason} |"
            for node, n in unpaid
            if node in listed
        ]
        if len(unpaid) > len(listed):
            more = len(unpaid) - len(listed)
            lines.append(
                f"\nAnd {more:,} more nodes not paid, none slashed more than those listed:"
                f" `koiitasks trace NODE --round {result.round}` explains any node."
            )
    return "\n".join(lines)


def balances_table(ledger: LedgerState, network: Network) -> list[dict[str, Any]]:
    """One row per registered node: what the ledger has paid it so far and the stake it has
    left (a deployed task's "latest balances" artifact)."""
    registered = {node: reg.stake for node, reg in network.nodes.items()}
    stakes = ledger.stakes(registered)
    balances = ledger.balances()
    paid_rounds = {
        node: sum(1 for e in ledger.entries if e.body.credits.get(node)) for node in registered
    }
    rows = [
        {
            "node": node,
            "behaviour": reg.behaviour,
            "balance": balances.get(node, 0),
            "stake": stakes.get(node, 0),
            "slashed": registered[node] - stakes.get(node, 0),
            "rounds_paid": paid_rounds[node],
        }
        for node, reg in network.nodes.items()
    ]
    return sorted(rows, key=lambda row: (-row["balance"], row["node"]))


def balances_first(row: dict[str, Any]) -> tuple[bool, int]:
    """Which balances rows a table too large to show whole keeps: every node slashed, then the
    largest balances."""
    return (row["slashed"] == 0, -row["balance"])


#: What a balances table too large to show whole says of the rows it kept and the rest.
BALANCES_REST = (
    "Kept first: the nodes slashed, then the largest balances; `koiitasks ledger show` lists"
    " every node."
)


def missed_markdown(task_id: str, round_number: int, reason: str) -> str:
    """The summary of a round that was recorded as missed."""
    return "\n".join(
        [
            f"# {task_id} round {round_number}: missed",
            "",
            f"Round {round_number} did not run in its windows and paid nobody: {reason}.",
            "",
            "Its ledger entry, written when a later round settles, credits and slashes nothing.",
        ]
    )
