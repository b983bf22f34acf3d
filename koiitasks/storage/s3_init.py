"""``koiitasks storage init`` for S3: make a bucket ready for records and prove it create-only.

:func:`init_s3_store` creates the bucket when it is missing, enables versioning (so even a
misbehaving writer cannot destroy a record's first version), then writes a probe object twice
with ``If-None-Match: *``. A store that accepts the second write would let two rounds both
"create" the same payment, so that store is refused with :class:`StorageError`. Probe objects
live under ``.koiitasks-probe/``, which no record key can name, and every version of them is
deleted afterwards. Running the init again is harmless.
"""

from __future__ import annotations

import contextlib
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

from botocore.exceptions import BotoCoreError, ClientError

from koiitasks.errors import StorageError
from koiitasks.storage._s3_errors import PRECONDITION_CODES, S3Call, error_code, translate
from koiitasks.storage.s3 import (
    S3Location,
    bucket_call,
    ensure_bucket,
    parse_s3_url,
    s3_client_for,
)

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

PROBE_FOLDER = ".koiitasks-probe"
"""Where probe objects go, under the store's prefix; a dot folder is never a record key."""


@dataclass(frozen=True)
class StoreInitReport:
    """What :func:`init_s3_store` found and did."""

    url: str
    bucket: str
    prefix: str
    endpoint: str
    region: str
    bucket_created: bool
    """True when this run created the bucket, False when it was already there."""
    versioning: str
    """The bucket's versioning status as S3 reports it after the init: ``"Enabled"``."""
    conditional_writes: bool
    """Whether a second ``If-None-Match: *`` write was refused (always True when returned)."""


def init_s3_store(
    url: str, endpoint_url: str | None = None, *, client: S3Client | None = None
) -> StoreInitReport:
    """Make the bucket ``url`` names ready for records, and prove it is create-only.

    ``endpoint_url`` names a MinIO or moto server; None means AWS. ``client`` replaces the
    client built from the URL and endpoint (the caller keeps ownership of it).
    """
    location = parse_s3_url(url)
    own_client = client is None
    s3 = client if client is not None else s3_client_for(location, endpoint_url)
    try:
        created = ensure_bucket(s3, location)
        try:
            versioning = s3.get_bucket_versioning(Bucket=location.bucket).get("Status", "Off")
        except (ClientError, BotoCoreError) as e:
            call = bucket_call(s3, location, "reading the versioning status")
            raise translate(e, call) from e
        _probe_conditional_writes(s3, location)
        return StoreInitReport(
            url=location.url,
            bucket=location.bucket,
            prefix=location.prefix,
            endpoint=s3.meta.endpoint_url,
            region=s3.meta.region_name,
            bucket_created=created,
            versioning=versioning,
            conditional_writes=True,
        )
    finally:
        if own_client:
            s3.close()


def _probe_conditional_writes(client: S3Client, location: S3Location) -> None:
    key = f"{location.prefix}{PROBE_FOLDER}/{uuid.uuid4().hex}"
    endpoint = client.meta.endpoint_url
    call = S3Call("probing conditional writes", location.url, location.bucket, endpoint, key)
    try:
        refused = _second_write_refused(client, location.bucket, key, call)
    except BaseException:
        with contextlib.suppress(StorageError):  # the probe's own error is the one to show
            _delete_all_versions(client, location.bucket, key, call)
        raise
    _delete_all_versions(client, location.bucket, key, call)
    if not refused:
        raise StorageError(
            f"{location.url} ignores If-None-Match: a second create-only write to "
            f"s3://{location.bucket}/{key} at {endpoint} was accepted",
            hint="exactly-once payment depends on create-only writes; use AWS S3, a MinIO "
            "from 2024 or later, or moto >= 5.2.1",
        )


def _second_write_refused(client: S3Client, bucket: str, key: str, call: S3Call) -> bool:
    for attempt, body in enumerate((b"koiitasks probe: first", b"koiitasks probe: second")):
        try:
            client.put_object(Bucket=bucket, Key=key, Body=body, IfNoneMatch="*")
        except ClientError as e:
            if attempt == 1 and error_code(e) in PRECONDITION_CODES:
                return True
            raise translate(e, call) from e
        except BotoCoreError as e:
            raise translate(e, call) from e
    return False


def _delete_all_versions(client: S3Client, bucket: str, key: str, call: S3Call) -> None:
    try:
        listing = client.list_object_versions(Bucket=bucket, Prefix=key)
        ids = [v["VersionId"] for v in listing.get("Versions", []) if v.get("Key") == key]
        ids += [m["VersionId"] for m in listing.get("DeleteMarkers", []) if m.get("Key") == key]
        for version_id in ids:
            client.delete_object(Bucket=bucket, Key=key, VersionId=version_id)
        if not ids:  # a store that lists no versions: delete the object itself
            client.delete_object(Bucket=bucket, Key=key)
    except (ClientError, BotoCoreError) as e:
        raise translate(e, call) from e


__all__ = ["PROBE_FOLDER", "StoreInitReport", "init_s3_store"]
