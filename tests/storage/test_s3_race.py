"""Writers racing to create the same records: OS processes on a moto server process, and
threads on moto's in-process mock.

This file is also the rival: run as a script, it creates the same keys as the test does, in its
own shuffled order and thread pool, and prints what each create did.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import koiitasks
from koiitasks.errors import RecordConflict
from koiitasks.storage.s3 import S3Store, open_s3_store
from koiitasks.storage.s3_init import init_s3_store
from koiitasks.testing.s3 import mock_s3_store, unique_bucket_name

N_KEYS = 120
THREADS = 4
KEYS = [f"race/{i:04d}.json" for i in range(N_KEYS)]

Outcomes = dict[str, str]


def create_all(store: S3Store, tag: str, seed: int) -> Outcomes:
    """Create every key with bytes ``{tag}-{key}`` in a shuffled order; what each create did."""

    def create(key: str) -> str:
        try:
            return "created" if store.create(key, f"{tag}-{key}".encode()) else "existed"
        except RecordConflict:
            return "conflict"

    order = random.Random(seed).sample(KEYS, len(KEYS))
    with ThreadPoolExecutor(max_workers=THREADS) as pool:
        return dict(zip(order, pool.map(create, order), strict=True))


def _race(endpoint: str, our_tag: str, rival_tag: str) -> tuple[Outcomes, Outcomes, Outcomes]:
    """Create KEYS here and in a rival process at the same time.

    Returns what each of our creates did, what each of the rival's did, and the stored text.
    """
    url = f"s3://{unique_bucket_name()}"
    init_s3_store(url, endpoint)
    package_root = str(Path(koiitasks.__file__).parents[1])
    env = os.environ | {"PYTHONPATH": os.pathsep.join([package_root, os.getenv("PYTHONPATH", "")])}
    rival = subprocess.Popen(
        [sys.executable, __file__, url, endpoint, rival_tag],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert rival.stdin is not None
    assert rival.stdout is not None
    with open_s3_store(url, endpoint) as store:
        assert isinstance(store, S3Store)
        store.list()  # connect before the start line, as the rival does
        assert rival.stdout.readline().strip() == "ready"
        rival.stdin.write("go\n")
        rival.stdin.flush()
        ours = create_all(store, our_tag, seed=1)
        theirs: Outcomes = json.loads(rival.stdout.readline())
        assert rival.wait(timeout=60) == 0
        stored = {key: store.read(key).decode() for key in store.list("race/")}
    assert sorted(stored) == sorted(ours) == sorted(theirs) == KEYS
    return ours, theirs, stored


class TestRacingProcesses:
    def test_different_bytes_give_one_winner_per_key_and_a_conflict_to_the_loser(
        self, moto_endpoint: str
    ) -> None:
        """Two processes creating the same keys with other bytes: one wins each, one conflicts."""
        ours, theirs, stored = _race(moto_endpoint, "ours", "theirs")
        for key in KEYS:
            assert sorted([ours[key], theirs[key]]) == ["conflict", "created"], key
            winner = "ours" if ours[key] == "created" else "theirs"
            assert stored[key] == f"{winner}-{key}"
        # Both won some keys, so the two processes really ran at the same time.
        assert "created" in ours.values()
        assert "created" in theirs.values()

    def test_identical_bytes_let_both_processes_succeed(self, moto_endpoint: str) -> None:
        """Two processes creating the same keys with the same bytes both succeed: one created
        each key, the other found it there."""
        ours, theirs, stored = _race(moto_endpoint, "same", "same")
        for key in KEYS:
            assert sorted([ours[key], theirs[key]]) == ["created", "existed"], key
            assert stored[key] == f"same-{key}"


@pytest.fixture
def frequent_thread_switches() -> Iterator[None]:
    """Switch threads every 100 µs instead of 5 ms, so an unguarded check-then-write shows."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-4)
    try:
        yield
    finally:
        sys.setswitchinterval(previous)


class TestRacingThreads:
    @pytest.mark.usefixtures("frequent_thread_switches")
    def test_threads_racing_on_the_in_process_mock_get_one_winner_per_key(self) -> None:
        """8 threads creating each key at the same moment under mock_aws: exactly one wins it."""
        keys = KEYS[:20]
        start_line = threading.Barrier(8, timeout=60)

        def writer(store: S3Store, tag: str) -> Outcomes:
            outcomes = {}
            for key in keys:
                start_line.wait()  # all 8 threads on the same key at once
                try:
                    created = store.create(key, f"{tag}-{key}".encode())
                    outcomes[key] = "created" if created else "existed"
                except RecordConflict:
                    outcomes[key] = "conflict"
                except BaseException:
                    start_line.abort()  # the other writers fail now instead of waiting for us
                    raise
            return outcomes

        with mock_s3_store(unique_bucket_name()) as store, ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda t: writer(store, f"t{t}"), range(8)))
            stored = {key: store.read(key).decode() for key in keys}
        for key in keys:
            outcomes = sorted(result[key] for result in results)
            assert outcomes == ["conflict"] * 7 + ["created"], key
            winner = next(t for t, result in enumerate(results) if result[key] == "created")
            assert stored[key] == f"t{winner}-{key}"


if __name__ == "__main__":
    _url, _endpoint, _tag = sys.argv[1:4]
    with open_s3_store(_url, _endpoint) as _store:
        assert isinstance(_store, S3Store)
        _store.list()
        print("ready", flush=True)
        sys.stdin.readline()
        print(json.dumps(create_all(_store, _tag, seed=2)), flush=True)
