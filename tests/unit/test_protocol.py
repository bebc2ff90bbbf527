"""Wire format: round trips for every kind and dtype; every malformed input is a
FrameDecodeError naming the right field, and nothing else ever escapes ``decode``."""

from __future__ import annotations

import math
import time
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from speckleflow.streaming import protocol
from speckleflow.streaming.protocol import (
    DTYPES,
    MAX_PAYLOAD_BYTES,
    PROTOCOL_VERSION,
    DocumentMessage,
    FrameDecodeError,
    FrameMessage,
    HeartbeatMessage,
    StatusMessage,
    decode,
    encode_document,
    encode_frames,
    encode_heartbeat,
    encode_status,
)

pytestmark = pytest.mark.timeout(120)

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --------------------------------------------------------------------------- strategies

dtypes = st.sampled_from(sorted(DTYPES))
shapes = hnp.array_shapes(min_dims=2, max_dims=4, min_side=1, max_side=6)
int64s = st.integers(min_value=-(2**63), max_value=2**63 - 1)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    int64s,
    st.floats(allow_nan=False),
    st.text(max_size=12),
)
field_names = st.text(min_size=1, max_size=12)


@st.composite
def frame_batches(draw: st.DrawFn) -> tuple[np.ndarray, dict[str, Any]]:
    """A batch of frames of a whitelisted dtype, and extras valid for its n."""
    dtype = np.dtype(draw(dtypes))
    frames = draw(hnp.arrays(dtype, draw(shapes)))
    n = frames.shape[0]
    per_frame = st.lists(st.one_of(scalars, st.lists(scalars, max_size=3)), min_size=n, max_size=n)
    fields = draw(st.dictionaries(field_names, st.one_of(scalars, per_frame), max_size=5))
    return frames, fields


def _plain(value: Any) -> Any:
    """What a numpy-bearing document should look like after the bus."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


small_shapes = hnp.array_shapes(max_dims=3, max_side=4)
numpy_leaves = st.one_of(
    st.integers(-1000, 1000).map(np.int64),
    st.floats(-1e6, 1e6, width=32).map(np.float32),
    st.floats(allow_nan=False).map(np.float64),
    st.booleans().map(np.bool_),
    hnp.arrays(np.int32, small_shapes),
    hnp.arrays(np.uint16, small_shapes),
    hnp.arrays(np.float64, small_shapes, elements=st.floats(allow_nan=False)),
)
json_like = st.recursive(
    st.one_of(scalars, numpy_leaves),
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.tuples(children, children),
        st.dictionaries(st.text(max_size=8), children, max_size=4),
    ),
    max_leaves=20,
)
documents = st.dictionaries(st.text(max_size=10), json_like, max_size=6)


def _bytes_parts(parts: list[Any]) -> list[bytes]:
    """What a copying receiver would hand to decode."""
    return [bytes(p) for p in parts]


def _valid_frame_header(**changes: Any) -> dict[str, Any]:
    header = {
        "v": PROTOCOL_VERSION,
        "kind": "frame",
        "run_uid": "run-1",
        "stream": "ccd",
        "seq": 0,
        "ts": 1.0,
        "dtype": "<u2",
        "shape": [2, 3, 4],
        "fields": {"helicity": [1, -1]},
    }
    header.update(changes)
    return header


def _frame_parts(header: dict[str, Any], payload: bytes | None = None) -> list[bytes]:
    if payload is None:
        payload = bytes(2 * 3 * 4 * 2)
    return [b"frame", msgpack.packb(header), payload]


def _field_of(parts: Any) -> str:
    with pytest.raises(FrameDecodeError) as info:
        decode(parts)
    return info.value.field


# --------------------------------------------------------------------------- round trips


@FUZZ
@given(frame_batches(), st.integers(0, 2**40), st.text(min_size=1, max_size=20))
def test_frames_round_trip_bit_identical(
    batch: tuple[np.ndarray, dict[str, Any]], seq: int, stream: str
) -> None:
    frames, fields = batch
    message = decode(_bytes_parts(encode_frames("run-uid", stream, seq, frames, fields=fields)))
    assert isinstance(message, FrameMessage)
    header = message.header
    assert (header.v, header.kind, header.run_uid, header.stream, header.seq) == (
        PROTOCOL_VERSION,
        "frame",
        "run-uid",
        stream,
        seq,
    )
    assert header.dtype == frames.dtype and header.shape == frames.shape
    assert header.fields == fields
    assert message.frames.dtype == frames.dtype and message.frames.shape == frames.shape
    # bit-identical, NaN payloads included
    assert message.frames.tobytes() == frames.tobytes()
    assert not message.frames.flags.writeable


@pytest.mark.parametrize("dtype", sorted(DTYPES))
def test_every_whitelisted_dtype_round_trips(dtype: str) -> None:
    frames = (np.arange(3 * 5 * 7) % 251).astype(dtype).reshape(3, 5, 7)
    message = decode(encode_frames("r", "s", 7, frames, fields={"repeat": 2}))
    assert isinstance(message, FrameMessage)
    np.testing.assert_array_equal(message.frames, frames)
    assert message.frames.dtype.str == dtype
    assert message.per_frame("repeat") == [2, 2, 2]


def test_frames_are_zero_copy_both_ways() -> None:
    frames = np.arange(2 * 256 * 128, dtype=np.uint16).reshape(2, 256, 128)
    parts = encode_frames("r", "s", 0, frames, fields={"helicity": [1, -1]})
    # the payload part is the array's own memory
    assert np.shares_memory(np.frombuffer(parts[2], np.uint16), frames)
    received = bytearray(parts[2])  # what a receive buffer would be
    message = decode([parts[0], parts[1], received])
    assert isinstance(message, FrameMessage)
    assert np.shares_memory(message.frames, np.frombuffer(received, np.uint8))
    assert message.per_frame("helicity") == [1, -1]


def test_non_contiguous_frames_are_made_contiguous() -> None:
    frames = np.arange(4 * 6 * 8, dtype=np.float32).reshape(4, 6, 8)[:, ::2, ::-1]
    message = decode(_bytes_parts(encode_frames("r", "s", 0, frames)))
    np.testing.assert_array_equal(message.frames, frames)


def test_numpy_fields_become_plain_python() -> None:
    n = 4
    fields = {
        "helicity": np.array([1, -1, 1, -1], dtype=np.int8),
        "scan_position": np.arange(8, dtype=np.float64).reshape(n, 2),
        "pair": (np.int64(0), 0, 1, 1),
        "repeat": np.uint32(3),
    }
    message = decode(encode_frames("r", "s", 0, np.zeros((n, 2, 2), np.uint8), fields=fields))
    assert message.header.fields == {
        "helicity": [1, -1, 1, -1],
        "scan_position": [[0.0, 1.0], [2.0, 3.0], [4.0, 5.0], [6.0, 7.0]],
        "pair": [0, 0, 1, 1],
        "repeat": 3,
    }


@FUZZ
@given(documents, st.sampled_from(sorted(protocol.DOCUMENT_NAMES)), st.integers(0, 2**31))
def test_documents_round_trip_with_numpy_inside(doc: dict[str, Any], name: str, seq: int) -> None:
    message = decode(_bytes_parts(encode_document(name, doc, "run-9", seq)))
    assert isinstance(message, DocumentMessage)
    assert (message.name, message.header.run_uid, message.header.seq) == (name, "run-9", seq)
    assert message.header.stream == protocol.DOCUMENT_STREAM
    assert message.doc == _plain(doc)


def test_bluesky_like_document_round_trips() -> None:
    descriptor = {
        "uid": "d1",
        "run_start": "r1",
        "data_keys": {"ccd": {"dtype": "array", "shape": [1, 256, 128], "dtype_numpy": "<u2"}},
        "configuration": {
            "ccd": {
                "data": {"ccd_mask": np.ones((2, 2), bool), "ccd_exposure": np.float64(0.1)},
                "timestamps": {"ccd_mask": 1.0, "ccd_exposure": 1.0},
            }
        },
        "hints": {"ccd": {"fields": ("ccd",)}},
    }
    message = decode(encode_document("descriptor", descriptor, "r1", 1))
    config = message.doc["configuration"]["ccd"]["data"]
    assert config == {"ccd_mask": [[True, True], [True, True]], "ccd_exposure": 0.1}
    assert message.doc["hints"]["ccd"]["fields"] == ["ccd"]


@given(st.text(max_size=10), st.integers(0, 2**63), st.text(max_size=10))
def test_heartbeat_round_trip(stream: str, seq: int, run_uid: str) -> None:
    message = decode(_bytes_parts(encode_heartbeat(stream, seq, run_uid=run_uid, ts=12.5)))
    assert isinstance(message, HeartbeatMessage)
    header = message.header
    assert (header.kind, header.stream, header.seq, header.run_uid, header.ts) == (
        "heartbeat",
        stream,
        seq,
        run_uid,
        12.5,
    )


@given(st.dictionaries(st.text(max_size=10), json_like, max_size=6))
def test_status_round_trip(payload: dict[str, Any]) -> None:
    before = time.time()
    message = decode(_bytes_parts(encode_status(payload, stream="worker-1", seq=3)))
    assert isinstance(message, StatusMessage)
    assert message.payload == _plain(payload)
    assert message.header.stream == "worker-1" and message.header.seq == 3
    assert message.header.ts >= before - 1


# --------------------------------------------------------------------------- encoder checks


@pytest.mark.parametrize(
    ("frames", "match"),
    [
        (np.zeros((2, 3), np.int64), "dtype '<i8'"),
        (np.zeros((2, 3), ">u2"), "dtype '>u2'"),
        (np.zeros((2, 3), np.float16), "dtype '<f2'"),
        (np.zeros(5, np.uint16), r"shape \(5,\)"),
        (np.zeros((1, 1, 1, 1, 1), np.uint16), "shape"),
        (np.zeros((0, 4, 4), np.uint16), "shape"),
    ],
)
def test_encoder_rejects_bad_frames(frames: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        encode_frames("r", "s", 0, frames)


def test_encoder_rejects_bad_arguments() -> None:
    frames = np.zeros((3, 2, 2), np.uint16)
    with pytest.raises(ValueError, match="'helicity'.*length 2.*n=3"):
        encode_frames("r", "s", 0, frames, fields={"helicity": [1, -1]})
    with pytest.raises(ValueError, match="'meta'"):
        encode_frames("r", "s", 0, frames, fields={"meta": {"a": 1}})
    with pytest.raises(ValueError, match="run_uid"):
        encode_frames("", "s", 0, frames)
    with pytest.raises(ValueError, match="seq"):
        encode_frames("r", "s", -1, frames)
    with pytest.raises(TypeError, match="ndarray"):
        encode_frames("r", "s", 0, [[1, 2]])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="'begin'"):
        encode_document("begin", {}, "r", 0)
    with pytest.raises(TypeError, match="object"):
        encode_document("start", {"x": object()}, "r", 0)
    with pytest.raises(TypeError, match="keys"):
        encode_status({1: "x"})  # type: ignore[dict-item]


# --------------------------------------------------------------------------- rejection


@pytest.mark.parametrize(
    ("parts", "field"),
    [
        (None, "parts"),
        (42, "parts"),
        ([], "parts"),
        ([b"frame"], "parts"),
        ([b"frame", "not bytes", b""], "parts"),
        ([b"frame", b"\xc1"], "header"),  # 0xc1 is never valid msgpack
        ([b"frame", msgpack.packb(_valid_frame_header())[:-3], b""], "header"),  # truncated
        ([b"frame", msgpack.packb([1, 2, 3])], "header"),
        ([b"frame", msgpack.packb(_valid_frame_header()) + b"\x00", bytes(48)], "header"),
        (_frame_parts(_valid_frame_header())[:2], "parts"),  # truncated multipart
        (_frame_parts(_valid_frame_header()) + [b""], "parts"),
        (_frame_parts(_valid_frame_header(v=2)), "v"),
        (_frame_parts(_valid_frame_header(v="1")), "v"),
        (_frame_parts({k: v for k, v in _valid_frame_header().items() if k != "v"}), "v"),
        (_frame_parts(_valid_frame_header(kind="frames")), "kind"),
        (_frame_parts(_valid_frame_header(kind=None)), "kind"),
        ([b"doc", *_frame_parts(_valid_frame_header())[1:]], "topic"),
        (_frame_parts(_valid_frame_header(run_uid="")), "run_uid"),
        (_frame_parts(_valid_frame_header(run_uid=5)), "run_uid"),
        (_frame_parts(_valid_frame_header(stream=b"ccd")), "stream"),
        (_frame_parts(_valid_frame_header(seq=-1)), "seq"),
        (_frame_parts(_valid_frame_header(seq=True)), "seq"),
        (_frame_parts(_valid_frame_header(seq=1.0)), "seq"),
        (_frame_parts(_valid_frame_header(ts="now")), "ts"),
        (_frame_parts(_valid_frame_header(dtype="<i8")), "dtype"),
        (_frame_parts(_valid_frame_header(dtype=">u2")), "dtype"),
        (_frame_parts(_valid_frame_header(dtype="O")), "dtype"),
        (_frame_parts(_valid_frame_header(dtype="uint16")), "dtype"),
        (_frame_parts(_valid_frame_header(dtype=2)), "dtype"),
        (_frame_parts(_valid_frame_header(shape=[24])), "shape"),
        (_frame_parts(_valid_frame_header(shape=[1, 1, 1, 2, 12])), "shape"),
        (_frame_parts(_valid_frame_header(shape=[2, 0, 4])), "shape"),
        (_frame_parts(_valid_frame_header(shape=[2, -3, -4])), "shape"),
        (_frame_parts(_valid_frame_header(shape=[2, 3.0, 4])), "shape"),
        (_frame_parts(_valid_frame_header(shape=[2, True, 12])), "shape"),
        (_frame_parts(_valid_frame_header(shape="2,3,4")), "shape"),
        (_frame_parts(_valid_frame_header(shape=[2**20, 2**20, 2**20])), "shape"),
        (_frame_parts(_valid_frame_header(shape=[2**62, 2**62, 2**62, 2**62])), "shape"),
        (_frame_parts(_valid_frame_header(), bytes(47)), "payload"),
        (_frame_parts(_valid_frame_header(), bytes(49)), "payload"),
        (_frame_parts(_valid_frame_header(fields=[1])), "fields"),
        (_frame_parts(_valid_frame_header(fields={"helicity": [1, -1, 1]})), "fields.helicity"),
        (_frame_parts(_valid_frame_header(fields={"helicity": [1]})), "fields.helicity"),
        (_frame_parts(_valid_frame_header(fields={"pair": {"a": 1}})), "fields.pair"),
        (_frame_parts(_valid_frame_header(fields={"pos": [[1, [2]], [3, 4]]})), "fields.pos"),
        (_frame_parts(_valid_frame_header(fields={"pos": [{"x": 1}, 2]})), "fields.pos"),
        (_frame_parts(_valid_frame_header(fields={"raw": b"\x00"})), "fields.raw"),
    ],
)
def test_malformed_frames_name_the_field(parts: Any, field: str) -> None:
    assert _field_of(parts) == field


def test_huge_declared_shape_is_rejected_before_allocating() -> None:
    header = _valid_frame_header(shape=[1, 65536, 65536], dtype="<f8")  # 32 GiB
    with pytest.raises(FrameDecodeError) as info:
        decode(_frame_parts(header, b""))
    assert info.value.field == "shape"
    assert str(MAX_PAYLOAD_BYTES) in info.value.reason
    assert "shape" in str(info.value)


def test_error_message_names_field_and_value() -> None:
    with pytest.raises(FrameDecodeError) as info:
        decode(_frame_parts(_valid_frame_header(dtype="<i8")))
    assert info.value.field == "dtype" and "'<i8'" in str(info.value)
    assert isinstance(info.value, ValueError)


def _doc_parts(header_changes: dict[str, Any], body: bytes | None = None) -> list[bytes]:
    parts = encode_document("event", {"seq_num": 1}, "r", 0, ts=1.0)
    header = msgpack.unpackb(parts[1])
    header.update(header_changes)
    return [parts[0], msgpack.packb(header), parts[2] if body is None else body]


@pytest.mark.parametrize(
    ("parts", "field"),
    [
        (_doc_parts({"name": "begin"}), "name"),
        (_doc_parts({"name": None}), "name"),
        (_doc_parts({}, b"\xc1\xc1"), "document"),
        (_doc_parts({}, msgpack.packb([1, 2])), "document"),
        (_doc_parts({}, msgpack.packb({"a": 1})[:-1]), "document"),
        (_doc_parts({"seq": "0"}), "seq"),
        (_doc_parts({})[:2], "parts"),
        ([b"heartbeat", encode_document("start", {}, "r", 0)[1], b"x"], "topic"),
        ([b"heartbeat", encode_heartbeat()[1], b"extra"], "parts"),
        (
            [b"status", msgpack.packb({**msgpack.unpackb(encode_status({})[1]), "payload": [1]})],
            "payload",
        ),
        (
            [
                b"status",
                msgpack.packb({**msgpack.unpackb(encode_status({})[1]), "payload": {b"k": 1}}),
            ],
            "payload",
        ),
    ],
)
def test_malformed_documents_heartbeats_status_name_the_field(parts: Any, field: str) -> None:
    assert _field_of(parts) == field


@FUZZ
@given(st.lists(st.binary(max_size=64), max_size=5))
def test_random_bytes_only_raise_frame_decode_error(parts: list[bytes]) -> None:
    try:
        decode(parts)
    except FrameDecodeError:
        pass


@FUZZ
@given(
    st.sampled_from([b"frame", b"doc", b"heartbeat", b"status"]),
    st.lists(st.binary(max_size=64), min_size=0, max_size=3),
    st.sampled_from(["frame", "document", "heartbeat", "status"]),
)
def test_random_payloads_after_valid_headers_only_raise_frame_decode_error(
    topic: bytes, payload: list[bytes], kind: str
) -> None:
    header = msgpack.packb(_valid_frame_header(kind=kind, name="event", payload={}))
    try:
        decode([topic, header, *payload])
    except FrameDecodeError:
        pass


anything = st.recursive(
    st.one_of(scalars, st.binary(max_size=8), st.floats()),
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=10,
)


@FUZZ
@given(
    st.sampled_from(sorted(_valid_frame_header())),
    anything,
    st.booleans(),
    st.binary(max_size=64),
)
def test_mutated_frame_headers_only_raise_frame_decode_error(
    key: str, value: Any, delete: bool, payload: bytes
) -> None:
    header = _valid_frame_header()
    if delete:
        del header[key]
    else:
        header[key] = value
    for parts in (_frame_parts(header), _frame_parts(header, payload)):
        try:
            message = decode(parts)
        except FrameDecodeError as exc:
            assert exc.field  # always names something
        else:
            assert isinstance(message, FrameMessage)


@FUZZ
@given(st.binary(min_size=1, max_size=200), st.integers(0, 199))
def test_corrupted_valid_messages_only_raise_frame_decode_error(noise: bytes, at: int) -> None:
    parts = _bytes_parts(
        encode_frames("r", "s", 1, np.ones((2, 2, 2), np.float32), fields={"helicity": [1, -1]})
    )
    header = bytearray(parts[1])
    at = at % len(header)
    header[at : at + len(noise)] = noise
    try:
        decode([parts[0], bytes(header), parts[2]])
    except FrameDecodeError:
        pass


def test_decoded_ts_is_float_even_if_sent_as_int() -> None:
    message = decode(_frame_parts(_valid_frame_header(ts=5)))
    assert isinstance(message.header.ts, float) and math.isclose(message.header.ts, 5.0)
