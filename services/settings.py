"""Configuration: defaults, overridden by ``SPECKLEFLOW_*`` environment variables, then by CLI options."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "SPECKLEFLOW_"


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


class TiledServerSettings(BaseSettings):
    """Environment of ``python -m speckleflow.services.tiled_app`` (the Tiled service).

    Attributes
    ----------
    tiled_api_key : SecretStr or None
        The writer key to provision (``SPECKLEFLOW_TILED_API_KEY``; required to serve).
    tiled_read_api_key : SecretStr or None
        An optional read-only key (``SPECKLEFLOW_TILED_READ_API_KEY``).
    """

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

    tiled_api_key: SecretStr | None = None
    tiled_read_api_key: SecretStr | None = None


class WorkerSettings(BaseSettings):
    """Environment of ``speckleflow worker`` (prefix ``SPECKLEFLOW_``; what compose.yaml sets).

    The Tiled server comes from ``--tiled-uri`` (or ``SPECKLEFLOW_TILED_URI``), CURVE keys
    from ``SPECKLEFLOW_CURVE_*`` (:mod:`speckleflow.streaming.curve`).

    Attributes
    ----------
    api_key : SecretStr or None
        Writer API key of the Tiled server (``SPECKLEFLOW_API_KEY``); never logged.
    rcv_queue_mib : float
        Byte budget of the worker's bus receive queue, MiB (``SPECKLEFLOW_RCV_QUEUE_MIB``,
        default 64): the ZeroMQ receive high-water mark follows the largest message so
        that frames waiting for a slow worker hold at most this much memory (beyond
        it messages are dropped upstream and counted as gaps).
    """

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

    api_key: SecretStr | None = None
    rcv_queue_mib: float = Field(default=64.0, gt=0)

    @property
    def max_queued_bytes(self) -> int:
        """``rcv_queue_mib`` in bytes."""
        return max(1, int(self.rcv_queue_mib * 2**20))


def environment_names(model: type[BaseSettings]) -> set[str]:
    """The environment variables a pydantic-settings model reads (prefix + field name, upper case).

    Parameters
    ----------
    model : type of BaseSettings
        A settings model with an ``env_prefix`` and no aliases.

    Returns
    -------
    set of str
        E.g. ``{"SPECKLEFLOW_DATA_DIR", ...}``.
    """
    prefix = model.model_config.get("env_prefix", "")
    return {f"{prefix}{name}".upper() for name in model.model_fields}
