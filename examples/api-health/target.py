"""The API the api-health task monitors: a tiny HTTP service for loopback.

Run it before the nodes; it prints the URL its health endpoint answers on::

    python examples/api-health/target.py --port 8900
    python examples/api-health/target.py --port 8901 --status 503   # a service that is down

``GET /health`` answers ``--status`` with ``{"service": "api-health-target", "status": ...}``;
any other path is 404.
"""

from __future__ import annotations

import argparse
import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def make_handler(status: int) -> type[BaseHTTPRequestHandler]:
    """A request handler whose health endpoint answers ``status``."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib's name
            """Quiet: every node calls this every round."""

        def do_GET(self) -> None:
            if self.path != "/health":
                self._send(404, {"error": f"no {self.path}; try /health"})
                return
            self._send(status, {"service": "api-health-target", "status": status})

        def _send(self, code: int, doc: dict[str, Any]) -> None:
            body = json.dumps(doc).encode()
            self.send_response(code)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8900, help="0 picks a free port")
    parser.add_argument("--status", type=int, default=200, help="what /health answers")
    args = parser.parse_args()
    server = ThreadingHTTPServer((args.host, args.port), make_handler(args.status))
    host, port = server.server_address[:2]
    print(f"target API health at http://{host!s}:{port}/health", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
