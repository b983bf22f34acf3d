"""`koiitasks node keygen`, `node serve` and `node register`: running a task as a remote node."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from koiitasks.cli._common import (
    JsonOption,
    StoreOption,
    err,
    open_store_at,
    out,
    setup_logging,
    store_url,
)
from koiitasks.errors import ConfigError

app = typer.Typer(
    help="Run a task as a remote node: make keys, serve the task over HTTP, register.",
    no_args_is_help=True,
)

KeyOption = Annotated[
    Path, typer.Option("--key", help="The node's key file (`koiitasks node keygen`).")
]


@app.command("keygen")
def keygen(
    out_file: Annotated[
        Path, typer.Option("--out", help="Where to write the new key file (never overwritten).")
    ],
) -> None:
    """Make a new ed25519 key file (mode 0600) and print its public key in base58.

    Nodes and the orchestrator make their keys the same way:

        koiitasks node keygen --out orchestrator.json
        koiitasks node keygen --out node-1.json

    A key file holds its private key: keep it off shared storage.
    """
    from koiitasks.identity import Keypair, save_key  # noqa: PLC0415 - keep --help fast

    if out_file.is_dir():  # "" and "." too: typer makes them Path(".")
        raise ConfigError(
            f"--out {str(out_file)!r} names a folder, not a key file",
            hint=f"name the file, e.g. --out {out_file / 'node.json'}",
        )
    keypair = Keypair.generate()
    save_key(keypair, out_file)
    err.print(f"wrote {out_file} (readable by you only); its public key:", highlight=False)
    print(keypair.public_id)


@app.command("serve")
def serve(
    task_dir: Annotated[Path, typer.Argument(help="Folder with config-task.yml and task.py.")],
    orchestrator: Annotated[
        str,
        typer.Option(
            help="Public key (base58) of the task's orchestrator: the only signer obeyed."
        ),
    ],
    key: Annotated[
        list[Path] | None,
        typer.Option("--key", help="A node key file; repeat to serve several identities."),
    ] = None,
    keys_dir: Annotated[
        Path | None,
        typer.Option(help="Serve every key file (*.json) in this folder (benchmarks)."),
    ] = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[
        int, typer.Option(help="Port to listen on; 0 picks a free one.", min=0, max=65535)
    ] = 8000,
    skew_tolerance_slots: Annotated[
        int,
        typer.Option(help="Slots this node's clock may differ from the orchestrator's.", min=0),
    ] = 1,
    max_call_bytes: Annotated[
        int, typer.Option(help="Largest call body read (Koii's node: 50 MB).", min=1024)
    ] = 50 * 1024 * 1024,
    clock_skew_ms: Annotated[
        int, typer.Option(hidden=True, help="Shift this node's clock (tests of clock skew).")
    ] = 0,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log every call.")] = False,
) -> None:
    """Serve a task's hooks over HTTP to the task's orchestrator, as a Koii node does.

    Answers `GET /` with its health, the orchestrator's signed calls at
    `/nodes/{node_id}/{phase}`, and the task's own `@task.routes`. Runs until Ctrl-C or SIGTERM:

        koiitasks node serve examples/hash-puzzle --key node-1.json \\
            --orchestrator 7xKX...  --port 8001
    """
    setup_logging(verbose)
    from koiitasks.clock import OffsetClock, WallClock  # noqa: PLC0415
    from koiitasks.errors import TaskLoadError  # noqa: PLC0415
    from koiitasks.identity import load_key  # noqa: PLC0415
    from koiitasks.nodes.host import NodeHost  # noqa: PLC0415
    from koiitasks.nodes.server import bind, create_app  # noqa: PLC0415
    from koiitasks.nodes.server import serve as serve_app  # noqa: PLC0415
    from koiitasks.task import load_task  # noqa: PLC0415

    _check_public_key(orchestrator)
    paths = list(key or [])
    if keys_dir is not None:
        if not keys_dir.is_dir():
            raise typer.BadParameter(f"{keys_dir} is not a folder", param_hint="--keys-dir")
        found = sorted(keys_dir.glob("*.json"))
        if not found:
            raise typer.BadParameter(
                f"{keys_dir} holds no key file (*.json); make some with `koiitasks node keygen`",
                param_hint="--keys-dir",
            )
        paths += found
    if not paths:
        raise typer.BadParameter("give at least one --key FILE (or --keys-dir)")
    loaded = load_task(task_dir)
    clock = WallClock() if not clock_skew_ms else OffsetClock(WallClock(), clock_skew_ms)
    keys = [load_key(p) for p in paths]
    if any(k.public_id == orchestrator for k in keys):
        raise ConfigError(
            "a --key given is the orchestrator's own key: a node cannot audit and pay itself",
            hint="make each node a key of its own with `koiitasks node keygen`",
        )
    node_host = NodeHost(
        loaded,
        keys,
        orchestrator=orchestrator,
        clock=clock,
        skew_tolerance_slots=skew_tolerance_slots,
    )
    try:
        loaded.task.ensure_setup()  # Koii's setup: once, before the first call
    except Exception as e:
        raise TaskLoadError(
            f"setup hook of task {loaded.task_id!r} failed: {type(e).__name__}: {e}"
        ) from e
    application = create_app(node_host, max_call_bytes=max_call_bytes)
    sock = bind(host, port)
    who = (
        f"node {node_host.node_ids[0]}"
        if len(node_host.node_ids) == 1
        else f"{len(node_host.node_ids)} nodes"
    )

    def ready(url: str) -> None:
        print(f"serving task {loaded.task_id} at {url} as {who}", flush=True)

    serve_app(application, sock, on_ready=ready)


@app.command("register")
def register(
    task: Annotated[Path, typer.Option("--task", help="The task folder the node serves.")],
    key: KeyOption,
    url: Annotated[str, typer.Option(help="Base URL the node serves at (`node serve` prints it).")],
    stake: Annotated[
        int | None,
        typer.Option(help="Stake in base units (default: the task's minimum_stake_amount).", min=0),
    ] = None,
    store: StoreOption = None,
    json_out: JsonOption = False,
) -> None:
    """Register a node for a task in the store: a record signed by the node's key.

    There is no chain here: the stake is what the node declares, and the orchestrator pays and
    slashes against it in the ledger.

        koiitasks node register --store s3://bucket --task examples/hash-puzzle \\
            --key node-1.json --url http://127.0.0.1:8001 --stake 2000000000
    """
    from koiitasks.identity import load_key  # noqa: PLC0415
    from koiitasks.network import register_node  # noqa: PLC0415
    from koiitasks.task import load_task  # noqa: PLC0415

    loaded = load_task(task)
    the_url = store_url(store)
    amount = loaded.config.minimum_stake_amount if stake is None else stake
    record = register_node(open_store_at(the_url), loaded, load_key(key), url=url, stake=amount)
    body = record.body
    if json_out:
        print(json.dumps(body.model_dump(mode="json")))
        return
    out.print(
        f"registered node {body.node_id} for task {body.task_id}: stake {body.stake:,} at "
        f"{body.url} (store {the_url})",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )


def _check_public_key(public_id: str) -> None:
    from koiitasks.identity import decode_b58  # noqa: PLC0415

    try:
        ok = len(decode_b58(public_id)) == 32
    except ValueError:
        ok = False
    if not ok:
        raise typer.BadParameter(
            f"{public_id!r} is not a base58 ed25519 public key "
            "(the line `koiitasks node keygen` prints)",
            param_hint="--orchestrator",
        )
