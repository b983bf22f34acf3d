"""The ``koiitasks`` command line: one module per command group, assembled here.

Every command turns a :class:`~koiitasks.errors.KoiiTasksError` into a message on stderr that
names what was wrong and how to fix it, and an exit code (2: bad input, 1: failed check), never
a traceback. ``--json`` prints what scripts read on stdout.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
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


#: Set when a Ctrl-C (SIGINT) reaches the process: a KeyboardInterrupt can surface wrapped in
#: another error that keeps no trace of it (pydantic-core turns one raised in a serializer into
#: a PydanticSerializationError naming it in words only; Prefect copies settings that way
#: between rounds), so its cause chain alone cannot tell.
_ctrl_c = threading.Event()


def _on_ctrl_c(signum: int, frame: FrameType | None) -> None:
    _ctrl_c.set()
    signal.default_int_handler(signum, frame)  # raises KeyboardInterrupt, as it always did


@contextmanager
def _noting_ctrl_c() -> Iterator[None]:
    """Python's own Ctrl-C handling, noting in ``_ctrl_c`` that one came, while the block runs
    (unless SIGINT is ignored, as under nohup, or this is not the main thread)."""
    _ctrl_c.clear()
    noted = (
        threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGINT) is signal.default_int_handler
    )
    if noted:
        signal.signal(signal.SIGINT, _on_ctrl_c)
    try:
        yield
    finally:
        if noted:
            signal.signal(signal.SIGINT, signal.default_int_handler)


def _after_interrupt(error: BaseException) -> bool:
    """Whether ``error`` was raised while handling a Ctrl-C: Prefect's engine reports the
    interrupted flow run to its API, and Ctrl-C stops Prefect's temporary server too."""
    if _ctrl_c.is_set():
        return True
    seen: set[int] = set()
    cause: BaseException | None = error
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, KeyboardInterrupt):
            return True
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return False


def main() -> None:
    """Entry point: run the app and turn errors into messages and exit codes."""
    debug = os.environ.get("KOII_DEBUG") == "1"
    try:
        # Outside standalone mode click returns the code of a `typer.Exit` instead of raising it.
        with _noting_ctrl_c():
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
