"""Specifications of `koiitasks init NAME`: a task folder whose own tests pass at once."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from koiitasks.config import load_config
from koiitasks.errors import ConfigError, TaskLoadError
from koiitasks.scaffold import init_task, task_name_of
from koiitasks.task import load_task
from tests.conftest import koiitasks

EXPECTED_FILES = {".gitignore", "README.md", "config-task.yml", "task.py", "tests/test_task.py"}


def files_in(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


class TestScaffold:
    """What `init_task` writes."""

    def test_writes_a_task_folder_that_loads(self, tmp_path: Path) -> None:
        """The folder holds the config, the hooks, tests, README and .gitignore; it loads
        as a task with the name's id and a readable task name."""
        made = init_task("price-feed", tmp_path)
        assert made.directory == tmp_path / "price-feed"
        assert files_in(made.directory) == EXPECTED_FILES
        assert {str(p.relative_to(made.directory)) for p in made.files} == EXPECTED_FILES
        loaded = load_task(made.directory)
        assert loaded.task_id == "price-feed"
        assert loaded.config.task_name == "Price Feed"
        assert loaded.task.distribute_hook is not None

    def test_fills_in_every_placeholder(self, tmp_path: Path) -> None:
        """No `${...}` is left in any file; the README is titled with the task name."""
        made = init_task("x1", tmp_path)
        for path in made.files:
            assert "${" not in path.read_text(), path
        assert (made.directory / "README.md").read_text().startswith("# X1\n")

    def test_the_config_is_commented(self, tmp_path: Path) -> None:
        """Every setting in config-task.yml comes with comments that explain it."""
        made = init_task("commented", tmp_path)
        text = (made.directory / "config-task.yml").read_text()
        config = load_config(made.directory / "config-task.yml")
        assert text.count("#") >= 10
        assert config.round_time >= config.submission_window + config.audit_window

    def test_an_existing_empty_folder_is_used(self, tmp_path: Path) -> None:
        """An empty folder of that name is filled in."""
        (tmp_path / "empty").mkdir()
        assert files_in(init_task("empty", tmp_path).directory) == EXPECTED_FILES

    @pytest.mark.parametrize(
        "existing",
        [
            pytest.param("folder", id="non-empty-folder"),
            pytest.param("file", id="a-file-of-that-name"),
        ],
    )
    def test_never_overwrites(self, tmp_path: Path, existing: str) -> None:
        """A non-empty folder or a file of that name is refused and left as it was."""
        target = tmp_path / "taken"
        if existing == "folder":
            target.mkdir()
            (target / "task.py").write_text("mine")
        else:
            target.write_text("mine")
        with pytest.raises(TaskLoadError, match="already exists and is not empty") as caught:
            init_task("taken", tmp_path)
        assert caught.value.hint
        assert (target / "task.py" if existing == "folder" else target).read_text() == "mine"

    @pytest.mark.parametrize(
        ("name", "suggestion"),
        [
            pytest.param("Price Feed", "price-feed", id="capitals-and-space"),
            pytest.param("price_feed", "price-feed", id="underscore"),
            pytest.param("-feed", "feed", id="leading-dash"),
            pytest.param("a" * 64, "a" * 63, id="too-long"),
            pytest.param("../escape", "escape", id="path"),
        ],
    )
    def test_a_name_that_is_not_a_task_id_is_refused(
        self, tmp_path: Path, name: str, suggestion: str
    ) -> None:
        """The error says what a task id is and suggests one; nothing is written."""
        with pytest.raises(ConfigError, match="is not a task id") as caught:
            init_task(name, tmp_path)
        assert caught.value.hint == f"try `koiitasks init {suggestion}`"
        assert list(tmp_path.iterdir()) == []

    @pytest.mark.parametrize(
        ("task_id", "name"),
        [
            pytest.param("price-feed", "Price Feed", id="words"),
            pytest.param("a--b", "A B", id="double-dash"),
            pytest.param("7", "7", id="digits"),
        ],
    )
    def test_task_name_from_id(self, task_id: str, name: str) -> None:
        """The readable name is the id's words, capitalised."""
        assert task_name_of(task_id) == name


class TestInitCommand:
    """`koiitasks init` as a user runs it, then the new task's own tests."""

    def test_the_new_tasks_tests_pass(self, cli_env: dict[str, str], tmp_path: Path) -> None:
        """`koiitasks init my-task`, then pytest in the new folder: every test passes."""
        proc = koiitasks("init", "my-task", env=cli_env, cwd=tmp_path, check=True)
        assert "created task 'my-task'" in proc.stdout
        assert "pytest my-task" in proc.stdout
        tests = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
            cwd=tmp_path / "my-task",
            env=cli_env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert tests.returncode == 0, tests.stdout + tests.stderr
        assert "8 passed" in tests.stdout

    def test_a_new_task_runs_in_the_sandbox(self, cli_env: dict[str, str], tmp_path: Path) -> None:
        """The scaffolded task runs rounds as it is: every node approved and paid."""
        koiitasks("init", "fresh", "--dir", "tasks", env=cli_env, cwd=tmp_path, check=True)
        proc = koiitasks(
            "run", "tasks/fresh", "--nodes", "6", "--rounds", "2", "--plain",
            env=cli_env, cwd=tmp_path, check=True,
        )  # fmt: skip
        assert proc.stdout.startswith("round 0: 6 approved; paid 1,000,000,000")

    def test_the_readmes_sandbox_commands_run_one_after_another_as_written(
        self, cli_env: dict[str, str], prefect_api: str, tmp_path: Path
    ) -> None:
        """Every `koiitasks` command of the new README's "Run it in the sandbox" section, in
        its order, in the task's folder, succeeds: none is refused by what an earlier one
        stored (a store keeps the network it was made with)."""
        koiitasks("init", "readme-task", env=cli_env, cwd=tmp_path, check=True)
        folder = tmp_path / "readme-task"
        section = (folder / "README.md").read_text().split("## Run it in the sandbox")[1]
        section = section.split("\n## ")[0]
        commands = [
            shlex.split(line.split("#")[0])[1:]
            for line in section.splitlines()
            if line.startswith("koiitasks ")
        ]
        assert len(commands) >= 4, section
        env = {**cli_env, "PREFECT_API_URL": prefect_api}
        for command in commands:
            koiitasks(*command, env=env, cwd=folder, check=True)

    @pytest.mark.parametrize(
        ("args", "expected"),
        [
            pytest.param(["init", "My Task"], "is not a task id", id="bad-name"),
            pytest.param(["init", "taken"], "already exists and is not empty", id="taken"),
        ],
    )
    def test_refusals_exit_2(
        self, cli_env: dict[str, str], tmp_path: Path, args: list[str], expected: str
    ) -> None:
        """A bad name or a taken folder is a usage error with a hint, never a traceback."""
        (tmp_path / "taken").mkdir()
        (tmp_path / "taken" / "keep.txt").write_text("mine")
        proc = koiitasks(*args, env=cli_env, cwd=tmp_path)
        assert proc.returncode == 2
        assert expected in proc.stderr
        assert "hint:" in proc.stderr
        assert "Traceback" not in proc.stderr
