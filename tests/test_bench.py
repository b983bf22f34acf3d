"""The benchmarks keep working: CI runs their quick modes (asserting nothing about time)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.round_parts import (
    NO_SIGNATURE,
    ReplayedNodes,
    no_crypto,
    on_threads,
    record_tape,
    release,
    sandbox_on,
)
from flows.round import SHARD_CONCURRENCY
from koiitasks.errors import SignatureError
from koiitasks.identity import Keypair, verify
from koiitasks.nodes.base import Reply
from koiitasks.sandbox import Sandbox
from koiitasks.storage import Layout
from tests.conftest import ROOT

ROUND_KEYS = {
    "nodes", "wall_s", "per_node_us", "peak_rss_mb", "floor_s", "vs_floor", "plain_s",
    "vs_plain", "naive_s", "vs_naive", "naive_all_recorded",
}  # fmt: skip


class TestRoundBench:
    """bench/round_bench.py."""

    def test_quick_run_prints_the_contracted_json(
        self, cli_env: dict[str, str], tmp_path: Path
    ) -> None:
        """--quick --json prints one object with exactly the contracted keys, all measured."""
        proc = subprocess.run(
            [sys.executable, str(ROOT / "bench" / "round_bench.py"), "--quick", "--json"],
            env=cli_env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        report = json.loads(proc.stdout.strip().splitlines()[-1])
        assert set(report) == ROUND_KEYS
        assert report["nodes"] == 200
        for key in ROUND_KEYS - {"nodes", "naive_all_recorded"}:
            assert isinstance(report[key], float), key
            assert report[key] > 0, key
        assert isinstance(report["naive_all_recorded"], bool)


PARTS_KEYS = {
    "nodes", "full_s", "no_writes_s", "no_crypto_s", "python_s", "threads_s", "floor_s",
    "threads_no_writes_s", "threads_no_crypto_s", "engine_threads_s", "engine_no_crypto_s",
    "threads_speedup", "threads_no_writes_speedup", "gil_bound_vs_floor", "even_split_vs_floor",
    "threads_vs_floor", "helper_bound_vs_floor", "engine_vs_floor",
    "same_parallelism_bound_vs_floor",
}  # fmt: skip
#: Ways of running the round: each has a time, CPU seconds and a count of context switches.
PARTS_WAYS = {key for key in PARTS_KEYS if key.endswith("_s") and key != "floor_s"}


class TestRoundPartsBench:
    """bench/round_parts.py."""

    def test_quick_run_prints_every_part_measured(
        self, cli_env: dict[str, str], tmp_path: Path
    ) -> None:
        """--quick --json prints one object with every way of running the round timed, the
        ratios computed from those times, and each way's CPU seconds and context switches."""
        proc = subprocess.run(
            [sys.executable, str(ROOT / "bench" / "round_parts.py"), "--quick", "--json"],
            env=cli_env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        report = json.loads(proc.stdout.strip().splitlines()[-1])
        assert set(report) == PARTS_KEYS | {"cpu_s", "switches"}
        assert report["nodes"] == 300
        assert set(report["cpu_s"]) == set(report["switches"]) == PARTS_WAYS
        for way in PARTS_WAYS:
            assert isinstance(report["cpu_s"][way], float), way
            assert report["cpu_s"][way] > 0, way
            assert isinstance(report["switches"][way], int), way
            assert report["switches"][way] >= 0, way
        for key in PARTS_KEYS - {"nodes"}:
            assert isinstance(report[key], float), key
            assert report[key] > 0, key
        # The ratios are those of the times printed (which are rounded to the millisecond).
        ratios = {
            "threads_speedup": report["full_s"] / report["threads_s"],
            "threads_no_writes_speedup": report["no_writes_s"] / report["threads_no_writes_s"],
            "gil_bound_vs_floor": report["python_s"] / report["floor_s"],
            "even_split_vs_floor": report["full_s"] / SHARD_CONCURRENCY / report["floor_s"],
            "threads_vs_floor": report["threads_s"] / report["floor_s"],
            "helper_bound_vs_floor": report["threads_no_crypto_s"] / report["floor_s"],
            "engine_vs_floor": report["engine_threads_s"] / report["floor_s"],
            "same_parallelism_bound_vs_floor": report["full_s"]
            / (report["full_s"] - report["python_s"]),
        }
        for key, ratio in ratios.items():
            assert report[key] == pytest.approx(ratio, rel=0.03), key


def submissions(sandbox: Sandbox) -> list[str]:
    """The keys of round 0's submissions in a sandbox's store."""
    keys = list(sandbox.store.list(Layout(sandbox.loaded.task_id).submissions(0)))
    assert keys, "the round stored no submission"
    return keys


class TestRoundPartsStandIns:
    """bench/round_parts.py's stand-ins (no cryptography, replayed nodes) time the same round."""

    def test_signing_and_verification_come_back_after_an_error(self) -> None:
        """Leaving no_crypto() by an exception restores real ed25519 both ways."""
        keypair = Keypair.from_seed(b"parts")
        signed_inside: list[str] = []

        def failing_way() -> None:
            with no_crypto():
                signed_inside.append(keypair.sign(b"m"))
                raise RuntimeError("a way failed")

        with pytest.raises(RuntimeError):
            failing_way()
        assert signed_inside == [NO_SIGNATURE]
        signature = keypair.sign(b"m")
        assert signature != NO_SIGNATURE
        verify(keypair.public_id, b"m", signature)
        with pytest.raises(SignatureError):
            verify(keypair.public_id, b"other", signature)

    def test_a_signature_accepted_without_a_check_is_not_trusted_afterwards(self) -> None:
        """What verified under the stub is checked for real once it is gone."""
        keypair = Keypair.from_seed(b"parts")
        with no_crypto():
            verify(keypair.public_id, b"forged", NO_SIGNATURE)
        with pytest.raises(SignatureError):
            verify(keypair.public_id, b"forged", NO_SIGNATURE)

    def test_a_round_without_cryptography_settles_like_a_real_one(self) -> None:
        """The same network pays and records the same nodes either way: the stubbed way times
        the same round, less its signatures."""
        real = sandbox_on("memory://parts-real", 20)
        stubbed = sandbox_on("memory://parts-stubbed", 20)
        try:
            expected = real.engine.run(0)
            with no_crypto():
                got = stubbed.engine.run(0)
        finally:
            real.close()
            stubbed.close()
        assert got.distribution_accepted
        assert expected.distribution_accepted
        assert got.nodes == expected.nodes
        assert got.counts() == expected.counts()
        signed = NO_SIGNATURE.encode()
        assert all(signed in stubbed.store.read(key) for key in submissions(stubbed))
        assert not any(signed in real.store.read(key) for key in submissions(real))
        for box in (real, stubbed):
            release(box)

    def test_a_round_on_replayed_nodes_settles_like_the_recorded_one(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Replies recorded from one network answer an identical one: same results, and no
        node is asked to execute or audit."""
        tape = record_tape("memory://parts-tape", 20)
        live = sandbox_on("memory://parts-live", 20)
        replayed = sandbox_on("memory://parts-replayed", 20)
        nodes = replayed.engine.pool

        def asked(*_: object) -> list[Reply]:
            raise AssertionError("a replayed round asked its nodes")

        monkeypatch.setattr(nodes, "execute", asked)
        monkeypatch.setattr(nodes, "audit", asked)
        replayed.engine.pool = ReplayedNodes(nodes, tape)
        try:
            expected = live.engine.run(0)
            on_threads(replayed)
            got = replayed.engine.result(0)
        finally:
            release(live)
            release(replayed)
        assert got.nodes == expected.nodes

    def test_replayed_nodes_refuse_a_round_that_asks_otherwise(self) -> None:
        """A tape answers only the request it recorded: round 1 is not round 0."""
        tape = record_tape("memory://parts-tape-other", 5)
        box = sandbox_on("memory://parts-other", 5)
        box.engine.pool = ReplayedNodes(box.engine.pool, tape)
        box.begin(1)
        try:
            with pytest.raises(RuntimeError, match="asked otherwise"):
                box.engine.run(1)
        finally:
            release(box)
