"""moto's S3 server, with the one guarantee of S3 that it lacks: atomic conditional writes.

``python -m moto.server`` checks ``If-None-Match: *`` and then writes, with no lock between the
two, on a threaded server: two processes creating the same key at once can both be told
"created" and the second write silently replaces the first (seen in ``tests/storage/
test_s3_race.py``). Real S3 and MinIO decide conditional writes atomically, and exactly-once
payment relies on it. This launcher runs moto's own application, as ``moto.server`` does, with
conditional writes (``If-None-Match`` or ``If-Match``) taken one at a time::

    python -m koiitasks.testing.moto_serve -H 127.0.0.1 -p 5000

Requests without a condition run side by side, as before.
"""

from __future__ import annotations

import argparse
import io
import signal
import sys
import threading
from collections.abc import Callable, Iterable
from types import FrameType
from typing import Any

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
CONDITIONS = ("HTTP_IF_NONE_MATCH", "HTTP_IF_MATCH")


class AtomicConditionalWrites:
    """WSGI middleware: a conditional PUT or POST holds one lock from its check to its write."""

    def __init__(self, app: WSGIApp) -> None:
        self.app = app
        self._lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        conditional = environ.get("REQUEST_METHOD") in {"PUT", "POST"} and any(
            environ.get(header) for header in CONDITIONS
        )
        if not conditional:
            return self.app(environ, start_response)
        # The body is read before the lock: a client stalled mid-body blocks only itself.
        length = int(environ.get("CONTENT_LENGTH") or 0)
        environ["wsgi.input"] = io.BytesIO(environ["wsgi.input"].read(length))
        with self._lock:
            # moto writes while building the response: hold the lock until it is built.
            response = self.app(environ, start_response)
            try:
                return list(response)
            finally:
                close = getattr(response, "close", None)
                if close is not None:
                    close()


def _exit(_signum: int, _frame: FrameType | None) -> None:
    sys.exit(0)


def main(argv: list[str] | None = None) -> None:
    from moto.moto_server.werkzeug_app import (  # noqa: PLC0415 - needs moto[server]
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import run_simple  # noqa: PLC0415

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-H", "--host", default="127.0.0.1", help="address to bind")
    parser.add_argument("-p", "--port", type=int, default=5000, help="port to bind")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _exit)
    signal.signal(signal.SIGINT, _exit)
    app = DomainDispatcherApplication(create_backend_app)
    run_simple(
        args.host,
        args.port,
        AtomicConditionalWrites(app),
        threaded=True,
        request_handler=MotoRequestHandler,
    )


if __name__ == "__main__":
    main()
