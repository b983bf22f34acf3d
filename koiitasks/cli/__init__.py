"""The ``koiitasks`` command line: one module per command group, assembled here.

Every command turns a :class:`~koiitasks.errors.KoiiTasksError` into a message on stderr that
names what was wrong and how to fix it, and an exit code (2: bad input, 1: failed check), never
a traceback. ``--json`` prints what scripts read on stdout.
"""

from __future__ import annotations

import os
import sys

import typer
from rich.markup import escape
from typer.exceptions import TyperException

from koiitasks.cli import clock, deploy, init, ledger, node, rounds, run, storage, trace
from koiitasks.cli._common import err
from koiitasks.errors import KoiiTasksError

app = typer.Typer(
    name="koiitasks",
    help="Write, test and run Koii-style tasks: rounds as Prefect flows, audited rewards.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)
app.command()(init.init)
app.command()(run.run)
app.command()(trace.trace)
app.command()(clock.slot)
app.command("round")(clock.round_)
app.command()(deploy.deploy)
app.add_typer(ledger.app, name="ledger")
app.add_typer(rounds.app, name="rounds")
app.add_typer(storage.app, name="storage")
app.add_typer(node.app, name="node")


def main() -> None:
    """Entry point: run the app and turn errors into messages and exit codes."""
    debug = os.environ.get("KOII_DEBUG") == "1"
    try:
        # Outside standalone mode click returns the code of a `typer.Exit` instead of raising it.
        code = app(standalone_mode=False)
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
    if isinstance(code, int) and code:
        sys.exit(code)
