"""The bus over real sockets: publisher → ProxyThread → receiver, status PUSH/PULL,
gaps from skipped or dropped sequence numbers, garbage on the wire, the proxy CLI.

Synchronisation is by polling with timeouts, never by sleeping: a new subscriber is
"joined" once it has seen a heartbeat the publisher keeps sending (the PUB/SUB slow
joiner drops everything published before the subscription has propagated).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import msgpack
import numpy as np
import pytest
import zmq

from speckleflow.streaming import (
    BusPublisher,
    BusReceiver,
    DocumentMessage,
    FrameMessage,
    HeartbeatMessage,
    ProxyThread,
    StatusCollector,
    StatusPusher,
    encode_frames,
    encode_heartbeat,
)

pytestmark = pytest.mark.timeout(60)

M = TypeVar("M")


@pytest.fixture
def context() -> Iterator[zmq.Context]:
    ctx = zmq.Context()
    yield ctx
    ctx.term()  # blocks (and the test times out) if any socket was leaked


@pytest.fixture
def proxy(context: zmq.Context) -> Iterator[ProxyThread]:
    with ProxyThread(context=context) as running:
        yield running


def join(send_heartbeat: Callable[[], Any], receiver: BusReceiver, timeout_s: float = 10.0) -> None:
    """Send heartbeats until `receiver` has seen one (beats the slow joiner)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        send_heartbeat()
        if isinstance(receiver.recv(timeout_ms=20), HeartbeatMessage):
            return
    raise AssertionError(f"subscriber saw no heartbeat within {timeout_s} s")


def next_message(receiver: BusReceiver, kind: type[M], timeout_s: float = 10.0) -> M:
    """The next message of `kind`, skipping heartbeats and malformed messages."""
    deadline = time.monotonic() + timeout_s
    while (remaining := deadline - time.monotonic()) > 0:
        message = receiver.recv(timeout_ms=max(1, int(remaining * 1000)))
        if isinstance(message, kind):
            return message
    raise AssertionError(f"no {kind.__name__} within {timeout_s} s; stats {receiver.stats()}")


def test_frames_arrive_bit_identical_with_sequence_numbers(
    proxy: ProxyThread, context: zmq.Context
) -> None:
    rng = np.random.default_rng(0)
    single = rng.integers(0, 2**16, (256, 128), dtype=np.uint16)
    batch = rng.integers(0, 2**16, (64, 256, 128), dtype=np.uint16)
    floats = rng.standard_normal((3, 16, 16)).astype(np.float32)
    floats[0, 0, 0] = np.nan
    with (
        BusPublisher(proxy.frontend_address, context=context, name="test") as publisher,
        BusReceiver(proxy.backend_address, context=context) as receiver,
    ):
        join(publisher.heartbeat, receiver)
        seqs = [
            publisher.publish_frames("run-a", "ccd", single, helicity=1, frame_index=0),
            publisher.publish_frames(
                "run-a", "ccd", batch, helicity=[1, -1] * 32, frame_index=range(1, 65)
            ),
            publisher.publish_frames("run-a", "ccd", single[np.newaxis], helicity=-1),
            publisher.publish_frames("run-a", "fth", floats),
            publisher.publish_frames("run-b", "ccd", single),
        ]
        assert seqs == [0, 1, 65, 0, 0]
        received = [next_message(receiver, FrameMessage) for _ in seqs]

        sent = [single[np.newaxis], batch, single[np.newaxis], floats, single[np.newaxis]]
        for message, frames, seq in zip(received, sent, seqs, strict=True):
            assert message.header.seq == seq
            assert message.frames.shape == frames.shape
            assert message.frames.dtype == frames.dtype
            assert message.frames.tobytes() == frames.tobytes()
        assert received[1].per_frame("frame_index") == list(range(1, 65))
        assert received[1].per_frame("helicity")[:3] == [1, -1, 1]
        assert [m.header.run_uid for m in received] == ["run-a"] * 4 + ["run-b"]
        stats = receiver.stats()
        assert stats["frames"] == 1 + 64 + 1 + 3 + 1
        assert (stats["gaps"], stats["missed"], stats["decode_errors"]) == (0, 0, {})


def test_skipped_sequence_range_is_reported_as_gap(
    proxy: ProxyThread, context: zmq.Context
) -> None:
    raw = context.socket(zmq.PUB)
    raw.setsockopt(zmq.LINGER, 0)
    raw.connect(proxy.frontend_address)
    try:
        with BusReceiver(proxy.backend_address, context=context) as receiver:
            join(lambda: raw.send_multipart(encode_heartbeat("raw")), receiver)
            frames = np.zeros((4, 8, 8), np.uint16)
            for seq in (0, 4, 20, 24):  # 8..19 never sent
                raw.send_multipart(encode_frames("run", "ccd", seq, frames), copy=False)
            seen = [next_message(receiver, FrameMessage).header.seq for _ in range(4)]
            assert seen == [0, 4, 20, 24]
            stats = receiver.stats()
            assert (stats["gaps"], stats["missed"], stats["frames"]) == (1, 12, 16)
            assert receiver.tracker.expected("run", "ccd") == 28
    finally:
        raw.close()


def test_frames_dropped_at_the_high_water_mark_show_up_as_gaps(context: zmq.Context) -> None:
    """PUB/SUB drops silently for a stalled subscriber; the sequence numbers tell."""
    frame = np.zeros((1, 256, 128), np.uint16)  # 64 KiB: zero-copy, fills queues fast
    with (
        ProxyThread(context=context, hwm=20) as small_proxy,
        BusPublisher(small_proxy.frontend_address, context=context, sndhwm=20) as publisher,
        BusReceiver(small_proxy.backend_address, context=context, rcvhwm=5) as receiver,
    ):
        join(publisher.heartbeat, receiver)
        sent = 3000
        for _ in range(sent):  # the receiver does not read meanwhile: it is "stalled"
            publisher.publish_frames("run", "ccd", frame)
        # Recovery: keep publishing until a frame sent after the stall arrives. (A single
        # "last" frame can itself be dropped while the queues still hold heartbeats.)
        deadline = time.monotonic() + 10.0
        newest = -1
        while newest < sent and time.monotonic() < deadline:
            publisher.publish_frames("run", "ccd", frame)
            message = receiver.recv(timeout_ms=20)
            if isinstance(message, FrameMessage):
                newest = message.header.seq
        assert newest >= sent, f"no frame after the stall arrived; stats {receiver.stats()}"
        stats = receiver.stats()
        assert stats["gaps"] >= 1
        assert 0 < stats["missed"] < sent
        assert stats["frames"] + stats["missed"] == newest + 1
        assert receiver.tracker.expected("run", "ccd") == newest + 1


def test_garbage_is_counted_and_the_receiver_keeps_going(
    proxy: ProxyThread, context: zmq.Context, caplog: pytest.LogCaptureFixture
) -> None:
    raw = context.socket(zmq.PUB)
    raw.setsockopt(zmq.LINGER, 0)
    raw.connect(proxy.frontend_address)
    good = encode_frames("run", "ccd", 0, np.arange(24, dtype=np.uint16).reshape(2, 3, 4))
    bad_dtype = msgpack.unpackb(good[1])
    bad_dtype["dtype"] = "<i8"
    garbage = [
        [b"frame", b"\xc1 not msgpack"],
        [b"frame"],
        [good[0], good[1], bytes(47)],
        [b"doc", msgpack.packb({"v": 1, "kind": "document"}), b"\xc1"],
        *([[b"frame", msgpack.packb(bad_dtype), bytes(48)]] * 5),
    ]
    try:
        with BusReceiver(proxy.backend_address, context=context) as receiver:
            join(lambda: raw.send_multipart(encode_heartbeat("raw")), receiver)
            caplog.set_level(logging.WARNING, logger="speckleflow.streaming.receiver")
            for parts in garbage:
                raw.send_multipart(parts)
            raw.send_multipart(good, copy=False)
            message = next_message(receiver, FrameMessage)
            np.testing.assert_array_equal(message.frames, np.arange(24).reshape(2, 3, 4))
            assert receiver.decode_errors == {
                "header": 1,
                "parts": 1,
                "payload": 1,
                "run_uid": 1,
                "dtype": 5,
            }
            dtype_lines = [r for r in caplog.records if "'dtype'" in r.getMessage()]
            assert len(dtype_lines) == 1  # rate-limited: one line per field
            assert "'<i8'" in dtype_lines[0].getMessage()
            assert receiver.stats()["frames"] == 2
    finally:
        raw.close()


def _document_stream() -> list[tuple[str, dict[str, Any]]]:
    return [
        ("start", {"uid": "r1", "time": 0.0, "scan_id": np.int64(7), "shape": (2, 3)}),
        (
            "descriptor",
            {
                "uid": "d1",
                "run_start": "r1",
                "name": "primary",
                "data_keys": {"ccd": {"shape": [256, 128], "dtype_numpy": "<u2"}},
                "configuration": {
                    "ccd": {
                        "data": {"mask": np.ones((2, 2), dtype=bool), "exposure": np.float32(0.25)}
                    }
                },
            },
        ),
        (
            "event",
            {
                "uid": "e1",
                "descriptor": "d1",
                "seq_num": 1,
                "data": {
                    "ccd": np.arange(6, dtype=np.uint16).reshape(2, 3),
                    "sum": np.float64(15.0),
                },
            },
        ),
        (
            "stream_resource",
            {
                "uid": "sr1",
                "run_start": "r1",
                "data_key": "ccd",
                "uri": "file://localhost/tmp/x.h5",
                "parameters": {},
            },
        ),
        (
            "stream_datum",
            {
                "uid": "sd1",
                "stream_resource": "sr1",
                "descriptor": "d1",
                "indices": {"start": 0, "stop": 10},
            },
        ),
        (
            "stop",
            {
                "uid": "s1",
                "run_start": "r1",
                "exit_status": "success",
                "num_events": {"primary": np.int64(1)},
            },
        ),
    ]


def test_documents_with_numpy_inside_round_trip(proxy: ProxyThread, context: zmq.Context) -> None:
    with (
        BusPublisher(proxy.frontend_address, context=context) as publisher,
        BusReceiver(proxy.backend_address, context=context) as receiver,
    ):
        join(publisher.heartbeat, receiver)
        documents = _document_stream()
        open_run = []
        assert publisher.current_run_uid is None
        for name, doc in documents:
            publisher(name, doc)  # as RE.subscribe(publisher) would call it
            open_run.append(publisher.current_run_uid)
        assert open_run == ["r1"] * (len(documents) - 1) + [None]
        received = [next_message(receiver, DocumentMessage) for _ in documents]
        with pytest.raises(ValueError, match="'begin'"):
            publisher("begin", {})
        # the run's descriptors are forgotten at its stop: a straggler has no run
        publisher("event", {"uid": "e9", "descriptor": "d1", "data": {}})
        straggler = next_message(receiver, DocumentMessage)
        assert (straggler.name, straggler.header.run_uid) == ("event", "")
    assert [m.name for m in received] == [name for name, _ in documents]
    assert {m.header.run_uid for m in received} == {"r1"}
    assert [m.header.seq for m in received] == list(range(len(documents)))
    assert received[0].doc["shape"] == [2, 3] and received[0].doc["scan_id"] == 7
    config = received[1].doc["configuration"]["ccd"]["data"]
    assert config == {"mask": [[True, True], [True, True]], "exposure": 0.25}
    assert received[2].doc["data"] == {"ccd": [[0, 1, 2], [3, 4, 5]], "sum": 15.0}
    assert received[5].doc["num_events"] == {"primary": 1}
    assert receiver.stats()["documents"] == len(documents) + 1


def test_runengine_documents_carry_the_run_uid(proxy: ProxyThread, context: zmq.Context) -> None:
    bluesky = pytest.importorskip("bluesky")
    plans = pytest.importorskip("bluesky.plans")
    sim = pytest.importorskip("ophyd.sim")
    with (
        BusPublisher(proxy.frontend_address, context=context) as publisher,
        BusReceiver(proxy.backend_address, context=context) as receiver,
    ):
        join(publisher.heartbeat, receiver)
        engine = bluesky.RunEngine({}, call_returns_result=True)
        engine.subscribe(publisher)
        result = engine(plans.count([sim.det], num=3))
        received = [next_message(receiver, DocumentMessage) for _ in range(6)]
    assert [m.name for m in received] == ["start", "descriptor", "event", "event", "event", "stop"]
    assert {m.header.run_uid for m in received} == {result.run_start_uids[0]}


def test_status_reports_reach_the_collector(context: zmq.Context, tmp_path: Any) -> None:
    with StatusCollector(context=context) as collector:
        assert collector.address.startswith("tcp://127.0.0.1:")
        with StatusPusher(collector.address, context=context, name="g2-worker") as pusher:
            payloads = [{"worker": "g2", "processed": np.int64(i), "gaps": i * 2} for i in range(3)]
            assert all(pusher.send(p) for p in payloads)
            got: list[dict[str, Any]] = []
            deadline = time.monotonic() + 10
            while len(got) < 3 and time.monotonic() < deadline:
                got += collector.poll(timeout_ms=100)
    assert got == [{"worker": "g2", "processed": i, "gaps": i * 2} for i in range(3)]


def test_status_pusher_drops_without_blocking_when_full(
    context: zmq.Context, tmp_path: Any
) -> None:
    nobody = f"ipc://{tmp_path}/nobody-listens"
    with StatusPusher(nobody, context=context, sndhwm=2) as pusher:
        start = time.monotonic()
        results = [pusher.send({"i": i}) for i in range(20)]
        assert time.monotonic() - start < 5
        pusher.close(linger_ms=0)  # nobody will ever take the queued ones
    assert pusher.dropped >= 1 and not results[-1]
    assert pusher.sent + pusher.dropped == 20


def test_proxy_thread_stops_cleanly(context: zmq.Context) -> None:
    before = {t.ident for t in threading.enumerate()}
    for _ in range(5):
        running = ProxyThread(context=context).start()
        assert running.frontend_address.startswith("tcp://127.0.0.1:")
        assert running.backend_address != running.frontend_address
        running.stop()
        running.stop()  # idempotent
    assert {t.ident for t in threading.enumerate()} == before
    with pytest.raises(RuntimeError, match="start"):
        _ = running.frontend_address


def test_proxy_thread_reports_bind_failure(proxy: ProxyThread, context: zmq.Context) -> None:
    with pytest.raises(zmq.ZMQError):
        ProxyThread(proxy.frontend_address, context=context).start()


def test_proxy_command_line_forwards_and_exits_on_sigterm(context: zmq.Context) -> None:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "speckleflow.streaming.proxy",
            "--frontend",
            "tcp://127.0.0.1:*",
            "--backend",
            "tcp://127.0.0.1:*",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "error::RuntimeWarning"},
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()  # per-test timeout guards this
        assert "publishers -> tcp://127.0.0.1:" in line, line
        frontend = line.split("publishers -> ")[1].split(",")[0].strip()
        backend = line.split("subscribers -> ")[1].strip()
        with (
            BusPublisher(frontend, context=context) as publisher,
            BusReceiver(backend, context=context) as receiver,
        ):
            join(publisher.heartbeat, receiver)
            publisher.publish_frames("run", "ccd", np.ones((8, 8), np.uint8))
            assert next_message(receiver, FrameMessage).frames.sum() == 64
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
        assert process.stderr is not None
        assert "Traceback" not in process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
