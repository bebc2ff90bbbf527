"""The online worker process shell: bus in, compute unit, results and status out.

A worker is a thin loop around a pure compute unit (:class:`OnlineUnit`): it receives
bus messages (``speckleflow.streaming.BusReceiver``), hands documents and frames to the
unit, lets the unit publish through a :class:`~speckleflow.services.results.ResultsPublisher`
(never blocking on Tiled), and pushes a status report twice a second to the
orchestrator (frames seen and processed, gaps, drops, decode errors, lag). The same
counters, counted from the run's start document, are published once a second into the
metadata of ``analysis/<run uid>/workers/<kind>`` (status ``live``, then ``final`` at the
stop document), where dashboards and control plans read them. That status goes through
its own :class:`~speckleflow.services.status_publisher.StatusPublisher` (own thread and
connection, newest value only), so a backlog of results in a lagging Tiled never makes
it stale; the ``final`` status also follows the run's results through the results queue.

Undecodable messages, malformed documents, frames holding NaN or infinity, and unit
errors on one message are counted, logged with the reason (rate-limited), and
skipped: the worker keeps running.

A worker (re)started in the middle of a run never saw its start document. On the first
frame of such a run it asks ``run_documents`` (normally :func:`tiled_run_documents`:
the start document and stream descriptors TiledWriter stored in ``raw/<uid>``) and,
once it has them, resumes with the following frames; the frames it missed before are
the gap its receiver counts (a stream first seen at ``seq = k`` has missed ``k``).

Documents and frames share the bus and its high-water marks, so a slow worker can lose
a stop document with the frames around it, and nothing on the bus would ever end its
run. The raw record is the fallback here too: while a run is open and its messages have
stopped for :data:`STOP_QUIET_S`, or when the next run starts, the worker asks
``run_stop`` (normally :func:`tiled_run_stop`: the stop document TiledWriter stored in
``raw/<uid>`` and the frames published per stream the orchestrator noted next to it)
and closes the run with it; the status then says ``stop_source: "raw record"``. A run
whose stop cannot be found by the time the next run starts is closed with exit status
``unknown``.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Protocol

import numpy as np
from speckleflow.streaming import (
    DOCUMENT_STREAM,
    BusReceiver,
    CurveConfig,
    DocumentMessage,
    FrameMessage,
    HeartbeatMessage,
    StatusPusher,
)

from ..layout import provenance
from ..results import ResultsPublisher
from ..status_publisher import StatusPublisher

log = logging.getLogger(__name__)

#: ``run_documents(run_uid)`` → ``(start, [descriptor, ...])`` of a run the worker joined
#: late, or None while they are not available (yet).
RunDocuments = Callable[[str], "tuple[dict[str, Any], list[dict[str, Any]]] | None"]

#: ``run_stop(run_uid)`` → ``(stop, frames_published or None)`` once the run's stop
#: document is in the raw record, else None.
RunStop = Callable[[str], "tuple[dict[str, Any], dict[str, int] | None] | None"]

#: Seconds between two attempts to fetch the documents of the same unknown run.
RESUME_RETRY_S = 1.0
#: Seconds without a message of the open run after which the worker looks for its stop
#: document in the raw record (it may have been dropped at a high-water mark).
STOP_QUIET_S = 2.0
#: Seconds between two log lines about the same drop reason.
DROP_LOG_INTERVAL_S = 5.0


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
    status_results : StatusPublisher, optional
        Writes the run's status into ``analysis/<uid>/workers/<kind>`` apart from the
        results (latest value wins); without it the status shares ``results``' queue
        (and is throttled while results are pending).
    status_interval : float
        Seconds between status reports.
    rcvhwm : int
        Receive high-water mark of the bus socket, in messages; beyond it ZeroMQ drops
        messages (they show up as gaps), so the worker's queued memory is bounded by
        ``rcvhwm`` × message size.
    max_queued_bytes : int, optional
        Byte budget of the bus receive queue (see
        :class:`~speckleflow.streaming.BusReceiver`): RCVHWM follows the largest
        message so that the queue stays within it. The ``speckleflow worker`` command
        sets it from ``SPECKLEFLOW_RCV_QUEUE_MIB``.
    rcvbuf : int
        Kernel receive buffer of the bus socket, bytes (0: the OS default, which can
        hold tens of MiB of frames before the high-water mark is reached).
    tiled_status_interval : float
        Seconds between two status updates in ``analysis/<uid>/workers/<kind>``.
    curve : CurveConfig, optional
        CURVE keys for the bus and status links (this worker is the client of both).
    run_documents : callable, optional
        Fetches the start document and descriptors of a run whose start this worker
        never saw (see :data:`RunDocuments`); without it such frames are dropped.
    run_stop : callable, optional
        Fetches the stop document of a run from the raw record when the bus lost it
        (see :data:`RunStop`); without it such a run stays open until the next starts.
    stop_quiet_s : float
        Seconds without a message of the open run before ``run_stop`` is asked.
    frame_delay_s : float
        Debugging and fault tests only: an artificial delay, seconds per frame, before
        each batch reaches the unit — a slow consumer on demand (``speckleflow worker
        --debug-frame-delay``). 0 (the default) adds nothing.

    Raises
    ------
    ValueError
        If ``frame_delay_s`` is negative or not a number.
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
        rcvbuf: int = 0,
        tiled_status_interval: float = 1.0,
        curve: CurveConfig | None = None,
        run_documents: RunDocuments | None = None,
        status_results: StatusPublisher | None = None,
        max_queued_bytes: int | None = None,
        run_stop: RunStop | None = None,
        stop_quiet_s: float = STOP_QUIET_S,
        frame_delay_s: float = 0.0,
    ) -> None:
        if not frame_delay_s >= 0:
            raise ValueError(f"frame_delay_s must be >= 0 s, got {frame_delay_s!r}")
        self.unit = unit
        self.status_results = status_results
        self.receiver = BusReceiver(bus_address, rcvhwm=rcvhwm, curve=curve, max_queued_bytes=max_queued_bytes,
                                    rcvbuf=rcvbuf)
        self.run_documents = run_documents
        self.run_stop = run_stop
        self.stop_quiet_s = float(stop_quiet_s)
        #: Where the open run's last message arrived (monotonic s) and when its stop was
        #: last looked for in the raw record.
        self._last_run_msg = time.monotonic()
        self._stop_attempt = 0.0
        self._stop_lookup: tuple[str, Future[Any]] | None = None
        self._lookup_pool: ThreadPoolExecutor | None = None
        self.stop_source = ""
        self.resumed_runs: set[str] = set()
        self._resume_attempt: dict[str, float] = {}
        self._last_drop_log: dict[str, float] = {}
        self.status_pusher = StatusPusher(status_address, curve=curve) if status_address else None
        self.results = results
        self.status_interval = status_interval
        self.stop_event = threading.Event()
        self.run_uid: str | None = None
        self.runs_seen: set[str] = set()
        self.frames_seen = 0
        self.frames_processed = 0
        self.dropped: Counter[str] = Counter()
        #: Frames lost at the end of a stream (after its last received frame), per
        #: stream, known from the stop's ``frames_published``; included in ``missed``.
        self.tail_missed: Counter[str] = Counter()
        self.frame_delay_s = float(frame_delay_s)
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
                self._check_quiet_run()
                now = time.time()
                try:
                    self.unit.tick(now)
                except Exception:
                    log.exception("%s: tick failed", self.unit.kind)
                if now >= next_status:
                    self.push_status()
                    next_status = now + self.status_interval
        finally:
            if self._lookup_pool is not None:
                self._lookup_pool.shutdown(wait=False, cancel_futures=True)
            if self.results is not None:
                self.results.close(timeout=30)
            if self.status_results is not None:
                self.status_results.close(timeout=10)
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
            self._drop(
                f"unit error: {type(exc).__name__}",
                getattr(msg, "n", 1),
                f"{type(msg).__name__}: {exc!s:.200}",
                exc_info=True,
            )

    def _drop(self, reason: str, n: int, detail: str = "", *, exc_info: bool = False) -> None:
        """Count `n` dropped frames (or documents) under `reason`; log at a bounded rate."""
        self.dropped[reason] += n
        now = time.monotonic()
        last = self._last_drop_log.get(reason)
        if last is not None and now - last < DROP_LOG_INTERVAL_S:
            return
        self._last_drop_log[reason] = now
        log.warning(
            "%s: dropped %d (%s)%s; %d so far for this reason",
            self.unit.kind, n, reason, f": {detail}" if detail else "", self.dropped[reason],
            exc_info=exc_info,
        )

    def _document(self, msg: DocumentMessage) -> None:
        name, doc = msg.name, msg.doc
        if name == "start":
            uid = doc.get("uid")
            if type(uid) is not str or not uid:
                self._drop("malformed start document", 1, f"uid {uid!r:.80}")
                return
            self._begin_run(uid, doc)
        elif name == "descriptor" and doc.get("run_start") in self.runs_seen:
            if doc.get("run_start") == self.run_uid:
                self._last_run_msg = time.monotonic()
            self.unit.descriptor(doc)
        elif name == "stop" and doc.get("run_start") == self.run_uid and self.run_state == "running":
            self._end_run(doc, msg.frames_published or {}, "bus")

    def _end_run(self, stop: dict[str, Any], frames_published: dict[str, int], source: str) -> None:
        """Close the open run with its stop document (from the bus or the raw record)."""
        assert self.run_uid is not None
        self._close_streams(self.run_uid, frames_published)
        self.stop_source = source
        self.unit.stop_run(stop)
        self.run_state = f"stopped ({stop.get('exit_status')})"
        self.publish_run_status(final=True)
        self.push_status()

    def _fetch_stop(self, uid: str) -> tuple[dict[str, Any], dict[str, int] | None] | None:
        if self.run_stop is None:
            return None
        self._stop_attempt = time.monotonic()
        try:
            return self.run_stop(uid)
        except Exception as exc:  # noqa: BLE001 - Tiled may be down; retry later
            log.warning("%s: could not look for the stop document of run %s: %s", self.unit.kind, uid, exc)
            return None

    def _check_quiet_run(self) -> None:
        """An open run whose messages stopped: look for its stop document in the raw record.

        The lookup runs in a background thread (a Tiled that is down makes its client
        retry for many seconds; the bus must keep being read meanwhile); its answer is
        used only if the same run is still open when it arrives.
        """
        lookup = self._stop_lookup
        if lookup is not None:
            if not lookup[1].done():
                return
            self._stop_lookup = None
            uid, future = lookup
            found = future.result()
            if found is not None and uid == self.run_uid and self.run_state == "running":
                self._stop_from_record(found)
            return
        if self.run_state != "running" or self.run_uid is None or self.run_stop is None:
            return
        now = time.monotonic()
        quiet = now - self._last_run_msg
        # A paused run is quiet too: look less often the longer it lasts (1 s to 10 s).
        if quiet < self.stop_quiet_s or now - self._stop_attempt < min(10.0, max(RESUME_RETRY_S, quiet / 4)):
            return
        self._stop_attempt = now
        if self._lookup_pool is None:
            self._lookup_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="stop-lookup")
        self._stop_lookup = (self.run_uid, self._lookup_pool.submit(self._fetch_stop, self.run_uid))

    def _stop_from_record(self, found: tuple[dict[str, Any], dict[str, int] | None]) -> None:
        stop, frames_published = found
        log.warning(
            "%s: the stop document of run %s never arrived on the bus; read it back from the raw record%s",
            self.unit.kind, self.run_uid, "" if frames_published is not None else " (frames published unknown)",
        )
        self._end_run(stop, frames_published or {}, "raw record")

    def _close_missed_stop(self, uid: str) -> None:
        """The next run started while ``uid`` was open: close it from the raw record, else as unknown."""
        self._stop_lookup = None  # an answer still in flight is for this run: asked again here
        found = self._fetch_stop(uid)
        if found is not None:
            self._stop_from_record(found)
            return
        log.warning("%s: run %s ended without a stop document on the bus or in the raw record", self.unit.kind, uid)
        self._end_run(
            {"run_start": uid, "exit_status": "unknown", "reason": "no stop document before the next run started"},
            {}, "none",
        )

    def _close_streams(self, run_uid: str, frames_published: dict[str, int]) -> None:
        """Count the frames lost after each stream's last received one (the tail gap)."""
        for stream, total in frames_published.items():
            tail = self.receiver.tracker.close(run_uid, stream, total)
            if tail:
                self.tail_missed[stream] += tail
                log.warning(
                    "%s: run %s stream %s ended with %d frame(s) lost after the last one received "
                    "(%d published)", self.unit.kind, run_uid, stream, tail, total,
                )

    def _begin_run(self, uid: str, start: dict[str, Any]) -> None:
        if self.run_state == "running" and self.run_uid is not None and self.run_uid != uid:
            self._close_missed_stop(self.run_uid)
        self.run_uid = uid
        self.runs_seen.add(uid)
        self.run_state = "running"
        self.stop_source = ""
        self._last_run_msg = time.monotonic()
        self._run_base = self._counters()
        self.unit.start_run(uid, start)

    def _resume(self, uid: str) -> bool:
        """Join run `uid` late from its stored documents; True once joined."""
        if self.run_documents is None:
            return False
        now = time.monotonic()
        last = self._resume_attempt.get(uid)
        if last is not None and now - last < RESUME_RETRY_S:
            return False
        self._resume_attempt[uid] = now
        try:
            found = self.run_documents(uid)
        except Exception as exc:  # noqa: BLE001 - Tiled may be down; retry later
            log.warning("%s: could not fetch the documents of run %s: %s", self.unit.kind, uid, exc)
            return False
        if found is None:
            return False
        start, descriptors = found
        self._begin_run(uid, start)
        # Counters of a resumed run start before its first received frame, so the frames
        # missed before it (the receiver's late-join gap) belong to this run.
        self._run_base = self._counters()
        self.resumed_runs.add(uid)
        self._resume_attempt.pop(uid, None)
        for descriptor in descriptors:
            self.unit.descriptor(descriptor)
        log.warning(
            "%s: joined run %s late (start and %d descriptor(s) read back); earlier frames are a gap",
            self.unit.kind, uid, len(descriptors),
        )
        return True

    def _frames(self, msg: FrameMessage) -> None:
        n = msg.n
        header = msg.header
        self.frames_seen += n
        self.last_frame_ts = header.ts
        self.lag_s = max(0.0, time.time() - header.ts)
        if header.run_uid == self.run_uid:
            self._last_run_msg = time.monotonic()
        if header.run_uid not in self.runs_seen:
            if not self._resume(header.run_uid):
                self._drop("no start document for run", n, header.run_uid)
                return
            # The gap before this message was counted before the run's counters began.
            state = self.receiver.tracker.summary()
            missed_before = next(
                (s["missed"] for s in state["streams"]
                 if s["run_uid"] == header.run_uid and s["stream"] == header.stream),
                0,
            )
            self._run_base["missed"] -= missed_before
            self._run_base["gaps"] -= 1 if missed_before else 0
            self._run_base["frames_seen"] -= n
        if msg.frames.dtype.kind == "f" and not np.isfinite(msg.frames).all():
            self._drop("non-finite values (NaN or inf)", n, f"{header.stream} seq {header.seq}")
            return
        if self.frame_delay_s:
            # The simulated slow computation (debug option), not synchronisation.
            self.stop_event.wait(self.frame_delay_s * n)
        used = self.unit.frames(msg)
        self.frames_processed += used
        if used < n:
            self.dropped["not used by unit"] += n - used

    # -- status ------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        counters = self._counters()
        report = {
            "worker": self.unit.kind,
            "pid": os.getpid(),
            "ready": self.heartbeat_seen,
            "run_uid": self.run_uid,
            "run_state": self.run_state,
            "stop_source": self.stop_source,
            "frames_seen": self.frames_seen,
            "frames_processed": self.frames_processed,
            "missed": counters["missed"],
            "gaps": counters["gaps"],
            "documents_missed": counters["documents_missed"],
            "tail_missed": counters["tail_missed"],
            "decode_errors": counters["decode_errors"],
            "dropped": dict(self.dropped),
            "lag_s": round(self.lag_s, 4),
            "unit": self.unit.status(),
        }
        if self.results is not None:
            report["results"] = {**self.results.stats.as_dict(), "pending": self.results.pending}
        if self.status_results is not None:
            report["status_path"] = {**self.status_results.stats.as_dict(), "pending": self.status_results.pending}
        bus = self.receiver
        report["receive_queue"] = {
            "rcvhwm": bus.rcvhwm, "largest_message": bus.largest_message, "max_queued_bytes": bus.max_queued_bytes,
        }
        return report

    def _counters(self) -> dict[str, Any]:
        bus = self.receiver.stats()
        docs = [s for s in self.receiver.tracker.summary()["streams"] if s["stream"] == DOCUMENT_STREAM]
        docs_missed = sum(s["missed"] for s in docs)
        docs_gaps = sum(s["gaps"] for s in docs)
        return {
            "frames_seen": self.frames_seen,
            "frames_processed": self.frames_processed,
            # frames only: documents a late-joining worker missed are counted apart
            "missed": bus.get("missed", 0) - docs_missed,
            "gaps": bus.get("gaps", 0) - docs_gaps,
            "documents_missed": docs_missed,
            "tail_missed": sum(self.tail_missed.values()),
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

        Non-blocking, at most once per ``tiled_status_interval`` seconds; ``final`` is
        always published. With ``status_results`` the status takes that path (never
        behind the results); the ``final`` status goes both ways, so that it also lands
        after the run's last results. Without it, through the results queue, and while
        results are waiting only every ``5 · tiled_status_interval`` (status never
        crowds out results).
        """
        if self.results is None or self.run_uid is None:
            return
        now = time.time()
        if not final and now < self._next_tiled_status:
            return
        if (
            not final
            and self.status_results is None
            and self.results.pending
            and now < self._next_tiled_status + 4 * self.tiled_status_interval
        ):
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
            stop_source=self.stop_source,
            lag_s=round(self.lag_s, 4),
            updated=now,
            results={**self.results.stats.as_dict(), "pending": self.results.pending},
            unit=self.unit.status(),
            units={"lag_s": "s", "updated": "s since the epoch", "counters": "frames since the run's start"},
            **self.run_counters(),
        )
        path = (self.run_uid, "workers", self.unit.kind)
        if self.status_results is not None:
            self.status_results.update_metadata(path, md)
            if not final:
                return
        self.results.update_metadata(path, md)

    def push_status(self, final: bool = False) -> None:
        if self.run_state == "running":
            self.publish_run_status()
        if self.status_pusher is None:
            return
        report = self.status()
        report["final"] = final
        self.status_pusher.send(report)
