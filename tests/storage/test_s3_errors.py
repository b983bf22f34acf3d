"""Every botocore error an S3 store can meet comes out as a koiitasks error that says what to do.

A fake transport answers the client's HTTP requests (botocore's ``before-send`` hook), so the
real client code runs: request signing, retries, response parsing and error classes.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest
from botocore.awsrequest import AWSPreparedRequest, AWSResponse
from botocore.compat import HTTPHeaders
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
)
from botocore.retries.standard import ExponentialBackoff

from koiitasks.errors import (
    KoiiTasksError,
    RecordConflict,
    RecordNotFound,
    StorageError,
    StorageUnavailable,
)
from koiitasks.storage._s3_errors import redact_url
from koiitasks.storage.s3 import S3Store, make_s3_client

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

ENDPOINT = "http://s3.test:9000"
SECRET = "secret-that-must-never-be-printed"  # noqa: S105 - a dummy, to prove it is not shown
MAX_ATTEMPTS = 3

Answer = tuple[int, bytes] | Exception


def _register(client: S3Client, event: str, handler: Callable[..., Any]) -> None:
    # botocore-stubs types handlers as returning None; before-send handlers return a response.
    client.meta.events.register(event, handler)


class FakeS3:
    """Answers an S3 client's requests in place of a server: one answer per operation."""

    def __init__(self, client: S3Client) -> None:
        self.answers: dict[str, list[Answer]] = {}
        self.default: Answer = error(500, "NoAnswerInTheTest")
        self.requests: list[str] = []
        _register(client, "before-send.s3", self._send)

    def answer(self, operation: str, *answers: Answer) -> None:
        """Answer ``operation`` with ``answers`` in turn, the last one from then on."""
        self.answers[operation] = list(answers)

    def _send(self, request: AWSPreparedRequest, event_name: str, **_: object) -> AWSResponse:
        operation = event_name.rsplit(".", 1)[-1]
        self.requests.append(operation)
        queue = self.answers.get(operation, [self.default])
        answer = queue.pop(0) if len(queue) > 1 else queue[0]
        if isinstance(answer, Exception):
            raise answer
        status, body = answer
        headers = HTTPHeaders()
        headers["content-length"] = str(len(body))
        return AWSResponse(request.url, status, headers, _Raw(body))


class _Raw(io.BytesIO):
    """The raw body botocore reads: ``read`` for streams, ``stream`` for the rest."""

    def stream(self, **_: object) -> Iterator[bytes]:
        yield self.read()


def error(status: int, code: str, message: str = "fake error") -> Answer:
    """An S3 error answer."""
    body = f"<Error><Code>{code}</Code><Message>{message}</Message></Error>"
    return status, body.encode()


def ok(body: bytes = b"") -> Answer:
    """A 200 answer."""
    return 200, body


def list_page(*keys: str) -> Answer:
    """A ListObjectsV2 answer with ``keys`` and no next page."""
    items = "".join(f"<Contents><Key>{k}</Key><Size>1</Size></Contents>" for k in keys)
    body = f"<ListBucketResult><IsTruncated>false</IsTruncated>{items}</ListBucketResult>"
    return ok(body.encode())


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Retries happen as configured, without the sleeps between them."""
    monkeypatch.setattr(ExponentialBackoff, "delay_amount", lambda *_: 0.0)


@pytest.fixture
def store() -> Iterator[S3Store]:
    """An S3 store whose client talks to nothing but the fake."""
    client = make_s3_client(
        ENDPOINT, credentials=("AKIAFAKEKEYID", SECRET), max_attempts=MAX_ATTEMPTS
    )
    with S3Store(client, "koii-bkt", "p") as s3_store:
        assert isinstance(s3_store, S3Store)
        yield s3_store


@pytest.fixture
def fake(store: S3Store) -> FakeS3:
    """The fake answering ``store``'s requests."""
    return FakeS3(store.client)


OPERATIONS = {"create": "PutObject", "read": "GetObject", "list": "ListObjectsV2"}


def run(store: S3Store, op: str) -> Any:
    """Do ``op`` on the store: create, read or list."""
    if op == "create":
        return store.create("rounds/1/a.json", b"{}")
    if op == "read":
        return store.read("rounds/1/a.json")
    return store.list("rounds/")


FAILURES = [
    pytest.param(
        "create", error(404, "NoSuchBucket"), "bucket 'koii-bkt' does not exist",
        "koiitasks storage init s3://koii-bkt/p", id="no-such-bucket-on-create",
    ),
    pytest.param(
        "read", error(404, "NoSuchBucket"), "bucket 'koii-bkt' does not exist",
        "KOII_S3_ENDPOINT_URL=http://s3.test:9000", id="no-such-bucket-on-read",
    ),
    pytest.param(
        "list", error(404, "NoSuchBucket"), "bucket 'koii-bkt' does not exist",
        "koiitasks storage init", id="no-such-bucket-on-list",
    ),
    pytest.param(
        "create", error(403, "AccessDenied"), r"access denied \(AccessDenied\) while writing",
        "s3:PutObject", id="access-denied",
    ),
    pytest.param(
        "create", error(403, "InvalidAccessKeyId"), "rejected the credentials",
        "check AWS credentials", id="invalid-access-key-id",
    ),
    pytest.param(
        "read", error(403, "SignatureDoesNotMatch"), "rejected the credentials",
        "check AWS credentials", id="signature-does-not-match",
    ),
    pytest.param(
        "create", error(503, "SlowDown"), r"throttling requests \(SlowDown\) after 3 attempts",
        "fewer worker threads", id="slow-down-after-retries",
    ),
    pytest.param(
        "read", error(500, "InternalError"), r"server error \(InternalError, HTTP 500\) after 3",
        "retry later", id="internal-error-after-retries",
    ),
    pytest.param(
        "create", error(501, "NotImplemented"), "does not implement", "If-None-Match",
        id="not-implemented",
    ),
    pytest.param(
        "create", error(301, "PermanentRedirect"), "in another region", "AWS_DEFAULT_REGION",
        id="wrong-region",
    ),
    pytest.param(
        "create", error(400, "SomethingNew"), r"refused the request \(SomethingNew, HTTP 400\)",
        None, id="unknown-code",
    ),
    pytest.param(
        "create", EndpointConnectionError(endpoint_url=ENDPOINT),
        r"cannot reach the S3 endpoint .* at http://s3\.test:9000", "moto-server.sh",
        id="endpoint-connection-error",
    ),
    pytest.param(
        "read", ConnectionClosedError(endpoint_url=ENDPOINT), "cannot reach the S3 endpoint",
        "KOII_S3_ENDPOINT_URL", id="connection-closed",
    ),
    pytest.param(
        "list", ReadTimeoutError(endpoint_url=ENDPOINT), "timed out talking to the S3 endpoint",
        "retried", id="read-timeout",
    ),
    pytest.param(
        "create", NoCredentialsError(), "no usable AWS credentials", "AWS_ACCESS_KEY_ID",
        id="no-credentials",
    ),
]  # fmt: skip


class TestBotocoreErrorTranslation:
    @pytest.mark.parametrize(("op", "answer", "message", "hint"), FAILURES)
    def test_each_failure_becomes_storage_unavailable_with_a_hint(
        self, store: S3Store, fake: FakeS3, op: str, answer: Answer, message: str, hint: str | None
    ) -> None:
        """The error names the bucket and object, says what to do, and chains the original."""
        fake.answer(OPERATIONS[op], answer)
        # After a redirect botocore asks HeadBucket for the bucket's region; refusing to tell
        # leaves it the original error, as S3 does for a bucket the caller may not see.
        fake.answer("HeadBucket", error(403, "AccessDenied"))
        with pytest.raises(StorageUnavailable, match=message) as caught:
            run(store, op)
        assert isinstance(caught.value.__cause__, BotoCoreError | ClientError)
        assert not isinstance(caught.value, RecordNotFound | RecordConflict)
        assert "koii-bkt" in caught.value.message
        if hint is None:
            assert caught.value.hint is None
        else:
            assert hint in (caught.value.hint or "")
        assert SECRET not in str(caught.value)
        assert "AKIAFAKEKEYID" not in str(caught.value)

    def test_objects_are_named_by_bucket_and_full_key(self, store: S3Store, fake: FakeS3) -> None:
        """A failed write names the object as s3://BUCKET/PREFIX/KEY and the endpoint."""
        fake.answer("PutObject", error(403, "AccessDenied"))
        with pytest.raises(StorageUnavailable, match=r"s3://koii-bkt/p/rounds/1/a\.json at http"):
            store.create("rounds/1/a.json", b"{}")

    def test_throttling_is_retried_before_it_is_reported(
        self, store: S3Store, fake: FakeS3
    ) -> None:
        """SlowDown is retried up to max_attempts; a later success is a success."""
        fake.answer("PutObject", error(503, "SlowDown"), error(503, "SlowDown"), ok())
        assert store.create("a.json", b"1") is True
        assert fake.requests == ["PutObject"] * MAX_ATTEMPTS

    def test_missing_credentials_say_how_to_provide_them(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """With no credentials anywhere, the first call fails with a hint, not a botocore error."""
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
            monkeypatch.delenv(name, raising=False)
        bare = S3Store(make_s3_client(ENDPOINT), "koii-bkt")
        with pytest.raises(StorageUnavailable, match="NoCredentialsError") as caught:
            bare.create("a.json", b"1")
        bare.close()
        assert isinstance(caught.value.__cause__, NoCredentialsError)
        assert "check AWS credentials" in (caught.value.hint or "")


class TestReadAndCreateOutcomes:
    def test_no_such_key_reads_as_none_and_as_record_not_found(
        self, store: S3Store, fake: FakeS3
    ) -> None:
        """NoSuchKey is not a failure: read_or_none says None, read says RecordNotFound."""
        fake.answer("GetObject", error(404, "NoSuchKey"))
        assert store.read_or_none("a.json") is None
        assert store.exists("a.json") is False
        with pytest.raises(RecordNotFound, match=r"'a\.json' in s3://koii-bkt/p"):
            store.read("a.json")

    def test_precondition_failed_with_other_bytes_is_a_record_conflict(
        self, store: S3Store, fake: FakeS3
    ) -> None:
        """412 on create means "exists": other stored bytes make it a RecordConflict."""
        fake.answer("PutObject", error(412, "PreconditionFailed"))
        fake.answer("GetObject", ok(b"other"))
        with pytest.raises(RecordConflict, match=r"'a\.json' in s3://koii-bkt/p"):
            store.create("a.json", b"mine")

    def test_precondition_failed_with_the_same_bytes_is_an_idempotent_success(
        self, store: S3Store, fake: FakeS3
    ) -> None:
        """412 on create with our own bytes stored (a retried write) returns False, no error."""
        fake.answer("PutObject", error(412, "PreconditionFailed"))
        fake.answer("GetObject", ok(b"mine"))
        assert store.create("a.json", b"mine") is False

    def test_a_concurrent_conditional_write_in_flight_is_retried(
        self, store: S3Store, fake: FakeS3
    ) -> None:
        """409 ConditionalRequestConflict asks for a retry; the retry's answer decides."""
        fake.answer("PutObject", error(409, "ConditionalRequestConflict"), ok())
        assert store.create("a.json", b"1") is True
        assert fake.requests == ["PutObject", "PutObject"]

    def test_listing_skips_objects_that_are_not_record_keys(
        self, store: S3Store, fake: FakeS3
    ) -> None:
        """Folder markers and probe objects other tools leave are not records."""
        fake.answer("ListObjectsV2", list_page("p/a.json", "p/dir/", "p/.koiitasks-probe/x"))
        assert store.list() == ["a.json"]


class TestErrorTree:
    def test_every_translated_error_is_a_storage_error(self) -> None:
        """Callers catch StorageError (or KoiiTasksError) and never need botocore's types."""
        assert issubclass(StorageUnavailable, StorageError)
        assert issubclass(StorageError, KoiiTasksError)

    @pytest.mark.parametrize(
        ("url", "shown"),
        [
            ("http://user:pw@minio.local:9000", "http://minio.local:9000"),
            ("https://s3.amazonaws.com", "https://s3.amazonaws.com"),
        ],
    )
    def test_endpoints_are_shown_without_user_info(self, url: str, shown: str) -> None:
        """An endpoint URL that carries a user or password is printed without them."""
        assert redact_url(url) == shown
