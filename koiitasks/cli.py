"""The ``koiitasks`` command line.

Every command turns a :class:`~koiitasks.errors.KoiiTasksError` into a message on stderr that
names what was wrong and how to fix it, and an exit code (2: bad input, 1: failed check), never
a traceback. ``--json`` prints what scripts read on stdout; everything for people goes to
stderr or, for summaries, stdout without ``--json``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from typer.exceptions import TyperException

from koiitasks.errors import ConfigError, KoiiTasksError
from koiitasks.settings import load_settings

app = typer.Typer(
    name="koiitasks",
    help="Write, test and run Koii-style tasks: rounds as Prefect flows, audited rewards.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)
ledger_app = typer.Typer(help="Inspect and verify a task's reward ledger.", no_args_is_help=True)
app.add_typer(ledger_app, name="ledger")

err = Console(stderr=True)
out = Console()

StoreOption = Annotated[
    str | None,
    typer.Option(
        "--store",
        help="Where records live: a folder, file://PATH, s3://BUCKET[/PREFIX] or moto://BUCKET. "
        "Default: $KOII_STORE or .koiitasks in the current folder.",
        show_default=False,
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for scripts on stdout.")]


def _store_url(store: str | None) -> str:
    url = store or load_settings().store
    if "://" not in url:
        return str(Path(url).absolute())
    return url


def _setup_logging(verbose: bool) -> None:
    """Hook failures and warnings to stderr; Prefect's chatter only with --verbose."""
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO" if verbose else "WARNING")
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "koiitasks")
    # A temporary server started for a sandbox run has no network to report to.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("koiitasks")
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO if verbose else logging.WARNING)
    root.propagate = False
    if not verbose:  # refusals are in the summary; say them once, not once per node
        logging.getLogger("koiitasks.round").setLevel(logging.ERROR)


@app.command()
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
    json_out: JsonOption = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log every step.")] = False,
) -> None:
    """Run rounds of a task in the local sandbox: simulated nodes on a simulated slot clock.

    Each round is a Prefect flow run (unless `--plain`); without `PREFECT_API_URL` Prefect
    starts a temporary server for the run. Examples:

        koiitasks run examples/hash-puzzle --nodes 50 --rounds 3
        koiitasks run examples/hash-puzzle --nodes 20 --adversary lazy=2 --adversary offline=1
        koiitasks run examples/hash-puzzle --rounds 5 --json | jq .nodes
    """
    _setup_logging(verbose)
    from koiitasks.network import parse_adversaries  # noqa: PLC0415 - keep --help fast
    from koiitasks.sandbox import open_sandbox  # noqa: PLC0415

    if rounds is not None and round_number is not None:
        raise typer.BadParameter("give --rounds or --round, not both")
    url = _store_url(store)
    adversaries = parse_adversaries(adversary) if adversary else None
    options: dict[str, Any] = {
        "store": url,
        "nodes": nodes,
        "seed": seed,
        "adversaries": adversaries,
        "workers": workers,
    }
    sandbox = open_sandbox(task_dir, **options)
    plan = sandbox.plan(
        rounds=rounds if rounds or round_number is not None else 1, round_number=round_number
    )
    runner = (
        _plain_runner(sandbox) if plain else _flow_runner(str(sandbox.loaded.directory), options)
    )
    show_progress = not json_out and err.is_terminal
    from rich.progress import Progress  # noqa: PLC0415

    with Progress(console=err, transient=True, disable=not show_progress) as progress:
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
        return RoundResult.model_validate(data)

    return run_one


def _resolve_task(store_url: str, task: str | None) -> str:
    from koiitasks.storage import open_store  # noqa: PLC0415

    if task is not None:
        if Path(task).is_dir():
            from koiitasks.task import load_task  # noqa: PLC0415

            return load_task(task).task_id
        return task
    ids = open_store(store_url).children("tasks/")
    if len(ids) == 1:
        return ids[0]
    if not ids:
        raise ConfigError(
            f"no task in {store_url}",
            hint="run `koiitasks run TASK_DIR` first, or pass --store where the task ran",
        )
    raise ConfigError(
        f"{store_url} holds several tasks ({', '.join(ids)})", hint="choose one with --task"
    )


TaskOption = Annotated[
    str | None,
    typer.Option("--task", help="Task id or task folder (default: the store's only task)."),
]


@ledger_app.command("show")
def ledger_show(
    store: StoreOption = None, task: TaskOption = None, json_out: JsonOption = False
) -> None:
    """Balances, stakes and totals per node, from the ledger.

    koiitasks ledger show
    koiitasks ledger show --json | jq .balances
    """
    from koiitasks.config import TaskConfig  # noqa: PLC0415
    from koiitasks.ledger import read_ledger  # noqa: PLC0415
    from koiitasks.network import load_network  # noqa: PLC0415
    from koiitasks.storage import open_store  # noqa: PLC0415

    url = _store_url(store)
    task_id = _resolve_task(url, task)
    the_store = open_store(url)
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


@ledger_app.command("verify")
def ledger_verify(
    store: StoreOption = None,
    task: TaskOption = None,
    orchestrator: Annotated[
        str | None,
        typer.Option(help="Expected orchestrator public key; default: the one task.json names."),
    ] = None,
    json_out: JsonOption = False,
) -> None:
    """Check every signature, the hash chain and conservation, offline.

    Exits 0 when everything holds, 1 naming the first bad record otherwise.
    """
    from koiitasks.ledger import verify_ledger  # noqa: PLC0415
    from koiitasks.storage import open_store  # noqa: PLC0415

    url = _store_url(store)
    task_id = _resolve_task(url, task)
    report = verify_ledger(open_store(url), task_id, orchestrator=orchestrator)
    if json_out:
        print(json.dumps({"ok": True, **report.__dict__}))
        return
    out.print(
        f"ok: {report.entries} ledger entries of task {report.task_id} verified "
        f"({report.records_checked} records; orchestrator {report.orchestrator}); "
        f"credited {report.total_credited:,}, slashed {report.total_slashed:,}",
        highlight=False,
        soft_wrap=True,
    )


def main() -> None:
    """Entry point: run the app and turn errors into messages and exit codes."""
    debug = os.environ.get("KOII_DEBUG") == "1"
    try:
        app(standalone_mode=False)
    except KoiiTasksError as e:
        if debug:
            raise
        err.print(f"[bold red]error:[/] {escape(e.message)}", highlight=False, soft_wrap=True)
        if e.hint:
            err.print(f"  hint: {e.hint}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(e.exit_code)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except TyperException as e:  # usage errors: typer shows them with the usage line
        show = getattr(e, "show", None)
        if callable(show):
            show()
        else:
            err.print(f"error: {e.format_message()}", markup=False, highlight=False)
        sys.exit(e.exit_code)
    except typer.Abort:
        err.print("aborted")
        sys.exit(130)
    except KeyboardInterrupt:
        err.print("interrupted: records written so far are kept; run again to finish")
        sys.exit(130)
    except Exception as e:
        if debug:
            raise
        err.print(
            f"[bold red]internal error:[/] {type(e).__name__}: {escape(str(e))}\n"
            "  this is a bug in koiitasks; rerun with KOII_DEBUG=1 for the traceback and report it",
            highlight=False,
        )
        sys.exit(70)
