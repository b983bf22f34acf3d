"""`koiitasks deploy`: run a task for real, one Prefect flow run per round, on its slot clock."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated
from uuid import UUID

import typer

from koiitasks.cli._common import StoreOption, err, out, setup_logging, store_url
from koiitasks.deployment import DEFAULT_LEAD_MS, DEFAULT_PREFETCH_S
from koiitasks.errors import ConfigError
from koiitasks.logs import runs_log_quietly


def deploy(
    task_dir: Annotated[Path, typer.Argument(help="Folder with config-task.yml and task.py.")],
    store: StoreOption = None,
    nodes: Annotated[
        int | None,
        typer.Option(
            help="Run N simulated nodes inside each round's flow, on the wall clock (demos, "
            "tests). Without it: the nodes registered in the store (with --key).",
            min=2,
        ),
    ] = None,
    key: Annotated[
        Path | None,
        typer.Option(
            "--key",
            help="The orchestrator's key file (`koiitasks node keygen`): rounds go to the nodes "
            "registered in the store (`koiitasks node register`). Flow runs get its path, "
            "never its contents, and read it where they run.",
        ),
    ] = None,
    seed: Annotated[
        int | None, typer.Option(help="Seed of the simulated nodes' keys (with --nodes).")
    ] = None,
    adversary: Annotated[
        list[str] | None,
        typer.Option(help="KIND=COUNT misbehaving simulated nodes; repeatable (with --nodes)."),
    ] = None,
    work_pool: Annotated[
        str | None,
        typer.Option(
            "--work-pool",
            help="Register the deployment for workers of this pool (made as a `process` pool "
            "if missing) instead of serving it here.",
        ),
    ] = None,
    start_in: Annotated[
        float,
        typer.Option(help="On a first deploy: seconds from now to round 0's first slot.", min=1),
    ] = DEFAULT_LEAD_MS / 1000,
    prefetch: Annotated[
        float,
        typer.Option(
            help="Seconds before its round a flow run's process is started (it needs a few "
            "to start, more on a busy machine).",
            min=1,
        ),
    ] = DEFAULT_PREFETCH_S,
    prefect_yaml: Annotated[
        Path | None,
        typer.Option(
            "--prefect-yaml",
            help="Write the same deployment as a prefect.yaml (for `prefect deploy`, with "
            "--work-pool) to this file instead of deploying.",
        ),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log every step.")] = False,
) -> None:
    """Deploy a task: a Prefect deployment, named after the task, that starts one round flow
    run every `round_time` slots, each at its round's first slot.

    Rounds overlap as Koii's gradual consensus says (about three are live at once) and are
    watched in the Prefect UI: runs named `TASK-round-N`, artifacts per round, the task's
    balances, events for slashes, rejected lists and missed rounds. Needs a Prefect server:
    `PREFECT_API_URL` names it (`infra/stack.sh start` starts one). Examples:

        koiitasks deploy examples/hash-puzzle --store ./deployed --nodes 8
        koiitasks deploy examples/hash-puzzle --store ./remote --key orchestrator.json
        koiitasks deploy examples/hash-puzzle --store ./deployed --work-pool rounds
    """
    # A long-running service: its log is the rounds' log (summaries, unpaid nodes by id).
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")
    setup_logging(verbose)
    from prefect.settings import PREFECT_API_URL  # noqa: PLC0415 - keep --help fast

    from koiitasks import deployment, serving  # noqa: PLC0415
    from koiitasks.network import parse_adversaries  # noqa: PLC0415
    from koiitasks.settings import load_settings  # noqa: PLC0415
    from koiitasks.task import load_task  # noqa: PLC0415

    api_url = PREFECT_API_URL.value()
    _check_options(api_url, prefect_yaml, work_pool)
    url = store_url(store)
    endpoint = load_settings().s3_endpoint_url  # the serve process's runs read it too
    existing: list[serving.ExistingDeployment | None] = []

    def reach_server() -> None:
        # Asked once the arguments are checked and before the store is written: a deploy that
        # stopped here would otherwise leave a genesis that no deployment ever served.
        if prefect_yaml is None:
            found = serving.existing_deployment(load_task(task_dir).task_id)
            serving.refuse_another_store(found, url)
            existing.append(found)

    deployment.prepare_deployed_task(
        task_dir,
        url,
        nodes=nodes,
        seed=seed,
        adversaries=parse_adversaries(adversary) if adversary else None,
        key_file=key,
        lead_ms=int(start_in * 1000),
        before_writing=reach_server,
        s3_endpoint_url=endpoint,
    )
    plan = deployment.plan_deployment(
        task_dir, url, prefetch_s=prefetch, key_file=key, s3_endpoint_url=endpoint
    )
    if prefect_yaml is not None and work_pool:
        text = serving.prefect_yaml(plan, work_pool=work_pool, s3_endpoint_url=endpoint)
        _write_prefect_yaml(prefect_yaml, text)
        return
    engine = deployment.open_deployed_engine(
        task_dir, url, key_file=plan.key_file, s3_endpoint_url=endpoint
    )

    # No deployment before this deploy: rounds due since an older genesis were never served.
    unserved = deployment.unserved_rounds(engine) if existing == [None] else range(0)

    def ready(deployment_id: UUID, lines: list[str]) -> None:
        now_round = plan.round_at_ms(engine.slot_clock.clock.now_ms())
        out.print(
            f"deployment {deployment.FLOW_NAME}/{plan.name} ({deployment_id}): a round every "
            f"{plan.round_ms / 1000:g} s ({plan.schedule.round_time} slots of {plan.slot_ms} ms) "
            f"from round 0 at {plan.anchor.isoformat(timespec='milliseconds')}; now in round "
            f"{max(0, now_round)}; at most {plan.concurrency_limit} runs at once\n"
            f"store: {url}\nUI: {str(api_url).removesuffix('/api')}/deployments",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        if unserved:
            lines = [_unserved_line(unserved, url), *lines]
        for line in lines:
            out.print(line, markup=False, highlight=False, soft_wrap=True)

    try:
        if work_pool and serving.ensure_work_pool(work_pool):
            err.print(f"made work pool {work_pool!r} (type process)", highlight=False)
        runner = serving.runner_deployment(plan, work_pool=work_pool, s3_endpoint_url=endpoint)
        if work_pool:
            deployment_id = serving.apply(runner, work_pool=work_pool)
            serving.schedule_now(deployment_id)
            ready(deployment_id, serving.recover_and_report(plan, engine, deployment_id))
            out.print(
                f"registered for work pool {work_pool!r}; start a worker: "
                f"prefect worker start --pool {work_pool}",
                markup=False,
                highlight=False,
            )
            return

        def serving_ready(deployment_id: UUID, lines: list[str]) -> None:
            ready(deployment_id, lines)
            out.print("serving; stop with Ctrl-C or SIGTERM", markup=False, highlight=False)

        def say(lines: list[str]) -> None:
            # Log lines: a serve process's output goes to files and journals, where rich's
            # 80-column wrapping would cut one message into several.
            for line in lines:
                err.print(line, markup=False, highlight=False, soft_wrap=True)

        with runs_log_quietly():
            serving.serve(plan, runner, engine, on_ready=serving_ready, say=say)
    finally:
        engine.pool.close()


def _check_options(api_url: object, prefect_yaml: Path | None, work_pool: str | None) -> None:
    """What the options must say before anything is asked of the server or the store."""
    if prefect_yaml is not None and not work_pool:
        raise ConfigError(
            "--prefect-yaml needs --work-pool: `prefect deploy` registers deployments for "
            "workers of a pool",
            hint="add --work-pool NAME (`prefect work-pool create NAME --type process` makes it)",
        )
    if not api_url and prefect_yaml is None:
        raise ConfigError(
            "PREFECT_API_URL is not set: a deployment needs a running Prefect server",
            hint="start one with `infra/stack.sh start`, then "
            "`export PREFECT_API_URL=http://127.0.0.1:4200/api`",
        )
    if prefect_yaml is not None:
        _check_writable(prefect_yaml)


def _check_writable(path: Path) -> None:
    """--prefect-yaml names a file to write: checked before the store is touched."""
    if path.is_dir() or not path.parent.is_dir():
        raise ConfigError(
            f"--prefect-yaml {path}: "
            + ("is a folder" if path.is_dir() else f"folder {path.parent} does not exist"),
            hint="give the path of a file to write in an existing folder, e.g. prefect.yaml",
        )


def _write_prefect_yaml(path: Path, text: str) -> None:
    try:
        path.write_text(text)
    except OSError as e:
        raise ConfigError(
            f"could not write --prefect-yaml {path}: {e.strerror}",
            hint="give a file in a folder you can write to",
        ) from e
    out.print(f"wrote {path}", markup=False, highlight=False)


def _unserved_line(rounds: range, store: str) -> str:
    """Rounds that came due while no deployment served the task: said, not skipped silently."""
    span = f"round {rounds[0]}" if len(rounds) == 1 else f"rounds {rounds[0]}-{rounds[-1]}"
    return (
        f"{span} ({len(rounds)} rounds) came due with no deployment to run them: the task's "
        f"genesis was recorded in {store} by an earlier deploy that made no deployment (it "
        "failed, or the deployment was deleted); they will be recorded as missed (--start-in "
        "applies to a first deploy only; deploy to a new --store to start from round 0)"
    )
