"""Specifications of the command line's entry point: how a run ends."""

from __future__ import annotations

import sys

import pytest
import typer

from koiitasks import cli


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
