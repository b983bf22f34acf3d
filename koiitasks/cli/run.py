"""`koiitasks run`: rounds of a task in the local sandbox."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path
from typing import Annotated, Any

import typer

from koiitasks.cli._common import JsonOption, StoreOption, err, out, setup_logging, store_url
from koiitasks.settings import load_settings


def run(
    task_dir: Annotated[Path, typer.Argument(help="Folder with config-task.yml and task.py.")],
    nodes: Annotated[
        int | None,
        typer.Option(help="Simulated nodes (new store: default 10; else the store's).", min=2),
    ] = None,
    rounds: Annotated[
        int | None, typer.Option(help="Run the next R rounds after the last settled one.", min=1)
    ] = None,
    round_number: Annotated[
        int | None,
        typer.Option(
            "--round", help="Run round N alone (a settled round is left as it is).", min=0
        ),
    ] = None,
    store: StoreOption = None,
    seed: Annotated[
        int | None, typer.Option(help="Make keys, records and ledger bytes reproducible.")
    ] = None,
    adversary: Annotated[
        list[str] | None,
        typer.Option(
            help="KIND=COUNT misbehaving nodes; repeatable. KIND: offline, lazy, forger, "
            "replayer, late, bad-auditor.",
        ),
    ] = None,
    workers: Annotated[
        int, typer.Option(help="Threads running hooks; 1 runs them in the main thread.", min=1)
    ] = 4,
    plain: Annotated[
        bool, typer.Option("--plain", help="Run the rounds without Prefect (no UI, faster start).")
    ] = False,
    dask: Annotated[
        str | None,
        typer.Option(
            "--dask",
            help="Run execute and audit shards on a Dask cluster: tcp://HOST:8786, or local[:N] "
            "for N worker processes here. Default: $KOII_DASK_ADDRESS. Needs a Prefect server "
            "(PREFECT_API_URL).",
            show_default=False,
        ),
    ] = None,
    json_out: JsonOption = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log every step.")] = False,
) -> None:
    """Run rounds of a task in the local sandbox: simulated nodes on a simulated slot clock.

    Each round is a Prefect flow run (unless `--plain`); without `PREFECT_API_URL` Prefect
    starts a temporary server for the run. Examples:

        koiitasks run examples/hash-puzzle --nodes 50 --rounds 3
        koiitasks run examples/hash-puzzle --nodes 20 --adversary lazy=2 --adversary offline=1
        koiitasks run examples/hash-puzzle --rounds 5 --json | jq .nodes
        koiitasks run examples/hash-puzzle --nodes 10000 --dask tcp://10.0.0.5:8786
    """
    setup_logging(verbose)
    from koiitasks.network import parse_adversaries  # noqa: PLC0415 - keep --help fast
    from koiitasks.sandbox import open_sandbox  # noqa: PLC0415

    if rounds is not None and round_number is not None:
        raise typer.BadParameter("give --rounds or --round, not both")
    if dask is not None and plain:
        raise typer.BadParameter("--plain runs without Prefect; --dask needs it: give one")
    url = store_url(store)
    adversaries = parse_adversaries(adversary) if adversary else None
    options: dict[str, Any] = {
        "store": url,
        "nodes": nodes,
        "seed": seed,
        "adversaries": adversaries,
        "workers": workers,
        "s3_endpoint_url": load_settings().s3_endpoint_url,
    }
    sandbox = open_sandbox(task_dir, **options)
    plan = sandbox.plan(
        rounds=rounds if rounds or round_number is not None else 1, round_number=round_number
    )
    address = None if plain else dask or load_settings().dask_address
    stack = ExitStack()
    if address:
        from koiitasks.cli._dask import dask_round_runner  # noqa: PLC0415 - Dask only when asked

        task_dir_text = str(sandbox.loaded.directory)
        runner = stack.enter_context(dask_round_runner(task_dir_text, options, address))
    else:
        runner = (
            _plain_runner(sandbox)
            if plain
            else _flow_runner(str(sandbox.loaded.directory), options)
        )
    show_progress = not json_out and err.is_terminal
    from rich.progress import Progress  # noqa: PLC0415

    with stack, Progress(console=err, transient=True, disable=not show_progress) as progress:
        bar = progress.add_task(f"{sandbox.loaded.task_id}", total=len(plan))
        for number in plan:
            progress.update(bar, description=f"{sandbox.loaded.task_id} round {number}")
            result = runner(number)
            progress.advance(bar)
            if json_out:
                print(result.model_dump_json(), flush=True)
            else:
                out.print(result.summary(), markup=False, highlight=False, soft_wrap=True)
    if not json_out:
        ledger = sandbox.engine.ledger
        out.print(
            f"ledger: {len(ledger.entries)} settled rounds, {ledger.total_credited:,} of "
            f"{sandbox.loaded.config.total_bounty_amount:,} credited, "
            f"{ledger.total_slashed:,} slashed. Check it: koiitasks ledger verify --store {url}",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )


def _plain_runner(sandbox: Any) -> Any:
    return sandbox.run_round


def _flow_runner(task_dir: str, options: dict[str, Any]) -> Any:
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings  # noqa: PLC0415

    from flows.round import sandbox_round  # noqa: PLC0415
    from koiitasks.round_result import RoundResult  # noqa: PLC0415

    def run_one(number: int) -> RoundResult:
        # The heartbeat only matters to a server watching long runs; it adds ~1 s per flow run.
        with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
            data = sandbox_round(task_dir=task_dir, round_number=number, **options)
        return RoundResult.model_validate_json(data)

    return run_one
