"""Specification of :mod:`koiitasks.nodes.http`: the pool that calls remote nodes.

Nodes are played by httpx's mock transport, so every answer, error and stall is exact. The
slot clock is the wall clock with a genesis chosen so that round 3's execute window (slots
30..43 of 100 ms) closes a chosen number of milliseconds from now: the pool's deadline.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest

from koiitasks.clock import Schedule, SlotClock, WallClock
from koiitasks.identity import Keypair
from koiitasks.ingest import ENVELOPE_BYTES
from koiitasks.model import Phase
from koiitasks.nodes.base import Reply
from koiitasks.nodes.http import HttpPool
from koiitasks.nodes.wire import ExecuteCall
from koiitasks.protocol import RoundRequest, TaskRecord, digest, sign

SLOT_MS = 100
MAX_RESULT_BYTES = 1000
CAP = MAX_RESULT_BYTES + ENVELOPE_BYTES
SCHEDULE = Schedule(starting_slot=0, round_time=10, submission_window=4, audit_window=4)
ORCHESTRATOR = Keypair.from_seed(b"pool-orchestrator")
NODES = [Keypair.from_seed(f"pool-node-{i}".encode()).public_id for i in range(20)]
RECORD = sign(
    TaskRecord(
        task_id="test-task",
        task_name="Test Task",
        config={"slot_ms": SLOT_MS},
        orchestrator=ORCHESTRATOR.public_id,
        genesis_ms=0,
        starting_slot=0,
    ),
    ORCHESTRATOR,
)
REQUEST = sign(
    RoundRequest(
        task_id="test-task", round=3, phase=Phase.EXECUTE, request_slot=30, nonce=digest(b"n")
    ),
    ORCHESTRATOR,
)

Handler = Callable[[httpx.Request], Any]


def make_pool(
    handler: Handler, *, window_left_ms: int = 5000, concurrency: int = 8, urls: Any = None
) -> HttpPool:
    """A pool whose calls go to ``handler``; the execute window closes in ``window_left_ms``."""
    clock = WallClock()
    genesis = clock.now_ms() - (SCHEDULE.execute_window(3).end * SLOT_MS - window_left_ms)
    return HttpPool(
        urls if urls is not None else dict.fromkeys(NODES, "http://node.test:8001/"),
        task_record=RECORD,
        schedule=SCHEDULE,
        slot_clock=SlotClock(clock, genesis_ms=genesis, slot_ms=SLOT_MS),
        max_result_bytes=MAX_RESULT_BYTES,
        concurrency=concurrency,
        transport=httpx.MockTransport(handler),
    )


@pytest.fixture
def pools() -> Iterator[list[HttpPool]]:
    """Pools made in a test, closed after it."""
    made: list[HttpPool] = []
    yield made
    for pool in made:
        pool.close()


@pytest.fixture
def pool_with(pools: list[HttpPool]) -> Callable[..., HttpPool]:
    def make(handler: Handler, **options: Any) -> HttpPool:
        pool = make_pool(handler, **options)
        pools.append(pool)
        return pool

    return make


def one(replies: list[Reply]) -> Reply:
    (reply,) = replies
    return reply


class TestCalls:
    """Calls go out as the wire says; answers come back as raw bytes."""

    def test_the_call_is_the_canonical_envelope_posted_to_the_nodes_path(
        self, pool_with: Callable[..., HttpPool]
    ) -> None:
        """POST {url}/nodes/{id}/execute with the signed task record and request; the answer's
        bytes come back untouched, with the time they arrived."""
        seen: list[httpx.Request] = []

        def handler(request: httpx.Request) -> httpx.Response:
            seen.append(request)
            return httpx.Response(200, content=b'{"any":"bytes"}')

        before = WallClock().now_ms()
        reply = one(pool_with(handler).execute(REQUEST, NODES[:1]))
        assert (reply.node_id, reply.data, reply.error) == (NODES[0], b'{"any":"bytes"}', "")
        assert before <= reply.received_ms <= WallClock().now_ms()
        (request,) = seen
        assert str(request.url) == f"http://node.test:8001/nodes/{NODES[0]}/execute"
        call = ExecuteCall.model_validate_json(request.content)
        assert (call.task, call.request) == (RECORD, REQUEST)
        assert request.headers["accept-encoding"] == "identity"

    def test_every_node_gets_one_reply_and_calls_in_flight_are_bounded(
        self, pool_with: Callable[..., HttpPool]
    ) -> None:
        """Twenty nodes, a bound of four: twenty replies, never more than four calls at once."""
        in_flight = 0
        most = 0

        async def handler(request: httpx.Request) -> httpx.Response:
            nonlocal in_flight, most
            in_flight += 1
            most = max(most, in_flight)
            await asyncio.sleep(0.02)
            in_flight -= 1
            return httpx.Response(200, content=request.url.path.encode())

        replies = pool_with(handler, concurrency=4).execute(REQUEST, NODES)
        assert sorted(r.node_id for r in replies) == sorted(NODES)
        assert all(r.data == f"/nodes/{r.node_id}/execute".encode() for r in replies)
        assert most == 4

    def test_a_node_without_a_url_is_missing(self, pool_with: Callable[..., HttpPool]) -> None:
        """A registration with no URL cannot be called: no data, and why."""
        pool = pool_with(lambda _: httpx.Response(200), urls={NODES[0]: None})
        reply = one(pool.execute(REQUEST, NODES[:1]))
        assert reply.data is None
        assert "no URL" in reply.error


class TestHostileBodies:
    """What a node sends is read only as far as the round needs it."""

    def test_a_body_over_the_cap_is_read_one_byte_past_it_and_no_further(
        self, pool_with: Callable[..., HttpPool]
    ) -> None:
        """A 10 MB answer is cut at cap + 1 bytes (so ingest refuses it as over the cap), and
        the node's stream is not drained."""
        sent = 0

        async def body() -> AsyncIterator[bytes]:
            nonlocal sent
            for _ in range(160):
                sent += 65_536
                yield b"x" * 65_536

        reply = one(
            pool_with(lambda _: httpx.Response(200, content=body())).execute(REQUEST, NODES[:1])
        )
        assert reply.data is not None
        assert len(reply.data) == CAP + 1
        assert sent <= CAP + 65_536

    def test_a_stalled_body_is_cut_off_when_the_window_closes(
        self, pool_with: Callable[..., HttpPool]
    ) -> None:
        """A body that stops half way counts as no answer once the window closes, saying so."""

        async def body() -> AsyncIterator[bytes]:
            yield b'{"body":'
            await asyncio.sleep(60)

        pool = pool_with(lambda _: httpx.Response(200, content=body()), window_left_ms=300)
        reply = one(pool.execute(REQUEST, NODES[:1]))
        assert reply.data is None
        assert "before the execute window closed (slow, or stalled mid-body)" in reply.error

    def test_an_error_status_is_missing_with_the_nodes_reason(
        self, pool_with: Callable[..., HttpPool]
    ) -> None:
        """A node that refuses (409) has no answer; its reason is kept for the log."""
        pool = pool_with(lambda _: httpx.Response(409, json={"error": "a replayed request"}))
        reply = one(pool.execute(REQUEST, NODES[:1]))
        assert reply.data is None
        assert reply.error.endswith("answered HTTP 409: a replayed request")

    def test_no_call_goes_out_after_the_window_closed(
        self, pool_with: Callable[..., HttpPool]
    ) -> None:
        """Once the window has closed, nodes are not called at all."""
        calls: list[httpx.Request] = []

        def handler(request: httpx.Request) -> httpx.Response:
            calls.append(request)
            return httpx.Response(200)

        pool = pool_with(handler, window_left_ms=-10)
        reply = one(pool.execute(REQUEST, NODES[:1]))
        assert (reply.data, calls) == (None, [])
        assert "window closed before the call" in reply.error


def _http_errors() -> list[type[Exception]]:
    """Every exception class httpx defines."""
    found: list[type[Exception]] = []
    todo: list[type[Exception]] = [httpx.HTTPError, httpx.InvalidURL, httpx.StreamError]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo.extend(cls.__subclasses__())
    return sorted(set(found), key=lambda c: c.__name__)


def _raise(cls: type[Exception]) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        if issubclass(cls, httpx.HTTPStatusError):
            raise cls("boom", request=request, response=httpx.Response(500))
        if issubclass(cls, httpx.RequestError):
            raise cls("boom", request=request)
        try:
            error = cls("boom")
        except TypeError:  # StreamError's subclasses make their own message
            error = cls()
        raise error

    return handler


class TestTranslation:
    """No httpx error escapes the pool: each is a missing reply that says what happened."""

    @pytest.mark.parametrize("error", [pytest.param(c, id=c.__name__) for c in _http_errors()])
    def test_every_httpx_error_is_a_missing_reply(
        self, pool_with: Callable[..., HttpPool], error: type[Exception]
    ) -> None:
        """The node is missing, and the error names the URL called."""
        reply = one(pool_with(_raise(error)).execute(REQUEST, NODES[:1]))
        assert reply.data is None
        assert f"http://node.test:8001/nodes/{NODES[0]}/execute" in reply.error

    def test_a_refused_connection_says_to_check_the_node(
        self, pool_with: Callable[..., HttpPool]
    ) -> None:
        """A connection error points at `koiitasks node serve`."""
        reply = one(pool_with(_raise(httpx.ConnectError)).execute(REQUEST, NODES[:1]))
        assert "is `koiitasks node serve` running there?" in reply.error
