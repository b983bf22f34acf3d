"""A read-only view of a store: every read goes through, every write is refused.

Replays and audits of a store run the same code that writes records; this view guarantees they
change nothing, and says so loudly if a bug would make them try.
"""

from __future__ import annotations

import builtins
from collections.abc import Iterator

from koiitasks.errors import StorageError
from koiitasks.storage.base import Store


class ReadOnlyStore(Store):
    """``inner``, read-only: :meth:`create` raises :class:`StorageError` naming the key."""

    def __init__(self, inner: Store, *, purpose: str = "a read-only view") -> None:
        self.inner = inner
        self.url = inner.url
        self.purpose = purpose

    def _create(self, key: str, data: bytes) -> bool:  # noqa: ARG002 - refused whatever it is
        raise StorageError(
            f"{self.purpose} of {self.url} does not write, but was about to create {key!r}",
            hint="this is a bug in koiitasks; rerun with KOII_DEBUG=1 and report the traceback",
        )

    def _read(self, key: str) -> bytes | None:
        return self.inner.read_or_none(key)

    def _list(self, prefix: str) -> Iterator[str]:
        return iter(self.inner.list(prefix))

    def children(self, prefix: str) -> builtins.list[str]:
        return self.inner.children(prefix)
