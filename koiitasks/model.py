"""The one model base and the constrained types every record shares.

Records the system writes and signs are frozen and forbid unknown fields, so what was signed is
exactly what is read back. Amounts are integers in base units (Koii: 1 KOII = 10^9 ROE).
"""

from __future__ import annotations

import enum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

RoundNumber = Annotated[int, Field(ge=0)]
"""A logical round: ``floor((slot - starting_slot) / round_time)``."""

Slot = Annotated[int, Field(ge=0)]
"""A K2-style slot number (about 400 ms each)."""

Amount = Annotated[int, Field(ge=0)]
"""A non-negative amount in base units."""

NodeId = Annotated[str, StringConstraints(pattern=r"^[1-9A-HJ-NP-Za-km-z]{32,44}$")]
"""A node's ed25519 public key in base58, as Koii wallets spell it."""

TaskId = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")]
"""A task's id: lowercase letters, digits and dashes (safe in keys, URLs and Prefect names)."""

Digest = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
"""A SHA-256 digest in lowercase hex."""

SignatureHex = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{128}$")]
"""An ed25519 signature in lowercase hex: one spelling per signature, so no byte can change."""


class KoiiModel(BaseModel):
    """Base of every koiitasks model: strict about unknown fields, validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class FrozenModel(KoiiModel):
    """Base of every record koiitasks signs or stores: immutable once built."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Phase(enum.StrEnum):
    """The phases of one logical round, in the order gradual consensus runs them."""

    EXECUTE = "execute"
    AUDIT = "audit"
    DISTRIBUTION = "distribution"
    DISTRIBUTION_AUDIT = "distribution-audit"
    SETTLED = "settled"


class Outcome(enum.StrEnum):
    """What happened to one node in one round."""

    APPROVED = "approved"
    """Its submission passed audit; it is paid."""
    REJECTED = "rejected"
    """Its submission failed audit (slashed when a majority voted it invalid)."""
    REFUSED = "refused"
    """Its answer failed the ingest checks: signature, replay, window, registration."""
    MISSING = "missing"
    """It did not answer in time."""
