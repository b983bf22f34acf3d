"""Specifications of rounds on remote nodes: real `koiitasks node serve` processes on loopback,
real wall-clock slots, the REST slot-stamp protocol.

Five node processes are started once for the module; tests that need a node of their own (one
to kill, hostile ones, skewed clocks) start it themselves. Slots are 200 ms and rounds 8 slots,
so a round from request to ledger takes about 4.4 s of wall time; the audit window (3 slots) is
600 ms, room enough for a Prefect task run to start on a busy machine.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from koiitasks.identity import Keypair, load_key
from koiitasks.ledger import verify_ledger
from koiitasks.model import Outcome, Phase
from koiitasks.network import register_node
from koiitasks.nodes.wire import ExecuteCall, call_url, encode_call
from koiitasks.protocol import AcceptedSubmission, RoundRequest, decode, sign
from koiitasks.remote import Remote, build_remote
from koiitasks.round_result import RoundResult
from koiitasks.storage import FileStore, Layout, Store
from koiitasks.task import load_task
from koiitasks.testing import write_task
from koiitasks.testing.nodes import NodeProcess, make_keys, serve_nodes
from tests.hostile_node import KINDS, hostile_nodes

pytestmark = pytest.mark.slow

SLOT_MS = 200
TIMING: dict[str, Any] = {
    "slot_ms": SLOT_MS,
    "round_time": 8,
    "submission_window": 3,
    "audit_window": 3,
}
STAKE = 1_000

REMOTE_TASK = """
import os
import time
from pathlib import Path

from koiitasks import Task

task = Task()


@task.execute
def execute(ctx):
    marker = os.environ.get("KOII_TEST_STARTED_MARKER")
    if marker:  # the node a test kills mid-round: it says it has started, then works on
        Path(marker).write_text(str(ctx.round))
        time.sleep(60)
    return {"node": ctx.node_id, "round": ctx.round}


@task.audit
def audit(ctx, submission):
    # The slot stamps at work: an answer that took the whole window is too slow for this task.
    fast_enough = 0 <= submission.completion_slots < 8 and submission.completion_ms >= 0
    return fast_enough and submission.result == {
        "node": submission.node_id, "round": submission.round
    }
"""


@dataclass
class Cluster:
    """Five node processes serving the test task for one orchestrator key."""

    root: Path
    task_dir: Path
    orchestrator_key: Path
    nodes: list[NodeProcess]

    @property
    def orchestrator(self) -> Keypair:
        return load_key(self.orchestrator_key)

    def store(self, name: str) -> FileStore:
        return FileStore(self.root / "stores" / name)

    def register(self, store: Store, nodes: list[NodeProcess]) -> None:
        loaded = load_task(self.task_dir)
        for node in nodes:
            for key in node.keys:
                register_node(store, loaded, load_key(key), url=node.url, stake=STAKE)

    def remote(self, store: Store) -> Remote:
        return build_remote(load_task(self.task_dir), store, self.orchestrator)

    def serve(self, name: str, count: int, **options: Any) -> Any:
        """More node processes of this task, started and stopped around a block."""
        keys = make_keys(self.root / "keys" / name, count)
        return serve_nodes(
            self.task_dir,
            [[k] for k in keys],
            orchestrator=self.orchestrator.public_id,
            logs=self.root / "logs" / name,
            **options,
        )


def run_one_round(remote: Remote) -> RoundResult:
    """The next round that has not started, run to its ledger entry without Prefect."""
    try:
        return remote.run_round(remote.upcoming_round(lead_ms=2 * SLOT_MS))
    finally:
        remote.close()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Five `koiitasks node serve` processes of the test task, for the whole module."""
    root = tmp_path_factory.mktemp("remote")
    task_dir = write_task(root / "task", REMOTE_TASK, **TIMING)
    orchestrator_key, *node_keys = make_keys(root / "keys" / "cluster", 6)
    with serve_nodes(
        task_dir,
        [[k] for k in node_keys],
        orchestrator=load_key(orchestrator_key).public_id,
        logs=root / "logs" / "cluster",
    ) as nodes:
        yield Cluster(root, task_dir, orchestrator_key, nodes)


def _koiitasks(*args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "koiitasks", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(proc: subprocess.Popen[str]) -> str:
    stdout, stderr = proc.communicate(timeout=240)
    assert proc.returncode == 0, stderr
    return stdout


class TestRoundsOnNodeProcesses:
    """Rounds run by the orchestrator on the registered node processes."""

    def test_five_node_processes_serve_rounds_through_the_prefect_flow_and_all_are_paid(
        self, cluster: Cluster, cli_env: dict[str, str], prefect_api: str
    ) -> None:
        """`node register` then `run --remote --rounds 2 --json`: every round is a flow run on
        the five node processes, every node is approved and paid, and the ledger verifies."""
        env = {**cli_env, "PREFECT_API_URL": prefect_api}
        store = cluster.root / "stores" / "cli"
        registrations = [
            _koiitasks(
                "node",
                "register",
                "--store",
                str(store),
                "--task",
                str(cluster.task_dir),
                "--key",
                str(node.keys[0]),
                "--url",
                node.url,
                "--stake",
                str(STAKE),
                env=env,
            )
            for node in cluster.nodes
        ]
        for proc in registrations:
            assert "registered node" in _finish(proc)
        run = _koiitasks(
            "run", str(cluster.task_dir), "--store", str(store), "--remote",
            "--key", str(cluster.orchestrator_key), "--rounds", "2", "--json", env=env,
        )  # fmt: skip
        rounds = [json.loads(line) for line in _finish(run).splitlines()]
        assert len(rounds) == 2
        assert rounds[0]["round"] < rounds[1]["round"]
        node_ids = {node.node_id for node in cluster.nodes}
        for result in rounds:
            assert result["distribution_accepted"] is True, [
                (n["outcome"], n.get("reason")) for n in result["nodes"].values()
            ]
            assert set(result["nodes"]) == node_ids
            assert all(n["outcome"] == "approved" for n in result["nodes"].values())
            assert all(n["credit"] > 0 for n in result["nodes"].values())
            assert sum(n["credit"] for n in result["nodes"].values()) == result["bounty"]
        file_store = FileStore(store)
        verify_ledger(file_store, "test-task")
        layout = Layout("test-task")
        for key in file_store.list(layout.submissions(rounds[0]["round"])):
            accepted = decode(file_store.read(key), AcceptedSubmission, where=key).body
            stamped = accepted.submission.body
            assert stamped.request_slot <= stamped.response_slot <= accepted.received_slot + 1
            assert accepted.completion_slots == accepted.received_slot - stamped.request_slot
            assert 0 <= accepted.completion_ms < 11 * SLOT_MS

    def test_a_node_killed_mid_round_is_missing_and_the_others_are_paid(
        self, cluster: Cluster
    ) -> None:
        """A node process killed while its execute hook runs counts as missing; the round goes
        on and every live node is approved and paid."""
        marker = cluster.root / "victim-started"
        store = cluster.store("killed")
        with cluster.serve("victim", 1, envs=[{"KOII_TEST_STARTED_MARKER": str(marker)}]) as (
            victim,
        ):
            cluster.register(store, [*cluster.nodes[:4], victim])
            remote = cluster.remote(store)
            results: list[RoundResult] = []
            worker = threading.Thread(target=lambda: results.append(run_one_round(remote)))
            worker.start()
            deadline = time.monotonic() + 30
            while not marker.exists() and time.monotonic() < deadline:
                time.sleep(0.02)
            assert marker.exists(), "the victim's execute hook never started"
            victim.kill()
            worker.join(timeout=60)
        (result,) = results
        assert result.nodes[victim.node_id].outcome is Outcome.MISSING
        assert result.nodes[victim.node_id].credit == 0
        live = [node.node_id for node in cluster.nodes[:4]]
        assert all(result.nodes[n].outcome is Outcome.APPROVED for n in live)
        assert all(result.nodes[n].credit > 0 for n in live)

    def test_a_node_nothing_answers_for_is_missing_with_the_reason(self, cluster: Cluster) -> None:
        """A registered node whose URL nobody listens at is missing, and the round's result
        and report say the connection failed (they used to say only "no answer", the real
        reason being logged with -v alone)."""
        with socket.socket() as closed:
            closed.bind(("127.0.0.1", 0))
            dead_url = f"http://127.0.0.1:{closed.getsockname()[1]}"
        store = cluster.store("dead")
        cluster.register(store, cluster.nodes[:4])
        dead = Keypair.generate()
        register_node(store, load_task(cluster.task_dir), dead, url=dead_url, stake=STAKE)
        result = run_one_round(cluster.remote(store))
        missing = result.nodes[dead.public_id]
        assert missing.outcome is Outcome.MISSING
        assert f"cannot connect to {dead_url}" in missing.reason
        assert f"  - 1 missing: cannot connect to {dead_url}" in result.report()


class TestHostileAnswers:
    """Answers a node should never send are refused with their reason; the round goes on."""

    def test_each_hostile_answer_is_refused_and_honest_nodes_are_paid(
        self, cluster: Cluster
    ) -> None:
        """Not JSON, over the cap, wrong schema, wrong signature and a stale nonce are refused
        with the reason stored; a body that stalls half way is cut off at the window's end and
        counts as missing; the three honest nodes are paid."""
        keys = {kind: Keypair.generate() for kind in KINDS}
        store = cluster.store("hostile")
        loaded = load_task(cluster.task_dir)
        with hostile_nodes(keys) as (url, _):
            for key in keys.values():
                register_node(store, loaded, key, url=url, stake=STAKE)
            cluster.register(store, cluster.nodes[:3])
            result = run_one_round(cluster.remote(store))
        expected = {
            "not-json": "malformed answer",
            "oversized": "over the",
            "wrong-schema": "not a valid Submission",
            "wrong-signature": "(forged)",
            "stale-nonce": "request nonce and slot (replayed)",
        }
        for kind, reason in expected.items():
            outcome = result.nodes[keys[kind].public_id]
            assert (kind, outcome.outcome) == (kind, Outcome.REFUSED)
            assert reason in outcome.reason, (kind, outcome.reason)
        assert result.nodes[keys["stall"].public_id].outcome is Outcome.MISSING
        for honest in cluster.nodes[:3]:
            assert result.nodes[honest.node_id].outcome is Outcome.APPROVED
            assert result.nodes[honest.node_id].credit > 0


class TestRequestsNodesRefuse:
    """A node process obeys only fresh requests of its task's orchestrator."""

    @pytest.fixture
    def open_call(self, cluster: Cluster) -> tuple[Remote, bytes]:
        """A task record and an execute request of round 0, whose window is open now."""
        remote = cluster.remote(_registered(cluster, "direct"))
        request = remote.engine.request(0, Phase.EXECUTE, 0)
        remote.close()
        return remote, encode_call(ExecuteCall(task=remote.network.record, request=request))

    def test_a_replayed_request_is_refused(
        self, cluster: Cluster, open_call: tuple[Remote, bytes]
    ) -> None:
        """The same signed request sent twice is answered once, then refused as replayed."""
        _, body = open_call
        node = cluster.nodes[0]
        url = call_url(node.url, node.node_id, Phase.EXECUTE)
        first = httpx.post(url, content=body, trust_env=False, timeout=10)
        again = httpx.post(url, content=body, trust_env=False, timeout=10)
        assert first.status_code == 200, first.text
        assert again.status_code == 409
        assert "replayed" in again.json()["error"]

    def test_a_request_signed_by_a_stranger_is_refused(
        self, cluster: Cluster, open_call: tuple[Remote, bytes]
    ) -> None:
        """A request signed by any key but the orchestrator's is refused with 403."""
        remote, _ = open_call
        stranger = Keypair.generate()
        body = remote.engine.request(0, Phase.EXECUTE, 0).body
        forged = sign(RoundRequest(**{**body.model_dump(), "nonce": "1" * 64}), stranger)
        node = cluster.nodes[1]
        response = httpx.post(
            call_url(node.url, node.node_id, Phase.EXECUTE),
            content=encode_call(ExecuteCall(task=remote.network.record, request=forged)),
            trust_env=False,
            timeout=10,
        )
        assert response.status_code == 403
        assert "not signed by this task's orchestrator" in response.json()["error"]


class TestClockSkew:
    """Clocks may differ by the tolerance (1 slot), no more."""

    def test_a_node_clock_beyond_the_tolerance_is_refused_and_within_it_accepted(
        self, cluster: Cluster
    ) -> None:
        """A node 5 slots ahead is refused by the orchestrator, saying its clock is ahead; one
        5 slots behind refuses the call itself, saying the clocks differ; one 0.4 slot ahead
        is approved and paid."""
        skews = {"far-ahead": 5 * SLOT_MS, "far-behind": -5 * SLOT_MS, "near": 2 * SLOT_MS // 5}
        store = cluster.store("skew")
        extra = [["--clock-skew-ms", str(ms)] for ms in skews.values()]
        with cluster.serve("skew", len(skews), extra_args=extra) as skewed:
            by_name = dict(zip(skews, skewed, strict=True))
            cluster.register(store, [*cluster.nodes[:3], *skewed])
            result = run_one_round(cluster.remote(store))
            behind_log = by_name["far-behind"].log()
        ahead = result.nodes[by_name["far-ahead"].node_id]
        assert ahead.outcome is Outcome.REFUSED
        assert "its clock is ahead by more than 1 slot(s)" in ahead.reason
        assert result.nodes[by_name["far-behind"].node_id].outcome is Outcome.MISSING
        assert "clock differs from the orchestrator's by more than 1 slot(s)" in behind_log
        near = result.nodes[by_name["near"].node_id]
        assert (near.outcome, near.credit > 0) == (Outcome.APPROVED, True)


def _registered(cluster: Cluster, name: str) -> Store:
    store = cluster.store(name)
    cluster.register(store, cluster.nodes[:2])
    return store
