"""Specifications of the security promises: who may ask, who is paid, caps, keys, logs.

- nodes act only on requests signed by the orchestrator of their task;
- only registered keys staked at least the minimum are asked, accepted and paid, and the
  ledger check refuses a credit to anyone else, even in an entry the orchestrator signed;
- every reply a node sends is capped in size before it is parsed (submissions in ingest, votes
  and lists here);
- key files are created owner-only whatever the umask (refusing readable ones is specified
  with the hostile key files);
- no secret key ever reaches a log line, the command line's output or the store.
"""

from __future__ import annotations

import base64
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from koiitasks.errors import LedgerError, RecordError, SignatureError
from koiitasks.identity import Keypair, encode_b58, load_key, save_key
from koiitasks.ingest import ENVELOPE_BYTES, VOTE_BYTES, IngestRules, Refused, ingest
from koiitasks.ledger import verify_ledger
from koiitasks.model import Outcome
from koiitasks.model import Phase as RoundPhase
from koiitasks.nodes.base import Reply
from koiitasks.nodes.runtime import NodeRuntime
from koiitasks.nodes.sim import SimulatedPool
from koiitasks.protocol import LedgerEntry, RoundRequest, Signed, Vote, decode, sign
from koiitasks.replay import verify_task
from koiitasks.sandbox import Sandbox
from koiitasks.storage import Layout
from koiitasks.testing import figures, sandbox, write_task
from koiitasks.testing.cli import invoke
from koiitasks.testing.hostile import Answer, Call, HostilePool, Phase, resign
from koiitasks.testing.tamper import copy_store, overwrite, snapshot
from tests.conftest import ECHO_TASK

TASK = "test-task"
Answers = dict[str, dict[Phase, Answer]]


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_task(tmp_path_factory.mktemp("security") / "echo", ECHO_TASK)


def hostile(task_dir: Path, phase: Phase, answer: Answer, *, nodes: int = 7) -> tuple[Sandbox, str]:
    """A sandbox in which one node (the first by id) answers ``phase`` calls with ``answer``."""
    box = sandbox(task_dir, nodes=nodes, seed=9, workers=1)
    node = sorted(box.network.nodes)[0]
    HostilePool.install(box.engine, {node: {phase: answer}})
    return box, node


def padded_report(call: Call) -> bytes:
    """The node's honest audit report with its votes repeated far past its share."""
    votes: tuple[Vote, ...] = call.record().body.votes
    return resign(call, votes=votes * (4 * VOTE_BYTES))


def chatty_list_vote(call: Call) -> bytes:
    """An honest list vote whose reason is a megabyte of text."""
    return resign(call, reason="x" * 1_000_000)


def bloated_list(call: Call) -> bytes:
    """The first builder's list with credits for ten thousand made-up nodes."""
    listed = call.record().body
    if listed.attempt > 0:
        return resign(call)
    return resign(call, credits={**listed.credits, **{f"n{i:040d}": 0 for i in range(10_000)}})


class TestReplySizeCaps:
    """A node cannot make the orchestrator parse or store more than its share."""

    def test_an_audit_report_over_its_cap_is_dropped(self, task_dir: Path) -> None:
        """A report padded far past its votes' room is neither counted nor stored; the round
        settles on the other auditors' votes."""
        box, node = hostile(task_dir, "audit", padded_report)
        result = box.run_round(0)
        assert box.store.read_or_none(Layout(TASK).audit(0, node)) is None
        assert result.distribution_accepted
        assert all(n.outcome == Outcome.APPROVED for n in result.nodes.values())
        verify_task(box.store, TASK)
        figures.record("security_checks")

    def test_a_list_vote_over_its_cap_is_dropped(self, task_dir: Path) -> None:
        """A list vote with a megabyte of reason is not stored or counted."""
        box = sandbox(task_dir, nodes=7, seed=9, workers=1)
        answers: Answers = {n: {"distribution-audit": chatty_list_vote} for n in box.network.nodes}
        HostilePool.install(box.engine, answers)
        result = box.run_round(0)
        assert box.store.list(Layout(TASK).distribution_audits(0, 0)) == []
        assert not result.distribution_accepted
        assert any("no auditor answered" in reason for reason in result.reasons)
        figures.record("security_checks")

    def test_a_distribution_list_over_its_cap_is_refused_before_it_is_stored(
        self, task_dir: Path
    ) -> None:
        """A list bloated with ten thousand made-up nodes is refused unparsed and unstored;
        another builder's list is paid."""
        box = sandbox(task_dir, nodes=7, seed=9, workers=1)
        answers: Answers = {n: {"distribution": bloated_list} for n in box.network.nodes}
        HostilePool.install(box.engine, answers)
        result = box.run_round(0)
        stored = [len(box.store.read(k)) for k in box.store.list(Layout(TASK).distributions(0))]
        assert stored
        assert all(size < ENVELOPE_BYTES + 128 * 8 for size in stored)
        assert result.distribution_accepted
        assert result.attempts == 2
        figures.record("security_checks")


STRANGER = Keypair.from_seed(b"not the orchestrator")
EVERY_KIND = {"offline": 1, "lazy": 1, "forger": 1, "replayer": 1, "late": 1, "bad-auditor": 1}


@pytest.fixture
def settled(task_dir: Path) -> Iterator[Sandbox]:
    """One settled round on seven nodes."""
    box = sandbox(task_dir, nodes=7, seed=9, workers=1)
    box.run_round(0)
    yield box
    box.close()


def orchestrator(box: Sandbox) -> Keypair:
    key = box.network.orchestrator_key
    assert key is not None
    return key


def runtimes(box: Sandbox) -> dict[str, NodeRuntime]:
    """The simulated nodes' runtimes: their keys, hooks and request checks."""
    assert isinstance(box.engine.pool, SimulatedPool)
    return box.engine.pool.runtimes


Forge = Callable[[Signed[RoundRequest], str], Signed[RoundRequest]]


def by_a_stranger(request: Signed[RoundRequest], _orchestrator: str) -> Signed[RoundRequest]:
    return sign(request.body, STRANGER)


def with_a_forged_signature(
    request: Signed[RoundRequest], orchestrator: str
) -> Signed[RoundRequest]:
    return sign(request.body, STRANGER).model_copy(update={"signer": orchestrator})


def changed_after_signing(
    request: Signed[RoundRequest], _orchestrator: str
) -> Signed[RoundRequest]:
    return request.model_copy(update={"body": request.body.model_copy(update={"round": 9})})


def for_another_task_by_a_stranger(
    request: Signed[RoundRequest], _orchestrator: str
) -> Signed[RoundRequest]:
    return sign(request.body.model_copy(update={"task_id": "other-task"}), STRANGER)


class TestOnlyTheOrchestratorIsObeyed:
    """A node acts only on requests its task's orchestrator signed."""

    @pytest.mark.parametrize(
        "forge",
        [
            pytest.param(by_a_stranger, id="stranger"),
            pytest.param(with_a_forged_signature, id="forged-signature"),
            pytest.param(changed_after_signing, id="changed-after-signing"),
            pytest.param(for_another_task_by_a_stranger, id="stranger-for-another-task"),
        ],
    )
    def test_a_request_not_signed_by_the_orchestrator_is_refused_by_every_node(
        self, settled: Sandbox, forge: Forge
    ) -> None:
        """Execute and audit requests the orchestrator did not sign are refused by each node,
        before any hook runs."""
        request = settled.engine.request(0, RoundPhase.EXECUTE, 0)  # the stored one
        forged = forge(request, orchestrator(settled).public_id)
        for runtime in runtimes(settled).values():
            with pytest.raises(SignatureError):
                runtime.execute(forged)
            with pytest.raises(SignatureError):
                runtime.audit(forged, [])
        figures.record("security_checks")

    def test_a_request_for_another_task_is_refused(self, settled: Sandbox) -> None:
        """Even signed by the orchestrator, a request for another task is refused."""
        body = RoundRequest(
            task_id="other-task", round=0, phase=RoundPhase.EXECUTE, request_slot=0, nonce="0" * 64
        )
        request = sign(body, orchestrator(settled))
        runtime = next(iter(runtimes(settled).values()))
        with pytest.raises(RecordError, match="request is for task 'other-task'"):
            runtime.execute(request)
        figures.record("security_checks")


class TestOnlyStakedKeysArePaid:
    """Payments go to registered keys staked at least the minimum, and to nobody else."""

    def test_an_answer_from_an_unregistered_key_is_refused(self, settled: Sandbox) -> None:
        """A validly signed answer from a key the task never registered is refused at ingest."""
        engine = settled.engine
        request = engine.request(0, RoundPhase.EXECUTE, 0)  # the stored one
        node = next(iter(runtimes(settled).values()))
        honest = node.sign_submission(request, {"x": 1}, request.body.request_slot + 1)
        foreign = sign(honest.body.model_copy(update={"node_id": STRANGER.public_id}), STRANGER)
        rules = IngestRules(
            request=request,
            eligible=set(engine.eligible(0)),
            schedule=engine.schedule,
            slot_clock=engine.slot_clock,
            max_result_bytes=1000,
        )
        at = engine.slot_clock.ms_of_slot(request.body.request_slot + 1)
        verdict = ingest(Reply(STRANGER.public_id, foreign.encode(), at), rules)
        assert isinstance(verdict, Refused)
        assert "not registered for this task" in verdict.reason
        figures.record("security_checks")

    def test_nodes_staked_below_the_minimum_are_neither_asked_nor_paid(
        self, task_dir: Path
    ) -> None:
        """A registered node whose stake is below minimum_stake_amount is refused unasked."""
        from koiitasks.testing.networks import NodeSpec, network_sandbox  # noqa: PLC0415

        box = network_sandbox(task_dir, [NodeSpec("honest", 99), *[NodeSpec()] * 4])
        result = box.run_round(0)
        poor = [n for n_id, n in result.nodes.items() if box.network.nodes[n_id].stake == 99]
        assert [(n.outcome, n.credit) for n in poor] == [(Outcome.REFUSED, 0)]
        assert "stake below minimum_stake_amount" in poor[0].reason
        figures.record("security_checks")

    def test_a_credit_to_an_unregistered_key_fails_verification_even_if_signed(
        self, settled: Sandbox
    ) -> None:
        """An entry the orchestrator signed that pays a stranger is refused by the ledger check."""
        store = copy_store(settled.store)
        key = Layout(TASK).ledger_entry(0)
        entry = decode(store.read(key), LedgerEntry, where=key)
        credits = {**entry.body.credits, STRANGER.public_id: 0}
        overwrite(
            store,
            key,
            sign(
                entry.body.model_copy(update={"credits": credits}), orchestrator(settled)
            ).encode(),
        )
        with pytest.raises(LedgerError, match=f"credits unregistered node {STRANGER.public_id}"):
            verify_ledger(store, TASK)
        figures.record("security_checks")


class TestKeyFiles:
    """Key files are the node's identity; they are created for their owner alone."""

    @pytest.mark.parametrize(
        "umask", [pytest.param(0o000, id="umask-000"), pytest.param(0o022, id="umask-022")]
    )
    def test_a_saved_key_is_owner_only_whatever_the_umask(self, tmp_path: Path, umask: int) -> None:
        """save_key makes a 0600 file even when the umask would let everyone read it, and
        load_key takes it back."""
        previous = os.umask(umask)
        try:
            save_key(STRANGER, tmp_path / "key.json")
        finally:
            os.umask(previous)
        assert (tmp_path / "key.json").stat().st_mode & 0o777 == 0o600
        assert load_key(tmp_path / "key.json").public_id == STRANGER.public_id
        figures.record("security_checks")


def secret_forms(keys: list[Keypair]) -> dict[str, str]:
    """Every spelling of every secret key a leak could take, by what it is."""
    forms = {}
    for key in keys:
        seed = bytes(key.signing_key)
        full = seed + bytes(key.signing_key.verify_key)
        for label, data in (("seed", seed), ("keypair", full)):
            forms[f"{key.public_id} {label} hex"] = data.hex()
            forms[f"{key.public_id} {label} base58"] = encode_b58(data)
            forms[f"{key.public_id} {label} base64"] = base64.b64encode(data).decode()
    return forms


class TestNoSecretLeaks:
    """Secret keys never reach a log line, the command line's output or the store."""

    def test_no_secret_in_logs_output_or_records(
        self, task_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Two rounds with every kind of adversary, logged at DEBUG, and the same network run
        by `koiitasks run --verbose`: no spelling of any node's or the orchestrator's secret
        key appears in a log record, in what the command printed or in any stored byte."""
        caplog.set_level(logging.DEBUG, logger="koiitasks")
        box = sandbox(task_dir, nodes=8, seed=5, adversaries=EVERY_KIND, workers=1)
        box.run_round(0)
        box.run_round(1)
        ran = invoke(
            "run", str(task_dir), "--plain", "--verbose", "--nodes", "8", "--seed", "5",
            "--rounds", "2", "--workers", "1", "--store", str(tmp_path / "store"),
            *[arg for kind in EVERY_KIND for arg in ("--adversary", f"{kind}=1")],
        )  # fmt: skip
        assert ran.exit_code == 0, ran.stderr
        logged = caplog.text + "".join(repr(r.args) for r in caplog.records)
        assert "refused in round 1" in logged  # the logs do say what happened
        assert "INFO koiitasks" in ran.stderr
        stored = b"".join(snapshot(box.store).values()).decode()
        keys = [orchestrator(box), *box.network.keys.values()]
        for what, form in secret_forms(keys).items():
            for where, text in (("logs", logged), ("output", ran.output), ("store", stored)):
                assert form not in text, f"{what} appears in the {where}"
        figures.record("security_checks")
