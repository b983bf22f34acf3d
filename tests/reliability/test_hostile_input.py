"""Specifications of hostile input: configs, task folders, arguments, key files, names.

Every case must end in a clear error and exit code 2 (for the command line) or a KoiiTasksError
whose exit code is 2 (for the library), never a traceback or an internal error; nothing already
stored may change, and nothing may be written outside the store. The command-line cases run
the real entry point in this process (koiitasks.testing.cli), next to a store holding a settled
round, which is compared byte for byte before and after each case.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from koiitasks.errors import InvalidKey, KeyFileError, KoiiTasksError, MalformedRecord
from koiitasks.identity import Keypair
from koiitasks.protocol import NodeRegistration, decode, sign
from koiitasks.storage import FileStore, Layout
from koiitasks.testing import figures, write_task
from koiitasks.testing.cli import invoke
from tests.conftest import ECHO_TASK
from tests.reliability.hostile_cases import (
    ARGUMENTS,
    CONFIGS,
    KEY_FILES,
    NAMES,
    TASK_FOLDERS,
)


def tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (hidden ones too), by relative path."""
    return {
        str(path.relative_to(root)): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file() and not path.is_symlink()
    }


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A task folder and a store with one settled round, which no hostile case may change."""
    root = tmp_path_factory.mktemp("hostile")
    write_task(root / "task", ECHO_TASK)
    settled = invoke(
        "run", str(root / "task"), "--plain", "--nodes", "4", "--seed", "1", "--workers", "1",
        "--store", str(root / "store"),
    )  # fmt: skip
    assert settled.exit_code == 0, settled.stderr
    return root


def assert_refused(
    args: list[str], fragment: str, *, workspace: Path, cwd: Path, own_files: set[str]
) -> None:
    """`koiitasks ARGS` exits 2 with ``fragment`` on stderr, no traceback, the workspace
    unchanged and nothing new in the working folder but ``own_files``."""
    before = tree(workspace)
    result = invoke(*args, cwd=cwd)
    assert result.exit_code == 2, f"exit {result.exit_code}: {result.output}"
    assert fragment in result.stderr, result.stderr
    assert "Traceback" not in result.output
    assert "internal error" not in result.output
    assert tree(workspace) == before
    assert set(tree(cwd)) <= own_files
    figures.record("hostile_inputs")


class TestHostileConfigs:
    """config-task.yml files that are malformed, misleading or built to exhaust the loader."""

    @pytest.mark.parametrize(("text", "fragment"), CONFIGS)
    def test_is_refused_naming_the_problem(
        self, workspace: Path, tmp_path: Path, text: str | bytes, fragment: str
    ) -> None:
        """`koiitasks run` on a task whose config is hostile exits 2 naming the problem."""
        task_dir = write_task(tmp_path / "task", ECHO_TASK)
        config = task_dir / "config-task.yml"
        config.write_bytes(text.encode() if isinstance(text, str) else text)
        args = ["run", str(task_dir), "--plain", "--store", str(workspace / "store")]
        own = set(tree(tmp_path))
        assert_refused(args, fragment, workspace=workspace, cwd=tmp_path, own_files=own)


class TestHostileTaskFolders:
    """Task folders that are missing, broken or not folders at all."""

    @pytest.mark.parametrize(("make", "fragment"), TASK_FOLDERS)
    def test_is_refused_naming_the_problem(
        self,
        workspace: Path,
        tmp_path: Path,
        make: Callable[[Path], str],
        fragment: str,
    ) -> None:
        """`koiitasks run` on a hostile task folder exits 2 naming what is wrong."""
        target = make(tmp_path)
        args = ["run", target, "--plain", "--store", str(workspace / "store")]
        own = set(tree(tmp_path))
        assert_refused(args, fragment, workspace=workspace, cwd=tmp_path, own_files=own)


class TestHostileArguments:
    """Command lines with hostile options: huge numbers, unicode, path tricks, NUL bytes."""

    @pytest.mark.parametrize(("args", "fragment"), ARGUMENTS)
    def test_is_refused_naming_the_problem(
        self, workspace: Path, tmp_path: Path, args: list[str], fragment: str
    ) -> None:
        """Each hostile command line exits 2 naming the problem; nothing stored changes."""
        filled = [
            a.format(task=workspace / "task", store=workspace / "store", empty=tmp_path)
            for a in args
        ]
        assert_refused(filled, fragment, workspace=workspace, cwd=tmp_path, own_files=set())


class TestHostileKeyFiles:
    """Key files that are missing, readable by others, malformed or not files at all."""

    @pytest.mark.parametrize(("make", "action", "fragment"), KEY_FILES)
    def test_is_a_key_file_error_naming_the_path(
        self,
        tmp_path: Path,
        make: Callable[[Path], Path],
        action: Callable[[Path], Any],
        fragment: str,
    ) -> None:
        """Loading (or saving) the key is a KeyFileError with exit code 2 that names the path;
        nothing is written beside it."""
        path = make(tmp_path)
        before = tree(tmp_path)
        with pytest.raises(KeyFileError) as caught:
            action(path)
        assert caught.value.exit_code == 2
        assert fragment in str(caught.value)
        assert str(path).replace("\x00", "\\x00") in str(caught.value)
        assert tree(tmp_path) == before
        figures.record("hostile_inputs")


class TestHostileNames:
    """Task ids and node ids with path tricks never become a path outside the store."""

    @pytest.mark.parametrize("name", NAMES)
    def test_cannot_name_a_record_or_escape_the_store(self, tmp_path: Path, name: str) -> None:
        """As a task id, a node id, a key segment or a signed node id, the name is refused
        (InvalidKey or MalformedRecord, exit code 2 or 1) and no file appears anywhere."""
        root = tmp_path / "store"
        store = FileStore(root)
        refusals: list[KoiiTasksError] = []
        for attempt in (
            lambda: Layout(name).task,
            lambda: Layout("task").node(name),
            lambda: store.create(f"tasks/{name}/task.json", b"{}"),
            lambda: store.create(f"tasks/task/nodes/{name}.json", b"{}"),
        ):
            with pytest.raises(InvalidKey) as caught:
                attempt()
            refusals.append(caught.value)
        key = Keypair.from_seed(b"hostile names")
        body = NodeRegistration.model_construct(task_id="task", node_id=name, stake=1)
        with pytest.raises(MalformedRecord):
            decode(sign(body, key).encode(), NodeRegistration, where="registration")
        assert all(error.exit_code == 2 for error in refusals)
        assert tree(tmp_path) == {}
        figures.record("hostile_inputs")


def test_the_corpus_has_at_least_a_hundred_cases() -> None:
    """The issue asks for a hundred hostile inputs at least; the replies add more."""
    counted = len(CONFIGS) + len(TASK_FOLDERS) + len(ARGUMENTS) + len(KEY_FILES) + len(NAMES)
    assert counted >= 100
