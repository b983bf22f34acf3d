"""The file store's crash safety: a record is either whole or absent, and leftovers stay hidden."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

import koiitasks
from koiitasks.errors import StorageUnavailable
from koiitasks.storage import FileStore

KEY = "tasks/t/rounds/0000000001/ledger.json"

# Dies (as a killed process would) at the moment the temporary file is written and synced but
# not yet linked to the record's name.
KILLED_WRITER = """
import os, sys
from pathlib import Path
from koiitasks.storage import FileStore

os.link = lambda *args, **kwargs: os._exit(17)
FileStore(Path(sys.argv[1])).create(sys.argv[2], b"paid")
"""


def files_under(root: Path) -> list[str]:
    """Every file below ``root``, hidden ones included, relative and sorted."""
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


class TestFileStoreCrashSafety:
    def test_a_failed_link_leaves_no_record_and_no_files(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """If linking the temporary file fails, the create fails and nothing is left behind."""

        def failing_link(*_: object, **__: object) -> None:
            raise OSError(errno.EIO, "simulated I/O error")

        store = FileStore(tmp_path / "store")
        monkeypatch.setattr(os, "link", failing_link)
        with pytest.raises(StorageUnavailable, match=r"cannot write record .*ledger\.json"):
            store.create(KEY, b"paid")
        monkeypatch.undo()
        assert store.read_or_none(KEY) is None
        assert store.list() == []
        assert files_under(tmp_path / "store") == []

    def test_a_writer_killed_before_the_link_leaves_no_visible_record(self, tmp_path: Path) -> None:
        """A process killed between temp write and link leaves no record, only a hidden temp."""
        root = tmp_path / "store"
        package_root = str(Path(koiitasks.__file__).parents[1])
        env = os.environ | {"PYTHONPATH": package_root}
        killed = subprocess.run(
            [sys.executable, "-c", KILLED_WRITER, str(root), KEY], env=env, timeout=60, check=False
        )
        assert killed.returncode == 17
        leftovers = files_under(root)
        assert len(leftovers) == 1
        assert Path(leftovers[0]).name.startswith(".tmp-")
        store = FileStore(root)
        assert store.read_or_none(KEY) is None
        assert store.list() == []
        assert store.create(KEY, b"paid") is True
        assert store.read(KEY) == b"paid"
        assert store.list() == [KEY]


class TestFilesOtherToolsLeft:
    """Files in a store folder that koiitasks did not write."""

    @pytest.mark.parametrize(
        "name",
        [
            pytest.param("0000000001.json~", id="editor-backup"),
            pytest.param("copy of 0000000001.json", id="file-manager-copy"),
            pytest.param(".0000000001.json.swp", id="hidden-swap-file"),
        ],
    )
    def test_a_name_that_is_no_key_is_not_listed(self, tmp_path: Path, name: str) -> None:
        """A file whose name no key can have is not a record: listings skip it, as the S3 store
        skips objects other tools left, so one stray file does not stop every command."""
        store = FileStore(tmp_path)
        store.create("tasks/t/ledger/0000000001.json", b"entry")
        (tmp_path / "tasks" / "t" / "ledger" / name).write_bytes(b"entry")
        assert store.list("tasks/t/ledger/") == ["tasks/t/ledger/0000000001.json"]
        assert store.children("tasks/t/ledger/") == ["0000000001.json"]
