"""The online worker process shell: bus in, compute unit, results and status out.

A worker is a thin loop around a pure compute unit (:class:`OnlineUnit`): it receives
bus messages (``speckleflow.streaming.BusReceiver``), hands documents and frames to the
unit, lets the unit publish through a :class:`~speckleflow.services.results.ResultsPublisher`
(never blocking on Tiled), and pushes a status report twice a second to the
orchestrator (frames seen and processed, gaps, drops, decode errors, lag). The same
counters, counted from the run's start document, are published once a second into the
metadata of ``analysis/<run uid>/workers/<kind>`` (status ``live``, then ``final`` at the
stop document), where dashboards and control plans read them.

Undecodable messages, frames of runs whose start document it never saw, and unit
errors on one message are counted, logged with the reason, and skipped: the worker
keeps running.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections import Counter
from typing import Any, Protocol

from speckleflow.streaming import (
    BusReceiver,
    CurveConfig,
    DocumentMessage,
    FrameMessage,
    HeartbeatMessage,
    StatusPusher,
)

from ..layout import provenance
from ..results import ResultsPublisher

log = logging.getLogger(__name__)


class OnlineUnit(Protocol):
    """What a worker's compute unit implements (pure compute plus result hand-off)."""

    kind: str

    def start_run(self, run_uid: str, start: dict[str, Any]) -> None: ...

    def descriptor(self, doc: dict[str, Any]) -> None: ...

    def frames(self, msg: FrameMessage) -> int:
        """Process a batch; return the number of frames used (the rest are counted as dropped)."""
        ...

    def tick(self, now: float) -> None:
        """Called often; publishes at the unit's own bounded rate."""
        ...

    def stop_run(self, stop: dict[str, Any]) -> None: ...

    def status(self) -> dict[str, Any]: ...


class Worker:
    """Run one :class:`OnlineUnit` on the bus until told to stop.

    Parameters
    ----------
    unit : OnlineUnit
        The compute unit.
    bus_address : str
        The proxy's XPUB endpoint to subscribe to.
    status_address : str, optional
        The orchestrator's PULL endpoint for status reports.
    results : ResultsPublisher, optional
        Flushed on shutdown.
    status_interval : float
        Seconds between status reports.
    curve : CurveConfig, optional
        CURVE keys for the bus and status links (this worker is the client of both).
    """

    def __init__(
        self,
        unit: OnlineUnit,
        bus_address: str,
        *,
        status_address: str | None = None,
        results: ResultsPublisher | None = None,
        status_interval: float = 0.5,
        rcvhwm: int = 10_000,
        tiled_status_interval: float = 1.0,
        curve: CurveConfig | None = None,
    ) -> None:
        self.unit = unit
        self.receiver = BusReceiver(bus_address, rcvhwm=rcvhwm, curve=curve)
        self.status_pusher = StatusPusher(status_address, curve=curve) if status_address else None
        self.results = results
        self.status_interval = status_interval
        self.stop_event = threading.Event()
        self.run_uid: str | None = None
        self.runs_seen: set[str] = set()
        self.frames_seen = 0
        self.frames_processed = 0
        self.dropped: Counter[str] = Counter()
        self.heartbeat_seen = False
        self.last_frame_ts: float | None = None
        self.lag_s = 0.0
        self.run_state = "idle"
        self.tiled_status_interval = tiled_status_interval
        self._next_tiled_status = 0.0
        self._run_base: dict[str, Any] = {}

    # -- lifecycle ---------------------------------------------------------------------
    def install_signal_handlers(self) -> None:
        def _stop(signum: int, frame: Any) -> None:
            self.stop_event.set()

        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)

    def serve(self) -> int:
        """Receive and process until ``stop_event`` is set; returns an exit code."""
        next_status = 0.0
        try:
            while not self.stop_event.is_set():
                msg = self.receiver.recv(timeout_ms=50)
                if msg is not None:
                    self._dispatch(msg)
                now = time.time()
                try:
                    self.unit.tick(now)
                except Exception:  # noqa: BLE001
                    log.exception("%s: tick failed", self.unit.kind)
                if now >= next_status:
                    self.push_status()
                    next_status = now + self.status_interval
        finally:
            if self.results is not None:
                self.results.close(timeout=30)
            self.push_status(final=True)
            self.receiver.close()
            if self.status_pusher is not None:
                self.status_pusher.close()
        return 0

    # -- message handling -------------------------------------------------------------
    def _dispatch(self, msg: Any) -> None:
        if isinstance(msg, HeartbeatMessage):
            if not self.heartbeat_seen:
                self.heartbeat_seen = True
                self.push_status()
            return
        try:
            if isinstance(msg, DocumentMessage):
                self._document(msg)
            elif isinstance(msg, FrameMessage):
                self._frames(msg)
        except Exception as exc:  # noqa: BLE001 - one bad message never ends the worker
            self.dropped[f"unit error: {type(exc).__name__}"] += getattr(msg, "n", 1)
            log.exception("%s: dropped a %s message", self.unit.kind, type(msg).__name__)

    def _document(self, msg: DocumentMessage) -> None:
        name, doc = msg.name, msg.doc
        if name == "start":
            self.run_uid = doc["uid"]
            self.runs_seen.add(doc["uid"])
            self.run_state = "running"
            self._run_base = self._counters()
            self.unit.start_run(doc["uid"], doc)
        elif name == "descriptor" and doc.get("run_start") in self.runs_seen:
            self.unit.descriptor(doc)
        elif name == "stop" and doc.get("run_start") in self.runs_seen:
            self.unit.stop_run(doc)
            self.run_state = f"stopped ({doc.get('exit_status')})"
            self.publish_run_status(final=True)
            self.push_status()

    def _frames(self, msg: FrameMessage) -> None:
        n = msg.n
        self.frames_seen += n
        self.last_frame_ts = msg.header.ts
        self.lag_s = max(0.0, time.time() - msg.header.ts)
        if msg.header.run_uid not in self.runs_seen:
            self.dropped["no start document for run"] += n
            return
        used = self.unit.frames(msg)
        self.frames_processed += used
        if used < n:
            self.dropped["not used by unit"] += n - used

    # -- status ------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        bus = self.receiver.stats()
        report = {
            "worker": self.unit.kind,
            "pid": os.getpid(),
            "ready": self.heartbeat_seen,
            "run_uid": self.run_uid,
            "run_state": self.run_state,
            "frames_seen": self.frames_seen,
            "frames_processed": self.frames_processed,
            "missed": bus.get("missed", 0),
            "gaps": bus.get("gaps", 0),
            "decode_errors": sum(bus.get("decode_errors", {}).values()),
            "dropped": dict(self.dropped),
            "lag_s": round(self.lag_s, 4),
            "unit": self.unit.status(),
        }
        if self.results is not None:
            report["results"] = {**self.results.stats.as_dict(), "pending": self.results.pending}
        return report

    def _counters(self) -> dict[str, Any]:
        bus = self.receiver.stats()
        return {
            "frames_seen": self.frames_seen,
            "frames_processed": self.frames_processed,
            "missed": bus.get("missed", 0),
            "gaps": bus.get("gaps", 0),
            "decode_errors": sum(bus.get("decode_errors", {}).values()),
            "dropped": dict(self.dropped),
        }

    def run_counters(self) -> dict[str, Any]:
        """Frames seen/processed, missed, gaps, decode errors and drops since the run's start."""
        now, base = self._counters(), self._run_base
        out: dict[str, Any] = {k: v - base.get(k, 0) for k, v in now.items() if k != "dropped"}
        dropped = {r: n - base.get("dropped", {}).get(r, 0) for r, n in now["dropped"].items()}
        out["dropped"] = {r: n for r, n in dropped.items() if n}
        out["dropped_total"] = sum(out["dropped"].values())
        return out

    def publish_run_status(self, final: bool = False) -> None:
        """Merge this run's counters and lag into ``analysis/<uid>/workers/<kind>`` metadata.

        Non-blocking (through the results publisher); at most once per
        ``tiled_status_interval`` seconds, and while results are waiting to be written
        only every ``5 · tiled_status_interval`` (status never crowds out results).
        ``final`` is always published.
        """
        if self.results is None or self.run_uid is None:
            return
        now = time.time()
        if not final and now < self._next_tiled_status:
            return
        if not final and self.results.pending and now < self._next_tiled_status + 4 * self.tiled_status_interval:
            return
        self._next_tiled_status = now + self.tiled_status_interval
        md = provenance(
            self.run_uid,
            "workers",
            "online worker status report",
            {"status_interval_s": self.tiled_status_interval},
            status="final" if final else "live",
            worker=self.unit.kind,
            pid=os.getpid(),
            run_state=self.run_state,
            lag_s=round(self.lag_s, 4),
            updated=now,
            results={**self.results.stats.as_dict(), "pending": self.results.pending},
            unit=self.unit.status(),
            units={"lag_s": "s", "updated": "s since the epoch", "counters": "frames since the run's start"},
            **self.run_counters(),
        )
        self.results.update_metadata((self.run_uid, "workers", self.unit.kind), md)

    def push_status(self, final: bool = False) -> None:
        if self.run_state == "running":
            self.publish_run_status()
        if self.status_pusher is None:
            return
        report = self.status()
        report["final"] = final
        self.status_pusher.send(report)
