"""Where things are in Tiled (ARCHITECTURE.md § Where things are in Tiled).

``raw/<run uid>``                         the Bluesky run, written by TiledWriter
``analysis/<run uid>/<technique>/<name>`` every derived result, with provenance metadata

Every node under ``analysis/`` carries the metadata made by :func:`provenance`.
"""

from __future__ import annotations

import datetime as _dt
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Literal

RAW = "raw"
ANALYSIS = "analysis"
TECHNIQUES = ("fth", "cci", "phase", "g2", "ecm", "ptycho", "workers")

Status = Literal["live", "final", "failed"]


def software_version() -> str:
    """The installed speckleflow version (``"unknown"`` when run from a bare checkout)."""
    try:
        return version("speckleflow")
    except PackageNotFoundError:  # pragma: no cover
        return "unknown"


def provenance(
    run_uid: str,
    technique: str,
    algorithm: str,
    parameters: dict[str, Any],
    *,
    status: Status = "live",
    reason: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """Metadata every node under ``analysis/`` carries.

    Parameters
    ----------
    run_uid : str
        Source run's start-document uid.
    technique : str
        One of :data:`TECHNIQUES`.
    algorithm : str
        Name of the algorithm, with its literature source where there is one.
    parameters : dict
        Every parameter that changes the result (JSON-able).
    status : {"live", "final", "failed"}
        ``live`` while a worker still extends the node, ``final`` when complete,
        ``failed`` with ``reason``.

    Raises
    ------
    ValueError
        For an unknown technique or status, or ``failed`` without a reason.
    """
    if technique not in TECHNIQUES:
        raise ValueError(f"unknown technique {technique!r}; expected one of {TECHNIQUES}")
    if status not in ("live", "final", "failed"):
        raise ValueError(f"unknown status {status!r}; expected 'live', 'final' or 'failed'")
    if status == "failed" and not reason:
        raise ValueError("status 'failed' needs a reason")
    md: dict[str, Any] = {
        "source_run_uid": run_uid,
        "technique": technique,
        "algorithm": algorithm,
        "parameters": dict(parameters),
        "software_version": software_version(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(),
        "status": status,
    }
    if reason:
        md["reason"] = reason
    md.update(extra)
    return md


def ensure_container(parent, key: str, metadata: dict[str, Any] | None = None):
    """Return ``parent[key]``, creating an empty container there if it is missing.

    One request when the node exists (``key in parent`` followed by ``parent[key]``
    would be two, and every request costs the embedded server tens of ms of CPU).
    Two processes may race to create the same container; the loser reads the
    winner's node.
    """
    try:
        return parent[key]
    except KeyError:
        pass
    try:
        return parent.create_container(key, metadata=metadata or {})
    except Exception:
        # Created concurrently by another worker (HTTP 409) or similar: read it back.
        try:
            return parent[key]
        except KeyError:
            pass
        raise


def ensure_layout(client) -> None:
    """Create the top-level ``raw`` and ``analysis`` containers if missing."""
    ensure_container(client, RAW, {"description": "Bluesky runs written by TiledWriter"})
    ensure_container(
        client, ANALYSIS, {"description": "results derived from raw/<uid>, by run uid"}
    )


def analysis_container(client, run_uid: str, technique: str):
    """``analysis/<run_uid>/<technique>``, created on demand."""
    run_node = ensure_container(
        ensure_container(client, ANALYSIS), run_uid, {"source_run_uid": run_uid}
    )
    return ensure_container(run_node, technique, {"source_run_uid": run_uid, "technique": technique})
