"""Versioned wire format of the live data bus: encode and validate-decode messages.

Every message is a ZeroMQ multipart message ``[topic, header, *payload]``:

========== ============ =========================================================
topic      kind         parts
========== ============ =========================================================
``frame``  frame        ``[b"frame", header, raw frame buffer]``
``doc``    document     ``[b"doc", header, msgpack document]``
``heartbeat`` heartbeat ``[b"heartbeat", header]``
``status`` status       ``[b"status", header]`` (worker → orchestrator, PUSH/PULL)
========== ============ =========================================================

The topic comes first so that SUB sockets can filter by prefix. The header is a msgpack
map with the keys

- ``v`` (int) — :data:`PROTOCOL_VERSION`;
- ``kind`` (str) — ``"frame"``, ``"document"``, ``"heartbeat"`` or ``"status"``;
- ``run_uid`` (str) — the Bluesky run; non-empty for frames, may be ``""`` otherwise;
- ``stream`` (str) — the stream (``"primary"``, a detector's data stream, ...);
  non-empty for frames, ``"documents"`` for documents;
- ``seq`` (int ≥ 0) — for frames the sequence number of the first frame of the message,
  counted per ``(run_uid, stream)`` from 0 by the publisher; per run for documents;
  per publisher for heartbeats;
- ``ts`` (float) — send time, unix seconds;
- frames only: ``dtype`` (one of :data:`DTYPES`, little-endian), ``shape``
  (``[n, *frame_shape]``, 2 to 4 entries, each ≥ 1 — a message carries a batch of
  ``n`` frames) and ``fields`` (per-message extras such as ``helicity``, ``pair``,
  ``frame_index``, ``scan_position``, ``repeat``: a scalar applies to every frame, a list
  must have length ``n`` and gives one value per frame);
- documents only: ``name`` (Bluesky document name); the document is the third part;
- status only: ``payload`` (a map with string keys).

Frame buffers travel zero-copy: :func:`encode_frames` returns the array's own memory as
the last part (send it with ``copy=False``) and :func:`decode` rebuilds a read-only
``np.frombuffer(...).reshape(shape)`` view of the received buffer. Nothing is ever
unpickled; every field is validated and every failure is a :class:`FrameDecodeError`
naming the field.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeAlias

import msgpack
import numpy as np
import zmq

__all__ = [
    "DOCUMENT_NAMES",
    "DOCUMENT_STREAM",
    "DTYPES",
    "MAX_HEADER_BYTES",
    "MAX_NDIM",
    "MAX_PAYLOAD_BYTES",
    "PROTOCOL_VERSION",
    "TOPIC_DOCUMENT",
    "TOPIC_FRAME",
    "TOPIC_HEARTBEAT",
    "TOPIC_STATUS",
    "DocumentMessage",
    "FrameDecodeError",
    "FrameHeader",
    "FrameMessage",
    "Header",
    "HeartbeatMessage",
    "Message",
    "StatusMessage",
    "decode",
    "encode_document",
    "encode_frames",
    "encode_heartbeat",
    "encode_status",
    "pack_document",
    "to_builtin",
]

PROTOCOL_VERSION: Final = 1

TOPIC_FRAME: Final = b"frame"
TOPIC_DOCUMENT: Final = b"doc"
TOPIC_HEARTBEAT: Final = b"heartbeat"
TOPIC_STATUS: Final = b"status"

#: Stream name under which a run's documents are sequenced.
DOCUMENT_STREAM: Final = "documents"

#: Whitelisted frame dtypes, keyed by ``numpy.dtype.str`` (little-endian; uint8 is
#: ``"|u1"``, as numpy spells a byte-order-free type).
DTYPES: Final[Mapping[str, np.dtype]] = {
    np.dtype(name).str: np.dtype(name) for name in ("<u1", "<u2", "<u4", "<i2", "<i4", "<f4", "<f8")
}

#: Bluesky document names accepted in document messages.
DOCUMENT_NAMES: Final = frozenset(
    {
        "start",
        "descriptor",
        "event",
        "event_page",
        "stop",
        "resource",
        "datum",
        "datum_page",
        "stream_resource",
        "stream_datum",
    }
)

#: Largest frame payload or document part accepted (bytes); checked before allocating.
MAX_PAYLOAD_BYTES: Final = 1 << 30
#: Largest header part accepted (bytes).
MAX_HEADER_BYTES: Final = 1 << 20
#: Most entries in a frame ``shape`` (the batch axis included).
MAX_NDIM: Final = 4
#: Most frame streams a stop document's ``frames_published`` may name.
MAX_STREAMS: Final = 256

_KIND_FRAME: Final = "frame"
_KIND_DOCUMENT: Final = "document"
_KIND_HEARTBEAT: Final = "heartbeat"
_KIND_STATUS: Final = "status"

_SCALAR_TYPES: Final = frozenset({int, float, str, bool, type(None)})
_ALLOWED_DTYPES_TEXT: Final = ", ".join(sorted(DTYPES))


class FrameDecodeError(ValueError):
    """A message off the bus is malformed; names the offending field.

    Raised by :func:`decode` for every kind of bad input (garbage bytes, wrong version,
    unknown dtype, size mismatch, ...), ``from`` the underlying cause when there is one.
    Receivers count these by :attr:`field` and keep running.

    Parameters
    ----------
    field : str
        The offending header field (e.g. ``"dtype"``, ``"shape"``,
        ``"fields.helicity"``), or ``"parts"``, ``"topic"``, ``"header"``,
        ``"payload"``, ``"document"`` for the message structure itself.
    reason : str
        What is wrong, including the bad value (shortened if long).
    """

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(field, reason)
        self.field = field
        self.reason = reason

    def __str__(self) -> str:
        return f"bad field {self.field!r}: {self.reason}"


# --------------------------------------------------------------------------- messages


@dataclass(slots=True)
class Header:
    """Fields common to every message kind.

    Message classes are plain (not frozen) slotted dataclasses because a frozen
    dataclass costs ~1 µs more per message; treat decoded messages as read-only.

    Attributes
    ----------
    v : int
        Protocol version (:data:`PROTOCOL_VERSION`).
    kind : str
        ``"frame"``, ``"document"``, ``"heartbeat"`` or ``"status"``.
    run_uid : str
        Uid of the Bluesky run; ``""`` when not tied to a run.
    stream : str
        Stream name; sequence numbers are counted per ``(run_uid, stream)``.
    seq : int
        Sequence number (≥ 0); for frames that of the first frame in the message.
    ts : float
        Send time, unix seconds.
    """

    v: int
    kind: str
    run_uid: str
    stream: str
    seq: int
    ts: float


@dataclass(slots=True)
class FrameHeader(Header):
    """Header of a frame message.

    Attributes
    ----------
    dtype : numpy.dtype
        Element type, one of :data:`DTYPES`.
    shape : tuple of int
        ``(n, *frame_shape)``: ``n`` ≥ 1 frames per message, 2 to 4 entries.
    fields : dict
        Per-message extras (``helicity``, ``pair``, ``frame_index``,
        ``scan_position``, ``repeat``, ...): a scalar holds for all ``n`` frames, a
        list of length ``n`` gives one value per frame.
    """

    dtype: np.dtype
    shape: tuple[int, ...]
    fields: dict[str, Any]

    @property
    def n(self) -> int:
        """Number of frames in the message."""
        return self.shape[0]


@dataclass(slots=True)
class FrameMessage:
    """A batch of frames.

    Attributes
    ----------
    header : FrameHeader
    frames : ndarray, shape (n, ...), dtype ``header.dtype``
        Read-only view of the received buffer (no copy; it keeps the ZeroMQ message
        alive). Copy it to modify it.
    """

    header: FrameHeader
    frames: np.ndarray

    @property
    def n(self) -> int:
        """Number of frames in the message."""
        return self.header.shape[0]

    def per_frame(self, name: str) -> list[Any]:
        """Values of extra field `name` for each of the ``n`` frames.

        Parameters
        ----------
        name : str
            Key in ``header.fields``.

        Returns
        -------
        list
            Length ``n``; a scalar field is repeated.

        Raises
        ------
        KeyError
            If the message has no field `name`.
        """
        value = self.header.fields[name]
        if type(value) is list:
            return value
        return [value] * self.header.shape[0]


@dataclass(slots=True)
class DocumentMessage:
    """A Bluesky document (plain Python: dicts, lists, str, int, float, bool, None).

    Attributes
    ----------
    header : Header
    name : str
        Document name, one of :data:`DOCUMENT_NAMES`.
    doc : dict
        The document.
    frames_published : dict of str to int, optional
        On a stop document: frames the sending publisher put on the bus for each frame
        stream of the run (header field ``frames_published``). Frames lost after a
        stream's last received one leave no jump in the sequence numbers; this count
        is how a receiver sees that tail gap. None on other documents and from
        publishers that do not send it.
    """

    header: Header
    name: str
    doc: dict[str, Any]
    frames_published: dict[str, int] | None = None


@dataclass(slots=True)
class HeartbeatMessage:
    """A liveness tick from a publisher (also used to beat the PUB/SUB slow joiner).

    Attributes
    ----------
    header : Header
        ``stream`` names the publisher, ``seq`` counts its heartbeats.
    """

    header: Header


@dataclass(slots=True)
class StatusMessage:
    """A status report from a worker to the orchestrator.

    Attributes
    ----------
    header : Header
    payload : dict
        String keys; plain Python values.
    """

    header: Header
    payload: dict[str, Any]


Message: TypeAlias = FrameMessage | DocumentMessage | HeartbeatMessage | StatusMessage


# --------------------------------------------------------------------------- encoding


def to_builtin(obj: Any) -> Any:
    """msgpack ``default=`` hook: numpy scalars and arrays to plain Python.

    Parameters
    ----------
    obj : object
        An object msgpack cannot pack natively.

    Returns
    -------
    object
        ``obj.tolist()`` for arrays (nested lists), ``obj.item()`` for numpy
        scalars.

    Raises
    ------
    TypeError
        For any other type, naming it.
    """
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"cannot encode object of type {type(obj).__name__} on the bus: {obj!r:.80}")


def _now(ts: float | None) -> float:
    return time.time() if ts is None else float(ts)


def _check_seq(seq: int) -> None:
    if not isinstance(seq, (int, np.integer)) or isinstance(seq, bool):
        raise TypeError(f"seq must be an int, got {type(seq).__name__}: {seq!r:.80}")
    if seq < 0:
        raise ValueError(f"seq must be >= 0, got {seq}")


def _field_value_problem(value: Any, n: int) -> str | None:
    """Why `value` is not a valid frame extra for a batch of `n`, or None if it is."""
    tp = type(value)
    if tp in _SCALAR_TYPES:
        return None
    if tp is not list:
        return f"must be a scalar or a list of length n={n}, got {tp.__name__}: {value!r:.80}"
    if len(value) != n:
        return f"per-frame list has length {len(value)}, expected n={n}: {value!r:.80}"
    if set(map(type, value)) <= _SCALAR_TYPES:
        return None
    for i, item in enumerate(value):
        if type(item) in _SCALAR_TYPES:
            continue
        if type(item) is list and set(map(type, item)) <= _SCALAR_TYPES:
            continue
        return (
            f"element {i} must be a scalar or a flat list of scalars, "
            f"got {type(item).__name__}: {item!r:.80}"
        )
    return None


def _plain(value: Any) -> Any:
    """Numpy scalars/arrays, tuples, ranges to plain Python (two levels deep)."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple, range)):
        out = []
        for item in value:
            if isinstance(item, np.ndarray):
                item = item.tolist()
            elif isinstance(item, np.generic):
                item = item.item()
            elif isinstance(item, (list, tuple)):
                item = [x.item() if isinstance(x, np.generic) else x for x in item]
            out.append(item)
        return out
    return value


def _plain_fields(fields: Mapping[str, Any], n: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in fields.items():
        if type(key) is not str:
            raise TypeError(f"frame field names must be str, got {type(key).__name__}: {key!r}")
        if type(value) not in _SCALAR_TYPES and _field_value_problem(value, n) is not None:
            value = _plain(value)  # only when needed: plain lists pass through uncopied
            problem = _field_value_problem(value, n)
            if problem is not None:
                raise ValueError(f"frame field {key!r}: {problem}")
        out[key] = value
    return out


def encode_frames(
    run_uid: str,
    stream: str,
    seq: int,
    frames: np.ndarray,
    *,
    fields: Mapping[str, Any] | None = None,
    ts: float | None = None,
) -> list[Any]:
    """Encode a batch of frames as ``[b"frame", header, buffer]``.

    The last part is the array's own memory (no copy): send with ``copy=False`` and do
    not modify `frames` afterwards until ZeroMQ is done with it — pyzmq keeps a
    reference, so the array stays alive, but writes would change what is sent.

    Parameters
    ----------
    run_uid : str
        Uid of the Bluesky run; non-empty.
    stream : str
        Stream name; non-empty.
    seq : int
        Sequence number (≥ 0) of ``frames[0]`` in this ``(run_uid, stream)``.
    frames : ndarray, shape (n, ...), 2 to 4 dims, dtype in :data:`DTYPES`
        The batch; ``n`` ≥ 1. Made C-contiguous (a copy) only if it is not already.
    fields : mapping, optional
        Extras (``helicity``, ``pair``, ``frame_index``, ``scan_position``,
        ``repeat``, ...): scalars apply to all frames, lists/tuples/arrays of length
        ``n`` give one value per frame. Numpy values are converted to plain Python.
    ts : float, optional
        Send time, unix seconds; default now.

    Returns
    -------
    list
        ``[bytes, bytes, memoryview]``, ready for ``socket.send_multipart(parts,
        copy=False)``.

    Raises
    ------
    TypeError
        If `frames` is not an ndarray, or names/values have the wrong type.
    ValueError
        If the dtype is not whitelisted, the shape is invalid, the payload exceeds
        :data:`MAX_PAYLOAD_BYTES`, or a per-frame field's length is not ``n``.
    """
    if not isinstance(frames, np.ndarray):
        raise TypeError(f"frames must be a numpy ndarray, got {type(frames).__name__}")
    dtype_str = frames.dtype.str
    if dtype_str not in DTYPES:
        raise ValueError(
            f"frames dtype {dtype_str!r} is not whitelisted; allowed: {_ALLOWED_DTYPES_TEXT}"
        )
    shape = frames.shape
    if not 2 <= len(shape) <= MAX_NDIM or 0 in shape:
        raise ValueError(
            f"frames shape {shape} must be (n, ...) with 2 to {MAX_NDIM} dims, each >= 1"
        )
    if frames.nbytes > MAX_PAYLOAD_BYTES:
        raise ValueError(f"frames of shape {shape} are {frames.nbytes} bytes > {MAX_PAYLOAD_BYTES}")
    if type(run_uid) is not str or not run_uid:
        raise ValueError(f"run_uid must be a non-empty str, got {run_uid!r}")
    if type(stream) is not str or not stream:
        raise ValueError(f"stream must be a non-empty str, got {stream!r}")
    _check_seq(seq)
    if not frames.flags.c_contiguous:
        frames = np.ascontiguousarray(frames)
    header = {
        "v": PROTOCOL_VERSION,
        "kind": _KIND_FRAME,
        "run_uid": run_uid,
        "stream": stream,
        "seq": int(seq),
        "ts": _now(ts),
        "dtype": dtype_str,
        "shape": list(shape),
        "fields": _plain_fields(fields, shape[0]) if fields else {},
    }
    return [TOPIC_FRAME, msgpack.packb(header), frames.data]


def encode_document(
    name: str, doc: Mapping[str, Any], run_uid: str, seq: int, *, ts: float | None = None
) -> list[bytes]:
    """Encode a Bluesky document as ``[b"doc", header, msgpack document]``.

    Numpy scalars and arrays inside the document (configuration readings, event data)
    become plain Python numbers and nested lists; tuples become lists.

    Parameters
    ----------
    name : str
        Document name, one of :data:`DOCUMENT_NAMES`.
    doc : mapping
        The document.
    run_uid : str
        Uid of the run it belongs to (``""`` if unknown).
    seq : int
        Sequence number (≥ 0) of the document within its run.
    ts : float, optional
        Send time, unix seconds; default now.

    Returns
    -------
    list of bytes

    Raises
    ------
    ValueError
        If `name` is not a Bluesky document name or `seq` < 0.
    TypeError
        If the document holds something msgpack cannot encode, even via numpy.
    """
    if name not in DOCUMENT_NAMES:
        raise ValueError(f"name {name!r} is not a Bluesky document name")
    if type(run_uid) is not str:
        raise TypeError(f"run_uid must be a str, got {type(run_uid).__name__}")
    _check_seq(seq)
    return _document_parts(name, pack_document(doc), run_uid, seq, ts)


def pack_document(doc: Mapping[str, Any]) -> bytes:
    """The msgpack body of a document message (numpy → plain Python, tuples → lists).

    Separate from :func:`encode_document` so that a publisher can pack a large
    document before taking its socket lock.

    Raises
    ------
    TypeError
        If `doc` is not a mapping or holds something msgpack cannot encode.
    """
    if not isinstance(doc, Mapping):
        raise TypeError(f"doc must be a mapping, got {type(doc).__name__}")
    return msgpack.packb(doc if type(doc) is dict else dict(doc), default=to_builtin)


def _document_parts(
    name: str,
    body: bytes,
    run_uid: str,
    seq: int,
    ts: float | None = None,
    frames_published: Mapping[str, int] | None = None,
) -> list[bytes]:
    header: dict[str, Any] = {
        "v": PROTOCOL_VERSION,
        "kind": _KIND_DOCUMENT,
        "run_uid": run_uid,
        "stream": DOCUMENT_STREAM,
        "seq": int(seq),
        "ts": _now(ts),
        "name": name,
    }
    if frames_published is not None:
        header["frames_published"] = {str(k): int(v) for k, v in frames_published.items()}
    return [TOPIC_DOCUMENT, msgpack.packb(header), body]


def encode_heartbeat(
    stream: str = "", seq: int = 0, *, run_uid: str = "", ts: float | None = None
) -> list[bytes]:
    """Encode a heartbeat as ``[b"heartbeat", header]``.

    Parameters
    ----------
    stream : str, optional
        Names the sender (a publisher name).
    seq : int, optional
        Heartbeat counter of the sender (≥ 0).
    run_uid : str, optional
        Current run, if any.
    ts : float, optional
        Send time, unix seconds; default now.

    Returns
    -------
    list of bytes
    """
    if type(stream) is not str or type(run_uid) is not str:
        raise TypeError(f"stream and run_uid must be str, got {stream!r}, {run_uid!r}")
    _check_seq(seq)
    header = {
        "v": PROTOCOL_VERSION,
        "kind": _KIND_HEARTBEAT,
        "run_uid": run_uid,
        "stream": stream,
        "seq": int(seq),
        "ts": _now(ts),
    }
    return [TOPIC_HEARTBEAT, msgpack.packb(header)]


def encode_status(
    payload: Mapping[str, Any],
    *,
    run_uid: str = "",
    stream: str = "",
    seq: int = 0,
    ts: float | None = None,
) -> list[bytes]:
    """Encode a worker status report as ``[b"status", header]``.

    Parameters
    ----------
    payload : mapping with str keys
        The report (e.g. worker name, frames processed, gaps, drops); numpy values
        become plain Python.
    run_uid : str, optional
        Run the report is about.
    stream : str, optional
        Names the sender.
    seq : int, optional
        Report counter of the sender (≥ 0).
    ts : float, optional
        Send time, unix seconds; default now.

    Returns
    -------
    list of bytes

    Raises
    ------
    TypeError
        If `payload` is not a mapping with str keys or holds unencodable values.
    """
    if not isinstance(payload, Mapping):
        raise TypeError(f"payload must be a mapping, got {type(payload).__name__}")
    for key in payload:
        if type(key) is not str:
            raise TypeError(f"payload keys must be str, got {type(key).__name__}: {key!r}")
    if type(stream) is not str or type(run_uid) is not str:
        raise TypeError(f"stream and run_uid must be str, got {stream!r}, {run_uid!r}")
    _check_seq(seq)
    header = {
        "v": PROTOCOL_VERSION,
        "kind": _KIND_STATUS,
        "run_uid": run_uid,
        "stream": stream,
        "seq": int(seq),
        "ts": _now(ts),
        "payload": dict(payload),
    }
    return [TOPIC_STATUS, msgpack.packb(header, default=to_builtin)]


# --------------------------------------------------------------------------- decoding


def _part(part: Any, index: int) -> tuple[Any, int]:
    """A message part as a flat byte buffer (no copy) and its length in bytes."""
    tp = type(part)
    if tp is bytes or tp is zmq.Frame:
        return part, len(part)
    try:
        view = memoryview(part)
    except TypeError as exc:
        raise FrameDecodeError("parts", f"part {index} is a {tp.__name__}, not bytes-like") from exc
    if view.ndim != 1 or view.itemsize != 1 or view.format != "B":
        try:
            view = view.cast("B")
        except (TypeError, ValueError) as exc:
            raise FrameDecodeError(
                "parts", f"part {index} is not a contiguous byte buffer"
            ) from exc
    return view, view.nbytes


def _part_bytes(part: Any, index: int) -> bytes:
    """A small message part (the topic) as bytes; at most 64 bytes are copied."""
    tp = type(part)
    if tp is bytes:
        return part
    buf, size = _part(part, index)
    if size > 64:  # longer than any topic: cannot match, do not copy it all
        return bytes(memoryview(buf)[:64])
    return part.bytes if tp is zmq.Frame else bytes(buf)


def _expect_parts(parts: Sequence[Any], count: int, kind: str) -> None:
    if len(parts) != count:
        raise FrameDecodeError("parts", f"a {kind} message has {count} parts, got {len(parts)}")


def _bad(field_name: str, what: str, value: Any) -> FrameDecodeError:
    return FrameDecodeError(field_name, f"{what}, got {type(value).__name__}: {value!r:.80}")


def _common(header: dict[str, Any], *, need_ids: bool) -> tuple[str, str, int, float]:
    run_uid = header.get("run_uid")
    if type(run_uid) is not str or (need_ids and not run_uid):
        raise _bad("run_uid", "must be a non-empty str" if need_ids else "must be a str", run_uid)
    stream = header.get("stream")
    if type(stream) is not str or (need_ids and not stream):
        raise _bad("stream", "must be a non-empty str" if need_ids else "must be a str", stream)
    seq = header.get("seq")
    if type(seq) is not int or seq < 0:
        raise _bad("seq", "must be an int >= 0", seq)
    ts = header.get("ts")
    tp = type(ts)
    if tp is not float:
        if tp is not int:
            raise _bad("ts", "must be a float (unix s)", ts)
        ts = float(ts)
    return run_uid, stream, seq, ts


def _decode_frame(parts: Sequence[Any], header: dict[str, Any]) -> FrameMessage:
    _expect_parts(parts, 3, _KIND_FRAME)
    run_uid, stream, seq, ts = _common(header, need_ids=True)
    dtype_str = header.get("dtype")
    dtype = DTYPES.get(dtype_str) if type(dtype_str) is str else None
    if dtype is None:
        raise _bad("dtype", f"must be one of {_ALLOWED_DTYPES_TEXT}", dtype_str)
    shape = header.get("shape")
    if type(shape) is not list or not 2 <= len(shape) <= MAX_NDIM:
        raise _bad("shape", f"must be a list of 2 to {MAX_NDIM} ints", shape)
    nbytes = dtype.itemsize
    for dim in shape:
        if type(dim) is not int or dim < 1:
            raise _bad("shape", "entries must be ints >= 1", shape)
        nbytes *= dim
        if nbytes > MAX_PAYLOAD_BYTES:
            raise FrameDecodeError(
                "shape",
                f"declares more than the maximum {MAX_PAYLOAD_BYTES} bytes: {shape!r:.80}",
            )
    fields = header.get("fields")
    if type(fields) is not dict:
        raise _bad("fields", "must be a map", fields)
    n = shape[0]
    for key, value in fields.items():
        if type(key) is not str:
            raise _bad("fields", "keys must be str", key)
        if type(value) not in _SCALAR_TYPES:
            problem = _field_value_problem(value, n)
            if problem is not None:
                raise FrameDecodeError(f"fields.{key}", problem)
    buf, size = _part(parts[2], 2)
    if size != nbytes:
        raise FrameDecodeError(
            "payload",
            f"{size} bytes, but shape {shape} of {dtype.str} needs {nbytes}",
        )
    frames = np.frombuffer(buf, dtype).reshape(shape)
    frames.flags.writeable = False
    return FrameMessage(
        FrameHeader(
            PROTOCOL_VERSION, _KIND_FRAME, run_uid, stream, seq, ts, dtype, tuple(shape), fields
        ),
        frames,
    )


def _decode_document(parts: Sequence[Any], header: dict[str, Any]) -> DocumentMessage:
    _expect_parts(parts, 3, _KIND_DOCUMENT)
    run_uid, stream, seq, ts = _common(header, need_ids=False)
    name = header.get("name")
    if type(name) is not str or name not in DOCUMENT_NAMES:
        raise _bad("name", "must be a Bluesky document name", name)
    buf, size = _part(parts[2], 2)
    if size > MAX_PAYLOAD_BYTES:
        raise FrameDecodeError("document", f"{size} bytes > maximum {MAX_PAYLOAD_BYTES}")
    try:
        doc = msgpack.unpackb(buf, raw=False)
    except Exception as exc:  # msgpack raises many types on garbage
        raise FrameDecodeError("document", f"not valid msgpack ({exc!s:.80})") from exc
    if type(doc) is not dict:
        raise _bad("document", "must be a map", doc)
    published = header.get("frames_published")
    if published is not None:
        if type(published) is not dict or len(published) > MAX_STREAMS:
            raise _bad("frames_published", f"must be a map of at most {MAX_STREAMS} entries", published)
        for key, value in published.items():
            if type(key) is not str or type(value) is not int or value < 0:
                raise _bad("frames_published", "must map stream names (str) to counts (int >= 0)", published)
    return DocumentMessage(
        Header(PROTOCOL_VERSION, _KIND_DOCUMENT, run_uid, stream, seq, ts), name, doc, published
    )


def _decode_heartbeat(parts: Sequence[Any], header: dict[str, Any]) -> HeartbeatMessage:
    _expect_parts(parts, 2, _KIND_HEARTBEAT)
    run_uid, stream, seq, ts = _common(header, need_ids=False)
    return HeartbeatMessage(Header(PROTOCOL_VERSION, _KIND_HEARTBEAT, run_uid, stream, seq, ts))


def _decode_status(parts: Sequence[Any], header: dict[str, Any]) -> StatusMessage:
    _expect_parts(parts, 2, _KIND_STATUS)
    run_uid, stream, seq, ts = _common(header, need_ids=False)
    payload = header.get("payload")
    if type(payload) is not dict:
        raise _bad("payload", "must be a map", payload)
    for key in payload:
        if type(key) is not str:
            raise _bad("payload", "keys must be str", key)
    return StatusMessage(Header(PROTOCOL_VERSION, _KIND_STATUS, run_uid, stream, seq, ts), payload)


_DECODERS: Final = {
    _KIND_FRAME: (TOPIC_FRAME, _decode_frame),
    _KIND_DOCUMENT: (TOPIC_DOCUMENT, _decode_document),
    _KIND_HEARTBEAT: (TOPIC_HEARTBEAT, _decode_heartbeat),
    _KIND_STATUS: (TOPIC_STATUS, _decode_status),
}


def decode(parts: Sequence[bytes | zmq.Frame]) -> Message:
    """Validate and decode one multipart message.

    Parameters
    ----------
    parts : sequence of bytes-like or zmq.Frame
        As returned by ``socket.recv_multipart(copy=False)`` (or with copies).

    Returns
    -------
    FrameMessage | DocumentMessage | HeartbeatMessage | StatusMessage
        Frames are a read-only view of the received buffer (no copy).

    Raises
    ------
    FrameDecodeError
        For any malformed input, naming the field; never any other exception.
        Sizes are checked against the declared shape and :data:`MAX_PAYLOAD_BYTES`
        before anything is allocated.
    """
    try:
        return _decode(parts)
    except FrameDecodeError:
        raise
    except Exception as exc:  # defensive: a validation gap must not crash a receiver
        raise FrameDecodeError(
            "parts", f"undecodable message ({type(exc).__name__}: {exc!s:.80})"
        ) from exc


def _decode(parts: Sequence[Any]) -> Message:
    nparts = len(parts)
    if nparts < 2:
        raise FrameDecodeError("parts", f"expected [topic, header, *payload], got {nparts} part(s)")
    header_buf, size = _part(parts[1], 1)
    if size > MAX_HEADER_BYTES:
        raise FrameDecodeError("header", f"{size} bytes > maximum {MAX_HEADER_BYTES}")
    try:
        header = msgpack.unpackb(header_buf, raw=False)
    except Exception as exc:  # msgpack raises many types on garbage
        raise FrameDecodeError("header", f"not valid msgpack ({exc!s:.80})") from exc
    if type(header) is not dict:
        raise _bad("header", "must be a map", header)
    version = header.get("v")
    if type(version) is not int or version != PROTOCOL_VERSION:
        raise _bad("v", f"must be protocol version {PROTOCOL_VERSION}", version)
    kind = header.get("kind")
    entry = _DECODERS.get(kind) if type(kind) is str else None
    if entry is None:
        raise _bad("kind", f"must be one of {', '.join(_DECODERS)}", kind)
    topic, decoder = entry
    got_topic = _part_bytes(parts[0], 0)
    if got_topic != topic:
        raise FrameDecodeError(
            "topic", f"{got_topic[:40]!r} does not match kind {kind!r} (expected {topic!r})"
        )
    return decoder(parts, header)
