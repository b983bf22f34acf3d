"""Specification of how simulated nodes' hooks share threads (:mod:`koiitasks.nodes.sim`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from koiitasks.nodes.sim import STALL_S, WAITING_SHARE, HookPace
from koiitasks.testing import sandbox, write_task
from tests.conftest import ECHO_TASK


class FakeTimes:
    """A wall clock and a thread CPU clock that move only when told."""

    def __init__(self) -> None:
        self.wall = 100.0
        self.cpu = 5.0

    def hook(self, pace: HookPace, *, wall_s: float, cpu_s: float) -> None:
        """One hook run to its end: ``wall_s`` long, ``cpu_s`` of it computing."""
        started = pace.start()
        self.wall += wall_s
        self.cpu += cpu_s
        pace.done(started)


@pytest.fixture
def times() -> FakeTimes:
    return FakeTimes()


@pytest.fixture
def pace(times: FakeTimes) -> HookPace:
    return HookPace(wall=lambda: times.wall, cpu=lambda: times.cpu)


class TestHookPace:
    """A call adds a hook thread only while its hooks wait, or stall."""

    def test_hooks_that_compute_are_not_waiting(self, times: FakeTimes, pace: HookPace) -> None:
        """Hooks that spend most of their time computing keep their call on one thread."""
        for _ in range(100):
            times.hook(pace, wall_s=0.0002, cpu_s=0.0001)
        assert not pace.waiting()

    def test_hooks_that_mostly_wait_are_waiting(self, times: FakeTimes, pace: HookPace) -> None:
        """Hooks that compute less than the waiting share of their time (I/O, sleeps) are
        spread over more threads."""
        times.hook(pace, wall_s=0.05, cpu_s=0.05 * WAITING_SHARE * 0.9)
        assert pace.waiting()

    def test_no_hook_finished_for_a_while_is_a_stall(
        self, times: FakeTimes, pace: HookPace
    ) -> None:
        """A call none of whose hooks has finished for the stall time adds a thread (a slow or
        hung hook holds up only its own)."""
        times.wall += STALL_S / 2
        assert not pace.waiting()
        times.wall += STALL_S
        assert pace.waiting()

    def test_a_finished_hook_ends_a_stall(self, times: FakeTimes, pace: HookPace) -> None:
        """The stall time counts from the last hook that finished."""
        times.wall += STALL_S * 2
        times.hook(pace, wall_s=0.001, cpu_s=0.001)
        assert not pace.waiting()


THREAD_TASK = ECHO_TASK.replace(
    'return {"node": ctx.node_id, "round": ctx.round}',
    "import threading, time\n"
    "    time.sleep(SLEEP_S)\n"
    '    return {"node": ctx.node_id, "round": ctx.round, '
    '"thread": threading.current_thread().name}',
).replace(
    "return submission.result ==",
    'return {k: v for k, v in submission.result.items() if k != "thread"} ==',
)


class TestHookThreads:
    """Simulated nodes' hooks on the pool's threads."""

    def test_hooks_that_wait_run_on_several_threads_and_the_round_settles(
        self, tmp_path: Path
    ) -> None:
        """Execute hooks that sleep are spread over more than one of the pool's threads; every
        node is still paid."""
        task_dir = write_task(tmp_path / "sleepy", THREAD_TASK.replace("SLEEP_S", "0.05"))
        box = sandbox(task_dir, nodes=12, workers=4)
        result = box.run_round(0)
        assert result.distribution_accepted
        assert all(n.credit > 0 for n in result.nodes.values())
        threads = {
            record.body.submission.body.result["thread"]  # type: ignore[call-overload,index]
            for record in box.engine.accepted(0).values()
        }
        assert 1 < len(threads) <= 4

    def test_one_worker_runs_every_hook_in_the_calling_thread(self, tmp_path: Path) -> None:
        """``workers=1`` runs hooks in the calling thread, so a breakpoint there stops."""
        task_dir = write_task(tmp_path / "inline", THREAD_TASK.replace("SLEEP_S", "0"))
        box = sandbox(task_dir, nodes=4, workers=1)
        box.run_round(0)
        threads = {
            record.body.submission.body.result["thread"]  # type: ignore[call-overload,index]
            for record in box.engine.accepted(0).values()
        }
        assert threads == {"MainThread"}
