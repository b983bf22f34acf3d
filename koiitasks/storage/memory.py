"""An in-memory store: fast, thread-safe, gone when the process ends. For tests."""

from __future__ import annotations

import threading
from collections.abc import Iterator

from koiitasks.storage.base import Store


class MemoryStore(Store):
    """Records in a dict behind a lock."""

    def __init__(self, name: str = "default") -> None:
        self.url = f"memory://{name}"
        self._records: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def clear(self) -> None:
        """Forget every record (for a process that reuses the store's name or its memory)."""
        with self._lock:
            self._records.clear()

    def _create(self, key: str, data: bytes) -> bool:
        with self._lock:
            if key in self._records:
                return False
            self._records[key] = bytes(data)
            return True

    def _read(self, key: str) -> bytes | None:
        with self._lock:
            return self._records.get(key)

    def _list(self, prefix: str) -> Iterator[str]:
        with self._lock:
            keys = [k for k in self._records if k.startswith(prefix)]
        return iter(keys)
