"""The live data bus: versioned msgpack + raw-buffer messages over ZeroMQ.

Imports only pyzmq, msgpack and numpy. Modules, one concept each:

- :mod:`.protocol` — the wire format: encode, validate-decode, :class:`FrameDecodeError`;
- :mod:`.publisher` — :class:`BusPublisher` (PUB; frames, documents, heartbeats),
  :class:`StatusPusher` / :class:`StatusCollector` (worker status, PUSH/PULL);
- :mod:`.sequence` — :class:`SequenceTracker` (gaps from sequence numbers);
- :mod:`.receiver` — :class:`BusReceiver` (SUB, decode, count);
- :mod:`.proxy` — :func:`run_proxy`, :class:`ProxyThread` (XSUB/XPUB forwarder);
- :mod:`.curve` — :class:`CurveConfig` (optional CURVE encryption for links between hosts).
"""

from .curve import CurveConfig, make_certificate, stop_authenticators
from .protocol import (
    DOCUMENT_NAMES,
    DOCUMENT_STREAM,
    DTYPES,
    MAX_HEADER_BYTES,
    MAX_NDIM,
    MAX_PAYLOAD_BYTES,
    PROTOCOL_VERSION,
    TOPIC_DOCUMENT,
    TOPIC_FRAME,
    TOPIC_HEARTBEAT,
    TOPIC_STATUS,
    DocumentMessage,
    FrameDecodeError,
    FrameHeader,
    FrameMessage,
    Header,
    HeartbeatMessage,
    Message,
    StatusMessage,
    decode,
    encode_document,
    encode_frames,
    encode_heartbeat,
    encode_status,
    pack_document,
    to_builtin,
)
from .publisher import DEFAULT_HWM, BusPublisher, StatusCollector, StatusPusher
from .receiver import BusReceiver
from .sequence import SequenceTracker


def __getattr__(name: str) -> object:
    # The proxy is imported lazily so that ``python -m speckleflow.streaming.proxy``
    # does not find its own module already imported by the package.
    if name in ("ProxyThread", "run_proxy"):
        from . import proxy

        return getattr(proxy, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DEFAULT_HWM",
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
    "BusPublisher",
    "BusReceiver",
    "CurveConfig",
    "DocumentMessage",
    "FrameDecodeError",
    "FrameHeader",
    "FrameMessage",
    "Header",
    "HeartbeatMessage",
    "Message",
    "ProxyThread",
    "SequenceTracker",
    "StatusCollector",
    "StatusMessage",
    "StatusPusher",
    "decode",
    "encode_document",
    "encode_frames",
    "encode_heartbeat",
    "encode_status",
    "make_certificate",
    "pack_document",
    "run_proxy",
    "stop_authenticators",
    "to_builtin",
]
