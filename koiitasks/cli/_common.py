"""What every command shares: consoles, options, the store URL, logging, task lookup."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, redirect_stdout
from pathlib import Path
from typing import Annotated, TextIO

import typer
from rich.console import Console

from koiitasks.errors import ConfigError
from koiitasks.settings import load_settings
from koiitasks.storage import Store, open_store

# No emoji codes: user text such as a path "x:-1:y" must print as written, not as 👎.
err = Console(stderr=True, emoji=False)
out = Console(emoji=False)

StoreOption = Annotated[
    str | None,
    typer.Option(
        "--store",
        help="Where records live: a folder, file://PATH, s3://BUCKET[/PREFIX] or moto://BUCKET. "
        "Default: $KOII_STORE or .koiitasks in the current folder.",
        show_default=False,
    ),
]
JsonOption = Annotated[
    bool,
    typer.Option(
        "--json",
        help='Print JSON for scripts on stdout; on an error, one {"ok": false, "error": ..., '
        '"hint": ..., "exit_code": N} line too.',
    ),
]
TaskOption = Annotated[
    str | None,
    typer.Option("--task", help="Task id or task folder (default: the store's only task)."),
]


@contextmanager
def json_stdout(json_out: bool) -> Iterator[TextIO]:
    """Where a command prints its JSON. With --json, anything else written to stdout meanwhile
    (a task's hook calling print()) goes to stderr, so `--json | jq` reads JSON only."""
    stdout = sys.stdout
    if not json_out:
        yield stdout
        return
    with redirect_stdout(sys.stderr):
        yield stdout


@contextmanager
def replay_progress(
    description: str, *, shown: bool = True
) -> Iterator[Callable[[int, int], None]]:
    """A ``progress(done, total)`` callback that draws a bar of rounds on stderr while the
    block runs, cleared when it ends; a no-op unless ``shown`` and stderr is an interactive
    terminal (rich's judgement: not ``TERM=dumb``, not ``TTY_INTERACTIVE=0``)."""
    from rich.progress import (  # noqa: PLC0415 - keep --help fast
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("rounds"),
        TimeElapsedColumn(),
    )
    shown = shown and err.is_interactive
    with Progress(
        *columns,
        console=err,
        transient=True,
        disable=not shown,
        redirect_stdout=False,  # what a command prints goes to stdout, even while the bar shows
        redirect_stderr=False,
    ) as bar:
        rounds = bar.add_task(description, total=None)

        def progress(done: int, total: int) -> None:
            bar.update(rounds, completed=done, total=total)

        yield progress


def note_unsettled(rounds: Sequence[int]) -> None:
    """Say on stderr which rounds hold records but no ledger entry (ledger verify, replay)."""
    if not rounds:
        return
    shown = ", ".join(map(str, rounds[:10])) + (", ..." if len(rounds) > 10 else "")
    err.print(
        f"note: {len(rounds)} rounds have records but no ledger entry (round {shown}): rounds "
        "still running, or stopped before they settled, are so (the next run settles them); "
        "if they were settled, the ledger's newest entries were cut off (`ledger verify "
        "--head HASH` of an earlier verify catches that)",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )


def open_store_at(url: str) -> Store:
    """The store a URL names, reaching S3 through $KOII_S3_ENDPOINT_URL when it is set."""
    return open_store(url, s3_endpoint_url=load_settings().s3_endpoint_url)


def store_url(store: str | None) -> str:
    """The store URL a command uses: the option, else $KOII_STORE, else .koiitasks; paths made
    absolute so flows and subprocesses see the same folder."""
    url = store or load_settings().store
    if "://" not in url:
        return str(Path(url).absolute())
    return url


def setup_logging(verbose: bool) -> None:
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


def is_folder(text: str) -> bool:
    """Whether ``text`` names a folder; False for what cannot be a path (a NUL byte, a name
    longer than the file system takes), which pathlib reports by raising."""
    try:
        return Path(text).is_dir()
    except (OSError, ValueError):
        return False


def resolve_task(url: str, task: str | None) -> str:
    if task is not None:
        if is_folder(task):
            from koiitasks.task import load_task  # noqa: PLC0415

            return load_task(task).task_id
        return task
    ids = open_store_at(url).children("tasks/")
    if len(ids) == 1:
        return ids[0]
    if not ids:
        raise ConfigError(
            f"no task in {url}",
            hint="run `koiitasks run TASK_DIR` first, or pass --store where the task ran",
        )
    raise ConfigError(
        f"{url} holds several tasks ({', '.join(ids)})", hint="choose one with --task"
    )
