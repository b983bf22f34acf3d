"""The ``koiitasks`` command line: one module per command group, assembled here.

Every command turns a :class:`~koiitasks.errors.KoiiTasksError` into a message on stderr that
names what was wrong and how to fix it, and an exit code (2: bad input, 1: failed check), never
a traceback. ``--json`` prints what scripts read on stdout.
"""

from __future__ import annotations

import json
import os
import sys
from typing import NoReturn

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


INTERRUPTED = "interrupted: records written so far are kept; run again to go on"
#: The exit code of a run stopped by Ctrl-C (128 + SIGINT), which no command exits with itself.
INTERRUPTED_CODE = 130


def _after_interrupt(error: BaseException) -> bool:
    """Whether ``error`` was raised because of a Ctrl-C, or while one was handled (Prefect's
    engine reporting the interrupted flow run to its API). A KeyboardInterrupt raised inside a
    pydantic serializer (Prefect copies its settings that way between rounds) comes out as a
    PydanticSerializationError that keeps it only in its message, so that is read too; Python's
    own Ctrl-C handler stays in place (asyncio.run, which `deploy` serves in, relies on it)."""
    seen: set[int] = set()
    cause: BaseException | None = error
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, KeyboardInterrupt):
            return True
        if type(cause).__name__ == "PydanticSerializationError" and "KeyboardInterrupt" in str(
            cause
        ):
            return True
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return False


def main() -> None:
    """Entry point: run the app and turn errors into messages and exit codes."""
    debug = os.environ.get("KOII_DEBUG") == "1"
    try:
        # Outside standalone mode click returns the code of a `typer.Exit` instead of raising it.
        code = app(standalone_mode=False)
    except KoiiTasksError as e:
        if debug:
            raise
        _failed(e)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except TyperException as e:  # usage errors: typer shows them with the usage line
        show = getattr(e, "show", None)
        if callable(show):
            show()
        else:
            err.print(f"error: {e.format_message()}", markup=False, highlight=False)
        sys.exit(e.exit_code)
    except (typer.Abort, KeyboardInterrupt):  # click turns a Ctrl-C into Abort
        _interrupted()
    except Exception as e:
        if debug:
            raise
        _unexpected(e)
    if code == INTERRUPTED_CODE:  # typer turns a Ctrl-C into this code, silently
        err.print(INTERRUPTED)
    if isinstance(code, int) and code:
        sys.exit(code)


def _interrupted() -> NoReturn:
    err.print(INTERRUPTED)
    sys.exit(INTERRUPTED_CODE)


def _failed(error: KoiiTasksError) -> NoReturn:
    """Exit on an error a command raised on purpose: its message, its hint, its exit code
    (or, when a Ctrl-C made a step fail, that it was interrupted)."""
    if _after_interrupt(error):
        _interrupted()
    err.print(f"[bold red]error:[/] {escape(error.message)}", highlight=False, soft_wrap=True)
    if error.hint:
        err.print(f"  hint: {error.hint}", markup=False, highlight=False, soft_wrap=True)
    if "--json" in sys.argv[1:]:  # a script reading stdout learns it failed, and why
        failed = {"ok": False, "error": error.message, "hint": error.hint}
        print(json.dumps(failed | {"exit_code": error.exit_code}), flush=True)
    sys.exit(error.exit_code)


def _unexpected(error: Exception) -> NoReturn:
    """Exit on an error no command turned into a message: a bug, unless a Ctrl-C caused it."""
    if _after_interrupt(error):  # Prefect failed to report the Ctrl-C to a server it stopped
        _interrupted()
    err.print(
        f"[bold red]internal error:[/] {type(error).__name__}: {escape(str(error))}\n"
        "  this is a bug in koiitasks; rerun with KOII_DEBUG=1 for the traceback and report it",
        highlight=False,
    )
    sys.exit(70)
