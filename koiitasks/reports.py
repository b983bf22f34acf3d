"""Readable reports of rounds and ledgers: Prefect artifacts and terminal tables share them."""

from __future__ import annotations

import re
from typing import Any

from koiitasks.model import Outcome
from koiitasks.round_result import RoundResult


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
        lines += [
            "",
            "## Nodes not paid",
            "",
            "| node | outcome | slash | reason |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| `{node}` | {n.outcome.value} | {n.slash} | {n.reason} |" for node, n in unpaid
        ]
    return "\n".join(lines)
