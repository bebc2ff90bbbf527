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


#: Seconds a replacement socket may take to complete its handshake with the publisher.
HANDSHAKE_WAIT_S = 2.0

#: Seconds the old socket of a hand-over may stay silent while the new one holds a
#: message the old one has not delivered yet (it has it, unless its queue dropped it:
#: then what it lacks is counted as missed).
HAND_OVER_WAIT_S = 0.5

_TIMED_OUT = object()


def _header(parts: list[Any]) -> bytes:
    """A message's identity: its header part (topic, run, stream, seq and send time)."""
    return parts[1].bytes if len(parts) > 1 else parts[0].bytes


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
        10 000 queued 64 KiB frames hold 640 MB; with a budget the receiver moves to a
        socket with RCVHWM ``max(1, max_queued_bytes // largest message so far)``
        (never above ``rcvhwm``) as soon as a larger message arrives (see
        :meth:`_fit_hwm`: libzmq cannot lower the mark of a connected socket safely).
        From then on the queue holds at most
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
        #: The mark the byte budget asks for (in force once no hand-over is under way).
        self.wanted_rcvhwm = int(rcvhwm)
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
        self._context = context or zmq.Context.instance()
        self._topics = tuple(topics)
        self._curve = curve
        self._rcvbuf = rcvbuf
        self._socket = self._connect(self.rcvhwm)
        #: While a socket with a lower RCVHWM takes over (see :meth:`_fit_hwm`): the
        #: old socket, drained first, and the headers it delivered meanwhile, which the
        #: new socket will deliver again.
        self._draining: zmq.Socket | None = None
        self._delivered: set[bytes] = set()
        self._drain_left = 0
        self._held: list[Any] | None = None
        self._held_since = 0.0
        #: Sockets replaced to lower RCVHWM, and duplicates dropped at the hand-over.
        self.replacements = 0
        self.duplicates = 0

    def _connect(self, rcvhwm: int, *, wait_for_handshake: bool = False) -> zmq.Socket:
        """A SUB socket with every option set before it connects (libzmq applies HWMs at connect).

        With ``wait_for_handshake``, return once the ZMTP handshake with the publisher
        succeeded (the subscriptions go out then), or after :data:`HANDSHAKE_WAIT_S`.
        """
        socket = self._context.socket(zmq.SUB)
        monitor = socket.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED) if wait_for_handshake else None
        socket.setsockopt(zmq.RCVHWM, rcvhwm)
        if self._rcvbuf > 0:
            socket.setsockopt(zmq.RCVBUF, self._rcvbuf)
        socket.setsockopt(zmq.LINGER, 0)
        for topic in self._topics:
            socket.setsockopt(zmq.SUBSCRIBE, topic)
        if self._curve is not None:
            self._curve.secure_client(socket)
        socket.connect(self.address)
        if monitor is not None:
            try:
                if monitor.poll(int(HANDSHAKE_WAIT_S * 1000)):
                    monitor.recv_multipart()
            finally:
                socket.disable_monitor()
                monitor.close(linger=0)
        return socket

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
        parts = self._next_parts(timeout_ms)
        if parts is None:
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

    def _next_parts(self, timeout_ms: int | None) -> list[Any] | None:
        """The next message's parts; during a hand-over (:meth:`_fit_hwm`) the old socket's first."""
        if self._draining is not None:
            parts = self._hand_over(timeout_ms)
            if parts is _TIMED_OUT:
                return None
            if parts is not None:
                return parts
        if self._held is not None:
            parts, self._held = self._held, None
            return parts
        socket = self._socket
        while True:
            try:
                parts = socket.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                if timeout_ms == 0 or not socket.poll(timeout_ms, zmq.POLLIN):
                    return None
                try:
                    parts = socket.recv_multipart(zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    return None
            if self._delivered:
                if _header(parts) in self._delivered:  # the old socket delivered it already
                    self.duplicates += 1
                    continue
                self._delivered.clear()  # in order from here on: no more repeats
            return parts

    def _hand_over(self, timeout_ms: int | None) -> Any:
        """Read the old socket until it has caught up with the new one; None once it has.

        The new socket's first message ``m`` (held back) marks the hand-over point: when
        the old socket delivers ``m`` too, everything before it came through the old one
        and everything after it is in the new one. If the old socket instead shows it is
        already past ``m`` (``m`` is a duplicate), the new socket's repeats are dropped by
        header. If the old socket stays empty with ``m`` held for
        :data:`HAND_OVER_WAIT_S`, what it missed was lost upstream; the byte budget
        also ends the hand-over (see :meth:`_fit_hwm`).
        """
        old, new = self._draining, self._socket
        assert old is not None
        deadline = None if timeout_ms is None else time.monotonic() + timeout_ms / 1000
        while True:
            try:
                parts = old.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                parts = None
            if parts is not None:
                header = _header(parts)
                if self._held is not None and header == _header(self._held):
                    self._held = None  # the same message: the sockets meet here
                    self._delivered.clear()
                    self._stop_draining()
                    return parts
                self._delivered.add(header)
                self._drain_left -= sum(len(p) for p in parts)
                if self._drain_left <= 0:  # a consumer that stays behind: the budget wins
                    self._stop_draining()
                return parts
            if self._held is None:
                try:
                    first = new.recv_multipart(zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    first = None
                if first is not None:
                    if _header(first) in self._delivered:  # the old socket is ahead
                        self.duplicates += 1
                        self._stop_draining()
                        return None
                    self._held, self._held_since = first, time.monotonic()
                    # The new socket is subscribed (it received): the old one may stop
                    # growing. It was subscribed until now, so it has `first` too.
                    for topic in self._topics:
                        old.setsockopt(zmq.UNSUBSCRIBE, topic)
            elif time.monotonic() - self._held_since > HAND_OVER_WAIT_S:
                self._stop_draining()  # the old socket will not deliver it
                return None
            wait_ms = 20 if deadline is None else min(20, (deadline - time.monotonic()) * 1000)
            if wait_ms <= 0 and timeout_ms != 0:
                return _TIMED_OUT
            poller = zmq.Poller()
            poller.register(old, zmq.POLLIN)
            if self._held is None:
                poller.register(new, zmq.POLLIN)
            if not poller.poll(max(0, wait_ms)) and timeout_ms == 0:
                return _TIMED_OUT

    def _fit_hwm(self, size: int) -> None:
        """Keep the queue of messages of this size in the byte budget: a socket with a lower RCVHWM.

        Lowering RCVHWM on a connected socket is not safe: once its queue is above the
        new mark, libzmq never signals it readable again (zeromq/libzmq#2509; measured
        here: a receiver that lowered 10 000 → 1 on its first 4 MiB message got nothing
        more). So a new socket with the lower mark connects next to the old one
        (make before break: no gap while it subscribes). The old one is read first,
        until it delivers the new one's first message (then it is closed and the new
        socket carries on, its copies of what the old one delivered dropped by header),
        and unsubscribes once the new one has received, so it stops growing; when the
        consumer stays behind, it is read for at most ``max_queued_bytes`` and what it
        still holds is lost and counted as missed (see :meth:`_hand_over`).

        A still larger message during a hand-over lowers :attr:`wanted_rcvhwm` at once
        and the socket's mark after the hand-over: replacing the new socket while the
        old one is being read would close the old one with messages the new one never
        received (lost) and deliver the new one's copies of what the old one had
        delivered again.
        """
        if size > self.largest_message:
            self.largest_message = size
            assert self.max_queued_bytes is not None
            hwm = max(1, min(self.max_rcvhwm, self.max_queued_bytes // size))
            self.wanted_rcvhwm = min(self.wanted_rcvhwm, hwm)
        if self.wanted_rcvhwm >= self.rcvhwm or self._handing_over:
            return
        hwm = self.wanted_rcvhwm
        self._delivered.clear()
        self._draining, self._socket = self._socket, self._connect(hwm, wait_for_handshake=True)
        self._drain_left = self.max_queued_bytes
        self.replacements += 1
        logger.info(
            "receive queue from %s: %d messages of up to %d bytes fit the %d-byte budget",
            self.address, hwm, self.largest_message, self.max_queued_bytes,
        )
        self.rcvhwm = hwm

    @property
    def _handing_over(self) -> bool:
        """The old socket of a replacement is still read, or the new one's first message held."""
        return self._draining is not None or self._held is not None

    def _stop_draining(self) -> None:
        if self._draining is not None:  # a held message (if any) is delivered next
            self._draining.close(linger=0)
            self._draining = None

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
            force), ``largest_message`` (bytes), ``max_queued_bytes``,
            ``replacements`` (sockets replaced to lower RCVHWM), ``hand_over``
            (True while the old socket of a replacement is still being read).
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
            "replacements": self.replacements,
            "hand_over": self._handing_over,
        }

    def close(self) -> None:
        """Close the socket."""
        self._socket.close(linger=0)
        self._stop_draining()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
