"""`koiitasks init NAME`: scaffold a task folder whose tests pass at once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from koiitasks.cli._common import out


def init(
    name: Annotated[
        str,
        typer.Argument(
            help="The task id, also the folder's name: lowercase letters, digits and dashes.",
            show_default=False,
        ),
    ],
    directory: Annotated[
        Path, typer.Option("--dir", help="The folder to create the task folder in.")
    ] = Path(),
) -> None:
    """Create a task folder: a commented config-task.yml, task.py with working hooks, tests
    that use koiitasks.testing, and a README. Never overwrites a folder that is not empty.

    Then run its tests and a few rounds:

        koiitasks init price-feed
        pytest price-feed
        koiitasks run price-feed --nodes 10 --rounds 3 --plain

    The hooks to change are in task.py; Koii's settings in config-task.yml.
    """
    from koiitasks.scaffold import init_task  # noqa: PLC0415 - keep --help fast

    made = init_task(name, directory)
    out.print(f"created task {made.task_id!r} in {made.directory}:", markup=False, highlight=False)
    for path in made.files:
        out.print(f"  {path.relative_to(made.directory)}", markup=False, highlight=False)
    out.print(
        f"next:\n  pytest {made.directory}    (its tests pass as they are)\n"
        f"  koiitasks run {made.directory} --nodes 10 --rounds 3 --plain",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
