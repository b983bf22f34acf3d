"""`koiitasks run --remote`: rounds of a task on its registered nodes, on the wall clock.

The same output contract as the sandbox (one summary line, or one ``--json`` object, per
round), the same Prefect flow steps (``flows.round.remote_round``), but the nodes are the
``koiitasks node serve`` processes registered in the store, and every phase waits for its slots.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from koiitasks.cli._common import err, out

if TYPE_CHECKING:
    from koiitasks.errors import RoundMissed
    from koiitasks.round_result import RoundResult

#: How long before a round's first slot a flow run is started: creating the run and its first
#: states takes a few hundred milliseconds, and the request must go out at the first slot.
FLOW_LEAD_MS = 1500

#: Missed rounds in a row (each next one tried with twice the lead) before giving up.
MAX_MISSED = 3


def run_remote(
    task_dir: Path,
    *,
    store: str,
    key: Path | None,
    rounds: int | None,
    round_number: int | None,
    plain: bool,
    json_out: bool,
    skew_tolerance_slots: int,
    sandbox_options: Mapping[str, object],
) -> None:
    """Run rounds against registered nodes and print them as `koiitasks run` does."""
    from koiitasks.remote import open_remote  # noqa: PLC0415 - keep --help fast
    from koiitasks.settings import load_settings  # noqa: PLC0415

    if key is None:
        raise typer.BadParameter(
            "--remote needs the orchestrator's key: --key FILE (make one with "
            "`koiitasks node keygen`)"
        )
    given = sorted(name for name, value in sandbox_options.items() if value)
    if given:
        raise typer.BadParameter(
            f"--{given[0]} is for sandbox runs; a remote run uses the nodes registered in the "
            "store (`koiitasks node register`)"
        )
    if not plain:  # before the task record (and its genesis) can be written
        from koiitasks.cli._prefect import reach_prefect_api  # noqa: PLC0415

        reach_prefect_api()
    remote = open_remote(
        task_dir,
        store=store,
        key_file=key,
        skew_tolerance_slots=skew_tolerance_slots,
        s3_endpoint_url=load_settings().s3_endpoint_url,
    )
    try:
        runner: Callable[[int], RoundResult] = (
            remote.run_round
            if plain
            else _flow_runner(str(remote.loaded.directory), store, key, skew_tolerance_slots)
        )

        def starting(number: int) -> None:
            if not json_out:
                err.print(
                    f"round {number} of {remote.loaded.task_id} on "
                    f"{len(remote.network.nodes)} registered nodes starts "
                    f"{starts_in(remote.starts_in_ms(number) / 1000)}",
                    highlight=False,
                )

        def missed(error: RoundMissed) -> None:
            err.print(f"warning: {error.message}; running a later round", highlight=False)

        if round_number is not None:
            starting(round_number)
            results: Iterable[RoundResult] = [runner(round_number)]
        else:
            results = remote.run_upcoming(
                runner,
                count=rounds or 1,
                lead_ms=0 if plain else FLOW_LEAD_MS,
                max_missed=MAX_MISSED,
                on_start=starting,
                on_missed=missed,
            )
        for result in results:
            if json_out:
                print(result.model_dump_json(), flush=True)
            else:
                out.print(result.report(), markup=False, highlight=False, soft_wrap=True)
        if not json_out:
            ledger = remote.engine.ledger
            out.print(
                f"ledger: {len(ledger.entries)} settled rounds, {ledger.total_credited:,} of "
                f"{remote.loaded.config.total_bounty_amount:,} credited, "
                f"{ledger.total_slashed:,} slashed. Check it: koiitasks ledger verify "
                f"--store {store}",
                markup=False,
                highlight=False,
                soft_wrap=True,
            )
    finally:
        remote.close()


def starts_in(seconds: float, *, now: datetime | None = None) -> str:
    """When a round starts, said so a long wait is seen as one: "in 2.5 s", or from a minute
    on "in 2 h 5 min, at 14:03:20 UTC (Ctrl-C stops waiting)"."""
    if seconds < 60:
        return f"in {max(seconds, 0):.1f} s"
    minutes = round(seconds / 60)
    span = f"{minutes // 60} h {minutes % 60} min" if minutes >= 60 else f"{minutes} min"
    at = (now or datetime.now(UTC)) + timedelta(seconds=seconds)
    return f"in {span}, at {at:%H:%M:%S} UTC (Ctrl-C stops waiting)"


def _flow_runner(
    task_dir: str, store: str, key: Path, skew_tolerance_slots: int
) -> Callable[[int], RoundResult]:
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings  # noqa: PLC0415

    from flows.round import remote_round  # noqa: PLC0415
    from koiitasks.round_result import RoundResult  # noqa: PLC0415 - used at run time

    def run_one(number: int) -> RoundResult:
        # As for sandbox runs: the heartbeat adds about 1 s to every flow run.
        with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
            data = remote_round(
                task_dir=task_dir,
                round_number=number,
                store=store,
                key_file=str(key.absolute()),
                skew_tolerance_slots=skew_tolerance_slots,
            )
        return RoundResult.model_validate_json(data)

    return run_one
