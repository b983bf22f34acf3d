"""Specifications of examples/api-health: nodes monitor a real HTTP API on loopback.

The target service (examples/api-health/target.py) runs as a process of its own, as its README
says to start it; the task's rounds run in the sandbox, where each simulated node's execute hook
calls the real target.
"""

from __future__ import annotations

import logging
import re
import subprocess
import sys
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest

from koiitasks.clock import Schedule, SimulatedClock, SlotClock
from koiitasks.model import Outcome
from koiitasks.task import Context, NodeStore, SubmissionView, load_task
from koiitasks.testing import run_rounds
from tests.conftest import EXAMPLES

API_HEALTH = EXAMPLES / "api-health"


def start_target(*args: str) -> tuple[subprocess.Popen[str], str]:
    """Start target.py on a free port; its process and health URL."""
    process = subprocess.Popen(
        [sys.executable, str(API_HEALTH / "target.py"), "--port", "0", *args],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    found = re.search(r"(http://\S+/health)", line)
    if not found:
        process.kill()
        pytest.fail(f"target.py did not say where it serves: {line!r}")
    return process, found.group(1)


@pytest.fixture(scope="module")
def targets() -> Iterator[dict[str, str]]:
    """Two target services: one up (200), one down (503)."""
    up, up_url = start_target()
    down, down_url = start_target("--status", "503")
    try:
        yield {"up": up_url, "down": down_url}
    finally:
        for process in (up, down):
            process.terminate()
            process.wait(timeout=10)
            assert process.stdout is not None
            process.stdout.close()


@pytest.fixture(scope="module")
def hooks() -> ModuleType:
    """The example's task.py module, as koiitasks loads it."""
    hook = load_task(API_HEALTH).task.execute_hook
    assert hook is not None
    return sys.modules[hook.__module__]


class TestRounds:
    """Rounds of the example in the sandbox, against the real target."""

    def test_nodes_that_check_the_target_are_paid_and_a_lazy_one_is_not(
        self, targets: dict[str, str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Honest nodes report the target and are approved and paid; a node that makes up its
        report is rejected and slashed."""
        monkeypatch.setenv("API_HEALTH_TARGET", targets["up"])
        (result,) = run_rounds(API_HEALTH, nodes=5, adversaries={"lazy": 1})
        for node in result.nodes.values():
            if node.behaviour == "lazy":
                assert (node.outcome, node.slash > 0) == (Outcome.REJECTED, True)
            else:
                assert (node.outcome, node.credit > 0) == (Outcome.APPROVED, True)

    def test_a_target_that_is_down_is_reported_down_and_the_reports_pass(
        self, targets: dict[str, str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Nodes that say the target is down, when it is, are approved: the task pays for
        honest monitoring, not for good news."""
        monkeypatch.setenv("API_HEALTH_TARGET", targets["down"])
        (result,) = run_rounds(API_HEALTH, nodes=4)
        assert all(n.outcome is Outcome.APPROVED for n in result.nodes.values())


def _context(round_number: int = 2) -> Context:
    loaded = load_task(API_HEALTH)
    config = loaded.config
    return Context(
        task_id=loaded.task_id,
        round=round_number,
        node_id="auditor",
        config=config,
        slot_clock=SlotClock(SimulatedClock(), slot_ms=config.slot_ms),
        schedule=Schedule(0, config.round_time, config.submission_window, config.audit_window),
        store=NodeStore(),
        log=logging.getLogger("test"),
    )


def _submission(url: str, **changes: Any) -> SubmissionView:
    """An honest report of ``url`` being up, checked in slot 21 of a request at slot 20."""
    result: dict[str, Any] = {
        "target": url,
        "status": 200,
        "latency_ms": 3.5,
        "checked_slot": 21,
    }
    view: dict[str, Any] = {
        "node_id": "node",
        "round": 2,
        "request_slot": 20,
        "response_slot": 22,
        "completion_slots": 2,
        "completion_ms": 812,
    }
    for key, value in changes.items():
        (result if key in result else view)[key] = value
    return SubmissionView(result=result, **view)


class TestAudit:
    """What the audit hook accepts: consistent stamps and the truth about the target."""

    @pytest.mark.parametrize(
        ("changes", "valid"),
        [
            pytest.param({}, True, id="honest-report"),
            pytest.param({"status": 503}, False, id="says-down-while-up"),
            pytest.param({"checked_slot": 19}, False, id="checked-before-it-was-asked"),
            pytest.param({"checked_slot": 23}, False, id="checked-after-it-answered"),
            pytest.param({"latency_ms": 900.0}, False, id="latency-longer-than-the-answer"),
            pytest.param({"completion_slots": 6}, False, id="answered-too-late"),
            pytest.param({"target": "http://elsewhere/health"}, False, id="another-target"),
            pytest.param({"status": "200"}, False, id="wrong-type"),
        ],
    )
    def test_audit(
        self,
        hooks: ModuleType,
        targets: dict[str, str],
        monkeypatch: pytest.MonkeyPatch,
        changes: dict[str, Any],
        valid: bool,
    ) -> None:
        """The report is valid exactly when its stamps fit and the auditor sees the same."""
        monkeypatch.setenv("API_HEALTH_TARGET", targets["up"])
        assert hooks.audit(_context(), _submission(targets["up"], **changes)) is valid

    def test_the_auditor_spot_checks_the_target_once_per_round(
        self, hooks: ModuleType, targets: dict[str, str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The first audit of a round calls the target and remembers what it saw; later audits
        in the round judge by that, not by calling again."""
        monkeypatch.setenv("API_HEALTH_TARGET", targets["up"])
        ctx = _context()
        assert hooks.audit(ctx, _submission(targets["up"]))
        assert ctx.store.get("spot-check/2") == "200"
        ctx.store.set("spot-check/2", "503")  # as if the target had been down at the first call
        assert not hooks.audit(ctx, _submission(targets["up"]))
