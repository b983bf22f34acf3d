"""`koiitasks run`: rounds of a task in the local sandbox."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path
from typing import Annotated, Any

import typer

from koiitasks.cli._common import (
    JsonOption,
    StoreOption,
    err,
    json_stdout,
    out,
    setup_logging,
    store_url,
)
from koiitasks.cli._dask import check_dask_ready, dask_options, dask_round_runner
from koiitasks.sandbox import MAX_PLANNED_ROUNDS
from koiitasks.settings import load_settings


def run(
    task_dir: Annotated[Path, typer.Argument(help="Folder with config-task.yml and task.py.")],
    nodes: Annotated[
        int | None,
        typer.Option(help="Simulated nodes (new store: default 10; else the store's).", min=2),
    ] = None,
    rounds: Annotated[
        int | None,
        typer.Option(
            help="Run the next R rounds after the last settled one (at most 1,000,000).",
            min=1,
            max=MAX_PLANNED_ROUNDS,
        ),
    ] = None,
    round_number: Annotated[
        int | None,
        typer.Option(
            "--round",
            help="Run round N alone (a settled round is left as it is).",
            min=0,
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
        int,
        typer.Option(
            help="Threads running hooks, at most: more than one are used only while hooks "
            "wait (I/O, sleeps), as hooks that compute only contend for Python's GIL. 1 runs "
            "every hook in the main thread, one after another, so a breakpoint() in a hook "
            "stops there.",
            min=1,
        ),
    ] = 4,
    trace: Annotated[
        str | None,
        typer.Option(
            "--trace",
            metavar="NODE",
            help="After each round, print every record of one node: its request, answer or "
            "refusal, the votes on it, its own votes, distribution lists and ledger line. NODE "
            "is the start of a node id or a behaviour (its first node), e.g. lazy.",
        ),
    ] = None,
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
    remote: Annotated[
        bool,
        typer.Option(
            "--remote",
            help="Run on the nodes registered in the store (`koiitasks node register`), on the "
            "wall clock, instead of simulated nodes.",
        ),
    ] = False,
    key: Annotated[
        Path | None,
        typer.Option(help="With --remote: the orchestrator's key file (`koiitasks node keygen`)."),
    ] = None,
    skew_tolerance_slots: Annotated[
        int,
        typer.Option(help="With --remote: slots a node's clock may run ahead of ours.", min=0),
    ] = 1,
) -> None:
    """Run rounds of a task in the local sandbox: simulated nodes on a simulated slot clock.

    Each round is a Prefect flow run (unless `--plain`); without `PREFECT_API_URL` Prefect
    starts a temporary server for the run. Examples:

        koiitasks run examples/hash-puzzle --nodes 50 --rounds 3
        koiitasks run examples/hash-puzzle --nodes 20 --adversary lazy=2 --adversary offline=1
        koiitasks run examples/hash-puzzle --rounds 5 --json | jq .nodes
        koiitasks run examples/hash-puzzle --adversary lazy=1 --trace lazy
        koiitasks run examples/hash-puzzle --workers 1    # then breakpoint() in a hook stops
        koiitasks run examples/hash-puzzle --remote --key orchestrator.json --rounds 3
        koiitasks run examples/hash-puzzle --nodes 10000 --dask tcp://10.0.0.5:8786
    """
    setup_logging(verbose)
    from koiitasks.network import parse_adversaries  # noqa: PLC0415 - keep --help fast
    from koiitasks.sandbox import open_sandbox  # noqa: PLC0415
    from koiitasks.trace import resolve_node, trace_node  # noqa: PLC0415

    if rounds is not None and round_number is not None:
        raise typer.BadParameter("give --rounds or --round, not both")
    if dask is not None and (plain or remote):
        raise typer.BadParameter(
            "--dask runs sandbox rounds' shards as Prefect tasks: not with --plain or --remote"
        )
    url = store_url(store)
    if remote:
        from koiitasks.cli.remote import run_remote  # noqa: PLC0415

        run_remote(
            task_dir,
            store=url,
            key=key,
            rounds=rounds,
            round_number=round_number,
            plain=plain,
            json_out=json_out,
            skew_tolerance_slots=skew_tolerance_slots,
            sandbox_options={"nodes": nodes, "seed": seed, "adversary": adversary},
        )
        return
    adversaries = parse_adversaries(adversary) if adversary else None
    options: dict[str, Any] = {
        "store": url,
        "nodes": nodes,
        "seed": seed,
        "adversaries": adversaries,
        "workers": workers,
        "s3_endpoint_url": load_settings().s3_endpoint_url,
    }
    address = None if plain else dask or load_settings().dask_address
    options |= dask_options(address)
    # Before the store is written: a run refused for its Prefect or Dask leaves no network.
    if address:
        check_dask_ready(url, address)
    elif not plain:
        from koiitasks.cli._prefect import reach_prefect_api  # noqa: PLC0415

        reach_prefect_api()
    sandbox = open_sandbox(task_dir, **options)
    traced = resolve_node(sandbox.network.behaviours(), trace) if trace is not None else None
    plan = sandbox.plan(
        rounds=rounds if rounds or round_number is not None else 1, round_number=round_number
    )
    stack = ExitStack()
    runner = _runner(stack, sandbox, options, plain=plain, address=address, verbose=verbose)
    # A live progress bar would draw over a debugger stopped in a hook (--workers 1).
    show_progress = not json_out and err.is_interactive and workers > 1
    from rich.progress import Progress  # noqa: PLC0415

    with (
        stack,
        json_stdout(json_out) as stdout,
        Progress(console=err, transient=True, disable=not show_progress) as progress,
    ):
        bar = progress.add_task(f"{sandbox.loaded.task_id}", total=len(plan))
        for number in plan:
            progress.update(bar, description=f"{sandbox.loaded.task_id} round {number}")
            result = runner(number)
            progress.advance(bar)
            if json_out:
                print(result.model_dump_json(), file=stdout, flush=True)
            else:
                out.print(result.report(), markup=False, highlight=False, soft_wrap=True)
            if traced is not None:
                path = trace_node(sandbox.store, sandbox.loaded.task_id, number, traced)
                if json_out:  # one line per record, "kind": "trace", after the round's line
                    print("\n".join(path.json_lines()), file=stdout, flush=True)
                else:
                    out.print(
                        "\n".join(path.lines()), markup=False, highlight=False, soft_wrap=True
                    )
    if not json_out:
        ledger = sandbox.engine.ledger
        # A memory:// or moto:// store ends with this process: no later command can check it.
        in_process = url.startswith(("memory://", "moto://"))
        check = "" if in_process else f" Check it: koiitasks ledger verify --store {url}"
        out.print(
            f"ledger: {len(ledger.entries)} settled rounds, {ledger.total_credited:,} of "
            f"{sandbox.loaded.config.total_bounty_amount:,} credited, "
            f"{ledger.total_slashed:,} slashed.{check}",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )


def _runner(
    stack: ExitStack,
    sandbox: Any,
    options: dict[str, Any],
    *,
    plain: bool,
    address: str | None,
    verbose: bool,
) -> Any:
    """What runs one round: plain calls, the thread-pool flow, or the flow with Dask shards."""
    task_dir = str(sandbox.loaded.directory)
    if address:
        return stack.enter_context(dask_round_runner(task_dir, options, address, verbose=verbose))
    return _plain_runner(sandbox) if plain else _flow_runner(stack, task_dir, options)


def _plain_runner(sandbox: Any) -> Any:
    return sandbox.run_round


def _flow_runner(stack: ExitStack, task_dir: str, options: dict[str, Any]) -> Any:
    from prefect.context import SyncClientContext  # noqa: PLC0415
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings  # noqa: PLC0415

    from flows.round import sandbox_round  # noqa: PLC0415
    from koiitasks.errors import ConfigError  # noqa: PLC0415
    from koiitasks.round_result import RoundResult  # noqa: PLC0415

    def run_one(number: int) -> RoundResult:
        # The heartbeat only matters to a server watching long runs; it adds ~1 s per flow run.
        try:
            with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
                if SyncClientContext.get() is None:  # one API client for every round of the
                    # run: Prefect makes a new one (and its TLS context) per flow run, 40 ms each
                    stack.enter_context(SyncClientContext.get_or_create())
                data = sandbox_round(task_dir=task_dir, round_number=number, **options)
        except RuntimeError as e:  # Prefect's "Failed to reach API": it answered at the start
            if "reach API" not in str(e):
                raise
            raise ConfigError(
                f"the Prefect API stopped answering in round {number}: {e}",
                hint="records written so far are kept: start the server again (or run with "
                "--plain) and run again to go on",
            ) from e
        return RoundResult.model_validate_json(data)

    return run_one
