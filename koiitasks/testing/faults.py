"""An S3 endpoint that fails on purpose: a loopback proxy in front of a real S3 server.

:class:`FaultyProxy` forwards every request to an S3 endpoint (a moto server process in the
tests) and, on a fixed schedule, fails some of them the ways S3 and networks fail:

==================  ==========================================================================
``slow-down``       503 SlowDown before the request reaches S3 (S3 throttling)
``internal-error``  500 InternalError after S3 has done the request (was the write made?)
``reset``           the connection reset before the request reaches S3
``reset-after``     the connection reset after S3 has done the request
``timeout``         no answer until the client's read timeout, the request never sent on
``timeout-after``   S3 has done the request; its answer comes after the client gave up
==================  ==========================================================================

Faults land on first and second attempts only (botocore numbers them in the
``amz-sdk-request`` header), so a client that retries at least three times always gets through,
and whatever it stores must be exactly what a fault-free run stores. ``outage_after=N`` makes
every call after the Nth fail with a 500 instead, whatever the attempt: an outage no retry
outlasts::

    with moto_server_process() as s3, FaultyProxy(s3, every=5) as proxy:
        client = make_s3_client(proxy.url, credentials=MOTO_CREDENTIALS, read_timeout=0.5)
        ...
        assert proxy.faults / proxy.calls >= 0.1
"""

from __future__ import annotations

import http.client
import re
import socket
import struct
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self

FAULTS = ("slow-down", "internal-error", "reset", "reset-after", "timeout", "timeout-after")
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length"}
_ATTEMPT = re.compile(r"attempt=(\d+)")
_ERROR = (
    '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
    "<Message>{message}</Message><RequestId>koiitasks-fault</RequestId></Error>"
)


class FaultyProxy:
    """A threaded HTTP proxy on loopback that fails one call in ``every`` with the next fault
    of ``faults`` in turn; ``stall_s`` is how long a timeout fault keeps the client waiting."""

    def __init__(
        self,
        upstream: str,
        *,
        every: int = 5,
        faults: Sequence[str] = FAULTS,
        stall_s: float = 1.0,
        faulty_attempts: int = 2,
        outage_after: int | None = None,
    ) -> None:
        unknown = sorted(set(faults) - set(FAULTS))
        if unknown or every < 1:
            raise ValueError(f"unknown faults {unknown} or every={every} below 1")
        parsed = urllib.parse.urlsplit(upstream)
        self.upstream = (parsed.hostname or "127.0.0.1", parsed.port or 80)
        self.every = every
        self.faults = tuple(faults)
        self.stall_s = stall_s
        self.faulty_attempts = faulty_attempts
        self.outage_after = outage_after
        self.injected: Counter[str] = Counter()
        self.calls = 0
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def fault_count(self) -> int:
        with self._lock:
            return sum(self.injected.values())

    def decide(self, attempt: int) -> str | None:
        """Count a call and say which fault it gets, if any."""
        with self._lock:
            self.calls += 1
            if self.outage_after is not None and self.calls > self.outage_after:
                self.injected["internal-error"] += 1
                return "internal-error"
            if attempt > self.faulty_attempts or self.calls % self.every:
                return None
            fault = self.faults[(self.calls // self.every) % len(self.faults)]
            self.injected[fault] += 1
            return fault

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


def _handler_for(proxy: FaultyProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as botocore's connection pool expects

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib's name
            """Quiet: the tests count faults, they do not read logs."""

        def _handle(self) -> None:
            body = self._body()
            match = _ATTEMPT.search(self.headers.get("amz-sdk-request", ""))
            fault = proxy.decide(int(match.group(1)) if match else 1)
            if fault == "slow-down":
                self._error(503, "SlowDown", "Please reduce your request rate.")
                return
            if fault == "reset":
                self._reset()
                return
            if fault == "timeout":
                time.sleep(proxy.stall_s)
                self._reset()
                return
            status, headers, answer = self._forward(body)
            if fault == "internal-error":
                self._error(500, "InternalError", "We encountered an internal error.")
            elif fault == "reset-after":
                self._reset()
            elif fault == "timeout-after":
                time.sleep(proxy.stall_s)
                self._reset()
            else:
                self._answer(status, headers, answer)

        do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _handle  # noqa: N815 - stdlib's names

        def _body(self) -> bytes:
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                return self._chunked()
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""

        def _chunked(self) -> bytes:
            """The raw chunked body, re-sent as one body with its decoded length."""
            parts: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline().strip():  # trailers, if any
                        pass
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()

        def _forward(self, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
            upstream = http.client.HTTPConnection(*proxy.upstream, timeout=30)
            try:
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                headers["Content-Length"] = str(len(body))
                upstream.request(self.command, self.path, body=body, headers=headers)
                response = upstream.getresponse()
                answer = response.read()
                return response.status, response.getheaders(), answer
            finally:
                upstream.close()

        def _answer(self, status: int, headers: list[tuple[str, str]], answer: bytes) -> None:
            self.send_response(status)
            for name, value in headers:
                if name.lower() not in _HOP_BY_HOP:
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(answer)

        def _error(self, status: int, code: str, message: str) -> None:
            answer = _ERROR.format(code=code, message=message).encode()
            self._answer(status, [("Content-Type", "application/xml")], answer)

        def _reset(self) -> None:
            """Close with a TCP reset (SO_LINGER 0), as a failing network or server does."""
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            self.connection.close()

    return Handler
