"""Worker status into Tiled on its own path: latest value wins, never behind the results.

A worker's status (``analysis/<uid>/workers/<kind>`` metadata: counters, lag, drops) is
what a dashboard shows to say whether the live path keeps up. Written through the
:class:`~speckleflow.services.results.ResultsPublisher` queue it waited behind every
pending result, so when Tiled lagged the status went stale exactly when it mattered
(seen: an fth status 18 s old). :class:`StatusPublisher` has its own thread and its
own Tiled connection and keeps only the newest metadata per node: a backlog of results
never delays it, and a backlog of status updates cannot form (older values are
superseded, counted, never written).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .layout import ANALYSIS, ensure_container, ensure_layout

log = logging.getLogger(__name__)

__all__ = ["StatusPublisher", "StatusPublisherStats"]


@dataclass
class StatusPublisherStats:
    """Counters of a :class:`StatusPublisher`.

    Attributes
    ----------
    submitted : int
        Updates handed over.
    written : int
        Updates written into Tiled.
    superseded : int
        Updates replaced by a newer one for the same node before being written.
    errors : int
        Failed write attempts (each retried until superseded or written).
    last_error : str
        The latest failure, ``"Type: message"``.
    """

    submitted: int = 0
    written: int = 0
    superseded: int = 0
    errors: int = 0
    last_error: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "submitted": self.submitted,
            "written": self.written,
            "superseded": self.superseded,
            "errors": self.errors,
            "last_error": self.last_error,
        }


class StatusPublisher:
    """Merge metadata into nodes below ``analysis/`` from a thread of its own, newest value only.

    Parameters
    ----------
    connect : callable
        Returns a Tiled client for the server root; called again after a failure. Give
        it its own connection (not the results publisher's client).
    retry_delay : float
        Seconds between two attempts after a failure, > 0 (a newer update is written at
        the next attempt, not the failed one).

    Raises
    ------
    ValueError
        If ``retry_delay`` ≤ 0.
    """

    def __init__(self, connect: Callable[[], Any], *, retry_delay: float = 0.5) -> None:
        if not retry_delay > 0:
            raise ValueError(f"retry_delay must be > 0 s, got {retry_delay!r}")
        self._connect = connect
        self._retry_delay = float(retry_delay)
        self._client: Any = None
        self._nodes: dict[tuple[str, ...], Any] = {}
        self._latest: dict[tuple[str, ...], dict[str, Any]] = {}
        self._cond = threading.Condition()
        self._busy = False
        self._closing = False
        self.stats = StatusPublisherStats()
        self._thread = threading.Thread(target=self._run, name="status-publisher", daemon=True)
        self._thread.start()

    def update_metadata(self, path: tuple[str, ...], metadata: dict[str, Any]) -> bool:
        """Merge ``metadata`` into ``analysis/<path>`` (created if missing); non-blocking.

        Replaces a not yet written update of the same ``path`` (counted as superseded).
        Returns True (the update is never refused).
        """
        with self._cond:
            self.stats.submitted += 1
            if path in self._latest:
                self.stats.superseded += 1
            self._latest[tuple(path)] = metadata
            self._cond.notify_all()
        return True

    @property
    def pending(self) -> int:
        """Nodes with an update not yet written."""
        with self._cond:
            return len(self._latest) + (1 if self._busy else 0)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every update handed over has been written (or superseded); True if so."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._latest and not self._busy, timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Flush (bounded by ``timeout``), then stop the thread."""
        self.flush(timeout)
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(timeout)

    # -- internals ---------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._latest or self._closing)
                if not self._latest:
                    return  # closing with nothing left
                path = next(iter(self._latest))
                metadata = self._latest.pop(path)
                self._busy = True
            try:
                self._write(path, metadata)
                failed = False
            except Exception as exc:  # noqa: BLE001 - any Tiled/HTTP failure is retried
                failed = True
                self.stats.errors += 1
                self.stats.last_error = f"{type(exc).__name__}: {exc}"[:300]
                self._client = None
                self._nodes.clear()
            with self._cond:
                self._busy = False
                if failed:
                    self._latest.setdefault(path, metadata)  # unless a newer one came meanwhile
                    closing = self._closing
                else:
                    self.stats.written += 1
                self._cond.notify_all()
            if failed:
                if closing:
                    log.warning("status publisher closing with unwritten status: %s", self.stats.last_error)
                    return
                time.sleep(self._retry_delay)

    def _write(self, path: tuple[str, ...], metadata: dict[str, Any]) -> None:
        node = self._nodes.get(path)
        if node is None:
            if self._client is None:
                self._client = self._connect()
                ensure_layout(self._client)
            node = ensure_container(self._client, ANALYSIS)
            for key in path:
                node = ensure_container(node, key)
            self._nodes[path] = node
        # No revision history: live status is re-described every second.
        node.update_metadata(metadata=metadata, drop_revision=True)
