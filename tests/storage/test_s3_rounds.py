"""Specifications of rounds on S3: the same bytes as on files, and the CLI against a moto server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from koiitasks.deployment import open_deployed_engine, plan_deployment, prepare_deployed_task
from koiitasks.storage import FileStore
from koiitasks.storage.s3 import S3Store
from koiitasks.storage.s3_init import init_s3_store
from koiitasks.testing import run_rounds, sandbox
from koiitasks.testing.s3 import TEST_AWS_ENV, mock_s3_store, s3_store, unique_bucket_name
from tests.conftest import HASH_PUZZLE, koiitasks, snapshot

__all__ = ["s3_store"]  # the fixture, imported as a task author would


class TestRoundsOnS3:
    """Rounds, registry and ledger behave the same on S3 as on files."""

    def test_seeded_rounds_write_the_same_bytes_on_s3_and_on_files(self, tmp_path: Path) -> None:
        """Two seeded rounds with adversaries write byte-identical records on both backends."""
        adversaries = {"lazy": 1, "forger": 1, "offline": 1}
        on_files = sandbox(
            HASH_PUZZLE, nodes=8, seed=12, adversaries=adversaries, store=FileStore(tmp_path)
        )
        with mock_s3_store(unique_bucket_name()) as s3:
            on_s3 = sandbox(HASH_PUZZLE, nodes=8, seed=12, adversaries=adversaries, store=s3)
            for n in range(2):
                assert on_s3.run_round(n) == on_files.run_round(n)
            assert snapshot(s3) == snapshot(on_files.store)

    def test_a_batch_of_records_on_s3_is_create_only(self) -> None:
        """create_many on S3 creates new keys, skips identical ones and refuses changes."""
        with mock_s3_store(unique_bucket_name()) as s3:
            items = [(f"t/{i:03d}.json", f"r{i}".encode()) for i in range(40)]
            assert s3.create_many(items) == [True] * 40
            assert s3.create_many(items[:3]) == [False] * 3
            assert s3.children("t/")[:2] == ["000.json", "001.json"]


class TestS3Fixture:
    """What task authors get from koiitasks.testing.s3."""

    def test_the_fixture_runs_rounds_on_moto(self, s3_store: S3Store) -> None:
        """run_rounds on the s3_store fixture settles rounds into the mock bucket."""
        results = run_rounds(HASH_PUZZLE, nodes=4, rounds=2, store=s3_store)
        assert all(r.distribution_accepted for r in results)
        assert s3_store.exists("tasks/hash-puzzle/ledger/0000000001.json")


class TestCliOnMotoServer:
    """The README's S3 path: storage init, run, show and verify against a moto server."""

    @pytest.fixture
    def env(self, cli_env: dict[str, str], moto_endpoint: str) -> dict[str, str]:
        clean = {k: v for k, v in cli_env.items() if not k.startswith("AWS_")}
        return {**clean, **TEST_AWS_ENV, "KOII_S3_ENDPOINT_URL": moto_endpoint}

    def test_init_run_show_and_verify(self, env: dict[str, str], tmp_path: Path) -> None:
        """storage init, then rounds with --store s3://..., then ledger show and verify, all from
        separate processes against one moto server."""
        url = f"s3://{unique_bucket_name('koii-dev')}/tasks-a"
        init = koiitasks("storage", "init", url, "--json", env=env, cwd=tmp_path)
        assert init.returncode == 0, init.stderr
        report = json.loads(init.stdout)
        assert report["bucket_created"] is True
        assert report["versioning"] == "Enabled"
        again = koiitasks("storage", "init", url, env=env, cwd=tmp_path)
        assert again.returncode == 0
        assert "found" in again.stdout

        run = koiitasks(
            "run", str(HASH_PUZZLE), "--store", url, "--nodes", "6", "--rounds", "2",
            "--adversary", "lazy=1", "--seed", "3", "--plain", "--json", env=env, cwd=tmp_path,
        )  # fmt: skip
        assert run.returncode == 0, run.stderr
        rounds = [json.loads(line) for line in run.stdout.splitlines()]
        assert [r["round"] for r in rounds] == [0, 1]
        assert all(r["distribution_accepted"] for r in rounds)

        shown = koiitasks("ledger", "show", "--store", url, "--json", env=env, cwd=tmp_path)
        assert shown.returncode == 0, shown.stderr
        assert json.loads(shown.stdout)["total_credited"] == 2_000_000_000
        verified = koiitasks("ledger", "verify", "--store", url, env=env, cwd=tmp_path)
        assert verified.returncode == 0, verified.stderr
        assert verified.stdout.startswith("ok: 2 ledger entries")

    def test_every_command_that_reads_a_store_reaches_it_through_the_endpoint(
        self, env: dict[str, str], tmp_path: Path
    ) -> None:
        """slot, round, trace and node register reach an s3:// store through
        KOII_S3_ENDPOINT_URL, as run and ledger do (they went to AWS instead)."""
        url = f"s3://{unique_bucket_name('koii-cmds')}/p"
        koiitasks("storage", "init", url, env=env, cwd=tmp_path, check=True)
        koiitasks(
            "run", str(HASH_PUZZLE), "--store", url, "--nodes", "4", "--seed", "5", "--plain",
            env=env, cwd=tmp_path, check=True,
        )  # fmt: skip
        slot = koiitasks("slot", "--store", url, "--sandbox", "--json", env=env, cwd=tmp_path)
        assert slot.returncode == 0, slot.stderr
        assert json.loads(slot.stdout)["slot"] == 10  # where the sandbox's round 1 starts
        shown = koiitasks("round", str(HASH_PUZZLE), "--store", url, "--sandbox", "--json",
                          env=env, cwd=tmp_path)  # fmt: skip
        assert shown.returncode == 0, shown.stderr
        assert json.loads(shown.stdout)["round"] == 1
        traced = koiitasks("trace", "honest", "--store", url, env=env, cwd=tmp_path)
        assert traced.returncode == 0, traced.stderr
        assert "round 0" in traced.stdout
        koiitasks("node", "keygen", "--out", "node.json", env=env, cwd=tmp_path, check=True)
        registered = koiitasks(
            "node", "register", "--task", str(HASH_PUZZLE), "--key", "node.json", "--url",
            "http://127.0.0.1:8001", "--store", f"{url}-remote", env=env, cwd=tmp_path,
        )  # fmt: skip
        assert registered.returncode == 0, registered.stderr

    def test_a_deployment_on_s3_reaches_its_store_through_the_endpoint(
        self, moto_endpoint: str
    ) -> None:
        """A deployed task's record, plan and engine on an s3:// store are reached through the
        endpoint given (deploy and its flow runs pass KOII_S3_ENDPOINT_URL), not AWS."""
        url = f"s3://{unique_bucket_name('koii-deployed')}/d"
        init_s3_store(url, moto_endpoint)
        network = prepare_deployed_task(HASH_PUZZLE, url, nodes=4, s3_endpoint_url=moto_endpoint)
        plan = plan_deployment(HASH_PUZZLE, url, s3_endpoint_url=moto_endpoint)
        assert plan.genesis_ms == network.task.genesis_ms > 0
        engine = open_deployed_engine(HASH_PUZZLE, url, s3_endpoint_url=moto_endpoint)
        try:
            assert sorted(engine.network.nodes) == sorted(network.nodes)
        finally:
            engine.pool.close()

    def test_a_missing_bucket_is_a_clear_error(self, env: dict[str, str], tmp_path: Path) -> None:
        """Running against a bucket that was never made says so and how to make it."""
        url = f"s3://{unique_bucket_name('missing')}"
        proc = koiitasks("run", str(HASH_PUZZLE), "--store", url, "--plain", env=env, cwd=tmp_path)
        assert proc.returncode == 2
        assert "koiitasks storage init" in proc.stderr
        assert "Traceback" not in proc.stderr
