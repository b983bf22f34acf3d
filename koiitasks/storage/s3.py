"""The S3 store: records as objects in a bucket, created with conditional writes.

URL forms::

    s3://BUCKET[/PREFIX]     AWS S3, or any S3-compatible endpoint (MinIO, a moto server)
    moto://BUCKET[/PREFIX]   moto's in-process mock (``mock_aws``), for trying S3 with no server

A create is one ``PutObject`` with ``If-None-Match: *``: the store writes the object only if the
key holds none, atomically, so writers racing on a key get exactly one winner. The losers get 412
PreconditionFailed, which :meth:`S3Store._create` reports as "already exists"; the base class then
reads the object and compares bytes. Exactly-once payment rests on that header being honoured,
which :func:`koiitasks.storage.s3_init.init_s3_store` checks before a bucket is used.

Every botocore error is caught here and translated by :mod:`koiitasks.storage._s3_errors`.
Library functions take the endpoint as an argument; only the CLI reads ``KOII_S3_ENDPOINT_URL``.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, cast

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from koiitasks.errors import ConfigError, InvalidKey, StorageUnavailable
from koiitasks.storage._s3_errors import (
    MISSING_KEY_CODES,
    PRECONDITION_CODES,
    S3Call,
    error_code,
    translate,
)
from koiitasks.storage.base import Store, check_key, check_prefix, is_key

#: Conditional puts in flight at once in one create_many (the client's pool holds as many).
_BATCH_THREADS = 16

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.literals import BucketLocationConstraintType

DEFAULT_MAX_POOL_CONNECTIONS = 32
"""One HTTP connection per worker thread of the widest pool the round engine runs."""

MOTO_WRITE_LOCK = threading.Lock()
"""Held around every conditional write to moto's in-process mock.

moto checks If-None-Match and then stores the object, with no lock between the two, so threads
racing on one key can both "win" (measured: 2 runs in 40 with 8 threads on one key). The mock
lives in this process only, so one process-wide lock makes its creates atomic again.
"""

MOTO_REGION = "us-east-1"
MOTO_CREDENTIALS = ("testing", "testing")
"""The dummy key pair clients of ``moto://`` stores sign with; moto accepts any."""

# MinIO and moto servers take any region; sign for the one every S3 implementation knows.
_CUSTOM_ENDPOINT_REGION = "us-east-1"
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
# S3 answers 409 when another conditional write to the same key is in flight, and asks for a retry.
_CONFLICT_RETRIES = 5
_CONFLICT_BACKOFF_S = 0.05


@dataclass(frozen=True)
class S3Location:
    """A bucket and a key prefix, parsed from ``s3://`` or ``moto://`` URLs."""

    scheme: Literal["s3", "moto"]
    bucket: str
    prefix: str = ""
    """Empty, or a valid key followed by ``/``."""

    @property
    def url(self) -> str:
        path = f"/{self.prefix.rstrip('/')}" if self.prefix else ""
        return f"{self.scheme}://{self.bucket}{path}"


def parse_s3_url(url: str) -> S3Location:
    """The bucket and prefix a ``s3://BUCKET[/PREFIX]`` or ``moto://BUCKET[/PREFIX]`` URL names."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in {"s3", "moto"}:
        raise ConfigError(f"not an S3 store URL: {url!r}", hint="use s3://BUCKET[/PREFIX]")
    bucket, _, prefix = rest.partition("/")
    if not _BUCKET.match(bucket) or ".." in bucket:
        raise ConfigError(
            f"invalid bucket name {bucket!r} in store URL {url!r}",
            hint="bucket names are 3 to 63 lowercase letters, digits, '.' and '-'",
        )
    prefix = prefix.strip("/")
    try:
        check_prefix(prefix + "/" if prefix else "")
    except InvalidKey as e:
        raise ConfigError(f"invalid key prefix {prefix!r} in store URL {url!r}: {e}") from e
    return S3Location("s3" if scheme == "s3" else "moto", bucket, prefix + "/" if prefix else "")


def make_s3_client(
    endpoint_url: str | None = None,
    *,
    region_name: str | None = None,
    credentials: tuple[str, str] | None = None,
    retry_mode: Literal["standard", "adaptive"] = "standard",
    max_attempts: int = 6,
    connect_timeout: float = 5.0,
    read_timeout: float = 30.0,
    max_pool_connections: int = DEFAULT_MAX_POOL_CONNECTIONS,
) -> S3Client:
    """A thread-safe S3 client with bounded retries, timeouts and a pool sized for threads.

    ``max_attempts`` counts every try of a request, the first included; ``adaptive`` retries
    also slow the client down when S3 throttles it.

    Credentials and region come from boto3's usual chain (environment, profile, instance role)
    unless given. A custom endpoint (MinIO, moto) gets path-style addressing and ``us-east-1``
    when no region is configured.
    """
    key_id, secret = credentials if credentials else (None, None)
    config = Config(
        # total_max_attempts counts the first try; botocore's max_attempts counts only retries.
        retries={"mode": retry_mode, "total_max_attempts": max_attempts},
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        max_pool_connections=max_pool_connections,
        s3={"addressing_style": "path"} if endpoint_url else None,
    )
    try:
        # A session per client: boto3's default session is not safe to share between threads.
        session = boto3.session.Session(
            aws_access_key_id=key_id, aws_secret_access_key=secret, region_name=region_name
        )
        region = session.region_name or (_CUSTOM_ENDPOINT_REGION if endpoint_url else None)
        return session.client("s3", endpoint_url=endpoint_url, region_name=region, config=config)
    except ValueError as e:  # botocore's answer to a malformed endpoint URL
        raise ConfigError(f"invalid S3 endpoint URL {endpoint_url!r}: {e}") from e
    except BotoCoreError as e:  # a named profile that does not exist, a broken config file
        raise ConfigError(
            f"cannot build an S3 client: {type(e).__name__}: {e}",
            hint="check AWS_PROFILE and the AWS config and credentials files",
        ) from e


class S3Store(Store):
    """Records as objects under ``prefix`` in ``bucket``. The store owns and closes ``client``.

    ``write_lock``, when given, is held around each conditional write: for a backend that
    checks If-None-Match without a lock of its own (moto in-process, see
    :data:`MOTO_WRITE_LOCK`).
    """

    def __init__(
        self,
        client: S3Client,
        bucket: str,
        prefix: str = "",
        *,
        url: str | None = None,
        write_lock: AbstractContextManager[object] | None = None,
    ) -> None:
        self.bucket = bucket
        self.prefix = check_prefix(prefix.strip("/") + "/" if prefix.strip("/") else "")
        self.url = url or S3Location("s3", bucket, self.prefix).url
        self._client = client
        self._write_lock = write_lock if write_lock is not None else nullcontext()

    @property
    def client(self) -> S3Client:
        """The boto3 client the store talks through."""
        return self._client

    def _call(self, action: str, key: str | None = None) -> S3Call:
        object_key = None if key is None else self.prefix + key
        endpoint = self._client.meta.endpoint_url
        return S3Call(action, self.url, self.bucket, endpoint, object_key)

    def _create(self, key: str, data: bytes) -> bool:
        conflicts = 0
        while True:
            try:
                with self._write_lock:
                    self._client.put_object(
                        Bucket=self.bucket, Key=self.prefix + key, Body=data, IfNoneMatch="*"
                    )
            except ClientError as e:
                code = error_code(e)
                if code in PRECONDITION_CODES:
                    return False
                if code == "ConditionalRequestConflict" and conflicts < _CONFLICT_RETRIES:
                    conflicts += 1
                    time.sleep(_CONFLICT_BACKOFF_S * 2**conflicts)
                    continue
                raise translate(e, self._call(f"writing record {key!r}", key)) from e
            except BotoCoreError as e:
                raise translate(e, self._call(f"writing record {key!r}", key)) from e
            return True

    def _read(self, key: str) -> bytes | None:
        try:
            response = self._client.get_object(Bucket=self.bucket, Key=self.prefix + key)
            with response["Body"] as body:
                return body.read()
        except ClientError as e:
            if error_code(e) in MISSING_KEY_CODES:
                return None
            raise translate(e, self._call(f"reading record {key!r}", key)) from e
        except BotoCoreError as e:
            raise translate(e, self._call(f"reading record {key!r}", key)) from e

    def _list(self, prefix: str) -> Iterator[str]:
        paginator = self._client.get_paginator("list_objects_v2")
        strip = len(self.prefix)
        with self._translated(f"listing keys under {prefix!r}" if prefix else "listing records"):
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + prefix):
                for item in page.get("Contents", []):
                    key = item["Key"][strip:]
                    # Objects other tools left (folder markers, probes) are not records.
                    if is_key(key):
                        yield key

    def create_many(self, items: Sequence[tuple[str, bytes]]) -> list[bool]:
        """Create a batch with conditional puts side by side (each one create-only on its own;
        S3 has no multi-object write, so overlap is what a batch can gain)."""
        for key, _ in items:
            check_key(key)
        if len(items) < 2:
            return [self.create(key, data) for key, data in items]
        with ThreadPoolExecutor(min(_BATCH_THREADS, len(items))) as pool:
            return list(pool.map(lambda item: self.create(*item), items))

    def children(self, prefix: str) -> list[str]:
        """One level below ``prefix``, with S3's delimiter listing (no walk over every key)."""
        check_prefix(prefix)
        paginator = self._client.get_paginator("list_objects_v2")
        start = len(self.prefix) + len(prefix)
        names: set[str] = set()
        with self._translated(f"listing {prefix!r}"):
            pages = paginator.paginate(
                Bucket=self.bucket, Prefix=self.prefix + prefix, Delimiter="/"
            )
            for page in pages:
                names.update(
                    p["Prefix"][start:].rstrip("/") for p in page.get("CommonPrefixes", [])
                )
                names.update(item["Key"][start:] for item in page.get("Contents", []))
        return sorted(n for n in names if n and is_key(n))

    @contextmanager
    def _translated(self, action: str) -> Iterator[None]:
        try:
            yield
        except (ClientError, BotoCoreError) as e:
            raise translate(e, self._call(action)) from e

    def close(self) -> None:
        self._client.close()


def open_s3_store(url: str, endpoint_url: str | None = None, **client_options: Any) -> S3Store:
    """The S3 store a ``s3://`` or ``moto://`` URL names.

    ``s3://`` opens lazily: a missing bucket or bad credentials show at the first call, with a
    hint to run ``koiitasks storage init``. ``moto://`` starts moto's in-process mock (once per
    process) and creates the bucket with versioning, so it works with no server at all.
    ``client_options`` go to :func:`make_s3_client`.
    """
    location = parse_s3_url(url)
    client = s3_client_for(location, endpoint_url, **client_options)
    if location.scheme == "moto":
        try:
            _moto.ensure_bucket(client, location)
        except BaseException:
            client.close()
            raise
    lock = MOTO_WRITE_LOCK if location.scheme == "moto" else None
    return S3Store(client, location.bucket, location.prefix, url=location.url, write_lock=lock)


def s3_client_for(
    location: S3Location, endpoint_url: str | None = None, **client_options: Any
) -> S3Client:
    """A client for ``location``: of the in-process mock for ``moto://``, else of the endpoint."""
    if location.scheme == "s3":
        return make_s3_client(endpoint_url, **client_options)
    if endpoint_url is not None:
        raise ConfigError(
            f"store {location.url!r} is moto in-process and takes no endpoint URL",
            hint=f"to use the server at {endpoint_url}, name the store s3://{location.bucket}; "
            "for moto in this process, unset KOII_S3_ENDPOINT_URL (it is for s3:// stores)",
        )
    _moto.start()
    return make_s3_client(region_name=MOTO_REGION, credentials=MOTO_CREDENTIALS, **client_options)


class _MotoInProcess:
    """moto's ``mock_aws``, started at most once per process and never stopped.

    While it runs, every AWS endpoint of the process is mocked (custom endpoints, such as a
    moto server on loopback, are not), so a process uses either ``moto://`` or real AWS.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._started = False
        self._buckets: set[str] = set()

    def start(self) -> None:
        with self._lock:
            if self._started:
                return
            try:
                from moto import mock_aws  # noqa: PLC0415 - a test and sandbox dependency
            except ImportError as e:
                raise ConfigError(
                    f"moto:// stores need moto: {e}",
                    hint="pip install 'koiitasks[testing]' (it brings moto)",
                ) from e
            # Our clients sign with MOTO_CREDENTIALS: moto need not rewrite os.environ.
            mock_aws(config={"core": {"mock_credentials": False}}).start()
            self._started = True

    def ensure_bucket(self, client: S3Client, location: S3Location) -> None:
        """Create the bucket (with versioning) the first time this process names it."""
        with self._lock:
            if location.bucket not in self._buckets:
                ensure_bucket(client, location)
                self._buckets.add(location.bucket)


_moto = _MotoInProcess()


def ensure_bucket(client: S3Client, location: S3Location) -> bool:
    """Create the bucket unless it exists and turn versioning on; True if this call created it."""
    created = False
    try:
        client.head_bucket(Bucket=location.bucket)
    except ClientError as e:
        if error_code(e) not in {"404", "NoSuchBucket", "NotFound"}:
            raise translate(e, bucket_call(client, location, "checking the bucket")) from e
        created = _create_bucket(client, location)
    except BotoCoreError as e:
        raise translate(e, bucket_call(client, location, "checking the bucket")) from e
    try:
        client.put_bucket_versioning(
            Bucket=location.bucket, VersioningConfiguration={"Status": "Enabled"}
        )
    except (ClientError, BotoCoreError) as e:
        raise translate(e, bucket_call(client, location, "enabling versioning")) from e
    return created


def _create_bucket(client: S3Client, location: S3Location) -> bool:
    region = client.meta.region_name
    try:
        if region in {"us-east-1", "aws-global"}:  # the one region that takes no constraint
            client.create_bucket(Bucket=location.bucket)
        else:
            client.create_bucket(
                Bucket=location.bucket,
                CreateBucketConfiguration={
                    "LocationConstraint": cast("BucketLocationConstraintType", region)
                },
            )
    except ClientError as e:
        if error_code(e) == "BucketAlreadyOwnedByYou":  # a concurrent init created it
            return False
        if error_code(e) == "BucketAlreadyExists":
            raise StorageUnavailable(
                f"bucket name {location.bucket!r} is taken by another account",
                hint="bucket names are global on AWS; choose another one",
            ) from e
        raise translate(e, bucket_call(client, location, "creating the bucket")) from e
    except BotoCoreError as e:
        raise translate(e, bucket_call(client, location, "creating the bucket")) from e
    return True


def bucket_call(client: S3Client, location: S3Location, action: str) -> S3Call:
    """The description of a call on the bucket itself, for error messages."""
    return S3Call(action, location.url, location.bucket, client.meta.endpoint_url)


__all__ = [
    "DEFAULT_MAX_POOL_CONNECTIONS",
    "S3Location",
    "S3Store",
    "ensure_bucket",
    "make_s3_client",
    "open_s3_store",
    "parse_s3_url",
    "s3_client_for",
]
