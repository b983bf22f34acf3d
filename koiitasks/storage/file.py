"""The file store: records as files under a root folder, the embedded default.

A create writes a temporary file, fsyncs it, then hard-links it to its final name. ``link`` fails
if the name exists, so the create is atomic and create-only, and a crash at any point leaves
either no record or the whole record, never a torn one. Leftover temporary files are ignored by
listings and reads.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from koiitasks.errors import StorageUnavailable
from koiitasks.storage.base import Store, check_prefix

_TMP_PREFIX = ".tmp-"


class FileStore(Store):
    """Records as files under ``root``."""

    def __init__(self, root: Path, *, fsync: bool = True) -> None:
        self.root = Path(root).absolute()
        self.url = f"file://{self.root}"
        self._fsync = fsync

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*key.split("/"))

    def _create(self, key: str, data: bytes) -> bool:
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, dir=path.parent)
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                    if self._fsync:
                        f.flush()
                        os.fsync(f.fileno())
                try:
                    os.link(tmp, path)
                except FileExistsError:
                    return False
                if self._fsync:
                    _fsync_dir(path.parent)
                return True
            finally:
                with contextlib.suppress(FileNotFoundError):
                    Path(tmp).unlink()
        except OSError as e:
            raise StorageUnavailable(
                f"cannot write record {key!r} in {self.url}: {e.strerror or e}"
            ) from e

    def _read(self, key: str) -> bytes | None:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None
        except IsADirectoryError:
            return None
        except OSError as e:
            raise StorageUnavailable(
                f"cannot read record {key!r} in {self.url}: {e.strerror or e}"
            ) from e

    def children(self, prefix: str) -> list[str]:
        check_prefix(prefix)
        folder = self._path(prefix.rstrip("/")) if prefix else self.root
        try:
            return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))
        except (FileNotFoundError, NotADirectoryError):
            return []
        except OSError as e:
            raise StorageUnavailable(f"cannot list {prefix!r} in {self.url}: {e}") from e

    def _list(self, prefix: str) -> Iterator[str]:
        # Walk only the deepest folder the prefix names, not the whole store.
        folder, _, _ = prefix.rpartition("/")
        start = self._path(folder) if folder else self.root
        if not start.is_dir():
            return
        try:
            for dirpath, dirnames, filenames in os.walk(start):
                dirnames[:] = [d for d in dirnames if not d.startswith(".")]
                rel = Path(dirpath).relative_to(self.root).as_posix()
                base = "" if rel == "." else rel + "/"
                for name in filenames:
                    key = base + name
                    if not name.startswith(".") and key.startswith(prefix):
                        yield key
        except OSError as e:
            raise StorageUnavailable(f"cannot list {prefix!r} in {self.url}: {e}") from e


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
