"""Remote nodes over HTTP: the pool that sends the orchestrator's calls to ``node serve``
processes and hands their raw answers to the round engine.

The engine's steps are synchronous and run in several Prefect task threads at once; the calls
go out on one private event loop, in a thread of its own, through pooled ``httpx.AsyncClient``s
(keep-alive connections are reused from round to round), with a semaphore that bounds how many
calls are in flight. One client holds at most ``CONNECTIONS_PER_CLIENT`` connections and each
node always goes through the same client: httpx's async connection pool slows down sharply past
about eight busy connections (encode/httpx#3215; measured here: one client with 64 connections
121 calls/s, eight clients with 8 each 561 calls/s, to the same server in the same run).

Each call may take until its phase's window closes on the orchestrator's clock: that deadline
bounds connecting, sending, waiting and reading, so a node that stalls half way through its
body is cut off when the window closes and the round goes on.

Nothing a node does raises here. An answer that arrived is returned as bytes, read up to the
phase's size cap (one byte more shows it was over), and the engine refuses it with the reason;
no answer (refused connection, reset, timeout, an error status) is a reply with no data and the
reason in ``error``: the node is missing.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import logging
import ssl
import threading
import zlib
from collections.abc import Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx

from koiitasks.clock import Schedule, SlotClock
from koiitasks.distribution import DistributionInputs
from koiitasks.model import Phase
from koiitasks.nodes.base import NodePool, Reply
from koiitasks.nodes.wire import (
    AuditCall,
    DistributionAuditCall,
    DistributionCall,
    ExecuteCall,
    call_url,
    encode_call,
    error_text,
    phase_window,
    reply_cap,
)
from koiitasks.protocol import (
    AcceptedSubmission,
    DistributionList,
    RoundRequest,
    Signed,
    TaskRecord,
)

log = logging.getLogger("koiitasks.http")

T = TypeVar("T")

#: Calls in flight at once, over all nodes. A call held back by this bound goes out late, and
#: its node's recorded completion time (counted from the request's slot) includes the wait: keep
#: it at least the number of nodes asked at once (a shard: 250), within the process's file limit.
DEFAULT_CONCURRENCY = 256

#: Connections per ``httpx.AsyncClient``: past this, one client's pool is the bottleneck.
CONNECTIONS_PER_CLIENT = 8

#: How long an idle connection to a node is kept for the next call: across a round's phases.
#: Shorter than the node's own keep-alive (``nodes.server.KEEPALIVE_S``), so the node never
#: closes a connection just as the pool sends on it.
KEEPALIVE_S = 30.0

_HEADERS = {
    "content-type": "application/json",
    # A compressed body could expand past the cap inside one chunk: ask for none.
    "accept-encoding": "identity",
    "user-agent": "koiitasks-orchestrator",
}


@dataclass(frozen=True)
class _Job:
    node_id: str
    url: str | None
    body: bytes
    cap: int


class HttpPool(NodePool):
    """Reaches registered nodes at their URLs; one reply per node asked."""

    def __init__(
        self,
        urls: Mapping[str, str | None],
        *,
        task_record: Signed[TaskRecord],
        schedule: Schedule,
        slot_clock: SlotClock,
        max_result_bytes: int,
        concurrency: int = DEFAULT_CONCURRENCY,
        transport: httpx.AsyncBaseTransport | None = None,
        event_hooks: Mapping[str, list[Any]] | None = None,
    ) -> None:
        self.urls = dict(urls)
        self.task_record = task_record
        self.schedule = schedule
        self.slot_clock = slot_clock
        self.max_result_bytes = max_result_bytes
        self.concurrency = max(1, concurrency)
        self._transport = transport
        self._event_hooks = dict(event_hooks or {})
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="koii-http-pool", daemon=True
        )
        self._thread.start()
        self._clients, self._semaphore = self._run(self._open())
        self._closed = False

    async def _open(self) -> tuple[list[httpx.AsyncClient], asyncio.Semaphore]:
        count = -(-self.concurrency // CONNECTIONS_PER_CLIENT)
        # One TLS context for all: each costs tens of milliseconds to load the CA bundle.
        tls = ssl.create_default_context()
        clients = [self._new_client(tls) for _ in range(count)]
        return clients, asyncio.Semaphore(self.concurrency)

    def _new_client(self, tls: ssl.SSLContext) -> httpx.AsyncClient:
        """An async client: pooled, no redirects, no environment proxies."""
        size = min(self.concurrency, CONNECTIONS_PER_CLIENT)
        limits = httpx.Limits(
            max_connections=size, max_keepalive_connections=size, keepalive_expiry=KEEPALIVE_S
        )
        return httpx.AsyncClient(
            limits=limits,
            transport=self._transport,
            verify=tls,
            headers=_HEADERS,
            follow_redirects=False,
            trust_env=False,  # node URLs are on the orchestrator's network, never via a proxy
            event_hooks=self._event_hooks,
        )

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def close(self) -> None:
        """Close the connections and stop the pool's thread."""
        if self._closed:
            return
        self._closed = True
        try:
            for client in self._clients:
                self._run(client.aclose())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)
            self._loop.close()

    # --- the four calls --------------------------------------------------------------------

    def execute(self, request: Signed[RoundRequest], node_ids: Sequence[str]) -> list[Reply]:
        body = encode_call(ExecuteCall(task=self.task_record, request=request))
        cap = reply_cap(Phase.EXECUTE, max_result_bytes=self.max_result_bytes)
        return self._send(request, [self._job(node, body, cap) for node in node_ids])

    def audit(
        self,
        request: Signed[RoundRequest],
        assignments: Mapping[str, Sequence[Signed[AcceptedSubmission]]],
    ) -> list[Reply]:
        jobs = []
        for auditor, records in assignments.items():
            call = AuditCall(task=self.task_record, request=request, submissions=tuple(records))
            cap = reply_cap(Phase.AUDIT, max_result_bytes=self.max_result_bytes, items=len(records))
            jobs.append(self._job(auditor, encode_call(call), cap))
        return self._send(request, jobs)

    def build_distribution(
        self, request: Signed[RoundRequest], builder: str, inputs: DistributionInputs, attempt: int
    ) -> Reply:
        call = DistributionCall(
            task=self.task_record, request=request, inputs=inputs, attempt=attempt
        )
        cap = reply_cap(
            Phase.DISTRIBUTION, max_result_bytes=self.max_result_bytes, items=len(inputs.approved)
        )
        (reply,) = self._send(request, [self._job(builder, encode_call(call), cap)])
        return reply

    def audit_distribution(
        self,
        request: Signed[RoundRequest],
        auditors: Sequence[str],
        inputs: DistributionInputs,
        distribution: Signed[DistributionList],
    ) -> list[Reply]:
        call = DistributionAuditCall(
            task=self.task_record, request=request, inputs=inputs, distribution=distribution
        )
        body = encode_call(call)
        cap = reply_cap(Phase.DISTRIBUTION_AUDIT, max_result_bytes=self.max_result_bytes)
        return self._send(request, [self._job(auditor, body, cap) for auditor in auditors])

    # --- sending ---------------------------------------------------------------------------

    def _job(self, node_id: str, body: bytes, cap: int) -> _Job:
        return _Job(node_id=node_id, url=self.urls.get(node_id), body=body, cap=cap)

    def deadline_ms(self, request: Signed[RoundRequest]) -> int:
        """When the request's phase window closes on the orchestrator's clock."""
        body = request.body
        window = phase_window(self.schedule, body.phase, body.round)
        return self.slot_clock.ms_of_slot(window.end)

    def _send(self, request: Signed[RoundRequest], jobs: Sequence[_Job]) -> list[Reply]:
        """Send every job's call for ``request``; one reply each, by the window's close."""
        if not jobs:
            return []
        deadline = self.deadline_ms(request)
        phase = request.body.phase
        future = asyncio.run_coroutine_threadsafe(self._send_all(phase, jobs, deadline), self._loop)
        # Every call ends by the deadline; the margin only guards against a wedged loop.
        wait_s = max(0, deadline - self.slot_clock.clock.now_ms()) / 1000 + 10
        try:
            return future.result(timeout=wait_s)
        except cf.TimeoutError:
            future.cancel()
            return [self._missing(job.node_id, "the call pool did not finish") for job in jobs]

    async def _send_all(self, phase: Phase, jobs: Sequence[_Job], deadline_ms: int) -> list[Reply]:
        return list(await asyncio.gather(*(self._send_one(phase, j, deadline_ms) for j in jobs)))

    def _client_for(self, node_id: str) -> httpx.AsyncClient:
        """The node's own client, always the same one, so its connection is kept."""
        return self._clients[zlib.crc32(node_id.encode()) % len(self._clients)]

    def _missing(self, node_id: str, error: str) -> Reply:
        return Reply(
            node_id=node_id, data=None, received_ms=self.slot_clock.clock.now_ms(), error=error
        )

    async def _send_one(self, phase: Phase, job: _Job, deadline_ms: int) -> Reply:
        if not job.url:
            return self._missing(job.node_id, "its registration has no URL")
        url = call_url(job.url, job.node_id, phase)
        remaining_s = (deadline_ms - self.slot_clock.clock.now_ms()) / 1000
        if remaining_s <= 0:
            return self._missing(job.node_id, f"the {phase.value} window closed before the call")
        try:
            async with asyncio.timeout(remaining_s), self._semaphore:
                left = max(0.001, (deadline_ms - self.slot_clock.clock.now_ms()) / 1000)
                async with self._client_for(job.node_id).stream(
                    "POST", url, content=job.body, timeout=httpx.Timeout(left)
                ) as response:
                    data = await _read_capped(response, job.cap)
                    status = response.status_code
        except TimeoutError:
            return self._missing(
                job.node_id,
                f"no complete answer from {url} before the {phase.value} window closed "
                "(slow, or stalled mid-body)",
            )
        except (httpx.HTTPError, httpx.InvalidURL, httpx.StreamError) as e:
            return self._missing(job.node_id, describe_error(e, url))
        received_ms = self.slot_clock.clock.now_ms()
        if status != 200:
            return self._missing(job.node_id, f"{url} answered HTTP {status}: {error_text(data)}")
        return Reply(node_id=job.node_id, data=data, received_ms=received_ms)


async def _read_capped(response: httpx.Response, cap: int) -> bytes:
    """At most ``cap + 1`` bytes of the body: enough to show it is over the cap, no more.

    Raw bytes, never decompressed: a compressed answer (asked for none) is refused as malformed.
    """
    if response.is_stream_consumed:  # a transport that read the whole body already (mocks)
        return response.content[: cap + 1]
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_raw():
        chunks.append(chunk)
        size += len(chunk)
        if size > cap:
            break
    return b"".join(chunks)[: cap + 1]


def describe_error(error: Exception, url: str) -> str:
    """Why a call got no answer, in words an operator acts on."""
    detail = str(error) or type(error).__name__
    if isinstance(error, httpx.ConnectError):
        return f"cannot connect to {url}: {detail} (is `koiitasks node serve` running there?)"
    if isinstance(error, httpx.TimeoutException):
        return f"timed out calling {url}: {detail}"
    if isinstance(error, httpx.RemoteProtocolError | httpx.ReadError | httpx.WriteError):
        return f"connection to {url} broke before a complete answer: {detail}"
    if isinstance(error, httpx.InvalidURL | httpx.UnsupportedProtocol):
        return f"registered URL {url} is not usable: {detail}"
    return f"call to {url} failed: {type(error).__name__}: {detail}"
