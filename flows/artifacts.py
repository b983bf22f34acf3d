"""A flow run's artifacts (round summary, payouts, balances), created side by side.

Each artifact is one API call, 20 to 100 ms on a Prefect server still busy with the round's
task-run events; a round's summary and payouts table made one after another took 120 to 220 ms
of a 1,000-node flow round (docs/performance.md). Here a round's go out on threads at once,
through the flow run's own API client, and the flow waits for all of them: an artifact is
there when its run is shown completed.

A keyed artifact's data also travels whole in the "artifact collection" event the server
emits for it, and the server drops an event larger than its limit with a warning
(``PREFECT_SERVER_EVENTS_MAXIMUM_SIZE_BYTES``, 1.5 MB by default): a 10,000-node payouts
table is 1.56 MB there. A table too large for one event keeps the rows its caller ranks first,
as many as fit, and says so in its description. The limit is read from this process's
Prefect settings: a server configured with a smaller one needs the same setting here.
"""

from __future__ import annotations

import contextvars
import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson
from prefect import get_client
from prefect.client.schemas.actions import ArtifactCreate
from prefect.context import FlowRunContext
from prefect.settings import get_current_settings

Row = dict[str, Any]

#: Room in an event for all but the artifact's data and description: ids, names, times.
EVENT_HEADROOM_BYTES = 16_384


def markdown(key: str, text: str, description: str) -> ArtifactCreate:
    """A Markdown artifact of the current flow run."""
    return ArtifactCreate(type="markdown", key=key, data=text, description=description)


def table(
    key: str,
    rows: list[Row],
    description: str,
    *,
    first: Callable[[Row], Any] | None = None,
    rest: str = "",
) -> ArtifactCreate:
    """A table artifact of the current flow run, one dict a row.

    The rows hold strings and integers, so they are JSON as they are: serialised with orjson,
    without the walk over every cell that Prefect's own table artifact makes looking for NaN
    (20 ms for 1,000 rows, measured). If the table would not fit in one Prefect event, it
    keeps the rows that sort first by ``first`` (all of them ranked equal if None), as many as
    fit, in their own order, and its description says how many were left out, then ``rest``
    (which rows come first, where to find the others). The description itself is kept whole:
    one too long for the event leaves no row."""
    data = _json(rows)
    limit = get_current_settings().server.events.maximum_size_bytes
    budget = limit - EVENT_HEADROOM_BYTES
    if _in_event(data) + _in_event(description) > budget:

        def cut(kept: int) -> str:
            return (
                f"{description}\n\n**{kept:,} of {len(rows):,} rows.** The whole table is too"
                f" large for one Prefect event ({limit:,} bytes,"
                f" PREFECT_SERVER_EVENTS_MAXIMUM_SIZE_BYTES). {rest}"
            ).rstrip()

        kept = _fitting(rows, budget - _in_event(cut(len(rows))), first)
        data, description = _json(kept), cut(len(kept))
    return ArtifactCreate(type="table", key=key, data=data, description=description)


def _json(rows: list[Row]) -> str:
    try:
        return orjson.dumps(rows).decode()
    except TypeError:  # an integer over 64 bits (a bounty or stake can be): the slow way,
        # spelt as orjson spells the rest (compact, UTF-8), so the sizes _fitting adds up hold
        return json.dumps(rows, separators=(",", ":"), ensure_ascii=False)


def _in_event(text: str) -> int:
    """The bytes ``text`` takes in an event's JSON: quoted, with its quotes escaped."""
    return len(orjson.dumps(text))


def _fitting(rows: list[Row], budget: int, first: Callable[[Row], Any] | None) -> list[Row]:
    """The rows ranked first that fit in ``budget`` bytes of an event, in the table's order."""
    used = 4  # the quotes and brackets around the table's JSON text
    kept: set[int] = set()
    ranked = sorted(range(len(rows)), key=lambda i: first(rows[i])) if first else range(len(rows))
    for i in ranked:
        used += _in_event(_json([rows[i]])) - 4 + 1  # "[", "]" and quotes off, a comma on
        if used > budget:
            break
        kept.add(i)
    return [row for i, row in enumerate(rows) if i in kept]


def publish(*artifacts: ArtifactCreate) -> None:
    """Create ``artifacts`` for the current flow run, side by side; return once all exist.

    Called in a flow run (its API client and id are the run's); the first error raised by a
    creation is raised here, after the others have finished."""
    context = FlowRunContext.get()
    if context is None or context.flow_run is None:
        raise RuntimeError("artifacts are published from inside a flow run")
    client = get_client(sync_client=True)
    owned = [a.model_copy(update={"flow_run_id": context.flow_run.id}) for a in artifacts]
    if len(owned) == 1:
        client.create_artifact(owned[0])
        return
    with ThreadPoolExecutor(len(owned) - 1, thread_name_prefix="koii-artifacts") as pool:
        # In the flow run's context, as Prefect's task runner does: the artifact-created event
        # names the run, its flow and deployment from it, and settings resolve as here.
        others = [
            pool.submit(contextvars.copy_context().run, client.create_artifact, a)
            for a in owned[1:]
        ]
        client.create_artifact(owned[0])
        for future in others:
            future.result()
