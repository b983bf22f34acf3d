"""The storage contract: every backend (memory, file, S3 under mock_aws, S3 on a moto server
process) behaves the same for creates, reads, listings and keys."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import pytest

from koiitasks.errors import InvalidKey, RecordConflict, RecordNotFound
from koiitasks.storage import MemoryStore, Store
from koiitasks.storage.s3 import S3Store

INVALID_KEYS = [
    pytest.param("../x", id="parent"),
    pytest.param("a/../b", id="inner-parent"),
    pytest.param("a//b", id="empty-segment"),
    pytest.param("/abs", id="absolute"),
    pytest.param("a/", id="trailing-slash"),
    pytest.param("a\x00b", id="nul"),
    pytest.param(".hidden", id="hidden"),
    pytest.param("a/.hidden", id="hidden-segment"),
    pytest.param("", id="empty"),
    pytest.param("a b", id="space"),
]

PAYLOADS = [
    pytest.param(bytes(range(256)), id="every-byte"),
    pytest.param(b"\xff\xfe\x00not utf-8\x80", id="invalid-utf8"),
    pytest.param("héllo wörld ✓ 🙂 ŁŻŚ 日本語".encode(), id="unicode"),
    pytest.param(b"", id="empty"),
    pytest.param(b"x" * 300_000, id="300kB"),
]


class TestCreateOnly:
    def test_create_then_read_returns_the_same_bytes(self, store: Store) -> None:
        """A created record reads back byte for byte, and create reports it created it."""
        assert store.create("tasks/t/task.json", b'{"a":1}') is True
        assert store.read("tasks/t/task.json") == b'{"a":1}'

    def test_identical_recreate_is_a_noop_returning_false(self, store: Store) -> None:
        """Writing the same bytes again succeeds without writing: reruns are safe."""
        store.create("k.json", b"same")
        assert store.create("k.json", b"same") is False
        assert store.read("k.json") == b"same"

    def test_different_bytes_raise_record_conflict_naming_the_key(self, store: Store) -> None:
        """Writing other bytes to an existing key fails, names the key, and keeps the first."""
        store.create("rounds/0000000007/submissions/n1.json", b"first")
        with pytest.raises(RecordConflict, match=r"rounds/0000000007/submissions/n1\.json"):
            store.create("rounds/0000000007/submissions/n1.json", b"second")
        assert store.read("rounds/0000000007/submissions/n1.json") == b"first"

    @pytest.mark.parametrize("payload", PAYLOADS)
    def test_binary_and_unicode_payloads_round_trip(self, store: Store, payload: bytes) -> None:
        """Any bytes are stored as they are: no encoding, no newline or size games."""
        store.create("blob.bin", payload)
        assert store.read("blob.bin") == payload
        assert store.create("blob.bin", payload) is False


class TestRead:
    def test_read_of_a_missing_key_raises_record_not_found(self, store: Store) -> None:
        """Reading a key nobody wrote raises RecordNotFound naming the key."""
        with pytest.raises(RecordNotFound, match=r"nothing/here\.json"):
            store.read("nothing/here.json")

    def test_read_or_none_returns_none_for_a_missing_key(self, store: Store) -> None:
        """read_or_none is the non-raising read: None when missing, the bytes otherwise."""
        assert store.read_or_none("a.json") is None
        store.create("a.json", b"1")
        assert store.read_or_none("a.json") == b"1"

    def test_exists_tells_whether_a_record_is_there(self, store: Store) -> None:
        """exists is False before the create and True after."""
        assert store.exists("a/b.json") is False
        store.create("a/b.json", b"1")
        assert store.exists("a/b.json") is True

    def test_a_folder_of_records_is_not_a_record(self, store: Store) -> None:
        """A key that is only a prefix of other keys reads as missing."""
        store.create("a/b.json", b"1")
        assert store.read_or_none("a") is None


class TestList:
    def test_list_returns_every_key_sorted(self, store: Store) -> None:
        """A listing is sorted whatever the write order, so rounds list in round order."""
        keys = ["b/2.json", "a/1.json", "b/10.json", "a/0.json", "c.json"]
        for key in keys:
            store.create(key, b"x")
        assert store.list() == sorted(keys)

    def test_list_filters_by_string_prefix(self, store: Store) -> None:
        """A prefix selects keys that start with it, across folder boundaries."""
        for key in ["rounds/0001/a.json", "rounds/0002/b.json", "rounds/1000/c.json", "x.json"]:
            store.create(key, b"x")
        assert store.list("rounds/") == [
            "rounds/0001/a.json",
            "rounds/0002/b.json",
            "rounds/1000/c.json",
        ]
        assert store.list("rounds/000") == ["rounds/0001/a.json", "rounds/0002/b.json"]
        assert store.list("rounds/0002/") == ["rounds/0002/b.json"]
        assert store.list("nothing/") == []

    def test_list_of_an_empty_store_is_empty(self, store: Store) -> None:
        """A new store lists nothing."""
        assert store.list() == []


class TestInvalidKeys:
    @pytest.mark.parametrize("key", INVALID_KEYS)
    def test_every_operation_refuses_an_invalid_key(self, store: Store, key: str) -> None:
        """Keys that could escape the layout raise InvalidKey before touching the backend."""
        with pytest.raises(InvalidKey):
            store.create(key, b"x")
        with pytest.raises(InvalidKey):
            store.read(key)
        with pytest.raises(InvalidKey):
            store.read_or_none(key)
        with pytest.raises(InvalidKey):
            store.exists(key)
        assert store.list() == []

    @pytest.mark.parametrize("prefix", ["../", "/abs/", "a/../", ".hidden/"])
    def test_list_refuses_an_invalid_prefix(self, store: Store, prefix: str) -> None:
        """A listing prefix follows the key rules too."""
        with pytest.raises(InvalidKey):
            store.list(prefix)


class TestPagination:
    def test_listing_more_than_1000_keys_returns_them_all(self, store: Store) -> None:
        """1,100 keys list in full and in order: S3 pages of 1,000 are followed."""
        keys = [f"many/{i:05d}.json" for i in range(1100)]
        with ThreadPoolExecutor(max_workers=16) as pool:
            created = list(pool.map(lambda k: store.create(k, k.encode()), keys))
        assert all(created)
        pages: list[object] = []
        with _counting(store, "after-call.s3.ListObjectsV2", pages):
            assert store.list("many/") == keys
        if isinstance(store, S3Store):
            assert len(pages) == 2


@contextmanager
def _counting(store: Store, event: str, calls: list[object]) -> Iterator[None]:
    """Record botocore ``event`` of an S3 store's client in ``calls`` (no-op for others)."""
    if not isinstance(store, S3Store):
        yield
        return

    def record(**kwargs: object) -> None:
        calls.append(kwargs)

    store.client.meta.events.register(event, record)
    try:
        yield
    finally:
        store.client.meta.events.unregister(event, record)


class TestMemoryStoreClear:
    def test_clear_forgets_every_record_and_the_store_stays_usable(self) -> None:
        """A cleared memory store lists nothing, and a key can be created anew."""
        store = MemoryStore("clear")
        store.create("a/b.json", b"1")
        store.clear()
        assert list(store.list()) == []
        assert store.create("a/b.json", b"2") is True
        assert store.read("a/b.json") == b"2"
