"""``koiitasks.testing.s3``: the moto helpers give working S3 and clean up after themselves."""

from __future__ import annotations

import socket
from urllib.parse import urlsplit

from koiitasks.storage.s3 import open_s3_store, parse_s3_url
from koiitasks.storage.s3_init import init_s3_store
from koiitasks.testing.s3 import mock_s3_store, moto_server, moto_server_process, unique_bucket_name


def refuses_connections(endpoint: str) -> bool:
    """Whether nothing listens at ``endpoint`` any more."""
    parts = urlsplit(endpoint)
    try:
        socket.create_connection((parts.hostname, parts.port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


class TestMotoHelpers:
    def test_mock_s3_store_is_an_initialised_versioned_bucket(self) -> None:
        """mock_s3_store yields a ready store whose bucket has versioning on."""
        with mock_s3_store("koii-helper", prefix="p") as store:
            assert store.url == "s3://koii-helper/p"
            assert store.create("a.json", b"1") is True
            status = store.client.get_bucket_versioning(Bucket="koii-helper").get("Status")
            assert status == "Enabled"

    def test_moto_server_serves_s3_over_http_from_a_thread(self) -> None:
        """moto_server gives a loopback endpoint that works for init and records, then stops."""
        with moto_server() as endpoint:
            url = f"s3://{unique_bucket_name()}"
            init_s3_store(url, endpoint)
            with open_s3_store(url, endpoint) as store:
                assert store.create("a.json", b"1") is True
        assert refuses_connections(endpoint)

    def test_moto_server_process_is_gone_after_the_block(self) -> None:
        """moto_server_process stops its OS process on exit, so the port stops answering."""
        with moto_server_process() as endpoint:
            assert endpoint.startswith("http://127.0.0.1:")
            assert not refuses_connections(endpoint)
        assert refuses_connections(endpoint)

    def test_unique_bucket_names_are_valid_and_distinct(self) -> None:
        """Names are valid S3 bucket names and never repeat."""
        names = {unique_bucket_name() for _ in range(100)}
        assert len(names) == 100
        assert all(parse_s3_url(f"s3://{name}").bucket == name for name in names)
