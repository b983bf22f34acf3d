"""`koiitasks slot` and `koiitasks round TASK_DIR`: Koii's getSlot and getRound, and the open
windows, on the wall clock or the sandbox's simulated clock."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from koiitasks.cli._common import JsonOption, StoreOption, TaskOption, open_store_at, out, store_url

if TYPE_CHECKING:
    from koiitasks.config import TaskConfig
    from koiitasks.storage import Store

#: Koii's slot length, used when no task says otherwise.
DEFAULT_SLOT_MS = 400

SandboxOption = Annotated[
    bool,
    typer.Option(
        "--sandbox",
        help="Read the sandbox's simulated clock: where the next `koiitasks run` starts.",
    ),
]
AtSlotOption = Annotated[
    int | None,
    typer.Option("--slot", metavar="SLOT", help="Show the timeline at this slot instead.", min=0),
]


def slot(
    task: TaskOption = None,
    store: StoreOption = None,
    sandbox: SandboxOption = False,
    json_out: JsonOption = False,
) -> None:
    """Print the current slot (Koii's getSlot).

    On the wall clock, slots count from the genesis of the task deployed in the store, or from
    the Unix epoch when the store holds none; they last the task's slot_ms (400 ms when no task
    is known). With --sandbox, the slot where the sandbox's next round starts. Examples:

        koiitasks slot
        koiitasks slot --task examples/hash-puzzle --sandbox --json
    """
    from koiitasks.timeline import locate_clock  # noqa: PLC0415 - keep --help fast

    the_store = open_store_at(store_url(store))
    config = _task_config(the_store, task)
    position = locate_clock(
        the_store,
        config.id if config else None,
        slot_ms=config.slot_ms if config else DEFAULT_SLOT_MS,
        round_time=config.round_time if config else 1,
        sandbox=sandbox,
    )
    slot_ms = config.slot_ms if config else DEFAULT_SLOT_MS
    if json_out:
        doc = {
            "slot": position.slot,
            "clock": position.clock,
            "slot_ms": slot_ms,
            "genesis_ms": position.genesis_ms,
            "task_id": config.id if config else None,
            "note": position.note,
        }
        print(json.dumps(doc))
        return
    out.print(
        f"slot {position.slot:,} ({position.clock} clock, {slot_ms} ms slots; {position.note})",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )


def round_(
    task_dir: Annotated[Path, typer.Argument(help="Folder with config-task.yml.")],
    store: StoreOption = None,
    sandbox: SandboxOption = False,
    at_slot: AtSlotOption = None,
    json_out: JsonOption = False,
) -> None:
    """Print the current round (Koii's getRound) and the windows open now, for a task.

    At any slot three rounds are live: round R works, round R-1 submits and is audited, round
    R-2 has its distribution built and audited. Shows each open window with the slots it has
    left, and the next window to open. Examples:

        koiitasks round examples/hash-puzzle
        koiitasks round examples/hash-puzzle --slot 45
        koiitasks round examples/hash-puzzle --sandbox --json
    """
    from koiitasks.clock import Schedule  # noqa: PLC0415 - keep --help fast
    from koiitasks.timeline import locate_clock, read_timeline  # noqa: PLC0415

    config = _config_of_folder(task_dir)
    the_store = open_store_at(store_url(store))
    _check_store_has_this_config(the_store, config)
    position = locate_clock(
        the_store,
        config.id,
        slot_ms=config.slot_ms,
        round_time=config.round_time,
        sandbox=sandbox,
        at_slot=at_slot,
    )
    schedule = Schedule(
        starting_slot=position.starting_slot,
        round_time=config.round_time,
        submission_window=config.submission_window,
        audit_window=config.audit_window,
    )
    timeline = read_timeline(
        schedule,
        position.slot,
        task_id=config.id,
        slot_ms=config.slot_ms,
        clock=position.clock,
        note=position.note,
        genesis_ms=position.genesis_ms,
    )
    if json_out:
        print(timeline.model_dump_json())
        return
    out.print("\n".join(timeline.lines()), markup=False, highlight=False, soft_wrap=True)


def _config_of_folder(task_dir: Path) -> TaskConfig:
    """A task folder's config, without importing its task.py."""
    from koiitasks.config import CONFIG_FILE, load_config  # noqa: PLC0415
    from koiitasks.errors import TaskLoadError  # noqa: PLC0415

    if not task_dir.is_dir():
        raise TaskLoadError(
            f"task directory {task_dir} does not exist or is not a directory",
            hint="pass the folder that holds config-task.yml",
        )
    return load_config(task_dir / CONFIG_FILE)


def _check_store_has_this_config(store: Store, config: TaskConfig) -> None:
    """A folder whose config-task.yml differs from the one its task was made with in the store
    is refused, as `koiitasks run` refuses it: its windows are not the task's."""
    from koiitasks.network import check_same_config, read_task_record  # noqa: PLC0415

    record = read_task_record(store, config.id)
    if record is not None:
        check_same_config(record, config, where=store.url)


def _task_config(store: Store, task: str | None) -> TaskConfig | None:
    """The config of the task --task names (a folder or an id in the store), else of the
    store's only task, else None."""
    from koiitasks.config import TaskConfig  # noqa: PLC0415
    from koiitasks.errors import ConfigError  # noqa: PLC0415
    from koiitasks.network import read_task_record  # noqa: PLC0415

    if task is not None and Path(task).is_dir():
        return _config_of_folder(Path(task))
    ids = [task] if task is not None else store.children("tasks/")
    if len(ids) > 1:
        raise ConfigError(
            f"{store.url} holds {len(ids)} tasks ({', '.join(ids[:4])}"
            f"{', ...' if len(ids) > 4 else ''})",
            hint="choose one with --task (a task id or its folder)",
        )
    if not ids:
        return None
    record = read_task_record(store, ids[0])
    if record is None:
        raise ConfigError(
            f"no task {ids[0]!r} in {store.url}",
            hint="pass a task folder with --task, or the --store where the task ran",
        )
    return TaskConfig.model_validate(record.config)
