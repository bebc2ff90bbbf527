"""Joining a run late: read its start document and descriptors back from the raw record.

A worker restarted in the middle of a run never saw the run's start document or its
stream descriptors (they went over the bus before it subscribed). TiledWriter stored
both in ``raw/<uid>``: the start document as the run container's ``start`` metadata,
and each stream's descriptor (without ``name``, ``object_keys`` and ``run_start``) as
the metadata of ``raw/<uid>/<stream>``. :func:`tiled_run_documents` rebuilds them for
:class:`~speckleflow.services.workers.base.Worker` (its ``run_documents`` argument).

A slow worker can likewise lose a run's stop document at a high-water mark;
:func:`tiled_run_stop` reads it back (``raw/<uid>`` metadata ``stop``), with the frames
the bus publisher sent per stream, which the orchestrator notes next to it
(:class:`~speckleflow.services.raw_record.FramesPublishedNote`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from ..layout import RAW
from ..raw_record import FRAMES_PUBLISHED_KEY

__all__ = ["plain", "tiled_run_documents", "tiled_run_stop"]


def plain(value: Any) -> Any:
    """Tiled metadata views (read-only mappings, sequences) as plain dicts and lists."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def tiled_run_documents(
    connect: Callable[[], Any],
) -> Callable[[str], tuple[dict[str, Any], list[dict[str, Any]]] | None]:
    """A ``run_documents`` fetcher reading ``raw/<uid>`` from Tiled.

    Parameters
    ----------
    connect : callable
        Returns a Tiled client for the server root; called on the first fetch and
        again after a failure.

    Returns
    -------
    callable
        ``fetch(run_uid)`` → ``(start, descriptors)``, or None while the run or any
        of its stream descriptors is not in Tiled yet. Connection errors propagate
        (the worker logs them and retries later).
    """
    cache: dict[str, Any] = {}

    def fetch(run_uid: str) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
        if "client" not in cache:
            cache["client"] = connect()
        try:
            raw = cache["client"][RAW]
            if run_uid not in raw:
                return None
            run = raw[run_uid]
            start = plain(run.metadata.get("start") or {})
            descriptors = []
            for stream, node in run.items():
                md = plain(node.metadata)
                if "data_keys" in md:
                    descriptors.append({**md, "name": stream, "run_start": run_uid})
        except Exception:
            cache.pop("client", None)  # reconnect next time
            raise
        if start.get("uid") != run_uid or not descriptors:
            return None
        return start, descriptors

    return fetch


#: Seconds a stop document found without its frames-published note waits for the note
#: (the orchestrator writes it just after TiledWriter has written the stop).
NOTE_GRACE_S = 5.0


def tiled_run_stop(
    connect: Callable[[], Any], *, note_grace_s: float = NOTE_GRACE_S
) -> Callable[[str], tuple[dict[str, Any], dict[str, int] | None] | None]:
    """A ``run_stop`` fetcher reading the stop document of ``raw/<uid>`` from Tiled.

    Parameters
    ----------
    connect : callable
        Returns a Tiled client for the server root; called on the first fetch and
        again after a failure.
    note_grace_s : float
        Seconds to keep answering None while the stop is there but the frames-published
        note is not yet; after that the stop is returned with None.

    Returns
    -------
    callable
        ``fetch(run_uid)`` → ``(stop, frames_published)``: the stop document, and the
        frames the bus publisher sent per frame stream (metadata
        :data:`~speckleflow.services.raw_record.FRAMES_PUBLISHED_KEY`; None if not
        noted). None while the run or its stop document is not in Tiled. Connection
        errors propagate (the worker logs them and retries later).
    """
    cache: dict[str, Any] = {}
    stop_seen: dict[str, float] = {}

    def fetch(run_uid: str) -> tuple[dict[str, Any], dict[str, int] | None] | None:
        if "client" not in cache:
            cache["client"] = connect()
        try:
            raw = cache["client"][RAW]
            if run_uid not in raw:
                return None
            md = raw[run_uid].metadata
            stop = plain(md.get("stop") or {})
            published = md.get(FRAMES_PUBLISHED_KEY)
        except Exception:
            cache.pop("client", None)  # reconnect next time
            raise
        if stop.get("run_start") != run_uid:
            return None
        if not published:
            first = stop_seen.setdefault(run_uid, time.monotonic())
            if time.monotonic() - first < note_grace_s:
                return None
            return stop, None
        stop_seen.pop(run_uid, None)
        return stop, {str(k): int(v) for k, v in plain(published).items()}

    return fetch
