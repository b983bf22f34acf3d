"""`koiitasks rounds replay`: recompute settled rounds from their signed records."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from koiitasks.cli._common import (
    JsonOption,
    StoreOption,
    TaskOption,
    is_folder,
    json_stdout,
    note_unsettled,
    open_store_at,
    out,
    resolve_task,
    store_url,
)

app = typer.Typer(help="Look into a task's rounds.", no_args_is_help=True)


@app.command("replay")
def rounds_replay(
    store: StoreOption = None,
    task: TaskOption = None,
    round_number: Annotated[
        int | None,
        typer.Option("--round", help="Replay round N alone (default: every settled round).", min=0),
    ] = None,
    json_out: JsonOption = False,
) -> None:
    """Recompute settled rounds from their signed records alone and compare with the ledger.

    Every record of the round is checked (signature, signer, task, round), the votes are tallied
    again into verdicts and slashes, the distribution lists and their audits are judged again,
    and the ledger entry they call for is compared field by field with the stored one. Given the
    task folder as --task, the paid list is also recomputed with the task's distribute hook.
    Nothing is written and no node is asked. Exits 0 when every round matches, 1 otherwise.

        koiitasks rounds replay --round 7
        koiitasks rounds replay --store s3://bucket/prefix --task examples/hash-puzzle --json
    """
    from koiitasks.replay import Replayer  # noqa: PLC0415 - keep --help fast
    from koiitasks.task import load_task  # noqa: PLC0415

    url = store_url(store)
    task_id = resolve_task(url, task)
    loaded = load_task(task) if task is not None and is_folder(task) else None
    replayer = Replayer(open_store_at(url), task_id, task=loaded)
    rounds = None if round_number is None else [round_number]
    mismatched = 0
    with json_stdout(json_out) as stdout:  # the distribute hook may print
        for result in replayer.replay_all(rounds):
            mismatched += not result.matches
            if json_out:
                print(json.dumps(result.to_json()), file=stdout, flush=True)
                continue
            out.print(result.summary(), markup=False, highlight=False, soft_wrap=True)
            for difference in result.differences:
                out.print(f"  - {difference}", markup=False, highlight=False, soft_wrap=True)
    if round_number is None:
        note_unsettled(replayer.unsettled)
    if mismatched:
        raise typer.Exit(1)
