"""Specifications of the command line's entry point: how a run ends."""

from __future__ import annotations

import os
import signal
import sys
import time
from datetime import UTC, datetime

import pytest
import typer
from pydantic import BaseModel, SerializerFunctionWrapHandler, model_serializer
from typer.core import TyperCommand, TyperGroup
from typer.testing import CliRunner

from koiitasks import cli
from koiitasks.cli._common import resolve_task
from koiitasks.cli.remote import starts_in
from koiitasks.errors import InvalidKey, RoundError
from koiitasks.storage import Layout


@pytest.fixture
def two_commands(monkeypatch: pytest.MonkeyPatch) -> None:
    """An app whose `fail` command exits with code 3 and whose `ok` command returns."""
    app = typer.Typer()

    @app.command()
    def fail() -> None:
        raise typer.Exit(3)

    @app.command()
    def ok() -> None:
        print("fine")

    monkeypatch.setattr(cli, "app", app)


class TestMain:
    """`koiitasks.cli.main` turns a command's ending into the process's exit code."""

    @pytest.mark.usefixtures("two_commands")
    def test_a_command_that_exits_with_a_code_ends_the_process_with_it(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """`raise typer.Exit(3)` in a command makes the process exit 3, not 0."""
        monkeypatch.setattr(sys, "argv", ["koiitasks", "fail"])
        with pytest.raises(SystemExit) as ended:
            cli.main()
        assert ended.value.code == 3

    @pytest.mark.usefixtures("two_commands")
    def test_a_command_that_returns_ends_without_an_exit(
        self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A command that returns normally leaves main without raising SystemExit."""
        monkeypatch.setattr(sys, "argv", ["koiitasks", "ok"])
        cli.main()
        assert capsys.readouterr().out == "fine\n"


@pytest.fixture
def failing(monkeypatch: pytest.MonkeyPatch) -> None:
    """An app whose `interrupted` command fails as Prefect does when it cannot report a Ctrl-C
    (a connection error raised while handling KeyboardInterrupt), and whose `broken` command
    raises an error nothing caused."""
    app = typer.Typer()

    def ctrl_c() -> None:
        raise KeyboardInterrupt

    @app.command()
    def interrupted() -> None:
        try:
            ctrl_c()
        except KeyboardInterrupt:
            raise ConnectionRefusedError(111, "Connection refused")  # noqa: B904 - as Prefect

    @app.command()
    def stopped() -> None:
        ctrl_c()

    @app.command()
    def broken() -> None:
        raise ValueError("unexpected")

    class Part(BaseModel):
        """A part of a model whose serializer is running when the Ctrl-C comes, as Prefect's
        settings are when it copies them between rounds."""

        @model_serializer(mode="wrap")
        def _dump(self, handler: SerializerFunctionWrapHandler) -> object:
            os.kill(os.getpid(), signal.SIGINT)  # a real Ctrl-C, handled in this function
            time.sleep(0.2)
            return handler(self)

    class Settings(BaseModel):
        part: Part = Part()

        @model_serializer(mode="wrap")
        def _dump(self, handler: SerializerFunctionWrapHandler) -> object:
            return handler(self)  # nested: pydantic-core's error keeps no KeyboardInterrupt

    @app.command()
    def copying() -> None:
        Settings().model_dump()

    @app.command()
    def step() -> None:
        try:
            ctrl_c()
        except KeyboardInterrupt as e:  # a shard that failed because it was stopped
            raise RoundError("1 of 2 execute shards failed", hint="run the round again") from e

    monkeypatch.setattr(cli, "app", app)


class TestUnexpectedErrors:
    """Errors no command turned into a message."""

    @pytest.mark.usefixtures("failing")
    def test_a_ctrl_c_says_what_was_kept_and_exits_130(
        self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A Ctrl-C (which typer turns into a silent exit 130) says that what was written is
        kept and how to go on."""
        monkeypatch.setattr(sys, "argv", ["koiitasks", "stopped"])
        with pytest.raises(SystemExit) as ended:
            cli.main()
        assert ended.value.code == 130
        assert "interrupted: records written so far are kept" in capsys.readouterr().err

    @pytest.mark.usefixtures("failing")
    @pytest.mark.parametrize("command", ["interrupted", "copying", "step"])
    def test_a_ctrl_c_that_surfaces_as_another_error_is_an_interruption(
        self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], command: str
    ) -> None:
        """A failure raised while a Ctrl-C was handled (Prefect reporting the crash to the
        temporary server the same Ctrl-C stopped), a Ctrl-C that lands in a pydantic serializer
        (which turns it into an error naming it in words only), or one that makes a step fail,
        ends as an interruption, exit 130: not an internal error, not the step's own message.
        Python's own Ctrl-C handler stays in place (asyncio.run relies on it)."""
        monkeypatch.setattr(sys, "argv", ["koiitasks", command])
        with pytest.raises(SystemExit) as ended:
            cli.main()
        assert ended.value.code == 130
        said = capsys.readouterr().err
        assert "interrupted: records written so far are kept" in said
        assert "internal error" not in said
        assert "shards failed" not in said
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler

    @pytest.mark.usefixtures("failing")
    def test_any_other_unexpected_error_is_an_internal_error(
        self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Without a Ctrl-C behind it, an unexpected error is reported as a bug, exit 70."""
        monkeypatch.setattr(sys, "argv", ["koiitasks", "broken"])
        with pytest.raises(SystemExit) as ended:
            cli.main()
        assert ended.value.code == 70
        assert "internal error: ValueError: unexpected" in capsys.readouterr().err


class TestResolveTask:
    """What `--task` names: a task folder, or a task id in the store."""

    @pytest.mark.parametrize(
        "task",
        [pytest.param("x" * 600, id="longer-than-a-file-name"), pytest.param("a\x00b", id="nul")],
    )
    def test_a_task_that_cannot_be_a_path_is_an_invalid_id(self, task: str) -> None:
        """A --task no file system takes as a path is read as an id (then refused as a key),
        never an OSError from asking whether it is a folder."""
        assert resolve_task("memory://unit-resolve-task", task) == task
        with pytest.raises(InvalidKey):
            Layout(task).ledger_entry(0)


def _commands(group: TyperGroup, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found: list[tuple[str, ...]] = []
    for name, command in group.commands.items():
        if isinstance(command, TyperGroup):
            found += _commands(command, (*path, name))
        else:
            found.append((*path, name))
    return found


def _examples(path: tuple[str, ...]) -> list[str]:
    """The example command lines of a command's help text, as written in its docstring."""
    command: object = typer.main.get_group(cli.app)
    for name in path:
        assert isinstance(command, TyperGroup)
        command = command.commands[name]
    assert isinstance(command, TyperCommand)
    return [
        line.strip().rstrip("\\").strip()
        for line in (command.help or "").splitlines()
        if line.strip().startswith(("koiitasks ", "pytest "))
    ]


EXAMPLES = {
    path: found for path in _commands(typer.main.get_group(cli.app)) if (found := _examples(path))
}


class TestHelp:
    """Every command's `--help`, as typer and rich render it."""

    def test_commands_teach_with_examples(self) -> None:
        """The main commands show example command lines in their help."""
        assert {("init",), ("run",), ("trace",), ("ledger", "show"), ("node", "keygen")} <= set(
            EXAMPLES
        )

    @pytest.mark.parametrize("path", list(EXAMPLES), ids=[" ".join(p) for p in EXAMPLES])
    def test_each_example_command_is_a_line_of_its_own(self, path: tuple[str, ...]) -> None:
        """The example commands in a command's help stay one to a line, never run together
        into one paragraph."""
        shown = CliRunner().invoke(cli.app, [*path, "--help"], env={"COLUMNS": "200"}).output
        lines = [line.strip(" │").rstrip("\\").strip() for line in shown.splitlines()]
        missing = [example for example in EXAMPLES[path] if example not in lines]
        assert not missing, shown


class TestRemoteRoundStart:
    """`run --remote` says when its round starts, so a long wait is seen as one."""

    def test_a_wait_under_a_minute_is_said_in_seconds(self) -> None:
        assert starts_in(2.46) == "in 2.5 s"
        assert starts_in(-0.3) == "in 0.0 s"  # already late: no negative wait

    def test_a_long_wait_says_how_long_when_and_how_to_stop_waiting(self) -> None:
        now = datetime(2026, 11, 29, 12, 0, 0, tzinfo=UTC)
        said = starts_in(2 * 3600 + 5 * 60 + 10, now=now)
        assert said == "in 2 h 5 min, at 14:05:10 UTC (Ctrl-C stops waiting)"
        assert starts_in(600, now=now) == "in 10 min, at 12:10:00 UTC (Ctrl-C stops waiting)"
