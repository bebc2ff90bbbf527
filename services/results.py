"""The results publisher: the one owner of a worker's Tiled connection.

Online workers compute on frames and hand their results to :class:`ResultsPublisher`
with non-blocking calls. A background thread writes them into Tiled under
``analysis/<run uid>/<technique>/<name>``. When Tiled is briefly unavailable the
thread keeps the pending operations and retries with backoff; the frame intake never
waits on Tiled. When the queue is full the newest operation that can be dropped
(a preview update) is dropped and counted, never silently.

Writes are idempotent on retry: an array grows by ``patch(..., offset=n, extend=True)``
at the offset this publisher knows, so a retried append overwrites the same slice
rather than adding a second copy.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .layout import ANALYSIS, ensure_container, ensure_layout

log = logging.getLogger(__name__)


@dataclass
class _Op:
    kind: str  # "extend_array" | "write_array" | "replace_array" | "append_table" | "replace_table" | "metadata"
    path: tuple[str, ...]  # (run_uid, technique, name) below analysis/
    payload: Any = None
    metadata: dict[str, Any] | None = None
    dims: list[str] | None = None
    droppable: bool = False
    attempts: int = 0
    seq: int = 0


@dataclass
class PublisherStats:
    submitted: int = 0
    written: int = 0
    dropped: int = 0
    retries: int = 0
    failed: int = 0
    superseded: int = 0
    last_error: str = ""
    reasons: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "submitted": self.submitted,
            "written": self.written,
            "dropped": self.dropped,
            "retries": self.retries,
            "failed": self.failed,
            "superseded": self.superseded,
            "last_error": self.last_error,
        }


class ResultsPublisher:
    """Write live results into Tiled from a background thread.

    Parameters
    ----------
    connect : callable
        Returns a Tiled client for the server root (e.g.
        ``lambda: tiled.client.from_uri(uri, api_key=key)``); called again after a
        connection failure.
    maxsize : int
        Pending operations kept; beyond it, droppable operations are dropped (counted).
    max_attempts : int
        Attempts per operation before it is counted as failed and logged. Backoff
        doubles from 0.2 s to 5 s, so the default rides out ~1 minute of outage.

    Notes
    -----
    Replacements (:meth:`replace_array`, :meth:`replace_table`) of a node are skipped
    when a newer replacement of the same node is already queued (counted as
    ``superseded``): when Tiled is slower than the worker's publishing rate, the
    backlog holds at most one pending replacement per node instead of growing, and
    the newest value is written first. Appends and metadata merges are never skipped.
    """

    def __init__(
        self,
        connect: Callable[[], Any],
        *,
        maxsize: int = 1000,
        max_attempts: int = 15,
    ) -> None:
        self._connect = connect
        self._client: Any = None
        self._queue: queue.Queue[_Op | None] = queue.Queue(maxsize=maxsize)
        self._max_attempts = max_attempts
        self._lengths: dict[tuple[str, ...], int] = {}
        # Newest queued replacement per (kind, path): older ones are superseded.
        self._newest: dict[tuple[str, tuple[str, ...]], int] = {}
        self._seq = 0
        self._seq_lock = threading.Lock()
        # Clients of nodes already known to exist: one HTTP request per operation
        # instead of two per path level. Cleared on any error.
        self._nodes: dict[tuple[str, ...], Any] = {}
        self.stats = PublisherStats()
        self._thread = threading.Thread(target=self._run, name="results-publisher", daemon=True)
        self._idle = threading.Event()
        self._idle.set()
        self._thread.start()

    # -- non-blocking API used by workers ---------------------------------------------
    def extend_array(
        self,
        path: tuple[str, str, str],
        rows: np.ndarray,
        *,
        dims: list[str],
        metadata: dict[str, Any] | None = None,
        droppable: bool = False,
    ) -> bool:
        """Append ``rows`` (shape ``(n, ...)``) along axis 0 of array ``path``.

        The array is created on first use with ``dims`` and ``metadata``; later calls
        update its metadata when ``metadata`` is given.
        """
        return self._submit(
            _Op("extend_array", path, np.ascontiguousarray(rows), metadata, dims, droppable)
        )

    def write_array(
        self,
        path: tuple[str, str, str],
        array: np.ndarray,
        *,
        dims: list[str],
        metadata: dict[str, Any],
    ) -> bool:
        """Create the array at ``path`` (once; a second write to the same path fails and is counted)."""
        return self._submit(_Op("write_array", path, np.ascontiguousarray(array), metadata, dims))

    def replace_array(
        self,
        path: tuple[str, ...],
        array: np.ndarray,
        *,
        dims: list[str],
        metadata: dict[str, Any] | None = None,
    ) -> bool:
        """Write ``array`` at ``path``, replacing what is there (a live result that is
        recomputed, e.g. an ensemble g2): created on first use, overwritten in place
        (``patch`` at offset 0) while the shape stays, deleted and rewritten when it
        changes. Droppable: a newer replacement supersedes it."""
        return self._submit(
            _Op("replace_array", path, np.ascontiguousarray(array), metadata, dims, droppable=True)
        )

    def replace_table(
        self,
        path: tuple[str, ...],
        columns: dict[str, np.ndarray | list],
        *,
        metadata: dict[str, Any] | None = None,
    ) -> bool:
        """Write a table at ``path`` replacing its rows (e.g. one KWW fit row per k_r bin)."""
        lengths = {k: len(v) for k, v in columns.items()}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"columns of unequal length: {lengths}")
        return self._submit(_Op("replace_table", path, dict(columns), metadata, droppable=True))

    def append_table(
        self,
        path: tuple[str, str, str],
        columns: dict[str, np.ndarray | list],
        *,
        metadata: dict[str, Any] | None = None,
    ) -> bool:
        """Append rows (one list/array per column, equal lengths) to an appendable table."""
        lengths = {k: len(v) for k, v in columns.items()}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"columns of unequal length: {lengths}")
        return self._submit(_Op("append_table", path, dict(columns), metadata))

    def update_metadata(self, path: tuple[str, ...], metadata: dict[str, Any]) -> bool:
        """Merge ``metadata`` into the node at ``path`` (created as a container if missing)."""
        return self._submit(_Op("metadata", path, None, metadata))

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until every submitted operation has been written or given up on."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._queue.unfinished_tasks == 0:
                return True
            self._idle.wait(0.05)
        return self._queue.unfinished_tasks == 0

    def close(self, timeout: float = 30.0) -> None:
        """Flush, then stop the thread."""
        self.flush(timeout)
        try:
            self._queue.put_nowait(None)
        except queue.Full:  # pragma: no cover
            pass
        self._thread.join(timeout)

    @property
    def pending(self) -> int:
        """Operations submitted and not yet written or given up (the one in flight included)."""
        return self._queue.unfinished_tasks

    # -- internals ---------------------------------------------------------------------
    def _submit(self, op: _Op) -> bool:
        self.stats.submitted += 1
        if op.droppable and op.kind.startswith("replace"):
            with self._seq_lock:
                self._seq += 1
                op.seq = self._seq
                self._newest[(op.kind, op.path)] = op.seq
        try:
            self._queue.put_nowait(op)
            self._idle.clear()
            return True
        except queue.Full:
            self.stats.dropped += 1
            self.stats.reasons["queue full"] = self.stats.reasons.get("queue full", 0) + 1
            log.warning("results queue full: dropped %s %s", op.kind, "/".join(op.path))
            return False

    def _run(self) -> None:
        while True:
            op = self._queue.get()
            if op is None:
                self._queue.task_done()
                return
            if op.seq and self._newest.get((op.kind, op.path)) != op.seq:
                self.stats.superseded += 1
                self._queue.task_done()
                if self._queue.unfinished_tasks == 0:
                    self._idle.set()
                continue
            delay = 0.2
            while True:
                try:
                    self._apply(op)
                    self.stats.written += 1
                    break
                except Exception as exc:  # noqa: BLE001 - any Tiled/HTTP failure is retried
                    op.attempts += 1
                    self.stats.last_error = f"{type(exc).__name__}: {exc}"[:300]
                    self._client = None  # reconnect on the next attempt
                    self._nodes.clear()
                    if op.attempts >= self._max_attempts:
                        self.stats.failed += 1
                        log.error(
                            "gave up writing %s to analysis/%s after %d attempts: %s",
                            op.kind,
                            "/".join(op.path),
                            op.attempts,
                            self.stats.last_error,
                        )
                        break
                    self.stats.retries += 1
                    time.sleep(delay)
                    delay = min(delay * 2, 5.0)
            self._queue.task_done()
            if self._queue.unfinished_tasks == 0:
                self._idle.set()

    def _root(self):
        if self._client is None:
            self._client = self._connect()
            ensure_layout(self._client)
        return self._client

    def _container(self, path: tuple[str, ...]):
        """Client of the container ``analysis/<path>``, created on demand and cached."""
        if path not in self._nodes:
            if path:
                node = ensure_container(self._container(path[:-1]), path[-1])
            else:
                node = ensure_container(self._root(), ANALYSIS)
            self._nodes[path] = node
        return self._nodes[path]

    def _existing(self, parent, path: tuple[str, ...]):
        """Client of the node at ``path`` if it exists (cached), else ``None``."""
        node = self._nodes.get(path)
        if node is None:
            try:  # one request, as in ensure_container
                node = self._nodes[path] = parent[path[-1]]
            except KeyError:
                return None
        return node

    def _apply(self, op: _Op) -> None:
        if op.kind == "metadata":
            # No revision history: live nodes are re-described twice a second.
            self._container(op.path).update_metadata(metadata=op.metadata, drop_revision=True)
            return
        parent = self._container(op.path[:-1])
        key = op.path[-1]
        if op.kind == "write_array":
            if self._existing(parent, op.path) is not None:
                raise RuntimeError(f"analysis/{'/'.join(op.path)} exists; results are written once")
            self._nodes[op.path] = parent.write_array(
                op.payload, key=key, metadata=op.metadata, dims=op.dims
            )
        elif op.kind == "extend_array":
            self._extend(parent, key, op)
        elif op.kind == "replace_array":
            self._replace_array(parent, key, op)
        elif op.kind == "append_table":
            self._append_table(parent, key, op)
        elif op.kind == "replace_table":
            self._replace_table(parent, key, op)
        else:  # pragma: no cover
            raise ValueError(f"unknown operation {op.kind!r}")

    def _extend(self, parent, key: str, op: _Op) -> None:
        rows = op.payload
        node = self._existing(parent, op.path)
        if node is None:
            self._nodes[op.path] = parent.write_array(
                rows, key=key, metadata=op.metadata or {}, dims=op.dims
            )
            self._lengths[op.path] = rows.shape[0]
            return
        offset = self._lengths.get(op.path)
        if offset is None:  # a restarted publisher continues after what is there
            offset = node.shape[0]
        node.patch(rows, offset=(offset,), extend=True)
        self._lengths[op.path] = offset + rows.shape[0]
        if op.metadata:
            node.update_metadata(metadata=op.metadata, drop_revision=True)

    def _replace_array(self, parent, key: str, op: _Op) -> None:
        array = op.payload
        node = self._existing(parent, op.path)
        if node is not None and tuple(node.shape) == array.shape and node.dtype == array.dtype:
            node.patch(array, offset=(0,) * array.ndim)
            if op.metadata:
                node.update_metadata(metadata=op.metadata, drop_revision=True)
            return
        if node is not None:
            node.delete(external_only=False)
            self._nodes.pop(op.path, None)
        self._nodes[op.path] = parent.write_array(array, key=key, metadata=op.metadata or {}, dims=op.dims)

    def _replace_table(self, parent, key: str, op: _Op) -> None:
        import pandas as pd

        frame = pd.DataFrame({k: np.asarray(v) for k, v in op.payload.items()})
        node = self._existing(parent, op.path)
        if node is not None:
            node.delete(external_only=False)
            self._nodes.pop(op.path, None)
        self._nodes[op.path] = parent.write_dataframe(frame, key=key, metadata=op.metadata or {})

    def _append_table(self, parent, key: str, op: _Op) -> None:
        import pyarrow as pa

        table = pa.table({k: np.asarray(v) for k, v in op.payload.items()})
        node = self._existing(parent, op.path)
        if node is None:
            node = self._nodes[op.path] = parent.create_appendable_table(
                table.schema, key=key, metadata=op.metadata or {}
            )
        elif op.metadata:
            node.update_metadata(metadata=op.metadata, drop_revision=True)
        node.append_partition(0, table)
