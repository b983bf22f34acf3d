"""S3 store URLs: what ``s3://`` and ``moto://`` name, and ``moto://`` working with no server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import koiitasks
from koiitasks.errors import ConfigError
from koiitasks.storage import open_store
from koiitasks.storage.s3 import S3Location, S3Store, parse_s3_url


class TestParseS3Url:
    @pytest.mark.parametrize(
        ("url", "location"),
        [
            pytest.param("s3://koii-prod", S3Location("s3", "koii-prod"), id="bucket"),
            pytest.param("s3://koii-prod/", S3Location("s3", "koii-prod"), id="trailing-slash"),
            pytest.param(
                "s3://koii-prod/dev/tasks", S3Location("s3", "koii-prod", "dev/tasks/"), id="prefix"
            ),
            pytest.param(
                "moto://koii.test/x/", S3Location("moto", "koii.test", "x/"), id="moto-prefix"
            ),
        ],
    )
    def test_urls_name_a_bucket_and_a_prefix(self, url: str, location: S3Location) -> None:
        """A URL gives a bucket and an optional key prefix ending in a slash."""
        assert parse_s3_url(url) == location

    @pytest.mark.parametrize(
        "url",
        [
            pytest.param("s3://", id="no-bucket"),
            pytest.param("s3://Koii", id="uppercase"),
            pytest.param("s3://ab", id="too-short"),
            pytest.param("s3://a..b", id="double-dot"),
            pytest.param("s3://koii/../up", id="escaping-prefix"),
            pytest.param("s3://koii/.hidden", id="hidden-prefix"),
            pytest.param("gs://koii", id="other-scheme"),
        ],
    )
    def test_bad_urls_are_config_errors(self, url: str) -> None:
        """A URL that cannot name a bucket and prefix is refused before any network call."""
        with pytest.raises(ConfigError, match=r"invalid|not an S3 store URL"):
            parse_s3_url(url)

    def test_the_location_url_round_trips(self) -> None:
        """The URL a store reports is the URL it was opened with, normalised."""
        assert parse_s3_url("s3://koii-prod/dev/").url == "s3://koii-prod/dev"

    def test_open_store_opens_s3_urls_lazily(self, moto_endpoint: str) -> None:
        """open_store hands s3:// to the S3 backend with the endpoint, without any call yet."""
        store = open_store("s3://koii-not-created/p", s3_endpoint_url=moto_endpoint)
        assert isinstance(store, S3Store)
        assert (store.url, store.bucket, store.prefix) == (
            "s3://koii-not-created/p",
            "koii-not-created",
            "p/",
        )
        assert store.client.meta.endpoint_url == moto_endpoint
        store.close()

    def test_moto_urls_take_no_endpoint(self) -> None:
        """moto:// is in-process; an endpoint URL with it is a mistake worth naming."""
        with pytest.raises(ConfigError, match="takes no endpoint URL"):
            open_store("moto://koii-x", s3_endpoint_url="http://127.0.0.1:5000")


# Opens moto:// stores from 8 threads at once in a fresh process, as `koiitasks run --store
# moto://...` would, and reports what it saw. A process of its own, because moto's in-process
# mock, once started, stays on for the life of the process.
MOTO_PROCESS = """
import json, os
from concurrent.futures import ThreadPoolExecutor
from koiitasks.storage import open_store

env_before = {k: v for k, v in os.environ.items() if k.startswith("AWS_")}

def work(i):
    with open_store("moto://koii-sandbox/run") as store:
        created = store.create(f"nodes/{i}.json", b"%d" % i)
        same = store.create("shared.json", b"one content")
        return created, same

with ThreadPoolExecutor(8) as pool:
    results = list(pool.map(work, range(8)))
with open_store("moto://koii-sandbox/run") as store:
    keys = store.list()
print(json.dumps({
    "created": [c for c, _ in results],
    "shared_created": sum(s for _, s in results),
    "keys": keys,
    "env_unchanged": env_before == {k: v for k, v in os.environ.items() if k.startswith("AWS_")},
}))
"""


class TestMotoUrl:
    def test_moto_url_works_in_a_fresh_process_with_no_server(self, tmp_path: Path) -> None:
        """moto:// needs no server or keys, opens safely from threads, leaves AWS_* env alone."""
        package_root = str(Path(koiitasks.__file__).parents[1])
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env |= {"PYTHONPATH": package_root, "AWS_CONFIG_FILE": str(tmp_path / "none")}
        done = subprocess.run(
            [sys.executable, "-c", MOTO_PROCESS],
            capture_output=True, text=True, env=env, timeout=120, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        seen = json.loads(done.stdout)
        assert seen["created"] == [True] * 8
        assert seen["shared_created"] == 1
        assert seen["keys"] == [f"nodes/{i}.json" for i in range(8)] + ["shared.json"]
        assert seen["env_unchanged"] is True
