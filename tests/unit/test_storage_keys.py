"""Specification of storage keys, the layout, and the create-only file and memory stores.

The full cross-backend contract suite lives elsewhere; these are the unit rules each piece keeps.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from koiitasks.errors import (
    ConfigError,
    InvalidKey,
    RecordConflict,
    RecordNotFound,
    StorageError,
)
from koiitasks.identity import Keypair
from koiitasks.storage import (
    FileStore,
    Layout,
    MemoryStore,
    Store,
    check_key,
    open_store,
)
from koiitasks.storage.base import MAX_KEY_LENGTH, check_prefix

FAST = settings(max_examples=100, deadline=None, database=None)

NODE = Keypair.from_seed(b"node-a").public_id
LAYOUT = Layout("hash-puzzle")
ROUND_7 = "tasks/hash-puzzle/rounds/0000000007/"


class TestCheckKey:
    """Which keys a store accepts."""

    @pytest.mark.parametrize(
        "key",
        [
            pytest.param("a", id="one-segment"),
            pytest.param("A_b-c.d", id="every-allowed-character"),
            pytest.param("_private", id="leading-underscore"),
            pytest.param("tasks/hash-puzzle/task.json", id="task-record"),
            pytest.param(f"{ROUND_7}submissions/{NODE}.json", id="submission"),
            pytest.param(f"{ROUND_7}distribution-audits/01/{NODE}.json", id="distribution-audit"),
            pytest.param("a..b", id="dots-inside-a-segment"),
            pytest.param("x" * 128, id="longest-segment"),
            pytest.param("/".join(["x" * 127] * 4), id="longest-key"),
        ],
    )
    def test_accepts_plain_relative_keys(self, key: str) -> None:
        """A key of letters, digits, '.', '_' and '-' segments is returned unchanged."""
        assert len(key) <= MAX_KEY_LENGTH
        assert check_key(key) == key

    @pytest.mark.parametrize(
        "key",
        [
            pytest.param("../x", id="parent"),
            pytest.param("a/../b", id="parent-inside"),
            pytest.param("..", id="parent-alone"),
            pytest.param("/abs", id="absolute"),
            pytest.param("a//b", id="empty-segment"),
            pytest.param("a/", id="trailing-slash"),
            pytest.param(".hidden", id="hidden"),
            pytest.param("a/.tmp-123", id="temp-file-name"),
            pytest.param("a/./b", id="current-dir"),
            pytest.param(".", id="current-dir-alone"),
            pytest.param("a\x00b", id="nul"),
            pytest.param("a\\b", id="backslash"),
            pytest.param("..\\x", id="windows-parent"),
            pytest.param("a b", id="space"),
            pytest.param("café", id="non-ascii"),
            pytest.param("-flag", id="leading-dash"),
            pytest.param("C:/x", id="drive-letter"),
            pytest.param("", id="empty"),
            pytest.param("x" * 129, id="segment-too-long"),
            pytest.param("/".join(["x" * 128] * 4) + "/x", id="key-too-long"),
            pytest.param(None, id="none"),
            pytest.param(b"a", id="bytes"),
            pytest.param(7, id="int"),
            pytest.param("a\n", id="trailing-newline"),
            pytest.param("a\n/b", id="newline-inside"),
        ],
    )
    def test_rejects_keys_that_could_escape_or_confuse_a_backend(self, key: Any) -> None:
        """Anything but a plain relative key is an InvalidKey (a StorageError) naming it."""
        with pytest.raises(InvalidKey) as caught:
            check_key(key)
        assert isinstance(caught.value, StorageError)
        assert repr(key)[:40] in str(caught.value)

    @pytest.mark.parametrize(
        "prefix",
        [pytest.param("", id="everything"), pytest.param("tasks/", id="folder"), "tasks/hash-p"],
    )
    def test_check_prefix_accepts_empty_and_key_prefixes(self, prefix: str) -> None:
        """A listing prefix is empty, a folder ending in '/', or the start of a key."""
        assert check_prefix(prefix) == prefix

    @pytest.mark.parametrize("prefix", [pytest.param("../", id="parent"), "/tasks/", "a//b/"])
    def test_check_prefix_rejects_what_check_key_rejects(self, prefix: str) -> None:
        """A prefix that could escape the store is an InvalidKey."""
        with pytest.raises(InvalidKey):
            check_prefix(prefix)


class TestLayout:
    """Where one task's records live."""

    @pytest.mark.parametrize(
        ("key_of", "expected"),
        [
            pytest.param(lambda ly: ly.task, "tasks/hash-puzzle/task.json", id="task"),
            pytest.param(lambda ly: ly.nodes, "tasks/hash-puzzle/nodes/", id="nodes"),
            pytest.param(
                lambda ly: ly.node(NODE), f"tasks/hash-puzzle/nodes/{NODE}.json", id="node"
            ),
            pytest.param(lambda ly: ly.round(7), ROUND_7, id="round"),
            pytest.param(lambda ly: ly.request(7), f"{ROUND_7}request.json", id="request"),
            pytest.param(
                lambda ly: ly.submission(7, NODE), f"{ROUND_7}submissions/{NODE}.json", id="sub"
            ),
            pytest.param(
                lambda ly: ly.refusal(7, NODE), f"{ROUND_7}refusals/{NODE}.json", id="refusal"
            ),
            pytest.param(lambda ly: ly.audit(7, NODE), f"{ROUND_7}audits/{NODE}.json", id="audit"),
            pytest.param(
                lambda ly: ly.distribution(7, 1), f"{ROUND_7}distributions/01.json", id="list"
            ),
            pytest.param(
                lambda ly: ly.distribution_audit(7, 1, NODE),
                f"{ROUND_7}distribution-audits/01/{NODE}.json",
                id="list-audit",
            ),
            pytest.param(
                lambda ly: ly.ledger_entry(7),
                "tasks/hash-puzzle/ledger/0000000007.json",
                id="ledger-entry",
            ),
            pytest.param(
                lambda ly: ly.request(12_345_678),
                "tasks/hash-puzzle/rounds/0012345678/request.json",
                id="large-round",
            ),
        ],
    )
    def test_keys_of_a_task(self, key_of: Callable[[Layout], str], expected: str) -> None:
        """Every record has one key, with rounds zero-padded to ten digits."""
        key = key_of(LAYOUT)
        assert key == expected
        if key.endswith("/"):
            assert check_prefix(key) == key
        else:
            assert check_key(key) == key

    @FAST
    @given(rounds=st.lists(st.integers(min_value=0, max_value=10**10 - 1), max_size=30))
    def test_sorted_keys_are_in_round_order(self, rounds: list[int]) -> None:
        """Sorting ledger or request keys as text sorts them by round number."""
        ledger = [LAYOUT.ledger_entry(r) for r in rounds]
        requests = [LAYOUT.request(r) for r in rounds]
        assert sorted(ledger) == [LAYOUT.ledger_entry(r) for r in sorted(rounds)]
        assert sorted(requests) == [LAYOUT.request(r) for r in sorted(rounds)]

    @FAST
    @given(round_number=st.integers(min_value=0, max_value=10**10 - 1))
    def test_round_of_ledger_key_inverts_ledger_entry(self, round_number: int) -> None:
        """The round a ledger key names is the round it was made for."""
        assert Layout.round_of_ledger_key(LAYOUT.ledger_entry(round_number)) == round_number

    @pytest.mark.parametrize(
        ("key", "name"),
        [
            pytest.param(LAYOUT.submission(7, NODE), NODE, id="submitter"),
            pytest.param(LAYOUT.audit(7, NODE), NODE, id="auditor"),
            pytest.param(LAYOUT.distribution(7, 2), "02", id="attempt"),
            pytest.param(LAYOUT.node(NODE), NODE, id="node"),
        ],
    )
    def test_name_of_is_the_last_segment_without_json(self, key: str, name: str) -> None:
        """name_of gives back the node id, auditor id or attempt a key was made from."""
        assert Layout.name_of(key) == name

    @pytest.mark.parametrize(
        "make_key",
        [
            pytest.param(lambda: Layout("../other").task, id="task-id-parent"),
            pytest.param(lambda: Layout("a/../../b").root, id="task-id-escape"),
            pytest.param(lambda: LAYOUT.node("../../x"), id="node-id-parent"),
            pytest.param(lambda: LAYOUT.submission(7, "../x"), id="submitter-parent"),
            pytest.param(lambda: LAYOUT.audit(7, ".hidden"), id="auditor-hidden"),
        ],
    )
    def test_ids_cannot_escape_the_layout(self, make_key: Callable[[], str]) -> None:
        """A task or node id that would escape its folder is an InvalidKey."""
        with pytest.raises(InvalidKey):
            make_key()

    @pytest.mark.parametrize(
        "make_key",
        [
            pytest.param(lambda: Layout("a/rounds").task, id="task-id"),
            pytest.param(lambda: LAYOUT.node("a/b"), id="node-id"),
            pytest.param(lambda: LAYOUT.submission(7, "a/b"), id="submitter"),
            pytest.param(lambda: LAYOUT.refusal(7, "a/b"), id="refused-node"),
            pytest.param(lambda: LAYOUT.audit(7, "a/b"), id="auditor"),
            pytest.param(lambda: LAYOUT.distribution_audit(7, 0, "a/b"), id="list-auditor"),
        ],
    )
    def test_an_id_is_one_segment_of_its_key(self, make_key: Callable[[], str]) -> None:
        """An id holding a slash would put its record in another record's folder (task "a/rounds"
        inside task "a"); it is an InvalidKey, though it never leaves the store."""
        with pytest.raises(InvalidKey, match="one key segment"):
            make_key()


@pytest.fixture(params=["file", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """A fresh, empty store of each local kind."""
    made: Store = (
        FileStore(tmp_path / "store", fsync=False)
        if request.param == "file"
        else MemoryStore(f"unit-{request.node.name}")
    )
    with made:
        yield made


class TestCreateOnly:
    """The one write rule every backend keeps."""

    def test_create_returns_true_then_false_for_identical_bytes(self, store: Store) -> None:
        """The first create makes the record; repeating it with the same bytes is a no-op."""
        key = LAYOUT.submission(7, NODE)
        assert store.create(key, b"one") is True
        assert store.create(key, b"one") is False
        assert store.read(key) == b"one"

    def test_create_with_different_bytes_is_a_conflict_naming_the_key(self, store: Store) -> None:
        """Different bytes under an existing key raise RecordConflict; the record is unchanged."""
        key = LAYOUT.submission(7, NODE)
        store.create(key, b"one")
        with pytest.raises(RecordConflict, match="already exists with different content") as caught:
            store.create(key, b"two")
        assert repr(key) in str(caught.value)
        assert store.url in str(caught.value)
        assert store.read(key) == b"one"

    def test_an_empty_record_is_a_record(self, store: Store) -> None:
        """Zero bytes can be stored and are told apart from no record."""
        store.create("a/empty", b"")
        assert store.exists("a/empty")
        assert store.read("a/empty") == b""
        with pytest.raises(RecordConflict):
            store.create("a/empty", b"x")

    def test_reading_a_missing_key_is_record_not_found(self, store: Store) -> None:
        """read of an absent key raises RecordNotFound naming it; the gentle reads say so."""
        key = LAYOUT.request(7)
        with pytest.raises(RecordNotFound, match="no record") as caught:
            store.read(key)
        assert repr(key) in str(caught.value)
        assert store.read_or_none(key) is None
        assert store.exists(key) is False

    @pytest.mark.parametrize("key", ["../x", "/abs", "a//b", ".hidden"])
    def test_every_operation_checks_the_key(self, store: Store, key: str) -> None:
        """create, read, read_or_none and exists all refuse an invalid key."""
        for operation in (
            lambda: store.create(key, b"x"),
            lambda: store.read(key),
            lambda: store.read_or_none(key),
            lambda: store.exists(key),
        ):
            with pytest.raises(InvalidKey):
                operation()
        assert store.list() == []

    def test_list_is_sorted_and_filtered_by_prefix(self, store: Store) -> None:
        """list gives every key under a prefix, sorted; a prefix may end inside a segment."""
        for key in ["b/2.json", "a/d.json", "a/b/c.json", "e.json"]:
            store.create(key, b"x")
        assert store.list() == ["a/b/c.json", "a/d.json", "b/2.json", "e.json"]
        assert store.list("a/") == ["a/b/c.json", "a/d.json"]
        assert store.list("a/d") == ["a/d.json"]
        assert store.list("z/") == []

    def test_children_lists_one_level(self, store: Store) -> None:
        """children gives the distinct next segments below a folder, sorted."""
        for key in ["a/b/c.json", "a/b/d.json", "a/e.json", "f.json"]:
            store.create(key, b"x")
        assert store.children("") == ["a", "f.json"]
        assert store.children("a/") == ["b", "e.json"]
        assert store.children("a/b/") == ["c.json", "d.json"]
        assert store.children("missing/") == []

    def test_children_lists_rounds_in_order(self, store: Store) -> None:
        """The rounds folder lists its rounds in round order."""
        for round_number in [10, 2, 1]:
            store.create(LAYOUT.request(round_number), b"x")
        assert store.children(LAYOUT.root + "rounds/") == [
            "0000000001",
            "0000000002",
            "0000000010",
        ]


class TestFileStore:
    """Records as files under a root folder."""

    def test_url_names_the_absolute_root(self, tmp_path: Path) -> None:
        """A file store's URL is file:// and its absolute root."""
        assert FileStore(tmp_path / "s").url == f"file://{tmp_path / 's'}"

    def test_a_record_is_a_file_at_its_key(self, tmp_path: Path) -> None:
        """The record under a/b.json is the file root/a/b.json, with fsync on by default."""
        store = FileStore(tmp_path)
        assert store.create("a/b.json", b"data") is True
        assert (tmp_path / "a" / "b.json").read_bytes() == b"data"

    def test_records_outlive_the_store_object(self, tmp_path: Path) -> None:
        """A new store on the same root reads what an earlier one wrote."""
        FileStore(tmp_path, fsync=False).create("a/b.json", b"data")
        again = FileStore(tmp_path, fsync=False)
        assert again.read("a/b.json") == b"data"
        assert again.create("a/b.json", b"data") is False

    def test_create_leaves_no_temporary_files(self, tmp_path: Path) -> None:
        """After creates (new, repeated and conflicting) only the records are on disk."""
        store = FileStore(tmp_path, fsync=False)
        store.create("a/b.json", b"one")
        store.create("a/b.json", b"one")
        with pytest.raises(RecordConflict):
            store.create("a/b.json", b"two")
        assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["b.json"]

    def test_listings_ignore_temporary_files_left_by_a_crash(self, tmp_path: Path) -> None:
        """A '.tmp-*' file left by a crash before the link is neither listed nor a child."""
        store = FileStore(tmp_path, fsync=False)
        store.create(LAYOUT.submission(7, NODE), b"x")
        folder = tmp_path.joinpath(*LAYOUT.submissions(7).rstrip("/").split("/"))
        (folder / ".tmp-abc123").write_bytes(b"torn")
        (tmp_path / ".tmp-root").write_bytes(b"torn")
        assert store.list() == [LAYOUT.submission(7, NODE)]
        assert store.list(LAYOUT.submissions(7)) == [LAYOUT.submission(7, NODE)]
        assert store.children(LAYOUT.submissions(7)) == [f"{NODE}.json"]
        assert store.children("") == ["tasks"]

    def test_listings_ignore_hidden_folders(self, tmp_path: Path) -> None:
        """Files in a hidden folder under the root are not records."""
        store = FileStore(tmp_path, fsync=False)
        store.create("a/b.json", b"x")
        (tmp_path / "a" / ".trash").mkdir()
        (tmp_path / "a" / ".trash" / "c.json").write_bytes(b"x")
        assert store.list() == ["a/b.json"]

    def test_reading_a_folder_is_not_a_record(self, tmp_path: Path) -> None:
        """A key that names a folder reads as no record."""
        store = FileStore(tmp_path, fsync=False)
        store.create("a/b.json", b"x")
        assert store.read_or_none("a") is None
        assert store.read_or_none("a/b.json/c") is None

    def test_a_record_cannot_be_a_folder_too(self, tmp_path: Path) -> None:
        """Creating a key below an existing record fails with a StorageError."""
        store = FileStore(tmp_path, fsync=False)
        store.create("a", b"x")
        with pytest.raises(StorageError):
            store.create("a/b", b"y")

    def test_creating_a_key_that_is_a_folder_is_a_storage_error(self, tmp_path: Path) -> None:
        """Creating a record where a folder of records is fails with a StorageError."""
        store = FileStore(tmp_path, fsync=False)
        store.create("a/b", b"x")
        with pytest.raises(StorageError):
            store.create("a", b"y")

    def test_children_refuses_a_prefix_that_escapes_the_root(self, tmp_path: Path) -> None:
        """children('../') is an InvalidKey, not a listing of the root's parent."""
        (tmp_path / "outside-the-store").mkdir()
        store = FileStore(tmp_path / "root", fsync=False)
        store.create("a", b"x")
        with pytest.raises(InvalidKey):
            store.children("../")


class TestMemoryStore:
    """Records in a dict, for tests."""

    def test_url_names_the_store(self) -> None:
        """A memory store's URL is memory:// and its name."""
        assert MemoryStore("x").url == "memory://x"

    def test_keeps_a_copy_of_the_bytes(self) -> None:
        """A stored record is not changed by later changes to the buffer it came from."""
        store = MemoryStore("copy")
        buffer = bytearray(b"one")
        store.create("a", bytes(buffer))
        buffer[0:3] = b"two"
        assert store.read("a") == b"one"

    def test_a_key_may_be_both_a_record_and_a_folder(self) -> None:
        """A memory store holds 'a' and 'a/b' side by side."""
        store = MemoryStore("nested")
        store.create("a", b"x")
        store.create("a/b", b"y")
        assert store.list() == ["a", "a/b"]


class TestOpenStore:
    """Store URLs."""

    def test_memory_url_returns_the_same_store_for_the_same_name(self) -> None:
        """memory://NAME is one store per name per process."""
        first = open_store("memory://unit-open-store-same")
        first.create("k", b"v")
        again = open_store("memory://unit-open-store-same")
        assert again is first
        assert again.read("k") == b"v"

    def test_memory_urls_with_different_names_are_different_stores(self) -> None:
        """Two names are two stores."""
        assert open_store("memory://unit-a") is not open_store("memory://unit-b")

    def test_a_path_or_file_url_opens_a_file_store(self, tmp_path: Path) -> None:
        """A bare path and file://PATH both open a FileStore rooted there."""
        by_path = open_store(str(tmp_path))
        by_url = open_store(f"file://{tmp_path}")
        assert isinstance(by_path, FileStore)
        assert isinstance(by_url, FileStore)
        assert by_path.root == by_url.root == tmp_path

    def test_no_url_opens_the_default_folder(self) -> None:
        """Without a URL the store is the .koiitasks folder of the working directory."""
        store = open_store()
        assert isinstance(store, FileStore)
        assert store.root == Path(".koiitasks").absolute()

    @pytest.mark.parametrize("url", ["ftp://host/x", "memcache://x", "S3://bucket"])
    def test_an_unknown_scheme_is_a_config_error(self, url: str) -> None:
        """A URL with a scheme no backend handles is a ConfigError naming it."""
        with pytest.raises(ConfigError, match="unknown store URL") as caught:
            open_store(url)
        assert repr(url) in str(caught.value)
        assert caught.value.hint is not None
        assert "memory://NAME" in caught.value.hint

    @pytest.mark.parametrize(
        "url", ["store\x00dir", "file://store\x00dir", "memory://a\x00b", "s3://bucket\x00/p"]
    )
    def test_a_nul_byte_in_a_store_url_is_a_config_error(self, url: str) -> None:
        """A NUL byte, which no file system or bucket name holds, is refused when the store is
        opened, not as a ValueError at its first write."""
        with pytest.raises(ConfigError, match="NUL byte"):
            open_store(url)


class TestRoundKeys:
    """Round numbers the ten-digit layout can hold."""

    @pytest.mark.parametrize(
        "round_number",
        [pytest.param(-1, id="negative"), pytest.param(10**10, id="eleven-digits")],
    )
    def test_a_round_outside_the_layout_is_an_invalid_key(self, round_number: int) -> None:
        """An eleven-digit round would sort before round 9,999,999,999 and break the ledger's
        order; it is refused as a key instead."""
        with pytest.raises(InvalidKey, match="ten-digit round keys"):
            LAYOUT.ledger_entry(round_number)
        with pytest.raises(InvalidKey, match="ten-digit round keys"):
            LAYOUT.round(round_number)

    def test_the_last_round_the_layout_holds(self) -> None:
        """Round 9,999,999,999 is the last one."""
        assert LAYOUT.ledger_entry(10**10 - 1).endswith("/ledger/9999999999.json")
