"""What an attacker with write access to the store does, for tamper-evidence specifications.

Stores are create-only through their interface; an attacker goes around it. These helpers do
the same to a copy of a store: replace or remove a record's bytes, and enumerate every single
byte change of a record, so a test can show that each one is detected::

    from koiitasks.testing.tamper import byte_changes, copy_store, overwrite

    store = copy_store(settled_store)
    for position, tampered in byte_changes(store.read(key)):
        overwrite(store, key, tampered)
        with pytest.raises(LedgerError):
            verify_task(store, task_id)
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

from koiitasks.storage import FileStore, MemoryStore, Store


def snapshot(store: Store) -> dict[str, bytes]:
    """Every record in a store, by key."""
    return {key: store.read(key) for key in store.list()}


def copy_store(source: Store, name: str | None = None) -> MemoryStore:
    """A new in-memory store holding exactly the records of ``source``."""
    target = MemoryStore(name or f"copy-of-{source.url}")
    target.create_many(list(snapshot(source).items()))
    return target


def overwrite(store: Store, key: str, data: bytes | None) -> None:
    """Replace (or, with None, remove) the bytes under ``key`` behind the store's back."""
    if isinstance(store, MemoryStore):
        records = store._records  # going around the interface is the point
        if data is None:
            records.pop(key, None)
        else:
            records[key] = data
    elif isinstance(store, FileStore):
        path = store.root / key
        if data is None:
            path.unlink(missing_ok=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            os.chmod(path, 0o644)  # noqa: PTH101 - as a file written by hand would be
    else:  # pragma: no cover - tamper tests run on the two local backends
        raise TypeError(f"cannot tamper with a {type(store).__name__}")


def byte_changes(raw: bytes, deltas: Sequence[int] = (1,)) -> Iterator[tuple[int, bytes]]:
    """Every way to change one byte of ``raw`` by adding each delta (mod 256) at each position."""
    for position in range(len(raw)):
        for delta in deltas:
            tampered = bytearray(raw)
            tampered[position] = (tampered[position] + delta) % 256
            yield position, bytes(tampered)
