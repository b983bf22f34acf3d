"""Specification of ``Store.create_many``: batches keep every create-only rule of ``create``."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from koiitasks.errors import InvalidKey, RecordConflict, StorageUnavailable
from koiitasks.storage import FileStore, MemoryStore, Store
from koiitasks.storage import file as file_module


@pytest.fixture(params=["memory", "file", "file-without-syncfs"])
def store(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Store]:
    """Each local backend, and the file store on its per-record fsync path."""
    if request.param == "memory":
        yield MemoryStore("batches")
        return
    if request.param == "file-without-syncfs":
        monkeypatch.setattr(file_module, "_syncfs", None)
    yield FileStore(tmp_path / "store")


class TestCreateMany:
    """Batched creates."""

    def test_creates_every_record(self, store: Store) -> None:
        """A batch of new keys creates them all and reports True for each."""
        items = [(f"t/r/{i:03d}.json", f"record {i}".encode()) for i in range(50)]
        assert store.create_many(items) == [True] * 50
        assert [store.read(k) for k, _ in items] == [d for _, d in items]

    def test_identical_records_already_there_are_no_ops(self, store: Store) -> None:
        """Keys already holding the same bytes report False, new ones True."""
        store.create("t/a.json", b"a")
        assert store.create_many([("t/a.json", b"a"), ("t/b.json", b"b")]) == [False, True]

    def test_different_bytes_raise_a_conflict_naming_the_key(self, store: Store) -> None:
        """A batch that would change an existing record raises RecordConflict naming its key."""
        store.create("t/a.json", b"a")
        with pytest.raises(RecordConflict, match=r"t/a\.json"):
            store.create_many([("t/b.json", b"b"), ("t/a.json", b"changed")])
        assert store.read("t/a.json") == b"a"

    def test_invalid_keys_are_refused(self, store: Store) -> None:
        """A key that could escape the store is refused before anything is written."""
        with pytest.raises(InvalidKey):
            store.create_many([("../x.json", b"x")])

    def test_an_empty_batch_does_nothing(self, store: Store) -> None:
        """An empty batch returns an empty list."""
        assert store.create_many([]) == []


class TestFileBatchCrash:
    """A batch that fails part way on disk."""

    def test_a_failed_link_leaves_whole_records_or_none_and_no_temporary_files(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """If linking fails mid-batch (a crash's stand-in), records are whole or absent and no
        temporary file is left visible."""
        store = FileStore(tmp_path / "store")
        real_link = os.link
        calls = {"n": 0}

        def failing_link(src: str, dst: str) -> None:
            calls["n"] += 1
            if calls["n"] == 3:
                raise OSError(28, "No space left on device")
            real_link(src, dst)

        monkeypatch.setattr(os, "link", failing_link)
        items = [(f"t/{i}.json", f"record {i}".encode()) for i in range(5)]
        with pytest.raises(StorageUnavailable, match="No space left"):
            store.create_many(items)
        for key, data in items:
            assert store.read_or_none(key) in {None, data}
        assert store.list() == ["t/0.json", "t/1.json"]
        assert not list((tmp_path / "store").rglob(".tmp-*"))
