"""Where frames and documents come off the bus: the SUB receiver with gap accounting."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterable
from typing import Any, Self

import zmq

from .curve import CurveConfig
from .protocol import (
    TOPIC_DOCUMENT,
    TOPIC_FRAME,
    TOPIC_HEARTBEAT,
    DocumentMessage,
    FrameDecodeError,
    FrameMessage,
    HeartbeatMessage,
    Message,
    decode,
)
from .publisher import DEFAULT_HWM
from .sequence import SequenceTracker

__all__ = ["BusReceiver", "SequenceTracker"]

logger = logging.getLogger(__name__)


class BusReceiver:
    """A SUB socket on the bus that decodes, validates and counts what it misses.

    Frames arrive zero-copy (``recv_multipart(copy=False)``): ``message.frames`` is a
    read-only view of ZeroMQ's buffer. Malformed messages are counted by field in
    :attr:`decode_errors`, logged (at most one line per field per `warn_interval_s`)
    and skipped; the receiver keeps running.

    Parameters
    ----------
    address : str
        Endpoint to connect to (normally a proxy's backend, the XPUB side).
    topics : iterable of bytes, optional
        SUB prefix filters; default frames, documents and heartbeats.
    context : zmq.Context, optional
        Default ``zmq.Context.instance()``.
    rcvhwm : int, optional
        Receive high-water mark, in messages (ZeroMQ counts messages, not bytes).
        Beyond it messages are dropped upstream and show up as gaps.
    max_queued_bytes : int, optional
        Byte budget of the receive queue. ZeroMQ's high-water mark counts messages, so
        10 000 queued 64 KiB frames hold 640 MB; with a budget the receiver lowers
        RCVHWM to ``max(1, max_queued_bytes // largest message so far)`` (never above
        ``rcvhwm``) as soon as a larger message arrives — libzmq applies it to the
        connected pipe. From the first frame message on, the queue then holds at most
        ``max_queued_bytes`` rounded down to whole messages (at least one), plus the
        message being received; the operating system's socket buffers come on top
        (kernel memory, not the process's). None: ``rcvhwm`` messages, whatever their
        size.
    tracker : SequenceTracker, optional
        Share or inspect the sequence bookkeeping; default a new one.
    warn_interval_s : float, optional
        Minimum time between two warnings about the same field, seconds.
    curve : CurveConfig, optional
        Encrypt the link (this end is the CURVE client); default plain TCP.
    rcvbuf : int, optional
        Kernel receive buffer (``SO_RCVBUF``), bytes; 0 keeps the OS default
        (autotuned, up to ``net.ipv4.tcp_rmem``, often tens of MiB). ``rcvhwm`` bounds
        the messages ZeroMQ queues; this bounds the bytes the kernel holds.

    Attributes
    ----------
    tracker : SequenceTracker
    decode_errors : collections.Counter
        Malformed messages by offending field.
    """

    def __init__(
        self,
        address: str,
        *,
        topics: Iterable[bytes] = (TOPIC_FRAME, TOPIC_DOCUMENT, TOPIC_HEARTBEAT),
        context: zmq.Context | None = None,
        rcvhwm: int = DEFAULT_HWM,
        tracker: SequenceTracker | None = None,
        warn_interval_s: float = 5.0,
        curve: CurveConfig | None = None,
        max_queued_bytes: int | None = None,
        rcvbuf: int = 0,
    ) -> None:
        if isinstance(rcvhwm, bool) or int(rcvhwm) != rcvhwm or rcvhwm < 1:
            raise ValueError(f"rcvhwm must be a positive number of messages, got {rcvhwm!r}")
        if max_queued_bytes is not None and (
            isinstance(max_queued_bytes, bool) or int(max_queued_bytes) != max_queued_bytes or max_queued_bytes < 1
        ):
            raise ValueError(f"max_queued_bytes must be a positive number of bytes or None, got {max_queued_bytes!r}")
        self.address = address
        self.max_rcvhwm = int(rcvhwm)
        self.max_queued_bytes = None if max_queued_bytes is None else int(max_queued_bytes)
        #: The receive high-water mark in force, messages.
        self.rcvhwm = int(rcvhwm)
        #: The largest message received so far, bytes (all parts).
        self.largest_message = 0
        self.tracker = tracker if tracker is not None else SequenceTracker()
        self.decode_errors: Counter[str] = Counter()
        self.frames = 0
        self.documents = 0
        self.heartbeats = 0
        self._warn_interval_s = warn_interval_s
        self._last_warning: dict[str, float] = {}
        self._suppressed: Counter[str] = Counter()
        self._socket = (context or zmq.Context.instance()).socket(zmq.SUB)
        self._socket.setsockopt(zmq.RCVHWM, rcvhwm)
        if rcvbuf > 0:
            self._socket.setsockopt(zmq.RCVBUF, rcvbuf)
        self._socket.setsockopt(zmq.LINGER, 0)
        for topic in topics:
            self._socket.setsockopt(zmq.SUBSCRIBE, topic)
        if curve is not None:
            curve.secure_client(self._socket)
        self._socket.connect(address)

    def recv(self, timeout_ms: int | None = None) -> Message | None:
        """Receive, decode and account for one message.

        Parameters
        ----------
        timeout_ms : int or None, optional
            Longest wait, milliseconds; None waits indefinitely, 0 does not wait.

        Returns
        -------
        Message or None
            None on timeout or when the message was malformed (see
            :attr:`decode_errors`).
        """
        socket = self._socket
        try:
            parts = socket.recv_multipart(zmq.NOBLOCK, copy=False)
        except zmq.Again:
            if timeout_ms == 0 or not socket.poll(timeout_ms, zmq.POLLIN):
                return None
            try:
                parts = socket.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return None
        if self.max_queued_bytes is not None:
            self._fit_hwm(sum(len(p) for p in parts))
        try:
            message = decode(parts)
        except FrameDecodeError as exc:
            self._count_error(exc)
            return None
        if type(message) is FrameMessage:
            header = message.header
            self.frames += header.shape[0]
            self.tracker.update(header.run_uid, header.stream, header.seq, header.shape[0])
        elif type(message) is DocumentMessage:
            header = message.header
            self.documents += 1
            self.tracker.update(header.run_uid, header.stream, header.seq, 1)
        elif type(message) is HeartbeatMessage:
            self.heartbeats += 1
        return message

    def _fit_hwm(self, size: int) -> None:
        """Lower RCVHWM so that the queue of messages of this size stays in the byte budget."""
        if size <= self.largest_message:
            return
        self.largest_message = size
        assert self.max_queued_bytes is not None
        hwm = max(1, min(self.max_rcvhwm, self.max_queued_bytes // size))
        if hwm != self.rcvhwm:
            self._socket.setsockopt(zmq.RCVHWM, hwm)
            logger.info(
                "receive queue from %s: %d messages of up to %d bytes fit the %d-byte budget",
                self.address, hwm, size, self.max_queued_bytes,
            )
            self.rcvhwm = hwm

    def _count_error(self, exc: FrameDecodeError) -> None:
        field = exc.field
        self.decode_errors[field] += 1
        now = time.monotonic()
        last = self._last_warning.get(field)
        if last is not None and now - last < self._warn_interval_s:
            self._suppressed[field] += 1
            return
        self._last_warning[field] = now
        suppressed = self._suppressed.pop(field, 0)
        more = f" ({suppressed} more since the last warning)" if suppressed else ""
        logger.warning("dropped malformed message from %s: %s%s", self.address, exc, more)

    def stats(self) -> dict[str, Any]:
        """Counters so far.

        Returns
        -------
        dict
            ``frames``, ``documents``, ``heartbeats``, ``received`` (frames +
            documents), ``messages``, ``missed``, ``gaps``, ``out_of_order``,
            ``decode_errors`` (dict field → count), ``rcvhwm`` (messages, in
            force), ``largest_message`` (bytes), ``max_queued_bytes``.
        """
        tracker = self.tracker
        return {
            "frames": self.frames,
            "documents": self.documents,
            "heartbeats": self.heartbeats,
            "received": tracker.received,
            "messages": tracker.messages,
            "missed": tracker.missed,
            "gaps": tracker.gaps,
            "out_of_order": tracker.out_of_order,
            "decode_errors": dict(self.decode_errors),
            "rcvhwm": self.rcvhwm,
            "largest_message": self.largest_message,
            "max_queued_bytes": self.max_queued_bytes,
        }

    def close(self) -> None:
        """Close the socket."""
        self._socket.close(linger=0)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
