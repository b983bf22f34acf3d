"""Specifications of storage faults: rounds on S3 settle whatever the endpoint throws at them.

A moto server process stands for S3; a fault-injecting proxy on loopback sits in front of it
(koiitasks.testing.faults) and fails at least one call in ten with 503 SlowDown, 500 after the
write was made, connection resets before and after, and read timeouts before and after. The
store's client retries (botocore's standard mode), and a create-only key makes a repeated write
harmless, so the records must be byte for byte those of a run that met no fault. An outage no
retry outlasts stops the round with a clear error; the rerun then finishes it, again with the
fault-free bytes. (The file store's crash between write and rename is in test_kill_points.py.)
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from koiitasks.errors import StorageUnavailable
from koiitasks.replay import verify_task
from koiitasks.sandbox import Sandbox
from koiitasks.storage import Store
from koiitasks.storage.s3 import MOTO_CREDENTIALS, S3Store, make_s3_client
from koiitasks.storage.s3_init import init_s3_store
from koiitasks.testing import figures, memory_store, sandbox, write_task
from koiitasks.testing.faults import FAULTS, FaultyProxy
from koiitasks.testing.s3 import TEST_AWS_ENV, moto_server_process, unique_bucket_name
from koiitasks.testing.tamper import snapshot
from tests.conftest import ECHO_TASK

TASK = "test-task"
ROUNDS = (0, 1)
# Short timeouts keep the injected stalls cheap: a stalled call costs READ_TIMEOUT_S of waiting.
READ_TIMEOUT_S = 0.4
STALL_S = 0.6


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    """One moto server process for this module, with dummy AWS settings only."""
    with pytest.MonkeyPatch.context() as env:
        for name in [k for k in os.environ if k.startswith("AWS_")]:
            env.delenv(name)
        for name, value in TEST_AWS_ENV.items():
            env.setenv(name, value)
        with moto_server_process() as endpoint:
            yield endpoint


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_task(tmp_path_factory.mktemp("faults") / "echo", ECHO_TASK)


@pytest.fixture(scope="module")
def reference(task_dir: Path) -> dict[str, bytes]:
    """The records of the same rounds on a store that never fails."""
    return snapshot(rounds_on(task_dir, memory_store()).store)


def s3_store(endpoint: str, moto_endpoint: str, *, attempts: int = 8) -> S3Store:
    """A store in a new bucket, its client talking to ``endpoint`` with short timeouts."""
    bucket = unique_bucket_name("faults")
    setup = make_s3_client(moto_endpoint, credentials=MOTO_CREDENTIALS)
    try:
        init_s3_store(f"s3://{bucket}/records", client=setup)
    finally:
        setup.close()
    client = make_s3_client(
        endpoint,
        credentials=MOTO_CREDENTIALS,
        read_timeout=READ_TIMEOUT_S,
        connect_timeout=2.0,
        max_attempts=attempts,
    )
    return S3Store(client, bucket, "records")


def rounds_on(task_dir: Path, store: Store) -> Sandbox:
    """Rounds 0 and 1 of seven nodes, a lazy and a late one among them, on ``store``."""
    box = sandbox(task_dir, nodes=7, seed=4, adversaries={"lazy": 1, "late": 1}, store=store)
    for number in ROUNDS:
        box.run_round(number)
    return box


class TestFaultyS3:
    """Throttling, server errors, resets and timeouts on S3 change nothing that is stored."""

    def test_rounds_settle_with_the_bytes_of_a_run_without_faults(
        self, task_dir: Path, moto_endpoint: str, reference: dict[str, bytes]
    ) -> None:
        """With one S3 call in five failed (every kind of fault in turn, the ambiguous ones
        after the write was made included), two rounds settle to exactly the fault-free
        records, and the ledger verifies and replays through the same faulty endpoint."""
        with FaultyProxy(moto_endpoint, every=5, stall_s=STALL_S) as proxy:
            store = s3_store(proxy.url, moto_endpoint)
            try:
                rounds_on(task_dir, store)
                assert snapshot(store) == reference
                assert verify_task(store, TASK).rounds_replayed == len(ROUNDS)
            finally:
                store.close()
            calls, faults = proxy.calls, proxy.fault_count
            assert set(proxy.injected) == set(FAULTS)
        assert faults >= 0.10 * calls
        figures.record("s3_calls", calls)
        figures.record("s3_faults", faults)

    def test_an_outage_stops_the_round_and_the_rerun_finishes_it_with_the_same_bytes(
        self, task_dir: Path, moto_endpoint: str, reference: dict[str, bytes]
    ) -> None:
        """When every call fails past the client's retries, the round stops with a
        StorageUnavailable naming the store; run again once S3 is back, it ends with the
        fault-free records: nothing written before the outage is lost or written twice."""
        with FaultyProxy(moto_endpoint, outage_after=40) as proxy:
            store = s3_store(proxy.url, moto_endpoint, attempts=2)
            try:
                with pytest.raises(StorageUnavailable) as stopped:
                    rounds_on(task_dir, store)
                assert store.url in str(stopped.value)
                bucket = store.bucket
            finally:
                store.close()
            calls, faults = proxy.calls, proxy.fault_count
        healthy = S3Store(
            make_s3_client(moto_endpoint, credentials=MOTO_CREDENTIALS), bucket, "records"
        )
        try:
            written = snapshot(healthy)
            assert written
            assert written.items() <= reference.items()
            rounds_on(task_dir, healthy)
            assert snapshot(healthy) == reference
        finally:
            healthy.close()
        figures.record("s3_calls", calls)
        figures.record("s3_faults", faults)
