"""Translation of every botocore error into the koiitasks error tree, for the S3 backend.

The S3 modules catch ``ClientError`` and ``BotoCoreError`` around each call and raise what
:func:`translate` returns ``from`` the original, so no botocore type escapes them. Each message
names the bucket, the object and the endpoint; each hint says what to do next. Messages are built
from error codes and our own words, never from credentials or request signatures.

==========================================================  =======================
botocore error                                              koiitasks error
==========================================================  =======================
``NoSuchKey`` (outside a read, which returns None)          RecordNotFound
``PreconditionFailed`` (outside a create, which compares)   RecordConflict
``NoSuchBucket``, 404 on a bucket                           StorageUnavailable
``AccessDenied`` and other 403s                             StorageUnavailable
``InvalidAccessKeyId``, ``SignatureDoesNotMatch``, ...      StorageUnavailable
``SlowDown`` and other throttling, after retries            StorageUnavailable
5xx after retries, ``NotImplemented``                       StorageUnavailable
connection, timeout and credential errors                   StorageUnavailable
anything else                                               StorageUnavailable
==========================================================  =======================
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    CredentialRetrievalError,
    EndpointConnectionError,
    NoCredentialsError,
    PartialCredentialsError,
    ProfileNotFound,
    ReadTimeoutError,
    ResponseStreamingError,
)

from koiitasks.errors import RecordConflict, RecordNotFound, StorageError, StorageUnavailable

MISSING_KEY_CODES = frozenset({"NoSuchKey", "NotFound", "404"})
"""Codes that mean "no object under that key" (a GET says NoSuchKey, a HEAD only 404)."""

PRECONDITION_CODES = frozenset({"PreconditionFailed", "412"})
"""Codes a conditional write answers when the key already holds an object."""

_SERVER_ERROR_STATUS = 500
_CREDENTIALS_HINT = (
    "check AWS credentials: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE; "
    "for MinIO or a moto server use the keys that server expects"
)


@dataclass(frozen=True)
class _Rule:
    """How to word one family of S3 error codes.

    ``problem`` and ``hint`` are format strings over: code, status, bucket, url, after (the
    attempts, when botocore retried) and endpoint_note (how to name a non-AWS endpoint).
    """

    codes: frozenset[str]
    problem: str
    hint: str | None = None


_RULES = (
    _Rule(
        frozenset({"NoSuchBucket"}),
        "bucket {bucket!r} does not exist",
        "create it with `koiitasks storage init {url}`{endpoint_note}",
    ),
    _Rule(
        frozenset(
            {
                "InvalidAccessKeyId",
                "SignatureDoesNotMatch",
                "ExpiredToken",
                "InvalidToken",
                "TokenRefreshRequired",
                "InvalidClientTokenId",
            }
        ),
        "the S3 endpoint rejected the credentials ({code})",
        _CREDENTIALS_HINT,
    ),
    _Rule(
        frozenset({"AccessDenied", "AllAccessDisabled", "AccountProblem", "403", "Forbidden"}),
        "access denied ({code})",
        "check AWS credentials, and that they may s3:GetObject, s3:PutObject and "
        "s3:ListBucket on bucket {bucket!r}",
    ),
    _Rule(
        frozenset(
            {
                "PermanentRedirect",
                "AuthorizationHeaderMalformed",
                "IllegalLocationConstraintException",
                "301",
            }
        ),
        "bucket {bucket!r} is in another region ({code})",
        "set AWS_DEFAULT_REGION (or the profile's region) to the bucket's region",
    ),
    _Rule(
        frozenset({"SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded", "503"}),
        "S3 is throttling requests ({code}){after}",
        "run with fewer worker threads, or retry later",
    ),
    _Rule(
        frozenset({"NotImplemented", "501"}),
        "the S3 endpoint does not implement this request ({code})",
        "koiitasks needs conditional writes (If-None-Match) and versioning: use AWS S3, "
        "a recent MinIO, or moto >= 5.2.1",
    ),
)
_SERVER_ERROR = _Rule(
    frozenset(),
    "S3 server error ({code}, HTTP {status}){after}",
    "the endpoint failed; retry later",
)
_REFUSED = _Rule(frozenset(), "S3 refused the request ({code}, HTTP {status})")


@dataclass(frozen=True)
class S3Call:
    """What was being done, and where, when a botocore call failed."""

    action: str
    """What was being done, as a phrase: ``"writing record 'a/b.json'"``."""
    store_url: str
    bucket: str
    endpoint: str
    object_key: str | None = None
    """The object's full key; None for a call on the bucket itself."""

    @property
    def where(self) -> str:
        target = f"bucket {self.bucket!r}"
        if self.object_key is not None:
            target = f"s3://{self.bucket}/{self.object_key}"
        return f"{target} at {redact_url(self.endpoint)}"


def redact_url(url: str) -> str:
    """``url`` without any user name or password it may carry."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit(parts._replace(netloc=netloc))


def _is_aws(endpoint: str) -> bool:
    host = urlsplit(endpoint).hostname or ""
    return host.endswith((".amazonaws.com", ".amazonaws.com.cn"))


def error_code(e: ClientError) -> str:
    """The S3 error code of ``e`` (the HTTP status as text when the answer had no body)."""
    code = e.response.get("Error", {}).get("Code")
    return str(code or status_of(e))


def status_of(e: ClientError) -> int:
    """The HTTP status of the answer behind ``e``, 0 when unknown."""
    return int(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


def translate(e: ClientError | BotoCoreError, call: S3Call) -> StorageError:
    """The koiitasks error for a botocore error raised during ``call``."""
    if isinstance(e, ClientError):
        return _client_error(e, call)
    return _botocore_error(e, call)


def _client_error(e: ClientError, call: S3Call) -> StorageError:
    code, status = error_code(e), status_of(e)
    what = f"{call.action}: {call.where}"
    endpoint = redact_url(call.endpoint)
    if call.object_key is not None and code in MISSING_KEY_CODES:
        return RecordNotFound(f"no such object while {what}")
    if call.object_key is not None and code in PRECONDITION_CODES:
        return RecordConflict(f"the object already exists while {what}")
    if call.object_key is None and code in {"404", "NotFound"}:  # a HEAD on a missing bucket
        code = "NoSuchBucket"
    rule = next((r for r in _RULES if code in r.codes), None)
    if rule is None:
        rule = _SERVER_ERROR if status >= _SERVER_ERROR_STATUS else _REFUSED
    retries = int(e.response.get("ResponseMetadata", {}).get("RetryAttempts", 0))
    fields = {
        "code": code,
        "status": status,
        "bucket": call.bucket,
        "url": call.store_url,
        "after": f" after {retries + 1} attempts" if retries else "",
        "endpoint_note": ""
        if _is_aws(call.endpoint)
        else f" (with KOII_S3_ENDPOINT_URL={endpoint})",
    }
    hint = rule.hint.format(**fields) if rule.hint else None
    return StorageUnavailable(f"{rule.problem.format(**fields)} while {what}", hint=hint)


def _botocore_error(e: BotoCoreError, call: S3Call) -> StorageError:
    what = f"{call.action}: {call.where}"
    if isinstance(
        e, NoCredentialsError | PartialCredentialsError | CredentialRetrievalError | ProfileNotFound
    ):
        return StorageUnavailable(
            f"no usable AWS credentials ({type(e).__name__}) while {what}",
            hint=_CREDENTIALS_HINT,
        )
    if isinstance(e, ReadTimeoutError | ConnectTimeoutError):
        return StorageUnavailable(
            f"timed out talking to the S3 endpoint ({type(e).__name__}) while {what}",
            hint="check the network and the endpoint; the request was retried",
        )
    if isinstance(e, EndpointConnectionError | ConnectionClosedError | ResponseStreamingError):
        return StorageUnavailable(
            f"cannot reach the S3 endpoint ({type(e).__name__}) while {what}",
            hint="check the endpoint URL (KOII_S3_ENDPOINT_URL) and that the server is up; "
            "for a local moto server run `infra/moto-server.sh start`",
        )
    return StorageUnavailable(f"S3 client error ({type(e).__name__}) while {what}")
