"""Fixtures of the storage tests: dummy AWS settings, a moto server process, and the four
backends every contract test runs against (memory, file, S3 under mock_aws, S3 on a moto server
process)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from koiitasks.storage import FileStore, MemoryStore, Store
from koiitasks.storage.s3 import MOTO_CREDENTIALS, S3Store, make_s3_client
from koiitasks.storage.s3_init import init_s3_store
from koiitasks.testing.s3 import (
    TEST_AWS_ENV,
    mock_s3_store,
    moto_server_process,
    unique_bucket_name,
)

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

BACKENDS = ["memory", "file", "s3-mock", "s3-server"]
S3_BACKENDS = ["s3-mock", "s3-server"]


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Dummy AWS settings only: no real credentials, profiles or endpoints leak into a test."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    for name, value in TEST_AWS_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """The endpoint URL of one ``python -m moto.server`` process shared by the whole session."""
    with moto_server_process() as endpoint:
        yield endpoint


@pytest.fixture(scope="session")
def moto_client(moto_endpoint: str) -> Iterator[S3Client]:
    """One client of the session's moto server (building a client costs about 0.1 s)."""
    client = make_s3_client(moto_endpoint, credentials=MOTO_CREDENTIALS)
    yield client
    client.close()


@pytest.fixture
def server_store(moto_client: S3Client) -> S3Store:
    """An S3 store in a fresh, initialised bucket of the session's moto server process.

    It shares the session's client, so the test must not close it.
    """
    bucket = unique_bucket_name()
    init_s3_store(f"s3://{bucket}/records", client=moto_client)
    return S3Store(moto_client, bucket, "records")


def _open(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if backend == "memory":
        yield MemoryStore(f"test-{uuid.uuid4().hex}")
    elif backend == "file":
        yield FileStore(tmp_path / "store")
    elif backend == "s3-mock":
        with mock_s3_store(unique_bucket_name(), prefix="records") as store:
            yield store
    else:
        yield request.getfixturevalue("server_store")


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """Each backend in turn, empty."""
    yield from _open(request.param, request, tmp_path)


@pytest.fixture(params=S3_BACKENDS)
def s3_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """Each S3 backend in turn, empty."""
    yield from _open(request.param, request, tmp_path)
