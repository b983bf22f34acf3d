"""A hostile node server for the remote tests: one plain ``http.server`` on loopback hosting
several identities, each answering execute calls in its own bad way.

It is deliberately not built on koiitasks' own server, so it can send what no honest node would:
bytes that are not JSON, a body far over the cap, the wrong schema, another key's signature, an
old nonce, or a body that stops half way and never ends.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from koiitasks.clock import SlotClock, WallClock
from koiitasks.identity import Keypair
from koiitasks.model import Phase
from koiitasks.nodes.wire import ExecuteCall
from koiitasks.protocol import Submission, canonical, digest, sign

#: The kinds of hostile answer, and the identities that give them.
KINDS = ("not-json", "oversized", "wrong-schema", "wrong-signature", "stale-nonce", "stall")

OVERSIZED_BYTES = 4 * 1024 * 1024


class HostileNodes:
    """The identities and their kinds; answers are made per call."""

    def __init__(self, keys: Mapping[str, Keypair]) -> None:
        self.keys = dict(keys)  # kind -> key
        self.kinds = {key.public_id: kind for kind, key in self.keys.items()}
        self.stop = threading.Event()
        self.stranger = Keypair.generate()

    def submission(self, node: Keypair, raw: bytes, *, nonce: str | None = None) -> Submission:
        call = ExecuteCall.model_validate_json(raw)
        record, request = call.task.body, call.request.body
        slot_ms = record.config["slot_ms"]
        assert isinstance(slot_ms, int)
        clock = SlotClock(WallClock(), genesis_ms=record.genesis_ms, slot_ms=slot_ms)
        return Submission(
            task_id=request.task_id,
            round=request.round,
            node_id=node.public_id,
            request_slot=request.request_slot,
            response_slot=max(request.request_slot, clock.get_slot()),
            nonce=nonce or request.nonce,
            result={"node": node.public_id, "round": request.round},
        )

    def answer(self, node_id: str, raw: bytes) -> bytes:
        """The whole answer of a kind that sends one at once."""
        kind = self.kinds[node_id]
        node = self.keys[kind]
        if kind == "not-json":
            return b"<html><body>I am a web page, not a submission</body></html>"
        if kind == "wrong-schema":
            return canonical({"body": {"kind": "submission", "hello": "world"}, "signer": node_id})
        if kind == "wrong-signature":
            body = self.submission(node, raw)
            return sign(body, self.stranger).model_copy(update={"signer": node_id}).encode()
        if kind == "stale-nonce":
            return sign(
                self.submission(node, raw, nonce=digest(b"an earlier round")), node
            ).encode()
        raise ValueError(kind)


def _handler(nodes: HostileNodes) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib's name
            """Quiet: the test reads outcomes, not access logs."""

        def do_GET(self) -> None:
            self._send(200, canonical({"status": 200, "message": "Running"}))

        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("content-length", "0")))
            parts = self.path.strip("/").split("/")
            if len(parts) != 3 or parts[1] not in nodes.kinds or parts[2] != Phase.EXECUTE.value:
                self._send(404, canonical({"error": "hostile nodes only execute"}))
                return
            kind = nodes.kinds[parts[1]]
            try:
                if kind == "oversized":
                    self._oversized()
                elif kind == "stall":
                    self._stall()
                else:
                    self._send(200, nodes.answer(parts[1], raw))
            except (BrokenPipeError, ConnectionResetError):
                pass  # the orchestrator hung up on us, as it should

        def _send(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _oversized(self) -> None:
            self.send_response(200)
            self.send_header("content-length", str(OVERSIZED_BYTES))
            self.end_headers()
            chunk = b'{"body":' + b" " * 65_528
            for _ in range(OVERSIZED_BYTES // len(chunk)):
                self.wfile.write(chunk)

        def _stall(self) -> None:
            self.send_response(200)
            self.send_header("content-length", "10000")
            self.end_headers()
            self.wfile.write(b'{"body":{"kind":"submission",')
            self.wfile.flush()
            nodes.stop.wait(timeout=60)  # and never the rest

    return Handler


@contextmanager
def hostile_nodes(keys: Mapping[str, Keypair]) -> Iterator[tuple[str, HostileNodes]]:
    """Serve the hostile identities on a free loopback port; yield the base URL and them."""
    nodes = HostileNodes(keys)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(nodes))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="hostile-nodes", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", nodes
    finally:
        nodes.stop.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
