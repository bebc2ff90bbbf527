"""Where frames and documents leave for the bus: the PUB publisher and the status PUSH.

:class:`BusPublisher` is the one PUB socket of a process (RunEngine documents and
detector frames share it, from different threads); :class:`StatusPusher` and
:class:`StatusCollector` carry worker status reports to the orchestrator over
PUSH/PULL.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import Any, Self

import numpy as np
import zmq

from .curve import CurveConfig
from .protocol import (
    DOCUMENT_NAMES,
    DOCUMENT_STREAM,
    FrameDecodeError,
    StatusMessage,
    _document_parts,
    decode,
    encode_frames,
    encode_heartbeat,
    encode_status,
    pack_document,
)

__all__ = ["BusPublisher", "StatusCollector", "StatusPusher"]

logger = logging.getLogger(__name__)

#: Default high-water mark, in messages. ZeroMQ counts messages, not bytes: with
#: batches of 4 MiB, 10 000 queued messages are 40 GiB — size it to the batch.
DEFAULT_HWM = 10_000


def _resolved_endpoint(socket: zmq.Socket) -> str:
    endpoint = socket.getsockopt(zmq.LAST_ENDPOINT)
    return endpoint.decode() if isinstance(endpoint, bytes) else str(endpoint)


class BusPublisher:
    """The PUB socket that puts frames, documents and heartbeats on the bus.

    One socket, guarded by a lock, so a RunEngine callback and a detector thread can
    share it (ZeroMQ sockets are not thread-safe). Sequence numbers are kept per
    ``(run_uid, stream)``: frames count frames (a message of ``n`` frames advances by
    ``n``), documents count documents per run under the stream ``"documents"``.
    Subscribing it to a RunEngine (``RE.subscribe(publisher)``) publishes every
    document with its run uid.

    Parameters
    ----------
    address : str
        Endpoint to connect to (normally a proxy's frontend, the XSUB side), or to bind
        when `bind` is true (``tcp://127.0.0.1:*`` picks a free port; see
        :attr:`address`).
    bind : bool, optional
        Bind instead of connect.
    context : zmq.Context, optional
        Default ``zmq.Context.instance()``.
    sndhwm : int, optional
        Send high-water mark, in messages; beyond it PUB drops messages for a slow
        peer (receivers see the gap in the sequence numbers).
    name : str, optional
        Names this publisher in its heartbeats.
    curve : CurveConfig, optional
        Encrypt the link (CURVE server when binding, client when connecting); default
        plain TCP (loopback).

    Notes
    -----
    Frames are sent zero-copy: do not modify an array after publishing it (ZeroMQ may
    still be reading it); pyzmq keeps it alive until sent.
    """

    def __init__(
        self,
        address: str,
        *,
        bind: bool = False,
        context: zmq.Context | None = None,
        sndhwm: int = DEFAULT_HWM,
        name: str = "",
        curve: CurveConfig | None = None,
    ) -> None:
        if sndhwm < 0:
            raise ValueError(f"sndhwm must be >= 0, got {sndhwm}")
        self.name = name
        self._lock = threading.Lock()
        self._socket = (context or zmq.Context.instance()).socket(zmq.PUB)
        self._socket.setsockopt(zmq.SNDHWM, sndhwm)
        self._socket.setsockopt(zmq.LINGER, 0)
        if curve is not None:
            (curve.secure_server if bind else curve.secure_client)(self._socket)
        if bind:
            self._socket.bind(address)
            self.address = _resolved_endpoint(self._socket)
        else:
            self._socket.connect(address)
            self.address = address
        self._next_seq: dict[tuple[str, str], int] = {}
        self._heartbeats = 0
        self._run_of: dict[str, str] = {}  # descriptor / resource / stream_resource uid → run
        self._owned: dict[str, list[str]] = {}  # run uid → uids in _run_of, dropped at stop
        self._unknown_refs: set[str | None] = set()  # warned about once each
        self._closed = False
        self._current_run_uid: str | None = None

    # -- frames ----------------------------------------------------------------------

    def publish_frames(self, run_uid: str, stream: str, frames: np.ndarray, **fields: Any) -> int:
        """Publish a batch of frames (one message) zero-copy.

        Parameters
        ----------
        run_uid : str
            Uid of the run the frames belong to.
        stream : str
            Stream name (not ``"documents"``).
        frames : ndarray, shape (n, ...) or (ny, nx), dtype whitelisted
            The batch; a single 2-D frame is sent as ``n = 1``.
        **fields
            Extras (``helicity=``, ``pair=``, ``frame_index=``, ``scan_position=``,
            ``repeat=``): scalars for all frames, length-``n`` sequences per frame.

        Returns
        -------
        int
            Sequence number of ``frames[0]``.

        Raises
        ------
        ValueError, TypeError
            As :func:`~speckleflow.streaming.protocol.encode_frames`, or if `stream`
            is ``"documents"``.
        RuntimeError
            If the publisher is closed.
        """
        if isinstance(frames, np.ndarray) and frames.ndim == 2:
            frames = frames[np.newaxis]
        if stream == DOCUMENT_STREAM:
            raise ValueError(f"stream {stream!r} is reserved for documents")
        key = (run_uid, stream)
        with self._lock:
            self._check_open()
            seq = self._next_seq.get(key, 0)
            parts = encode_frames(run_uid, stream, seq, frames, fields=fields)
            self._socket.send_multipart(parts, copy=False)
            self._next_seq[key] = seq + frames.shape[0]
        return seq

    # -- documents -------------------------------------------------------------------

    def _run_uid_for(self, name: str, doc: Mapping[str, Any]) -> str:
        """Run uid of a document, learning descriptor/resource uids (lock held)."""
        if name == "start":
            self._current_run_uid = str(doc.get("uid", ""))
            return self._current_run_uid
        if name in ("descriptor", "resource", "stream_resource", "stop"):
            run_uid = str(doc.get("run_start", ""))
            uid = doc.get("uid")
            if name != "stop" and isinstance(uid, str):
                self._run_of[uid] = run_uid
                self._owned.setdefault(run_uid, []).append(uid)
            return run_uid
        if name in ("event", "event_page"):
            ref = doc.get("descriptor")
        elif name in ("datum", "datum_page"):
            ref = doc.get("resource")
        elif name == "stream_datum":
            ref = doc.get("stream_resource") or doc.get("descriptor")
        else:
            ref = None
        if not isinstance(ref, str):
            ref = None
        run_uid = self._run_of.get(ref, "") if ref is not None else ""
        if not run_uid and ref not in self._unknown_refs:
            if len(self._unknown_refs) > 1000:
                self._unknown_refs.clear()
            self._unknown_refs.add(ref)
            logger.warning(
                "no run known for %s document (ref %r); publishing with run_uid=''", name, ref
            )
        return run_uid

    def publish_document(self, name: str, doc: Mapping[str, Any]) -> int:
        """Publish one Bluesky document.

        The run uid comes from the start document, ``run_start``, or the descriptor /
        resource / stream_resource the document refers to. A stop document's message
        carries ``frames_published`` (frames this publisher sent per frame stream of the
        run) in its header, so receivers can count frames lost at the end of a stream.

        Parameters
        ----------
        name : str
            Bluesky document name.
        doc : mapping
            The document; numpy values are converted to plain Python.

        Returns
        -------
        int
            Sequence number of the document within its run.

        Raises
        ------
        ValueError
            If `name` is not a Bluesky document name.
        TypeError
            If the document holds something that cannot be encoded.
        """
        if name not in DOCUMENT_NAMES:
            raise ValueError(f"name {name!r} is not a Bluesky document name")
        body = pack_document(doc)  # outside the lock: frames need not wait for it
        with self._lock:
            self._check_open()
            run_uid = self._run_uid_for(name, doc)
            key = (run_uid, DOCUMENT_STREAM)
            seq = self._next_seq.get(key, 0)
            published = None
            if name == "stop":
                # Frames lost after a stream's last received one leave no jump in the
                # sequence numbers: the stop carries how many there were.
                published = {
                    stream: n for (uid, stream), n in self._next_seq.items()
                    if uid == run_uid and stream != DOCUMENT_STREAM
                }  # as frames_published(), already under the lock
            self._socket.send_multipart(
                _document_parts(name, body, run_uid, seq, frames_published=published)
            )
            self._next_seq[key] = seq + 1
            if name == "stop":
                if run_uid == self._current_run_uid:
                    self._current_run_uid = None
                for uid in self._owned.pop(run_uid, ()):
                    self._run_of.pop(uid, None)
                self._next_seq.pop(key, None)
        return seq

    @property
    def current_run_uid(self) -> str | None:
        """Uid of the open run (between its start and stop documents), else ``None``.

        Detectors sharing this publisher tag their frames with it.
        """
        return self._current_run_uid

    def __call__(self, name: str, doc: Mapping[str, Any]) -> None:
        """RunEngine callback: ``RE.subscribe(publisher)``."""
        self.publish_document(name, doc)

    # -- liveness and lifetime ---------------------------------------------------------

    def heartbeat(self, run_uid: str = "") -> int:
        """Publish a heartbeat (also how a new subscriber learns it is connected).

        Parameters
        ----------
        run_uid : str, optional
            Current run, if any.

        Returns
        -------
        int
            This publisher's heartbeat counter.
        """
        with self._lock:
            self._check_open()
            seq = self._heartbeats
            self._socket.send_multipart(encode_heartbeat(self.name, seq, run_uid=run_uid))
            self._heartbeats = seq + 1
        return seq

    def frames_published(self, run_uid: str) -> dict[str, int]:
        """Frames this publisher sent per frame stream of run ``run_uid`` (during or after it)."""
        with self._lock:
            return {
                stream: n for (uid, stream), n in self._next_seq.items()
                if uid == run_uid and stream != DOCUMENT_STREAM
            }

    def next_seq(self, run_uid: str, stream: str) -> int:
        """Sequence number the next frame (or document) of this stream will get."""
        with self._lock:
            return self._next_seq.get((run_uid, stream), 0)

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("BusPublisher is closed")

    def close(self, linger_ms: int = 1000) -> None:
        """Close the socket, waiting up to `linger_ms` for queued messages to leave."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._socket.close(linger=linger_ms)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class StatusPusher:
    """A worker's status channel to the orchestrator (PUSH, connect, never blocks).

    Parameters
    ----------
    address : str
        The collector's endpoint (:attr:`StatusCollector.address`).
    context : zmq.Context, optional
        Default ``zmq.Context.instance()``.
    sndhwm : int, optional
        Reports queued beyond this many are dropped and counted in :attr:`dropped`.
    name : str, optional
        Names the sender in the header's ``stream``.
    curve : CurveConfig, optional
        Encrypt the link (this end is the CURVE client).
    """

    def __init__(
        self,
        address: str,
        *,
        context: zmq.Context | None = None,
        sndhwm: int = 1000,
        name: str = "",
        curve: CurveConfig | None = None,
    ) -> None:
        self.name = name
        self.dropped = 0
        self.sent = 0
        self._lock = threading.Lock()
        self._socket = (context or zmq.Context.instance()).socket(zmq.PUSH)
        self._socket.setsockopt(zmq.SNDHWM, sndhwm)
        self._socket.setsockopt(zmq.LINGER, 0)
        if curve is not None:
            curve.secure_client(self._socket)
        self._socket.connect(address)
        self._closed = False

    def send(self, payload: Mapping[str, Any], *, run_uid: str = "") -> bool:
        """Send a report without blocking.

        Parameters
        ----------
        payload : mapping with str keys
            The report.
        run_uid : str, optional
            Run it is about.

        Returns
        -------
        bool
            False if it was dropped because the queue is full (counted in
            :attr:`dropped`).
        """
        with self._lock:
            if self._closed:
                raise RuntimeError("StatusPusher is closed")
            parts = encode_status(payload, run_uid=run_uid, stream=self.name, seq=self.sent)
            try:
                self._socket.send_multipart(parts, flags=zmq.NOBLOCK)
            except zmq.Again:
                self.dropped += 1
                return False
            self.sent += 1
            return True

    def close(self, linger_ms: int = 1000) -> None:
        """Close the socket, waiting up to `linger_ms` for queued reports to leave."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._socket.close(linger=linger_ms)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class StatusCollector:
    """The orchestrator's end of the status channel (PULL, bind).

    Parameters
    ----------
    address : str, optional
        Endpoint to bind; default a free port on 127.0.0.1 (see :attr:`address`).
    context : zmq.Context, optional
        Default ``zmq.Context.instance()``.
    rcvhwm : int, optional
        Receive high-water mark, in messages.
    curve : CurveConfig, optional
        Encrypt the link (this end is the CURVE server).

    Attributes
    ----------
    address : str
        The resolved endpoint pushers connect to.
    decode_errors : int
        Malformed reports discarded.
    """

    def __init__(
        self,
        address: str = "tcp://127.0.0.1:*",
        *,
        context: zmq.Context | None = None,
        rcvhwm: int = DEFAULT_HWM,
        curve: CurveConfig | None = None,
    ) -> None:
        self._socket = (context or zmq.Context.instance()).socket(zmq.PULL)
        self._socket.setsockopt(zmq.RCVHWM, rcvhwm)
        self._socket.setsockopt(zmq.LINGER, 0)
        if curve is not None:
            curve.secure_server(self._socket)
        self._socket.bind(address)
        self.address = _resolved_endpoint(self._socket)
        self.decode_errors = 0

    def poll(self, timeout_ms: int = 0) -> list[dict[str, Any]]:
        """Reports that arrived: waits up to `timeout_ms` for the first, then drains.

        Parameters
        ----------
        timeout_ms : int, optional
            Longest wait for the first report, milliseconds (0: do not wait).

        Returns
        -------
        list of dict
            Payloads in arrival order (empty on timeout). Malformed reports are
            counted in :attr:`decode_errors` and skipped.
        """
        reports: list[dict[str, Any]] = []
        if not self._socket.poll(timeout_ms, zmq.POLLIN):
            return reports
        while True:
            try:
                parts = self._socket.recv_multipart(flags=zmq.NOBLOCK)
            except zmq.Again:
                return reports
            try:
                message = decode(parts)
            except FrameDecodeError as exc:
                self.decode_errors += 1
                logger.warning("dropping malformed status report: %s", exc)
                continue
            if isinstance(message, StatusMessage):
                reports.append(message.payload)
            else:
                self.decode_errors += 1
                logger.warning("dropping %s message on the status channel", message.header.kind)

    def close(self) -> None:
        """Close the socket."""
        self._socket.close(linger=0)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
