"""Puts per second of each storage backend, and koiitasks' S3 write path against raw boto3.

::

    python bench/storage_bench.py [--n 2000] [--quick] [--json]

Every backend (memory, file with fsync, S3 under moto's ``mock_aws``, S3 on a moto server
process) creates N distinct 1 KB records from one thread through ``Store.create``.

The write-path ratio is ``S3Store.create`` over raw boto3 ``put_object(IfNoneMatch="*")`` of the
same records to the same moto server process and bucket, in this one run: the two interleave in
small batches, so a busy machine slows both alike. 1.0 means the store adds nothing to the raw
call; the goal is at least 0.7. The benchmark reports
numbers and asserts nothing about them.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

import boto3

from koiitasks.storage import FileStore, MemoryStore, Store
from koiitasks.storage.s3 import MOTO_CREDENTIALS, MOTO_REGION, S3Store, make_s3_client
from koiitasks.storage.s3_init import init_s3_store
from koiitasks.testing.s3 import mock_s3_store, moto_server_process, unique_bucket_name

RECORD = bytes(range(256)) * 4  # 1 KB, not compressible into nothing
BATCH = 25


def rate(n: int, work: Callable[[int], object]) -> float:
    """Calls of ``work(i)`` per second over ``i in range(n)``."""
    start = time.perf_counter()
    for i in range(n):
        work(i)
    return n / (time.perf_counter() - start)


def store_rate(store: Store, n: int, tag: str = "bench") -> float:
    """Creates per second of ``n`` distinct 1 KB records in ``store``."""
    return rate(n, lambda i: store.create(f"{tag}/{i:07d}.json", RECORD))


def backend_rates(n: int, endpoint: str) -> dict[str, float]:
    """Creates per second of each backend."""
    rates = {"memory": store_rate(MemoryStore("bench"), n)}
    with tempfile.TemporaryDirectory() as tmp:
        rates["file"] = store_rate(FileStore(Path(tmp)), n)
    with mock_s3_store(unique_bucket_name("bench")) as store:
        rates["s3-mock"] = store_rate(store, n)
    rates["s3-server"] = store_rate(_server_store(endpoint), n)
    return rates


def write_path_ratio(n: int, endpoint: str) -> dict[str, float]:
    """Creates per second of S3Store and of raw boto3 on one endpoint, and their ratio.

    Both write n records in interleaved batches of BATCH (who goes first alternates), so load
    from anything else on the machine falls on both sides alike.
    """
    store = _server_store(endpoint)
    raw = boto3.session.Session(
        aws_access_key_id=MOTO_CREDENTIALS[0],
        aws_secret_access_key=MOTO_CREDENTIALS[1],
        region_name=MOTO_REGION,
    ).client("s3", endpoint_url=endpoint)

    def raw_put(i: int) -> object:
        key = f"{store.prefix}raw/{i:07d}.json"
        return raw.put_object(Bucket=store.bucket, Key=key, Body=RECORD, IfNoneMatch="*")

    def koii_put(i: int) -> object:
        return store.create(f"koii/{i:07d}.json", RECORD)

    raw_put(n)  # one write each past the measured range opens the connections untimed
    koii_put(n)
    spent = {"raw": 0.0, "koii": 0.0}
    for start in range(0, n, BATCH):
        batch = range(start, min(start + BATCH, n))
        sides = [("raw", raw_put), ("koii", koii_put)]
        for side, put in sides if (start // BATCH) % 2 == 0 else sides[::-1]:
            began = time.perf_counter()
            for i in batch:
                put(i)
            spent[side] += time.perf_counter() - began
    store.close()
    raw.close()
    return {
        "koiitasks_puts_per_s": n / spent["koii"],
        "raw_boto3_puts_per_s": n / spent["raw"],
        "ratio": spent["raw"] / spent["koii"],
    }


def _server_store(endpoint: str) -> S3Store:
    bucket = unique_bucket_name("bench")
    client = make_s3_client(endpoint, credentials=MOTO_CREDENTIALS)
    init_s3_store(f"s3://{bucket}/records", client=client)
    return S3Store(client, bucket, "records")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="records per backend (2000)")
    parser.add_argument("--quick", action="store_true", help="200 records per backend")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    n = 200 if args.quick else args.n

    with moto_server_process() as endpoint:
        rates = backend_rates(n, endpoint)
        ratio = write_path_ratio(n, endpoint)
    result = {
        "n": n,
        "record_bytes": len(RECORD),
        "threads": 1,
        "puts_per_s": rates,
        "s3_write_path": ratio | {"batch": BATCH, "goal": 0.7},
        "python": platform.python_version(),
        "boto3": version("boto3"),
        "moto": version("moto"),
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{n} creates of 1 KB records, one thread")
        print(f"{'backend':<12}{'puts/s':>12}")
        for name, value in rates.items():
            print(f"{name:<12}{value:>12,.0f}")
        print(
            f"S3 write path on the moto server: koiitasks {ratio['koiitasks_puts_per_s']:,.0f}/s,"
            f" raw boto3 {ratio['raw_boto3_puts_per_s']:,.0f}/s,"
            f" ratio {ratio['ratio']:.2f} (goal >= 0.7; interleaved batches of {BATCH})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
