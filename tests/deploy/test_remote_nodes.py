"""Specifications of a deployment on registered remote nodes: three real `koiitasks node serve`
processes on loopback, registered in a file store, and `koiitasks deploy --key` serving against
a real Prefect server. Every round's flow run calls the node processes over HTTP, as `koiitasks
run --remote` does, and signs with the orchestrator key file whose path it is given.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from koiitasks.identity import load_key
from koiitasks.ledger import verify_ledger
from koiitasks.network import register_node
from koiitasks.storage import FileStore
from koiitasks.task import load_task
from koiitasks.testing.deployed import DeployProcess, deployment_runs
from koiitasks.testing.nodes import make_keys, serve_nodes
from koiitasks.testing.processes import PrefectServer
from tests.deploy.conftest import deploy_process, deployed_task

pytestmark = pytest.mark.slow

STAKE = 1_000


def completed_paid_rounds(deployed: DeployProcess, api_url: str) -> list[int]:
    """Rounds with a paid ledger entry whose flow run has completed."""
    paid = [e.body.round for e in deployed.ledger().entries if e.body.distribution_accepted]
    if len(paid) < 2:
        return []  # no need to ask the API yet
    done = {
        run.name
        for run in deployment_runs(api_url, deployed.task_id)
        if run.state is not None and run.state.is_completed()
    }
    return [n for n in paid if f"{deployed.task_id}-round-{n}" in done]


class TestDeployOnRegisteredNodes:
    """`koiitasks deploy --key` without --nodes: rounds go to the nodes in the store."""

    def test_scheduled_rounds_pay_the_registered_node_processes(
        self, sqlite_server: PrefectServer, tmp_path: Path
    ) -> None:
        """Two or more scheduled rounds pay the three registered node processes, the ledger
        verifies, and each round's run is `{task}-round-{N}`, completed, given the key file's
        path and never the key."""
        task_dir = deployed_task(tmp_path, "OnRegisteredNodes")
        loaded = load_task(task_dir)
        orchestrator_key, *node_keys = make_keys(tmp_path / "keys", 4)
        orchestrator = load_key(orchestrator_key)
        store = FileStore(tmp_path / "store")
        with serve_nodes(
            task_dir,
            [[k] for k in node_keys],
            orchestrator=orchestrator.public_id,
            logs=tmp_path / "node-logs",
        ) as nodes:
            for node in nodes:
                register_node(store, loaded, load_key(node.keys[0]), url=node.url, stake=STAKE)
            deployed = deploy_process(
                tmp_path, task_dir, sqlite_server, "--key", str(orchestrator_key)
            )
            with deployed:
                deployed.wait_for(
                    lambda: len(completed_paid_rounds(deployed, sqlite_server.api_url)) >= 2,
                    timeout_s=240,
                    what="two paid rounds whose runs completed",
                )
        task_id = loaded.task_id
        record = deployed.task_record()
        assert record is not None
        assert record.network is None
        assert record.orchestrator == orchestrator.public_id
        ledger = deployed.ledger()
        rounds = [entry.body.round for entry in ledger.entries]
        assert rounds == list(range(len(rounds)))
        assert verify_ledger(store, task_id).entries == len(rounds)
        node_ids = {node.node_id for node in nodes}
        paid_rounds = [e for e in ledger.entries if e.body.distribution_accepted]
        assert len(paid_rounds) >= 2
        for entry in paid_rounds:
            assert set(entry.body.credits) == node_ids, deployed.log()[-4000:]
            assert all(amount > 0 for amount in entry.body.credits.values())
            assert entry.body.round_credited == entry.body.bounty

        runs = {run.name: run for run in deployment_runs(sqlite_server.api_url, task_id)}
        secret = json.loads(orchestrator_key.read_text())["secret"]
        for entry in paid_rounds:
            run = runs[f"{task_id}-round-{entry.body.round}"]
            assert run.state is not None
            assert run.state.is_completed()
            assert task_id in run.tags
            assert run.parameters["key_file"] == str(orchestrator_key.absolute())
            assert secret not in json.dumps(run.parameters)
