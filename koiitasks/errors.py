"""The one exception tree of koiitasks.

Every error the library raises on purpose derives from :class:`KoiiTasksError`, and every
third-party error (botocore, httpx, OSError, yaml, pydantic) is translated into one of these at
the module that called the third party, with ``raise ... from e``::

    KoiiTasksError
    ├── ConfigError                 config-task.yml or settings are invalid
    ├── TaskLoadError               a task directory or its task.py cannot be used
    ├── KeyFileError                a key file is missing, malformed or too readable
    ├── NetworkMismatchError        a run asks for another network than the store holds
    ├── RoundError                  a round cannot be run as asked (order, state)
    │   └── RoundMissed             its window closed before it could start (wall clock)
    ├── RequestRefused              a node refused an orchestrator's call (HTTP status inside)
    ├── ClusterError                a Dask cluster cannot be reached or lost a round's shards
    ├── StorageError                anything the store could not do
    │   ├── RecordNotFound          no record under that key
    │   ├── RecordConflict          a create-only key already holds other bytes
    │   ├── InvalidKey              a key that would escape the layout
    │   └── StorageUnavailable      the backend failed (I/O, network, permissions)
    ├── RecordError                 a stored or received record is not valid
    │   ├── MalformedRecord         not canonical JSON of the expected schema
    │   └── SignatureError          the signature does not verify for the signer
    ├── LedgerError                 the ledger breaks an invariant (chain, conservation)
    └── OrchestrationError          the Prefect API refused a request or could not be reached

The CLI maps this tree to exit codes: usage and input errors exit 2, a failed verification 1.
"""

from __future__ import annotations


class KoiiTasksError(Exception):
    """Base of every error koiitasks raises on purpose."""

    #: How a command-line run that ends with this error exits.
    exit_code: int = 2

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}\n  hint: {self.hint}"
        return self.message


class ConfigError(KoiiTasksError):
    """A config-task.yml or a setting is missing, malformed or inconsistent."""


class TaskLoadError(KoiiTasksError):
    """A task directory, its task.py or its hooks cannot be used."""


class KeyFileError(KoiiTasksError):
    """A key file is missing, malformed, or readable by others."""


class NetworkMismatchError(KoiiTasksError):
    """A run asks for a different network than the one the store remembers."""


class RoundError(KoiiTasksError):
    """A round cannot be run as asked."""


class RequestRefused(KoiiTasksError):  # noqa: N818 - reads as what happened
    """A node refused a call: not the orchestrator's, not open now, replayed, malformed.

    ``status`` is the HTTP status ``koiitasks node serve`` answers with.
    """

    def __init__(self, message: str, *, status: int, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.status = status


class RoundMissed(RoundError):  # noqa: N818 - reads as what happened
    """A round's window closed before the round could start: it is missed, not broken."""


class ClusterError(KoiiTasksError):
    """A Dask scheduler cannot be reached, or shards of a round failed on the cluster."""


class StorageError(KoiiTasksError):
    """The store could not do what was asked."""


class RecordNotFound(StorageError):  # noqa: N818 - reads as a fact, like httpx's names
    """No record is stored under the key."""


class RecordConflict(StorageError):  # noqa: N818
    """A create-only key already holds different bytes."""


class InvalidKey(StorageError):  # noqa: N818
    """A key that is not a plain relative path inside the layout."""


class StorageUnavailable(StorageError):  # noqa: N818
    """The backend failed: I/O error, permissions, network, throttling past retries."""


class RecordError(KoiiTasksError):
    """A record (stored or received) is not valid."""

    exit_code = 1


class MalformedRecord(RecordError):  # noqa: N818
    """A record is not canonical JSON of the expected schema."""


class SignatureError(RecordError):
    """A record's signature does not verify for its claimed signer."""


class LedgerError(KoiiTasksError):
    """The ledger breaks an invariant: hash chain, sequence, conservation."""

    exit_code = 1


class OrchestrationError(KoiiTasksError):
    """The Prefect API refused a request or could not be reached (deployments, runs, events)."""
