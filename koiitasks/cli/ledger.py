"""`koiitasks ledger show` and `ledger verify`."""

from __future__ import annotations

import json
import re
from typing import Annotated

import typer
from rich.table import Table

from koiitasks.cli._common import (
    JsonOption,
    StoreOption,
    TaskOption,
    is_folder,
    json_stdout,
    note_unsettled,
    open_store_at,
    out,
    replay_progress,
    resolve_task,
    store_url,
)
from koiitasks.errors import ConfigError

app = typer.Typer(help="Inspect and verify a task's reward ledger.", no_args_is_help=True)


@app.command("show")
def ledger_show(
    store: StoreOption = None, task: TaskOption = None, json_out: JsonOption = False
) -> None:
    """Balances, stakes and totals per node, from the ledger.

    Examples:

        koiitasks ledger show
        koiitasks ledger show --json | jq .balances

    It trusts the records as stored; `koiitasks ledger verify` checks them.
    """
    from koiitasks.config import TaskConfig  # noqa: PLC0415
    from koiitasks.ledger import read_ledger  # noqa: PLC0415
    from koiitasks.network import load_network  # noqa: PLC0415

    url = store_url(store)
    task_id = resolve_task(url, task)
    the_store = open_store_at(url)
    network = load_network(the_store, task_id)
    state = read_ledger(the_store, task_id, orchestrator=network.record.signer)
    config = TaskConfig.model_validate(network.task.config)
    balances = state.balances()
    stakes = state.stakes({n: r.stake for n, r in network.nodes.items()})
    doc = {
        "task_id": task_id,
        "orchestrator": network.record.signer,
        "settled_rounds": [e.body.round for e in state.entries],
        "balances": {n: balances.get(n, 0) for n in sorted(network.nodes)},
        "stakes": dict(sorted(stakes.items())),
        "total_credited": state.total_credited,
        "total_slashed": state.total_slashed,
        "bounty_remaining": config.total_bounty_amount - state.total_credited,
    }
    if json_out:
        print(json.dumps(doc))
        return
    table = Table(title=f"{task_id}: {len(state.entries)} settled rounds")
    for column in ("node", "behaviour", "balance", "stake"):
        table.add_column(column, justify="right" if column in {"balance", "stake"} else "left")
    for node in sorted(network.nodes, key=lambda n: (-balances.get(n, 0), n)):
        table.add_row(
            node, network.nodes[node].behaviour, f"{balances.get(node, 0):,}", f"{stakes[node]:,}"
        )
    out.print(table)
    out.print(
        f"credited {state.total_credited:,}, slashed {state.total_slashed:,}, "
        f"bounty remaining {doc['bounty_remaining']:,}",
        highlight=False,
    )


@app.command("verify")
def ledger_verify(
    store: StoreOption = None,
    task: TaskOption = None,
    orchestrator: Annotated[
        str | None,
        typer.Option(help="Expected orchestrator public key; default: the one task.json names."),
    ] = None,
    head: Annotated[
        str | None,
        typer.Option(
            help="Hash (12+ hex digits) of the head entry an earlier verify printed: fail if the "
            "ledger no longer reaches it (newest entries cut off).",
        ),
    ] = None,
    ledger_only: Annotated[
        bool,
        typer.Option(
            "--ledger-only",
            help="Check the ledger alone, not every settled round's records (quicker on huge "
            "stores; a changed submission or vote then goes unnoticed).",
        ),
    ] = False,
    json_out: JsonOption = False,
) -> None:
    """Check every signature, the hash chain and conservation, then replay every settled round
    from its signed records, offline. Given the task folder as --task, each paid list is also
    recomputed with the task's distribute hook.

    Exits 0 when everything holds, 1 naming the first bad record or round otherwise.
    """
    from koiitasks.ledger import verify_ledger  # noqa: PLC0415
    from koiitasks.replay import verify_task  # noqa: PLC0415
    from koiitasks.task import load_task  # noqa: PLC0415

    if orchestrator is not None and not re.fullmatch(r"[1-9A-HJ-NP-Za-km-z]{32,44}", orchestrator):
        raise ConfigError(
            f"--orchestrator {orchestrator!r} is not a public key",
            hint="give the orchestrator's id: 32 to 44 base58 characters, as task.json names it",
        )
    url = store_url(store)
    task_id = resolve_task(url, task)
    the_store = open_store_at(url)
    if ledger_only and head is None:
        report, replayed = verify_ledger(the_store, task_id, orchestrator=orchestrator), 0
        checked, head_hash = report.records_checked, None
        unsettled: tuple[int, ...] = ()
    else:
        with (
            json_stdout(json_out),  # the distribute hook may print
            replay_progress(f"verifying {task_id}", shown=not json_out) as progress,
        ):
            verified = verify_task(
                the_store,
                task_id,
                orchestrator=orchestrator,
                head=head,
                progress=progress,
                task=load_task(task) if task is not None and is_folder(task) else None,
            )
        report, replayed = verified.ledger, verified.rounds_replayed
        checked, head_hash = verified.records_checked, verified.head_hash
        unsettled = verified.unsettled
    if json_out:
        doc = {
            **report.__dict__,
            "records_checked": checked,
            "rounds_replayed": replayed,
            "head": head_hash,
            "unsettled_rounds": list(unsettled),
        }
        print(json.dumps({"ok": True, **doc}))
        return
    rounds = f"; {replayed} rounds replayed from their records" if replayed else ""
    anchor = f"; head {head_hash}" if head_hash else ""
    out.print(
        f"ok: {report.entries} ledger entries of task {report.task_id} verified "
        f"({checked} records{rounds}; orchestrator {report.orchestrator}); "
        f"credited {report.total_credited:,}, slashed {report.total_slashed:,}{anchor}",
        highlight=False,
        soft_wrap=True,
    )
    note_unsettled(unsettled)
