"""The storage interface every backend implements, and the key rules they share.

A store holds immutable records under slash-separated keys. Writes are create-only: writing the
same bytes again is a no-op that succeeds, writing different bytes to an existing key raises
:class:`~koiitasks.errors.RecordConflict`. That one rule is what makes reruns safe and payments
exactly-once on every backend.
"""

from __future__ import annotations

import builtins
import re
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence

from koiitasks.errors import InvalidKey, RecordConflict, RecordNotFound, StorageUnavailable

_SEGMENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
# A whole key in one match: segments never start with a dot, so "." and ".." cannot occur.
_KEY = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}(?:/[A-Za-z0-9_][A-Za-z0-9._-]{0,127})*")
MAX_KEY_LENGTH = 512


def check_key(key: str) -> str:
    """Return ``key`` if it is a plain relative key; raise :class:`InvalidKey` otherwise.

    Segments are letters, digits, ``.``, ``_`` and ``-``, never ``.`` or ``..`` alone and never
    starting with a dot, so no key can escape the store's root on any backend.
    """
    if not isinstance(key, str) or not key or len(key) > MAX_KEY_LENGTH:
        raise InvalidKey(f"invalid storage key {key!r}: empty or longer than {MAX_KEY_LENGTH}")
    if _KEY.fullmatch(key):
        return key
    for segment in key.split("/"):
        if not _SEGMENT.fullmatch(segment) or segment in {".", ".."}:
            raise InvalidKey(
                f"invalid storage key {key!r}: segment {segment!r} is not allowed",
                hint="keys are made of letters, digits, '.', '_' and '-' segments",
            )
    raise InvalidKey(f"invalid storage key {key!r}")  # pragma: no cover - _KEY covers it


def is_key(name: str) -> bool:
    """Whether ``name`` is a key :func:`check_key` accepts. Listings skip anything else: files
    or objects other tools left (an editor's ``entry.json~``, ``copy of x.json``) are not
    records, and every backend lists the same keys."""
    return 0 < len(name) <= MAX_KEY_LENGTH and _KEY.fullmatch(name) is not None


def check_prefix(prefix: str) -> str:
    """Return ``prefix`` if it is empty or a key followed by ``/``."""
    if prefix:
        check_key(prefix.rstrip("/"))
    return prefix


class Store(ABC):
    """A create-only record store.

    Subclasses implement :meth:`_create`, :meth:`_read` and :meth:`_list`; this base checks keys
    and turns "exists with other bytes" into a conflict error naming the key.
    """

    url: str

    def create(self, key: str, data: bytes) -> bool:
        """Store ``data`` under ``key`` unless it exists.

        Returns True when this call created the record, False when identical bytes were already
        there. Raises :class:`RecordConflict` when different bytes are there.
        """
        check_key(key)
        if self._create(key, data):
            return True
        return self._settle_existing(key, data)

    def create_many(self, items: Sequence[tuple[str, bytes]]) -> builtins.list[bool]:
        """:meth:`create` for each ``(key, data)``; backends may batch the durability work.

        Every record is durable when this returns; a failure part way leaves the records before
        it created (each one whole), as separate creates would.
        """
        return [self.create(key, data) for key, data in items]

    def _settle_existing(self, key: str, data: bytes) -> bool:
        """After a create found ``key`` taken: False if it holds ``data``, else a conflict."""
        existing = self._read(key)
        if existing is None:
            # Deleted behind our back between the two calls, or the key is a folder: try once.
            if self._create(key, data):
                return True
            existing = self._read(key)
            if existing is None:
                raise StorageUnavailable(
                    f"cannot create record {key!r} in {self.url}: the name is taken by "
                    "something that is not a record (a folder?)"
                )
        if existing != data:
            raise RecordConflict(
                f"record {key!r} in {self.url} already exists with different content",
                hint="records are create-only; a rerun must produce the same bytes",
            )
        return False

    def read(self, key: str) -> bytes:
        """The bytes under ``key``; raises :class:`RecordNotFound` when there are none."""
        data = self._read(check_key(key))
        if data is None:
            raise RecordNotFound(f"no record {key!r} in {self.url}")
        return data

    def read_or_none(self, key: str) -> bytes | None:
        """The bytes under ``key``, or None."""
        return self._read(check_key(key))

    def exists(self, key: str) -> bool:
        """Whether a record is stored under ``key``."""
        return self._read(check_key(key)) is not None

    def list(self, prefix: str = "") -> builtins.list[str]:
        """Every key under ``prefix``, sorted."""
        return sorted(self._list(check_prefix(prefix)))

    def children(self, prefix: str) -> builtins.list[str]:
        """The distinct next segments below ``prefix`` (a ``/``-ended prefix), sorted.

        Backends with a cheap way to list one level (folders, S3 delimiters) override this.
        """
        check_prefix(prefix)
        return sorted({key[len(prefix) :].split("/", 1)[0] for key in self._list(prefix)})

    def close(self) -> None:  # noqa: B027 - optional hook, most backends hold nothing
        """Release what the backend holds (connections, pools)."""

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @abstractmethod
    def _create(self, key: str, data: bytes) -> bool:
        """Create ``key`` atomically if absent; True if created, False if it already existed."""

    @abstractmethod
    def _read(self, key: str) -> bytes | None:
        """The bytes under ``key`` or None."""

    @abstractmethod
    def _list(self, prefix: str) -> Iterator[str]:
        """Keys under ``prefix`` in any order."""


__all__ = ["RecordConflict", "RecordNotFound", "Store", "check_key", "check_prefix"]
