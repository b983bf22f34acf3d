"""Settings from the environment (``KOII_`` prefix), read once at the edge: CLI and flows.

Library functions take explicit arguments; only :mod:`koiitasks.cli` and ``flows/`` build a
:class:`Settings`.
"""

from __future__ import annotations

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from koiitasks.errors import ConfigError


class Settings(BaseSettings):
    """Where records live, how to reach them, and where round shards run."""

    model_config = SettingsConfigDict(env_prefix="KOII_", extra="ignore")

    store: str = Field(".koiitasks", description="store URL: a path, file://, s3://, moto://")
    s3_endpoint_url: str | None = Field(None, description="S3 endpoint (MinIO, moto server)")
    dask_address: str | None = Field(
        None, description="Dask scheduler for round shards: tcp://HOST:8786, or local[:N]"
    )


def load_settings() -> Settings:
    """The settings, with errors that name the variable."""
    try:
        return Settings()
    except ValidationError as e:
        first = e.errors()[0]
        name = "KOII_" + str(first["loc"][0]).upper() if first["loc"] else "KOII_*"
        raise ConfigError(f"environment variable {name}: {first['msg']}") from e
