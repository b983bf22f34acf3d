"""Specification of :mod:`koiitasks.nodes.host`: the checks a call passes before a node works.

The node's clock is simulated: the task's genesis is at 1,000,000 ms, slots are 10 ms, rounds 10
slots with 4-slot windows, so round 3's execute window is slots 30..43, its audit window 44..47,
its distribution window 50..57 and its distribution audit window 54..57.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from koiitasks.clock import SimulatedClock
from koiitasks.distribution import ApprovedNode, DistributionInputs
from koiitasks.errors import RequestRefused
from koiitasks.identity import Keypair
from koiitasks.model import Phase
from koiitasks.nodes.host import NodeHost
from koiitasks.nodes.wire import (
    AuditCall,
    Call,
    DistributionAuditCall,
    DistributionCall,
    ExecuteCall,
    encode_call,
)
from koiitasks.protocol import (
    AcceptedSubmission,
    AuditReport,
    DistributionAudit,
    DistributionList,
    RoundRequest,
    Signed,
    Submission,
    TaskRecord,
    decode,
    digest,
    sign,
)
from koiitasks.task import LoadedTask, load_task
from koiitasks.testing import write_task
from tests.conftest import ECHO_TASK

GENESIS_MS = 1_000_000
SLOT_MS = 10
ROUND = 3
ORCHESTRATOR = Keypair.from_seed(b"host-orchestrator")
NODE = Keypair.from_seed(b"host-node-a")
OTHER = Keypair.from_seed(b"host-node-b")
STRANGER = Keypair.from_seed(b"host-stranger")


WINDOW_START = {
    Phase.EXECUTE: 30,
    Phase.AUDIT: 44,
    Phase.DISTRIBUTION: 50,
    Phase.DISTRIBUTION_AUDIT: 54,
}


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> LoadedTask:
    """The echo task with the fast test config (slot_ms 10)."""
    return load_task(write_task(tmp_path_factory.mktemp("host") / "echo", ECHO_TASK))


def task_record(loaded: LoadedTask, signer: Keypair = ORCHESTRATOR, **changes: Any) -> Signed[Any]:
    config = loaded.config.model_dump(mode="json", exclude={"metadata"})
    fields: dict[str, Any] = {
        "task_id": loaded.task_id,
        "task_name": loaded.config.task_name,
        "config": config,
        "orchestrator": signer.public_id,
        "genesis_ms": GENESIS_MS,
        "starting_slot": 0,
    }
    return sign(TaskRecord(**{**fields, **changes}), signer)


def request(
    phase: Phase, *, signer: Keypair = ORCHESTRATOR, slot: int | None = None, nonce: bytes = b"n"
) -> Signed[RoundRequest]:
    return sign(
        RoundRequest(
            task_id="test-task",
            round=ROUND,
            phase=phase,
            request_slot=WINDOW_START[phase] if slot is None else slot,
            nonce=digest(nonce + phase.value.encode()),
        ),
        signer,
    )


def accepted(node: Keypair, *, signer: Keypair = ORCHESTRATOR) -> Signed[AcceptedSubmission]:
    submission = sign(
        Submission(
            task_id="test-task",
            round=ROUND,
            node_id=node.public_id,
            request_slot=30,
            response_slot=31,
            nonce=digest(b"n" + b"execute"),
            result={"node": node.public_id, "round": ROUND},
        ),
        node,
    )
    return sign(
        AcceptedSubmission(
            task_id="test-task",
            round=ROUND,
            node_id=node.public_id,
            submission=submission,
            received_slot=31,
            completion_slots=1,
            completion_ms=12,
        ),
        signer,
    )


def inputs() -> DistributionInputs:
    approved = ApprovedNode(
        node_id=OTHER.public_id,
        stake=100,
        result={"node": OTHER.public_id, "round": ROUND},
        request_slot=30,
        response_slot=31,
        completion_slots=1,
        completion_ms=12,
        votes_for=1,
        votes_against=0,
    )
    return DistributionInputs(
        task_id="test-task", round=ROUND, bounty=1000, approved=(approved,), slashes={}
    )


class Node:
    """A host of NODE and OTHER whose simulated clock a test moves."""

    def __init__(self, loaded: LoadedTask) -> None:
        self.loaded = loaded
        self.clock = SimulatedClock()
        self.host = NodeHost(
            loaded, [NODE, OTHER], orchestrator=ORCHESTRATOR.public_id, clock=self.clock
        )
        self.record = task_record(loaded)

    def at(self, slot: int) -> Node:
        self.clock.set_ms(GENESIS_MS + slot * SLOT_MS + 3)
        return self

    def call(self, call: Call, *, node: Keypair = NODE, phase: Phase | None = None) -> bytes:
        return self.host.call(node.public_id, phase or call.request.body.phase, encode_call(call))

    def execute(self, req: Signed[RoundRequest] | None = None, **options: Any) -> bytes:
        call = ExecuteCall(task=self.record, request=req or request(Phase.EXECUTE))
        return self.call(call, **options)


@pytest.fixture
def node(loaded: LoadedTask) -> Node:
    return Node(loaded)


def refused(call: Callable[[], object]) -> RequestRefused:
    with pytest.raises(RequestRefused) as caught:
        call()
    return caught.value


class TestCallsAnswered:
    """A call that passes the checks runs the phase's hook and gets the signed answer."""

    def test_execute_answers_with_a_submission_stamped_with_the_nodes_own_slot(
        self, node: Node
    ) -> None:
        """The answer is NODE's signed submission for the request, stamped with the slot of the
        node's clock when it answered."""
        answer = decode(node.at(33).execute(), Submission, where="test")
        assert answer.signer == NODE.public_id
        assert (answer.body.request_slot, answer.body.response_slot) == (30, 33)
        assert answer.body.nonce == request(Phase.EXECUTE).body.nonce
        assert answer.body.result == {"node": NODE.public_id, "round": ROUND}

    def test_a_request_sent_late_is_answered_and_keeps_its_own_slot(self, node: Node) -> None:
        """An orchestrator that got to the round late stamps its request with the slot it sent
        it in; the node answers, and the submission carries that slot."""
        answer = decode(node.at(33).execute(request(Phase.EXECUTE, slot=32)), Submission, where="t")
        assert (answer.body.request_slot, answer.body.response_slot) == (32, 33)

    def test_audit_votes_on_the_assigned_submissions(self, node: Node) -> None:
        """An auditor votes on each orchestrator-accepted submission it is sent."""
        call = AuditCall(
            task=node.record, request=request(Phase.AUDIT), submissions=(accepted(OTHER),)
        )
        report = decode(node.at(45).call(call), AuditReport, where="test")
        assert [(v.submitter, v.valid) for v in report.body.votes] == [(OTHER.public_id, True)]

    def test_a_built_list_is_audited_valid_by_another_node(self, node: Node) -> None:
        """The builder's list, recomputed by another identity, gets a valid vote."""
        build = DistributionCall(
            task=node.record, request=request(Phase.DISTRIBUTION), inputs=inputs(), attempt=0
        )
        listed = decode(node.at(51).call(build), DistributionList, where="test")
        assert listed.body.credits == {OTHER.public_id: 1000}
        audit = DistributionAuditCall(
            task=node.record,
            request=request(Phase.DISTRIBUTION_AUDIT),
            inputs=inputs(),
            distribution=listed,
        )
        vote = decode(node.at(55).call(audit, node=OTHER), DistributionAudit, where="test")
        assert vote.body.valid


class TestCallsRefused:
    """Anything but a fresh call of the task's orchestrator is refused, with a status and why."""

    @pytest.mark.parametrize(
        ("make", "status", "says"),
        [
            pytest.param(
                lambda n: n.host.call(STRANGER.public_id, Phase.EXECUTE, b"{}"),
                404,
                "no node",
                id="identity-not-served-here",
            ),
            pytest.param(
                lambda n: n.host.call(NODE.public_id, Phase.EXECUTE, b"not json"),
                400,
                "malformed execute call",
                id="not-json",
            ),
            pytest.param(
                lambda n: n.call(
                    ExecuteCall(
                        task=task_record(n.loaded, STRANGER), request=request(Phase.EXECUTE)
                    )
                ),
                403,
                "not by this node's orchestrator",
                id="task-record-of-a-stranger",
            ),
            pytest.param(
                lambda n: n.execute(request(Phase.EXECUTE, signer=STRANGER)),
                403,
                "not signed by this task's orchestrator",
                id="request-of-a-stranger",
            ),
            pytest.param(
                lambda n: n.call(
                    ExecuteCall(
                        task=task_record(
                            n.loaded,
                            config={**task_record(n.loaded).body.config, "slot_ms": 11},
                        ),
                        request=request(Phase.EXECUTE),
                    )
                ),
                409,
                "changed: slot_ms",
                id="orchestrator-runs-another-config",
            ),
            pytest.param(
                lambda n: n.call(
                    ExecuteCall(task=n.record, request=request(Phase.EXECUTE)), phase=Phase.AUDIT
                ),
                400,
                "malformed audit call",
                id="posted-to-another-phase",
            ),
            pytest.param(
                lambda n: n.execute(request(Phase.EXECUTE, slot=29)),
                409,
                "stamped slot 29, outside round 3's execute window (slots 30..",
                id="request-slot-before-the-window",
            ),
            pytest.param(
                lambda n: n.at(44).call(
                    AuditCall(
                        task=n.record,
                        request=request(Phase.AUDIT),
                        submissions=(accepted(OTHER, signer=STRANGER),),
                    )
                ),
                400,
                "not the orchestrator's record",
                id="audited-submission-not-accepted-by-the-orchestrator",
            ),
        ],
    )
    def test_refused_with_status_and_reason(
        self, node: Node, make: Callable[[Node], object], status: int, says: str
    ) -> None:
        """The call is refused with the HTTP status and a message saying what is wrong."""
        error = refused(lambda: make(node.at(31)))
        assert error.status == status
        assert says in error.message


class TestOpenNow:
    """A phase is answered only while its window is open on the node's clock, give or take
    the tolerance of one slot."""

    @pytest.mark.parametrize(
        ("slot", "answered"),
        [
            pytest.param(28, False, id="two-slots-early-is-refused"),
            pytest.param(29, True, id="one-slot-early-is-within-tolerance"),
            pytest.param(43, True, id="last-slot-of-the-window"),
            pytest.param(44, True, id="one-slot-late-is-within-tolerance"),
            pytest.param(45, False, id="two-slots-late-is-refused"),
        ],
    )
    def test_execute_window_with_tolerance(self, node: Node, slot: int, answered: bool) -> None:
        """Round 3's execute window is slots 30..43; the node allows one slot either side."""
        if answered:
            assert node.at(slot).execute()
        else:
            error = refused(lambda: node.at(slot).execute())
            assert error.status == 409
            assert "clock" in error.message

    def test_an_early_call_says_the_clocks_differ(self, node: Node) -> None:
        """A call from the node's future names both slots and points at the clocks."""
        error = refused(lambda: node.at(20).execute())
        assert "opens at slot 30, but this node's clock is at slot 20" in error.message
        assert error.hint is not None
        assert "NTP" in error.hint

    def test_a_late_call_is_stale(self, node: Node) -> None:
        """A call after its window is refused as stale."""
        error = refused(lambda: node.at(60).execute())
        assert "closed at slot 44" in error.message
        assert "stale" in error.message


class TestReplayGuard:
    """Each request is answered once per identity (and per distribution attempt)."""

    def test_a_second_identical_call_is_refused_as_replayed(self, node: Node) -> None:
        """The same call twice: answered, then 409 replayed."""
        node.at(32).execute()
        error = refused(node.execute)
        assert error.status == 409
        assert "replayed" in error.message

    def test_another_identity_answers_the_same_request(self, node: Node) -> None:
        """The request every node gets is one request: each identity answers it once."""
        node.at(32).execute()
        assert node.execute(node=OTHER)

    def test_each_distribution_attempt_is_a_new_call(self, node: Node) -> None:
        """A list is rebuilt under the same request for the next attempt: that is no replay."""
        for attempt in (0, 1):
            call = DistributionCall(
                task=node.record,
                request=request(Phase.DISTRIBUTION),
                inputs=inputs(),
                attempt=attempt,
            )
            assert node.at(52).call(call)

    def test_a_new_task_record_of_the_orchestrator_is_followed(self, node: Node) -> None:
        """When the orchestrator starts the task again with a new genesis, the node follows
        the new record, and a request with the same nonce is new under it."""
        node.at(32).execute()
        node.record = task_record(node.loaded, genesis_ms=GENESIS_MS + 5 * SLOT_MS)
        answer = decode(node.at(37).execute(), Submission, where="test")
        assert answer.body.response_slot == 32  # the same instant, 5 slots later genesis


class TestHealth:
    """`GET /` answers as Koii's node app does, plus who and when."""

    def test_health_names_the_nodes_and_their_slot(self, node: Node) -> None:
        """Before any call: status, message, task and identities; after one: slot and round."""
        doc = node.host.health()
        assert (doc["status"], doc["message"]) == (200, "Running")
        assert doc["nodes"] == sorted([NODE.public_id, OTHER.public_id])
        assert "slot" not in doc
        node.at(33).execute()
        doc = node.host.health()
        assert (doc["slot"], doc["round"]) == (33, 3)
