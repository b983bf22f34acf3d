"""A flow run's artifacts (round summary, payouts, balances), created side by side.

Each artifact is one API call, 20 to 100 ms on a Prefect server still busy with the round's
task-run events; a round's summary and payouts table made one after another took 120 to 220 ms
of a 1,000-node flow round (docs/performance.md). Here a round's go out on threads at once,
through the flow run's own API client, and the flow waits for all of them: an artifact is
there when its run is shown completed.
"""

from __future__ import annotations

import contextvars
import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson
from prefect import get_client
from prefect.client.schemas.actions import ArtifactCreate
from prefect.context import FlowRunContext


def markdown(key: str, text: str, description: str) -> ArtifactCreate:
    """A Markdown artifact of the current flow run."""
    return ArtifactCreate(type="markdown", key=key, data=text, description=description)


def table(key: str, rows: list[dict[str, Any]], description: str) -> ArtifactCreate:
    """A table artifact of the current flow run, one dict a row.

    The rows hold strings and integers, so they are JSON as they are: serialised with orjson,
    without the walk over every cell that Prefect's own table artifact makes looking for NaN
    (20 ms for 1,000 rows, measured)."""
    try:
        data = orjson.dumps(rows).decode()
    except TypeError:  # an integer over 64 bits (a bounty or stake can be): the slow way
        data = json.dumps(rows)
    return ArtifactCreate(type="table", key=key, data=data, description=description)


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
