"""Specification of the remote task record, node registration (:mod:`koiitasks.network`) and
the remote orchestrator's choice of rounds (:mod:`koiitasks.remote`), on a simulated clock."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from koiitasks.clock import SimulatedClock
from koiitasks.errors import ConfigError, NetworkMismatchError, RecordConflict, RoundMissed
from koiitasks.identity import Keypair
from koiitasks.network import load_network, open_remote_network, register_node
from koiitasks.remote import Remote, build_remote
from koiitasks.round_result import RoundResult
from koiitasks.storage import Store
from koiitasks.task import LoadedTask, load_task
from koiitasks.testing import memory_store, sandbox, write_task
from tests.conftest import ECHO_TASK

ORCHESTRATOR = Keypair.from_seed(b"remote-orchestrator")
NODES = [Keypair.from_seed(f"remote-node-{i}".encode()) for i in range(3)]
NOW_MS = 1_700_000_000_005  # 5 ms into a 10 ms slot


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> LoadedTask:
    """The echo task with the fast config: 10 ms slots, 10-slot rounds, minimum stake 100."""
    return load_task(write_task(tmp_path_factory.mktemp("remote") / "echo", ECHO_TASK))


@pytest.fixture
def store(loaded: LoadedTask) -> Store:
    """A store with three registered nodes."""
    store = memory_store()
    for i, key in enumerate(NODES):
        register_node(store, loaded, key, url=f"http://127.0.0.1:{8001 + i}", stake=1000)
    return store


class TestRemoteTaskRecord:
    """The orchestrator's task record for remote nodes."""

    def test_first_run_makes_it_with_genesis_at_the_next_slot_boundary(
        self, loaded: LoadedTask, store: Store
    ) -> None:
        """No simulated network; genesis at the next 10 ms boundary; the registry is loaded."""
        network = open_remote_network(store, loaded, ORCHESTRATOR, now_ms=NOW_MS)
        record = network.record.body
        assert (record.genesis_ms, record.starting_slot) == (NOW_MS + 5, 0)
        assert record.network is None
        assert network.record.signer == ORCHESTRATOR.public_id
        assert sorted(network.nodes) == sorted(k.public_id for k in NODES)

    def test_later_runs_reuse_it(self, loaded: LoadedTask, store: Store) -> None:
        """A later run, at another time, keeps the first run's record and genesis."""
        first = open_remote_network(store, loaded, ORCHESTRATOR, now_ms=NOW_MS)
        later = open_remote_network(store, loaded, ORCHESTRATOR, now_ms=NOW_MS + 86_400_000)
        assert later.record == first.record

    def test_another_orchestrator_key_is_refused_naming_both(
        self, loaded: LoadedTask, store: Store
    ) -> None:
        """The store's task belongs to the key that made it."""
        open_remote_network(store, loaded, ORCHESTRATOR, now_ms=NOW_MS)
        other = Keypair.from_seed(b"another orchestrator")
        with pytest.raises(NetworkMismatchError) as caught:
            open_remote_network(store, loaded, other, now_ms=NOW_MS)
        assert ORCHESTRATOR.public_id in caught.value.message
        assert other.public_id in caught.value.message

    def test_a_sandbox_store_is_refused(self, loaded: LoadedTask) -> None:
        """A store holding a simulated network is not used for remote nodes."""
        box = sandbox(loaded.directory, nodes=3)
        with pytest.raises(NetworkMismatchError, match="sandbox network of simulated nodes"):
            open_remote_network(box.store, loaded, ORCHESTRATOR, now_ms=NOW_MS)


class TestRegistration:
    """Nodes register themselves with a signed record."""

    def test_registration_is_signed_by_the_node_and_names_url_and_stake(
        self, loaded: LoadedTask, store: Store
    ) -> None:
        """The registry as loaded (signatures checked) has each node's URL and stake."""
        open_remote_network(store, loaded, ORCHESTRATOR, now_ms=NOW_MS)
        registration = load_network(store, loaded.task_id).nodes[NODES[1].public_id]
        assert (registration.url, registration.stake) == ("http://127.0.0.1:8002", 1000)

    @pytest.mark.parametrize(
        ("url", "stake", "says"),
        [
            pytest.param("ftp://127.0.0.1:21", 1000, "is not a node URL", id="not-http"),
            pytest.param("127.0.0.1:8001", 1000, "is not a node URL", id="no-scheme"),
            pytest.param("http://127.0.0.1:8001", 99, "below the minimum", id="under-staked"),
        ],
    )
    def test_bad_registrations_are_refused(
        self, loaded: LoadedTask, url: str, stake: int, says: str
    ) -> None:
        """A URL that is not http(s), or a stake under the task's minimum, is refused."""
        with pytest.raises(ConfigError, match=says):
            register_node(memory_store(), loaded, NODES[0], url=url, stake=stake)

    def test_registering_again_differently_names_the_registration_kept(
        self, loaded: LoadedTask, store: Store
    ) -> None:
        """Registrations are create-only: the same again is fine, a change is a conflict."""
        register_node(store, loaded, NODES[0], url="http://127.0.0.1:8001", stake=1000)
        with pytest.raises(RecordConflict, match=r"stake 1,000, url http://127.0.0.1:8001"):
            register_node(store, loaded, NODES[0], url="http://127.0.0.1:8001", stake=5000)


@pytest.fixture
def remote(loaded: LoadedTask, store: Store) -> Iterator[tuple[Remote, SimulatedClock]]:
    """A remote orchestrator on a simulated clock; round 0 starts at NOW_MS + 5."""
    clock = SimulatedClock(NOW_MS)
    built = build_remote(loaded, store, ORCHESTRATOR, clock=clock)
    yield built, clock
    built.close()


class TestUpcomingRound:
    """Rounds start in the future: the first round that has not started yet."""

    @pytest.mark.parametrize(
        ("at_ms", "lead_ms", "expected"),
        [
            pytest.param(0, 0, 0, id="before-genesis-round-0"),
            pytest.param(5, 0, 0, id="round-0-starts-now"),
            pytest.param(6, 0, 1, id="round-0-has-just-started"),
            pytest.param(255, 0, 3, id="in-round-2"),
            pytest.param(255, 40, 3, id="lead-fits-before-round-3"),
            pytest.param(255, 60, 4, id="lead-too-long-for-round-3"),
        ],
    )
    def test_upcoming_round(
        self,
        remote: tuple[Remote, SimulatedClock],
        at_ms: int,
        lead_ms: int,
        expected: int,
    ) -> None:
        """100 ms rounds from NOW_MS + 5: the first round starting ``lead_ms`` or more from now."""
        orchestrator, clock = remote
        clock.set_ms(NOW_MS + at_ms)
        assert orchestrator.upcoming_round(lead_ms=lead_ms) == expected

    def test_starts_in_counts_down_to_the_first_slot(
        self, remote: tuple[Remote, SimulatedClock]
    ) -> None:
        """Round 3 starts 305 ms after NOW_MS; it has begun once that has passed."""
        orchestrator, clock = remote
        assert orchestrator.starts_in_ms(3) == 305
        clock.set_ms(NOW_MS + 400)
        assert orchestrator.starts_in_ms(3) == 0


def test_no_registered_node_is_a_clear_error(loaded: LoadedTask) -> None:
    """A remote run with nobody registered says how to register."""
    with pytest.raises(ConfigError, match="no node is registered") as caught:
        build_remote(loaded, memory_store(), ORCHESTRATOR, clock=SimulatedClock(NOW_MS))
    assert caught.value.hint is not None
    assert "koiitasks node register" in caught.value.hint


class TestRunUpcoming:
    """Rounds one after another on the wall clock, where a slow start misses a round."""

    def test_a_missed_round_is_replaced_by_a_later_one_with_a_longer_lead(
        self, remote: tuple[Remote, SimulatedClock]
    ) -> None:
        """The runner misses round 0; round 1 is tried with twice the lead, then round 2 runs
        after it: two results for two rounds asked, and the miss reported."""
        orchestrator, clock = remote
        asked: list[int] = []
        missed: list[str] = []

        def runner(number: int) -> RoundResult:
            asked.append(number)
            clock.set_ms(NOW_MS + 5 + 100 * number + 250)  # the round ran to its settlement
            if len(asked) == 1:
                raise RoundMissed(f"round {number} can no longer run")
            return RoundResult.model_validate({**RESULT, "round": number})

        results = list(
            orchestrator.run_upcoming(runner, count=2, on_missed=lambda e: missed.append(e.message))
        )
        assert [r.round for r in results] == [3, 6]
        assert asked == [0, 3, 6]
        assert missed == ["round 0 can no longer run"]

    def test_too_many_misses_in_a_row_stop_the_run(
        self, remote: tuple[Remote, SimulatedClock]
    ) -> None:
        """A runner that only ever misses is given up on after max_missed tries."""
        orchestrator, _ = remote
        calls: list[int] = []

        def runner(number: int) -> RoundResult:
            calls.append(number)
            raise RoundMissed("missed")

        with pytest.raises(RoundMissed):
            list(orchestrator.run_upcoming(runner, count=1, max_missed=3))
        assert len(calls) == 3


class TestOpeningARound:
    """A round's execute request carries the slot it went out in, so completion times are the
    nodes' own and not the orchestrator's lateness."""

    def test_opened_early_it_waits_for_the_first_slot(
        self, remote: tuple[Remote, SimulatedClock]
    ) -> None:
        """Opened before round 1 starts (slot 10), the request goes out at slot 10."""
        orchestrator, _ = remote
        request = orchestrator.engine.open_round(1)
        assert request.body.request_slot == 10
        assert orchestrator.engine.slot_clock.get_slot() == 10

    def test_opened_late_it_is_stamped_with_the_slot_it_goes_out_in(
        self, remote: tuple[Remote, SimulatedClock], caplog: pytest.LogCaptureFixture
    ) -> None:
        """Opened 3 slots into round 1 (a slow flow start), the request says slot 13, a warning
        says the orchestrator was late, and a rerun later still reads back the same request."""
        orchestrator, clock = remote
        clock.set_ms(NOW_MS + 5 + 13 * 10 + 4)
        with caplog.at_level(logging.WARNING, logger="koiitasks.round"):
            request = orchestrator.engine.open_round(1)
        assert request.body.request_slot == 13
        assert "goes out at slot 13, 3 slot(s) after the round's first slot" in caplog.text
        clock.set_ms(NOW_MS + 5 + 15 * 10)
        assert orchestrator.engine.open_round(1) == request


RESULT = {
    "task_id": "test-task",
    "round": 0,
    "bounty": 0,
    "distribution_accepted": False,
    "attempts": 0,
    "already_settled": False,
    "sequence": 0,
    "ledger_hash": "0" * 64,
    "reasons": [],
    "nodes": {},
}
