"""Configuration: defaults, overridden by ``SPECKLEFLOW_*`` environment variables, then by CLI options."""

from __future__ import annotations

from pathlib import Path

from pydantic import field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """speckleflow settings (environment prefix ``SPECKLEFLOW_``).

    Attributes
    ----------
    data_dir : Path
        Embedded catalog, detector files, logs (``SPECKLEFLOW_DATA_DIR``).
    tiled_uri : str or None
        An existing Tiled server to use instead of the embedded one.
    api_key : str or None
        Writer API key for ``tiled_uri`` (``SPECKLEFLOW_API_KEY``); never logged.
    bind_host : str
        Interface every socket and the embedded server bind to.
    """

    model_config = SettingsConfigDict(env_prefix="SPECKLEFLOW_", extra="ignore")

    data_dir: Path = Path("speckleflow-data")
    tiled_uri: str | None = None
    api_key: str | None = None
    bind_host: str = "127.0.0.1"

    @field_validator("tiled_uri")
    @classmethod
    def _uri(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("http://", "https://")):
            raise ValueError(f"tiled_uri must start with http:// or https://, got {v!r}")
        return v.rstrip("/") if v else v
