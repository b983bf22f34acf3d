"""Specification of :mod:`koiitasks.nodes.server`: the node's HTTP app, in process.

The app is driven through httpx's ASGI transport; the node's clock is simulated and sits in
round 3's execute window (see test_node_host for the schedule).
"""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from koiitasks.clock import SimulatedClock
from koiitasks.errors import ConfigError, TaskLoadError
from koiitasks.model import Phase
from koiitasks.nodes.host import NodeHost
from koiitasks.nodes.server import bind, create_app, url_of
from koiitasks.nodes.wire import ExecuteCall, encode_call, node_path
from koiitasks.protocol import Submission, decode, sign
from koiitasks.task import load_task
from koiitasks.testing import write_task
from tests.unit.test_node_host import (
    GENESIS_MS,
    NODE,
    ORCHESTRATOR,
    SLOT_MS,
    request,
    task_record,
)

ROUTES_TASK = """
from starlette.responses import JSONResponse

from koiitasks import Task

task = Task()

@task.execute
def execute(ctx):
    if ctx.round == 4:
        raise RuntimeError("the target API is down")
    ctx.store.set("last", str(ctx.round))
    return {"round": ctx.round}

@task.audit
def audit(ctx, submission):
    return True

@task.routes
def routes(app):
    @app.get("/last/{node_id}")
    def last(node_id: str):
        return JSONResponse({"last": app.state.stores[node_id].get("last")})
"""


class AppClient:
    """A node app driven over httpx's ASGI transport, one request at a time."""

    def __init__(self, app: FastAPI, clock: SimulatedClock) -> None:
        self.app = app
        self.clock = clock

    def request(self, method: str, path: str, content: bytes | None = None) -> httpx.Response:
        async def send() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://node") as client:
                return await client.request(method, path, content=content)

        return asyncio.run(send())

    def get(self, path: str) -> httpx.Response:
        return self.request("GET", path)

    def post(self, path: str, content: bytes) -> httpx.Response:
        return self.request("POST", path, content)


def client_for(task_dir: Path, *, max_call_bytes: int = 1 << 20) -> AppClient:
    loaded = load_task(task_dir)
    clock = SimulatedClock(GENESIS_MS + 32 * SLOT_MS)
    host = NodeHost(loaded, [NODE], orchestrator=ORCHESTRATOR.public_id, clock=clock)
    return AppClient(create_app(host, max_call_bytes=max_call_bytes), clock)


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_task(tmp_path_factory.mktemp("server") / "routes", ROUTES_TASK)


@pytest.fixture
def client(task_dir: Path) -> AppClient:
    return client_for(task_dir)


def execute_body(task_dir: Path, *, round_number: int = 3) -> bytes:
    req = request(Phase.EXECUTE)
    if round_number != 3:
        body = req.body.model_copy(update={"round": round_number, "request_slot": 40})
        req = sign(body, ORCHESTRATOR)
    return encode_call(ExecuteCall(task=task_record(load_task(task_dir)), request=req))


class TestRoutes:
    """What a node process answers on each path."""

    def test_health_answers_like_a_koii_node(self, client: AppClient) -> None:
        """`GET /` is `{"status": 200, "message": "Running", ...}` with the served identities."""
        response = client.get("/")
        assert response.status_code == 200
        doc = response.json()
        assert (doc["status"], doc["message"], doc["nodes"]) == (200, "Running", [NODE.public_id])

    def test_a_call_is_answered_with_the_signed_record(
        self, client: AppClient, task_dir: Path
    ) -> None:
        """A POST to `/nodes/{id}/execute` answers 200 with the node's signed submission."""
        response = client.post(
            node_path(NODE.public_id, Phase.EXECUTE), content=execute_body(task_dir)
        )
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        submission = decode(response.content, Submission, where="test")
        assert submission.body.response_slot == 32

    def test_task_routes_are_mounted_and_see_each_identitys_store(
        self, client: AppClient, task_dir: Path
    ) -> None:
        """`@task.routes` gets the app; its routes read what the hooks stored per identity."""
        client.post(node_path(NODE.public_id, Phase.EXECUTE), content=execute_body(task_dir))
        assert client.get(f"/last/{NODE.public_id}").json() == {"last": "3"}

    def test_a_failing_routes_hook_is_reported_with_the_task(self, tmp_path: Path) -> None:
        """A routes hook that raises stops the node from starting, naming the task."""
        broken = ROUTES_TASK.replace(
            '@app.get("/last/{node_id}")', "raise KeyError('oops')\n    @app.get('/x')"
        )
        with pytest.raises(TaskLoadError, match="routes hook of task 'test-task' failed: KeyError"):
            client_for(write_task(tmp_path / "broken", broken))


class TestRefusals:
    """Refused calls get an error status and `{"error": ...}` saying why."""

    def test_refusal_carries_status_error_and_hint(self, client: AppClient, task_dir: Path) -> None:
        """A replayed call is 409 with the reason in `error`."""
        path = node_path(NODE.public_id, Phase.EXECUTE)
        client.post(path, content=execute_body(task_dir))
        response = client.post(path, content=execute_body(task_dir))
        assert response.status_code == 409
        assert "replayed" in response.json()["error"]

    def test_a_body_over_the_cap_is_refused_unread(self, task_dir: Path) -> None:
        """A call body over max_call_bytes is refused with 413."""
        small = client_for(task_dir, max_call_bytes=1024)
        response = small.post(node_path(NODE.public_id, Phase.EXECUTE), content=b"x" * 4096)
        assert response.status_code == 413
        assert "over the 1024-byte cap" in response.json()["error"]

    def test_an_unknown_phase_is_not_found(self, client: AppClient) -> None:
        """Only the four call phases have endpoints."""
        response = client.post(f"/nodes/{NODE.public_id}/settled", content=b"{}")
        assert response.status_code == 404
        assert "nodes answer execute, audit" in response.json()["error"]

    def test_a_failing_hook_is_a_server_error_naming_node_and_round(
        self, client: AppClient, task_dir: Path
    ) -> None:
        """An execute hook that raises answers 500 with the node, round and exception."""
        client.clock.set_ms(GENESIS_MS + 41 * SLOT_MS)
        response = client.post(
            node_path(NODE.public_id, Phase.EXECUTE), content=execute_body(task_dir, round_number=4)
        )
        assert response.status_code == 500
        error = response.json()["error"]
        assert f"execute hook failed on node {NODE.public_id} in round 4" in error
        assert "RuntimeError: the target API is down" in error


class TestBind:
    """Listening sockets."""

    def test_port_zero_picks_a_free_port_and_names_the_url(self) -> None:
        """`--port 0` binds a free loopback port; the URL names it."""
        with bind("127.0.0.1", 0) as sock:
            assert url_of(sock) == f"http://127.0.0.1:{sock.getsockname()[1]}"

    def test_a_port_in_use_is_a_clear_error(self) -> None:
        """A taken port is a ConfigError naming host and port, with a hint."""
        with socket.create_server(("127.0.0.1", 0)) as taken:
            port = taken.getsockname()[1]
            with pytest.raises(ConfigError, match=f"cannot listen on 127.0.0.1:{port}") as caught:
                bind("127.0.0.1", port)
        assert caught.value.hint is not None
        assert "--port" in caught.value.hint
