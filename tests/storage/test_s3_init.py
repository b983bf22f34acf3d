"""``init_s3_store``: bucket, versioning, and the If-None-Match probe that guards payments."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest
from moto import mock_aws

from koiitasks.errors import StorageError, StorageUnavailable
from koiitasks.storage.s3 import MOTO_CREDENTIALS, make_s3_client, open_s3_store
from koiitasks.storage.s3_init import PROBE_FOLDER, init_s3_store
from koiitasks.testing.s3 import unique_bucket_name

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


@pytest.fixture
def mock_client() -> Iterator[S3Client]:
    """A client of moto's in-process mock, in us-east-1."""
    with mock_aws(config={"core": {"mock_credentials": False}}):
        client = make_s3_client(region_name="us-east-1", credentials=MOTO_CREDENTIALS)
        yield client
        client.close()


def ignore_if_none_match(client: S3Client) -> None:
    """Make ``client`` drop If-None-Match from its writes, as a store that ignores it would."""

    def drop(params: dict[str, Any], **_: object) -> None:
        params.pop("IfNoneMatch", None)

    client.meta.events.register("provide-client-params.s3.PutObject", drop)


def all_versions(client: S3Client, bucket: str) -> list[str]:
    """The key of every object version and delete marker in ``bucket``."""
    listing = client.list_object_versions(Bucket=bucket)
    versions = [v.get("Key", "") for v in listing.get("Versions", [])]
    return versions + [m.get("Key", "") for m in listing.get("DeleteMarkers", [])]


class TestInitS3Store:
    def test_init_creates_the_bucket_with_versioning(self, mock_client: S3Client) -> None:
        """A missing bucket is created, versioned, and proven create-only."""
        report = init_s3_store("s3://koii-new/dev", client=mock_client)
        assert report.bucket_created is True
        assert report.versioning == "Enabled"
        assert report.conditional_writes is True
        assert (report.bucket, report.prefix, report.url) == (
            "koii-new",
            "dev/",
            "s3://koii-new/dev",
        )
        status = mock_client.get_bucket_versioning(Bucket="koii-new").get("Status")
        assert status == "Enabled"

    def test_init_twice_is_harmless(self, mock_client: S3Client) -> None:
        """The second run finds the bucket, changes nothing, and keeps the records."""
        init_s3_store("s3://koii-twice", client=mock_client)
        mock_client.put_object(Bucket="koii-twice", Key="a.json", Body=b"1")
        report = init_s3_store("s3://koii-twice", client=mock_client)
        assert report.bucket_created is False
        assert report.versioning == "Enabled"
        assert all_versions(mock_client, "koii-twice") == ["a.json"]

    def test_init_leaves_no_probe_objects(self, mock_client: S3Client) -> None:
        """Every version of the probe object is deleted, delete markers included."""
        init_s3_store("s3://koii-clean/p", client=mock_client)
        assert all_versions(mock_client, "koii-clean") == []

    def test_init_refuses_a_store_that_ignores_if_none_match(self, mock_client: S3Client) -> None:
        """A store that accepts a second create-only write is refused, and the probe cleaned."""
        ignore_if_none_match(mock_client)
        with pytest.raises(StorageError, match="ignores If-None-Match") as caught:
            init_s3_store("s3://koii-lax/p", client=mock_client)
        assert "exactly-once payment" in (caught.value.hint or "")
        assert f"koii-lax/p/{PROBE_FOLDER}/" in caught.value.message
        assert all_versions(mock_client, "koii-lax") == []

    def test_init_creates_a_bucket_outside_us_east_1(self) -> None:
        """Other regions need a LocationConstraint; init gives it from the client's region."""
        with mock_aws(config={"core": {"mock_credentials": False}}):
            client = make_s3_client(region_name="eu-west-1", credentials=MOTO_CREDENTIALS)
            report = init_s3_store("s3://koii-eu", client=client)
            location = client.get_bucket_location(Bucket="koii-eu")
            client.close()
        assert report.region == "eu-west-1"
        assert location.get("LocationConstraint") == "eu-west-1"

    def test_init_reports_a_bucket_taken_by_another_account(self, mock_client: S3Client) -> None:
        """BucketAlreadyExists says the name is taken, not a generic failure."""

        def taken(**_: object) -> None:
            raise mock_client.exceptions.BucketAlreadyExists(
                {"Error": {"Code": "BucketAlreadyExists", "Message": "taken"}}, "CreateBucket"
            )

        mock_client.meta.events.register("before-call.s3.CreateBucket", taken)
        with pytest.raises(StorageUnavailable, match="taken by another account"):
            init_s3_store("s3://koii-taken", client=mock_client)

    def test_init_makes_a_moto_server_bucket_usable(self, moto_endpoint: str) -> None:
        """Against a moto server process, init then open gives a working create-only store."""
        url = f"s3://{unique_bucket_name()}/records"
        report = init_s3_store(url, moto_endpoint)
        assert report.endpoint == moto_endpoint
        with open_s3_store(url, moto_endpoint) as store:
            assert store.create("a.json", b"1") is True
            assert store.list() == ["a.json"]

    def test_a_store_used_before_init_says_to_run_init(self, moto_endpoint: str) -> None:
        """Writing to a bucket nobody created fails with the init command in the hint."""
        url = f"s3://{unique_bucket_name()}"
        with (
            open_s3_store(url, moto_endpoint) as store,
            pytest.raises(StorageUnavailable, match="does not exist") as caught,
        ):
            store.create("a.json", b"1")
        assert f"koiitasks storage init {url}" in (caught.value.hint or "")
        assert f"KOII_S3_ENDPOINT_URL={moto_endpoint}" in (caught.value.hint or "")
