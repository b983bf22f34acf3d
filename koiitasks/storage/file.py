"""The file store: records as files under a root folder, the embedded default.

A create writes a temporary file, fsyncs it, then hard-links it to its final name. ``link`` fails
if the name exists, so the create is atomic and create-only, and a crash at any point leaves
either no record or the whole record, never a torn one. Leftover temporary files are ignored by
listings and reads.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from koiitasks.errors import StorageUnavailable

# The write and read paths use os and str paths, not pathlib: at tens of thousands of records a
# round, pathlib's object per call was a measured share of a round's time (docs/performance.md).
# ruff: noqa: PTH103, PTH108, PTH118, PTH120, PTH123
from koiitasks.storage.base import Store, check_key, check_prefix, is_key

_TMP_PREFIX = ".tmp-"
_TMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL
_TMP_FLAGS |= getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
_TMP_TRIES = 10_000  # as tempfile.mkstemp
_tmp_numbers = itertools.count()


def _open_temp(folder: str) -> tuple[int, str]:
    """A new temporary file in ``folder``, mode 0600, named by process and a counter: what
    ``tempfile.mkstemp`` does, without its random names (a tenth of a round's CPU, measured).
    A name left by a dead process with the same pid is skipped, a bounded number of times."""
    for _ in range(_TMP_TRIES):
        tmp = os.path.join(folder, f"{_TMP_PREFIX}{os.getpid()}-{next(_tmp_numbers)}")
        try:
            return os.open(tmp, _TMP_FLAGS, 0o600), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary file name in {folder} after {_TMP_TRIES} tries")


class FileStore(Store):
    """Records as files under ``root``."""

    def __init__(self, root: Path, *, fsync: bool = True) -> None:
        self.root = Path(root).absolute()
        self.url = f"file://{self.root}"
        self._root = str(self.root)
        self._fsync = fsync
        self._folders: set[str] = set()  # folders known to exist: one mkdir each, not per write

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*key.split("/"))

    def _create(self, key: str, data: bytes) -> bool:
        folder, created = self._link_new(key, data)
        if created and self._fsync:
            _fsync_dir(folder)
        return created

    def create_many(self, items: Sequence[tuple[str, bytes]]) -> list[bool]:
        """Create a batch with a group commit: write every temporary file, flush the file system
        once, link them all, flush once more. Two flushes instead of two per record; a crash at
        any point still leaves each record whole or absent."""
        if not self._fsync or _syncfs is None or len(items) < 2:
            return [self.create(key, data) for key, data in items]
        staged: list[tuple[str, bytes, str, str]] = []
        try:
            for key, data in items:
                check_key(key)
                path = os.path.join(self._root, key)
                staged.append((key, data, path, self._write_temp(key, path, data)))
            _syncfs(self._root)  # the data of every temporary file is on disk
            linked = []
            for _key, _data, path, tmp in staged:
                try:
                    os.link(tmp, path)
                    linked.append(True)
                except FileExistsError:
                    linked.append(False)
            _syncfs(self._root)  # and every new name
        except OSError as e:
            raise StorageUnavailable(f"cannot write a batch of records in {self.url}: {e}") from e
        finally:
            for *_, tmp in staged:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
        return [
            True if created else self._settle_existing(key, data)
            for (key, data, _, _), created in zip(staged, linked, strict=True)
        ]

    def _write_temp(self, key: str, path: str, data: bytes) -> str:
        folder = os.path.dirname(path)
        try:
            if folder not in self._folders:
                os.makedirs(folder, exist_ok=True)
                self._folders.add(folder)
            fd, tmp = _open_temp(folder)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        except OSError as e:
            raise StorageUnavailable(
                f"cannot write record {key!r} in {self.url}: {e.strerror or e}"
            ) from e
        return tmp

    def _link_new(self, key: str, data: bytes) -> tuple[str, bool]:
        """Write a temporary file, fsync it and hard-link it to the key's name if free."""
        path = os.path.join(self._root, key)
        folder = os.path.dirname(path)
        try:
            if folder not in self._folders:
                os.makedirs(folder, exist_ok=True)
                self._folders.add(folder)
            fd, tmp = _open_temp(folder)
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                    if self._fsync:
                        f.flush()
                        os.fsync(f.fileno())
                try:
                    os.link(tmp, path)
                except FileExistsError:
                    return folder, False
                return folder, True
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
        except OSError as e:
            raise StorageUnavailable(
                f"cannot write record {key!r} in {self.url}: {e.strerror or e}"
            ) from e

    def _read(self, key: str) -> bytes | None:
        try:
            with open(os.path.join(self._root, key), "rb") as f:
                return f.read()
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
            return sorted(p.name for p in folder.iterdir() if is_key(p.name))
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
                    if key.startswith(prefix) and is_key(key):  # no dot-file is a key
                        yield key
        except OSError as e:
            raise StorageUnavailable(f"cannot list {prefix!r} in {self.url}: {e}") from e


def _load_syncfs() -> Callable[[str], None] | None:
    """Linux's syncfs(2) (flush one file system), which Python does not expose; None elsewhere."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        syncfs = libc.syncfs
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        return None

    def flush(path: str) -> None:
        fd = os.open(path, os.O_RDONLY)
        try:
            if syncfs(fd) != 0:
                errno = ctypes.get_errno()
                raise OSError(errno, os.strerror(errno))
        finally:
            os.close(fd)

    return flush


_syncfs = _load_syncfs()


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
