"""Record stores: one interface, several backends, one layout.

``open_store(url)`` turns a store URL into a backend:

- a path or ``file://PATH``: :class:`FileStore`, the embedded default (``.koiitasks/``);
- ``memory://NAME``: :class:`MemoryStore`, one per name per process (tests);
- ``s3://BUCKET[/PREFIX]``: the S3 backend (AWS, MinIO, or a moto server via the endpoint setting);
- ``moto://BUCKET[/PREFIX]``: the S3 backend against moto in-process (``mock_aws``), for trying
  the S3 path without any server.
"""

from __future__ import annotations

import threading
from pathlib import Path

from koiitasks.errors import ConfigError
from koiitasks.storage.base import Store, check_key
from koiitasks.storage.file import FileStore
from koiitasks.storage.layout import Layout
from koiitasks.storage.memory import MemoryStore

DEFAULT_STORE = ".koiitasks"

_memory_stores: dict[str, MemoryStore] = {}
_memory_lock = threading.Lock()


def open_store(url: str | None = None, *, s3_endpoint_url: str | None = None) -> Store:
    """The store a URL names; see the module docstring for the forms."""
    url = url or DEFAULT_STORE
    if "\x00" in url:
        raise ConfigError(
            f"store URL {url!r} holds a NUL byte", hint="no folder or bucket name can hold one"
        )
    scheme, sep, rest = url.partition("://")
    if not sep:
        return FileStore(Path(url))
    if scheme == "file":
        if not rest:
            raise ConfigError(
                f"store URL {url!r} names no folder",
                hint="give one: file:///abs/path, file://relative/path, or just the path",
            )
        return FileStore(Path(rest))
    if scheme == "memory":
        with _memory_lock:
            return _memory_stores.setdefault(rest, MemoryStore(rest))
    if scheme in {"s3", "moto"}:
        try:
            from koiitasks.storage.s3 import (  # noqa: PLC0415 - boto3 is heavy
                open_s3_store,
            )
        except ImportError as e:  # pragma: no cover - boto3 is a dependency
            raise ConfigError(f"store {url!r} needs boto3: {e}") from e
        store: Store = open_s3_store(url, endpoint_url=s3_endpoint_url)
        return store
    raise ConfigError(
        f"unknown store URL {url!r}",
        hint="use a path, file://PATH, memory://NAME, s3://BUCKET[/PREFIX] or moto://BUCKET",
    )


__all__ = [
    "DEFAULT_STORE",
    "FileStore",
    "Layout",
    "MemoryStore",
    "Store",
    "check_key",
    "open_store",
]
