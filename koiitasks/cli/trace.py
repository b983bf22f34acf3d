"""`koiitasks trace NODE`: every record of one node in a round that already ran."""

from __future__ import annotations

from typing import Annotated

import typer

from koiitasks.cli._common import (
    JsonOption,
    StoreOption,
    TaskOption,
    open_store_at,
    out,
    resolve_task,
    store_url,
)


def trace(
    node: Annotated[
        str,
        typer.Argument(
            help="The start of a node id, or a behaviour (its first node), e.g. lazy.",
            show_default=False,
        ),
    ],
    round_number: Annotated[
        int | None,
        typer.Option("--round", help="The round to trace (default: the last settled one).", min=0),
    ] = None,
    store: StoreOption = None,
    task: TaskOption = None,
    json_out: JsonOption = False,
) -> None:
    """Print every record of one node in one round: why it was (not) paid.

    Its registration, the execute request, its submission or the refusal and its reason, each
    vote on it and whether it counted, its own audit report, the distribution lists that name
    it, its votes on them, and its line of the ledger entry. Examples:

        koiitasks trace lazy
        koiitasks trace 9xQe --round 4 --json
    """
    from koiitasks.errors import RoundError  # noqa: PLC0415 - keep --help fast
    from koiitasks.ledger import read_ledger  # noqa: PLC0415
    from koiitasks.network import load_network  # noqa: PLC0415
    from koiitasks.trace import resolve_node, trace_node  # noqa: PLC0415

    url = store_url(store)
    task_id = resolve_task(url, task)
    the_store = open_store_at(url)
    network = load_network(the_store, task_id)
    node_id = resolve_node(network.behaviours(), node)
    if round_number is None:
        head = read_ledger(the_store, task_id, orchestrator=network.record.signer).head
        if head is None:
            raise RoundError(
                f"task {task_id!r} in {url} has no settled round yet",
                hint="run a round first, or name one with --round",
            )
        round_number = head.body.round
    path = trace_node(the_store, task_id, round_number, node_id)
    if json_out:
        print("\n".join(path.json_lines()))
        return
    out.print("\n".join(path.lines()), markup=False, highlight=False, soft_wrap=True)
