"""The HTTP face of a node: a FastAPI app around a :class:`~koiitasks.nodes.host.NodeHost`,
served by uvicorn (``koiitasks node serve``).

Routes::

    GET  /                         health, as Koii's node app answers it:
                                   {"status": 200, "message": "Running", "nodes": [...], ...}
    POST /nodes/{node_id}/{phase}  a call from the orchestrator (see koiitasks.nodes.wire):
                                   200 with the signed answer, or {"error": "..."} and a status
    ...                            the task's own routes: ``@task.routes`` is given the app,
                                   as Koii's ``routes(app)`` is given its Express app

A call body is read up to ``max_call_bytes`` (413 beyond it, before the rest is read), and hooks
run in worker threads so the event loop keeps answering health checks and other identities while
a hook works. Task routes reach each identity's store as ``request.app.state.stores[node_id]``.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable

import anyio.to_thread
import uvicorn
from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from koiitasks.errors import ConfigError, RequestRefused, TaskLoadError
from koiitasks.model import Phase
from koiitasks.nodes.host import NodeHost
from koiitasks.nodes.runtime import HookFailed
from koiitasks.nodes.wire import CALLABLE, MAX_CALL_BYTES, error_body

log = logging.getLogger("koiitasks.node")

_JSON = "application/json"

#: How long a node keeps an idle connection open: longer than the orchestrator's pool keeps it
#: (``nodes.http.KEEPALIVE_S``), so a call never races the node closing the connection.
KEEPALIVE_S = 65


def create_app(host: NodeHost, *, max_call_bytes: int = MAX_CALL_BYTES) -> FastAPI:
    """The node app: health, the orchestrator's calls, then the task's own routes."""
    app = FastAPI(
        title=f"koiitasks node: {host.loaded.task_id}",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.host = host
    app.state.stores = host.stores

    async def health(_request: Request) -> Response:
        return JSONResponse(host.health())

    async def call(request: Request) -> Response:
        node_id = str(request.path_params["node_id"])
        phase_name = str(request.path_params["phase"])
        try:
            phase = _phase(phase_name)
            body = await _read_body(request, max_call_bytes)
            answer = await anyio.to_thread.run_sync(host.call, node_id, phase, body)
        except RequestRefused as e:
            log.warning("node %s: refused a %s call: %s", node_id, phase_name, e.message)
            return Response(error_body(e.message, e.hint), status_code=e.status, media_type=_JSON)
        except HookFailed as e:
            log.warning("%s", e.message)
            return Response(error_body(e.message), status_code=500, media_type=_JSON)
        return Response(answer, media_type=_JSON)

    app.add_route("/", health, methods=["GET"], include_in_schema=False)
    app.add_route("/nodes/{node_id}/{phase}", call, methods=["POST"], include_in_schema=False)
    hook = host.loaded.task.routes_hook
    if hook is not None:
        try:
            hook(app)
        except Exception as e:
            raise TaskLoadError(
                f"routes hook of task {host.loaded.task_id!r} failed: {type(e).__name__}: {e}"
            ) from e
    return app


def _phase(name: str) -> Phase:
    """The phase a path names, or 404."""
    phases = {phase.value: phase for phase in CALLABLE}
    if name not in phases:
        raise RequestRefused(f"no phase {name!r}; nodes answer {', '.join(phases)}", status=404)
    return phases[name]


async def _read_body(request: Request, cap: int) -> bytes:
    """The body, refused with 413 as soon as it is known to be over ``cap`` bytes."""
    declared = request.headers.get("content-length", "")
    too_big = RequestRefused(f"call body is over the {cap}-byte cap", status=413)
    if declared.isdigit() and int(declared) > cap:
        raise too_big
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > cap:
            raise too_big
        chunks.append(chunk)
    return b"".join(chunks)


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (0: any free port), or a clear error.

    Made with ``proto=IPPROTO_TCP``: asyncio turns Nagle's algorithm off only on sockets that
    say they are TCP, and ``socket.create_server`` makes them with proto 0. Without it every
    answer (headers and body are two writes) waited about 40 ms for a delayed ACK.
    """
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
        )[0]
        sock = socket.socket(family, kind, proto)
    except OSError as e:
        raise ConfigError(
            f"cannot listen on {host}:{port}: {e.strerror or e}",
            hint="check --host: an address of this machine, such as 127.0.0.1",
        ) from e
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as e:
        sock.close()
        raise ConfigError(
            f"cannot listen on {host}:{port}: {e.strerror or e}",
            hint="choose another --port (0 picks a free one) or check --host",
        ) from e
    return sock


def url_of(sock: socket.socket) -> str:
    """The base URL a bound socket answers on."""
    address, port = sock.getsockname()[:2]
    return f"http://[{address}]:{port}" if ":" in address else f"http://{address}:{port}"


def serve(
    app: FastAPI, sock: socket.socket, *, on_ready: Callable[[str], None] | None = None
) -> None:
    """Serve ``app`` on a bound socket until SIGINT or SIGTERM (uvicorn shuts down cleanly)."""
    config = uvicorn.Config(
        app,
        log_config=None,
        access_log=False,
        lifespan="off",
        server_header=False,
        timeout_keep_alive=KEEPALIVE_S,
        timeout_graceful_shutdown=3,
    )
    if on_ready is not None:
        on_ready(url_of(sock))  # the socket listens already: calls queue until serving starts
    uvicorn.Server(config).run(sockets=[sock])
