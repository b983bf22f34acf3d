"""Specification of :mod:`koiitasks.logs`: Prefect's records about an unreachable API are one
line each; every other record reads as it was logged."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from websockets.exceptions import ConnectionClosedError

from koiitasks.logs import (
    LONGEST_MESSAGE,
    SETTINGS_PATH_VARIABLE,
    ApiOutageFilter,
    quiet_api_outages,
    runs_log_quietly,
)


class Console:
    """A stream handler with the filter, as Prefect's console has it once quieted."""

    def __init__(self) -> None:
        self.stream = io.StringIO()
        self.handler = logging.StreamHandler(self.stream)
        self.handler.setFormatter(logging.Formatter("%(name)s - %(message)s"))
        self.handler.addFilter(ApiOutageFilter())

    def log(
        self,
        name: str,
        message: str,
        *args: object,
        error: BaseException | None = None,
        level: int = logging.WARNING,
    ) -> str:
        """What the console prints for one record, with ``error`` as its exception."""
        record = logging.LogRecord(name, level, __file__, 1, message, args, None)
        if error is not None:
            record.exc_info = (type(error), error, error.__traceback__)
        self.handler.handle(record)
        printed = self.stream.getvalue()
        self.stream.seek(0)
        self.stream.truncate()
        return printed


def _raise(error: BaseException, cause: BaseException | None) -> None:
    raise error from cause


def raised(error: BaseException, cause: BaseException | None = None) -> BaseException:
    """``error`` as it is once raised (with a traceback), from ``cause`` if given."""
    try:
        _raise(error, cause)
    except BaseException as e:  # noqa: BLE001 - any error, caught to be logged
        return e
    raise AssertionError("unreachable")


@pytest.fixture
def console() -> Console:
    return Console()


class TestOutageRecords:
    """An error that only says the API cannot be reached is one line: what failed and why."""

    def test_a_closed_websocket_is_its_message_and_reason(self, console: Console) -> None:
        """The observers' warning when the server goes away keeps its text, not its traceback."""
        closed = raised(ConnectionClosedError(None, None))
        printed = console.log(
            "prefect.FlowRunCancellingObserver",
            "The %s websocket failed with an exception.",
            "FlowRunCancellingObserver",
            error=closed,
        )
        assert printed == (
            "prefect.FlowRunCancellingObserver - The FlowRunCancellingObserver websocket failed "
            "with an exception. (ConnectionClosedError: no close frame received or sent)\n"
        )

    def test_an_error_raised_from_a_refused_connection_is_one_line(self, console: Console) -> None:
        """The API being away may be the cause of the error logged, not the error itself."""
        refused = raised(RuntimeError("poll failed"), httpx.ConnectError("Connection refused"))
        printed = console.log("prefect.runner", "Polling failed", error=refused)
        assert printed == "prefect.runner - Polling failed (ConnectError: Connection refused)\n"

    def test_a_group_of_refused_connections_is_one_line(self, console: Console) -> None:
        refused = raised(ExceptionGroup("calls", [httpx.ConnectError("refused")] * 2))
        printed = console.log("prefect.runner", "Calls failed", error=refused)
        assert printed == "prefect.runner - Calls failed (ConnectError: refused)\n"

    def test_a_service_that_gave_up_is_one_line(self, console: Console) -> None:
        """What a service says once its calls failed too often in a row adds no traceback."""
        gave_up = raised(RuntimeError("Service exceeded error threshold."))
        printed = console.log(
            "prefect.FlowRunCancellingObserver",
            "Cancellation polling task failed.",
            error=gave_up,
            level=logging.ERROR,
        )
        assert "Traceback" not in printed
        assert printed.endswith("(RuntimeError: Service exceeded error threshold.)\n")

    def test_an_event_that_could_not_be_sent_is_cut(self, console: Console) -> None:
        """The events worker logs each unsent event whole (about 3 KB): cut, saying how much."""
        event = "Event(" + "x" * 3_000 + ")"
        printed = console.log(
            "prefect._internal.concurrency",
            "Service %r failed to process item %r",
            "EventsWorker",
            event,
            level=logging.ERROR,
        )
        message = printed.removeprefix("prefect._internal.concurrency - ").rstrip("\n")
        whole = f"Service 'EventsWorker' failed to process item {event!r}"
        assert message.startswith(whole[:LONGEST_MESSAGE])
        assert message.endswith(f"... ({len(whole) - LONGEST_MESSAGE:,} more characters)")


class TestCtrlC:
    """A terminal's Ctrl-C reaches every run's process: each says so in one line."""

    @pytest.mark.parametrize("name", ["prefect.flow_runs", "prefect.engine"])
    def test_a_run_interrupted_by_ctrl_c_is_one_line(self, console: Console, name: str) -> None:
        printed = console.log(
            name,
            "Engine execution interrupted by %s",
            "base exception",
            error=raised(KeyboardInterrupt()),
        )
        assert printed == (
            f"{name} - Engine execution interrupted by base exception (KeyboardInterrupt: Ctrl-C)\n"
        )


class TestOtherRecords:
    """Everything else reads as it was logged."""

    def test_any_other_error_keeps_its_traceback(self, console: Console) -> None:
        broken = raised(ValueError("bad state"))
        printed = console.log("prefect.runner", "Run failed", error=broken)
        assert "Traceback (most recent call last)" in printed
        assert "ValueError: bad state" in printed

    def test_an_error_raised_while_handling_a_refused_connection_keeps_its_traceback(
        self, console: Console
    ) -> None:
        """A bug in the code that handles an outage is a bug, not the outage."""

        def retry() -> None:
            cached: dict[str, str] = {}
            try:
                _raise(httpx.ConnectError("Connection refused"), None)
            except httpx.ConnectError:
                cached["missing"]  # the bug

        try:
            retry()
        except KeyError as e:
            printed = console.log("prefect.runner", "Retry failed", error=e)
        assert "Traceback (most recent call last)" in printed
        assert "KeyError: 'missing'" in printed

    def test_a_group_with_any_other_error_keeps_its_traceback(self, console: Console) -> None:
        mixed = raised(ExceptionGroup("calls", [httpx.ConnectError("refused"), ValueError("bad")]))
        printed = console.log("prefect.runner", "Calls failed", error=mixed)
        assert "Traceback (most recent call last)" in printed

    def test_a_record_whose_arguments_do_not_fit_is_left_for_the_handler(self) -> None:
        """The handler reports it as it always has ("--- Logging error ---"), not the filter
        by raising into Prefect's code."""
        record = logging.LogRecord(
            "prefect.runner", logging.ERROR, __file__, 1, "%s %s", ("one",), None
        )
        assert ApiOutageFilter().filter(record)
        assert (record.msg, record.args) == ("%s %s", ("one",))

    @pytest.mark.parametrize("name", ["prefect.flow_runs", "prefect.task_runs", "koiitasks.round"])
    def test_the_runs_and_the_tasks_own_lines_are_left_whole(
        self, console: Console, name: str
    ) -> None:
        """A round's lines may be long, and a hook's error is the user's to read in full."""
        long_line = "node " * 200
        assert console.log(name, long_line) == f"{name} - {long_line}\n"
        refused = raised(httpx.ConnectError("Connection refused"))
        assert "Traceback" in console.log(name, "hook failed", error=refused)


class TestQuietApiOutages:
    def test_the_filter_goes_on_prefects_console_and_internal_stream_once(self) -> None:
        """Called again (a module imported twice), it adds nothing."""
        import prefect.main  # noqa: F401, PLC0415 - loading it sets up Prefect's logging
        from prefect.logging.handlers import PrefectConsoleHandler  # noqa: PLC0415

        console = [h for h in logging.getLogger().handlers if isinstance(h, PrefectConsoleHandler)]
        internal = logging.getLogger("prefect._internal").handlers
        assert console, "Prefect's console handler is not set up"
        assert internal, "Prefect's internal stream handler is not set up"
        try:
            quiet_api_outages()
            quiet_api_outages()
            for handler in [*console, *internal]:
                assert sum(isinstance(f, ApiOutageFilter) for f in handler.filters) == 1
        finally:
            for handler in {*logging.getLogger().handlers, *internal}:
                for added in [f for f in handler.filters if isinstance(f, ApiOutageFilter)]:
                    handler.removeFilter(added)


#: A process that loads Prefect's logging as a run's process does, and counts its handlers (the
#: console and the internal stream) and those of them that have the filter.
COUNT_FILTERED = """
import logging, prefect.main
from koiitasks.logs import ApiOutageFilter
handlers = [*logging.getLogger().handlers, *logging.getLogger("prefect._internal").handlers]
print(sum(any(isinstance(f, ApiOutageFilter) for f in h.filters) for h in handlers), len(handlers))
"""


class TestRunsLogQuietly:
    """The runs' processes the serving process starts have the filter from their first line."""

    def test_a_process_started_inside_has_the_filter_on_prefects_handlers(self) -> None:
        with runs_log_quietly():
            path = Path(os.environ[SETTINGS_PATH_VARIABLE])
            assert path.is_file()
            child = subprocess.run(
                [sys.executable, "-c", COUNT_FILTERED], capture_output=True, text=True, check=True
            )
        assert child.stdout.split() == ["2", "2"], child.stderr
        assert SETTINGS_PATH_VARIABLE not in os.environ
        assert not path.exists()

    def test_a_process_started_outside_has_prefects_own_logging(self) -> None:
        child = subprocess.run(
            [sys.executable, "-c", COUNT_FILTERED], capture_output=True, text=True, check=True
        )
        assert child.stdout.split() == ["0", "2"], child.stderr

    def test_a_logging_configuration_of_the_users_own_stands(
        self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        monkeypatch.setenv(SETTINGS_PATH_VARIABLE, str(tmp_path / "mine.yml"))
        with runs_log_quietly():
            assert os.environ[SETTINGS_PATH_VARIABLE] == str(tmp_path / "mine.yml")
        assert os.environ[SETTINGS_PATH_VARIABLE] == str(tmp_path / "mine.yml")
