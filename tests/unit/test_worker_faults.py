"""Faults a live online worker survives: garbage on its sockets, a slow unit, a late join.

A real :class:`~speckleflow.services.workers.base.Worker` runs in a thread on a real
ZeroMQ bus (publisher → ProxyThread → worker), loopback only. Its compute unit is a
small recording unit (the worker shell is what is under test; a unit that sleeps per
frame is how a slow consumer is simulated). Results go to an in-memory recorder in place
of Tiled. Synchronisation waits on conditions the unit signals, never on sleeps.
Each test prints its figures (frames produced, seen, processed, missed, dropped).
"""

from __future__ import annotations

import resource
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import msgpack
import numpy as np
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from speckleflow.services.workers.base import Worker
from speckleflow.streaming import BusPublisher, ProxyThread, StatusCollector, encode_frames
from speckleflow.streaming.protocol import (
    MAX_PAYLOAD_BYTES,
    encode_document,
    encode_heartbeat,
    encode_status,
)

pytestmark = pytest.mark.timeout(120)

RUN = "run-fuzz"


class RecordingUnit:
    """An OnlineUnit that records what reaches it; optionally slow (sleeps per frame)."""

    kind = "probe"

    def __init__(self, seconds_per_frame: float = 0.0) -> None:
        self.seconds_per_frame = seconds_per_frame
        self.cond = threading.Condition()
        self.starts: list[tuple[str, dict[str, Any]]] = []
        self.descriptors: list[dict[str, Any]] = []
        self.stops: list[dict[str, Any]] = []
        self.seqs: dict[str, list[int]] = {}
        self.frames_used = 0

    def start_run(self, run_uid: str, start: dict[str, Any]) -> None:
        with self.cond:
            self.starts.append((run_uid, start))
            self.cond.notify_all()

    def descriptor(self, doc: dict[str, Any]) -> None:
        self.descriptors.append(doc)

    def frames(self, msg: Any) -> int:
        if self.seconds_per_frame:
            time.sleep(self.seconds_per_frame * msg.n)  # the simulated slow computation
        with self.cond:
            self.seqs.setdefault(msg.header.stream, []).extend(range(msg.header.seq, msg.header.seq + msg.n))
            self.frames_used += msg.n
            self.cond.notify_all()
        return msg.n

    def tick(self, now: float) -> None:
        pass

    def stop_run(self, stop: dict[str, Any]) -> None:
        with self.cond:
            self.stops.append(stop)
            self.cond.notify_all()

    def status(self) -> dict[str, Any]:
        return {"frames_used": self.frames_used}

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 20.0) -> None:
        with self.cond:
            assert self.cond.wait_for(predicate, timeout), "condition not reached in time"


class _Stats:
    def as_dict(self) -> dict[str, Any]:
        return {"submitted": 0, "written": 0, "dropped": 0, "retries": 0, "failed": 0, "last_error": ""}


class RecordingResults:
    """Stands in for ResultsPublisher (the worker's Tiled status goes here)."""

    def __init__(self) -> None:
        self.metadata: list[tuple[tuple[str, ...], dict[str, Any]]] = []
        self.stats = _Stats()
        self.pending = 0
        self.cond = threading.Condition()

    def update_metadata(self, path: tuple[str, ...], metadata: dict[str, Any]) -> bool:
        with self.cond:
            self.metadata.append((path, metadata))
            self.cond.notify_all()
        return True

    def wait_final(self, run_uid: str, kind: str, timeout: float = 20.0) -> dict[str, Any]:
        """The worker's final status of the run in (what would be) Tiled."""

        def final() -> bool:
            return any(p == (run_uid, "workers", kind) and md["status"] == "final" for p, md in self.metadata)

        with self.cond:
            assert self.cond.wait_for(final, timeout), "no final worker status published"
        return self.last_status(run_uid, kind)

    def close(self, timeout: float = 30.0) -> None:
        pass

    def last_status(self, run_uid: str, kind: str) -> dict[str, Any]:
        return next(md for path, md in reversed(self.metadata) if path == (run_uid, "workers", kind))


@contextmanager
def live_worker(
    unit: RecordingUnit, *, proxy_hwm: int = 10_000, rcvhwm: int = 10_000, **kw: Any
) -> Iterator[tuple[Worker, RecordingResults, ProxyThread]]:
    results = RecordingResults()
    with ProxyThread(hwm=proxy_hwm) as proxy:
        worker = Worker(unit, proxy.backend_address, results=results, rcvhwm=rcvhwm,  # type: ignore[arg-type]
                        tiled_status_interval=0.05, **kw)
        thread = threading.Thread(target=worker.serve, daemon=True)
        thread.start()
        try:
            yield worker, results, proxy
        finally:
            worker.stop_event.set()
            thread.join(10)
            assert not thread.is_alive()


def raw_pub(proxy: ProxyThread) -> zmq.Socket:
    sock = zmq.Context.instance().socket(zmq.PUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(proxy.frontend_address)
    return sock


def join(sock_send: Callable[[], Any], worker: Worker, timeout: float = 10.0) -> None:
    """Heartbeat until the worker has seen one (PUB/SUB slow joiner)."""
    deadline = time.monotonic() + timeout
    while not worker.heartbeat_seen:
        assert time.monotonic() < deadline, "worker never saw a heartbeat"
        sock_send()
        worker.stop_event.wait(0.02)  # pacing of the heartbeats, not synchronisation


def rss_mib() -> float:
    """Current resident memory of this process (proxy, worker and ZeroMQ queues live here)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


# --------------------------------------------------------------------------- garbage

_TOPICS = st.sampled_from([b"frame", b"doc", b"heartbeat", b"framexyz", b"doc\x00"])
_FRAME = encode_frames("r", "ccd", 0, np.arange(24, dtype=np.uint16).reshape(2, 3, 4))
_HEADER = msgpack.unpackb(_FRAME[1])


def _frame_with(**changes: Any) -> list[bytes]:
    return [b"frame", msgpack.packb({**_HEADER, **changes}), bytes(_FRAME[2])]


random_parts = st.builds(
    lambda topic, rest: [topic, *rest], _TOPICS, st.lists(st.binary(max_size=80), max_size=4)
)
truncated = st.one_of(
    st.builds(lambda k: [bytes(p) for p in _FRAME][:k], st.integers(1, 2)),
    st.builds(lambda cut: [_FRAME[0], _FRAME[1], bytes(_FRAME[2])[: 48 - cut]], st.integers(1, 48)),
    st.builds(lambda cut: [_FRAME[0], _FRAME[1][:cut], bytes(_FRAME[2])], st.integers(0, len(_FRAME[1]) - 1)),
)
huge_shapes = st.builds(
    lambda dims: _frame_with(shape=dims),
    st.lists(st.integers(2**10, 2**40), min_size=2, max_size=4),
) | st.just(_frame_with(shape=[1, 16384, 16384]))  # 512 MiB declared, 48 bytes sent
wrong_dtypes = st.builds(
    lambda d: _frame_with(dtype=d),
    st.sampled_from(["<i8", ">u2", "|b1", "<f2", "O", "|V2", "<c8", 5, None, b"<u2"]),
)
bad_start_docs = st.builds(
    lambda uid: encode_document("start", {} if uid is None else {"uid": uid}, "", 0),
    st.one_of(st.none(), st.just(""), st.integers(-(2**63), 2**63 - 1), st.lists(st.integers(0, 9), max_size=2)),
)
garbage = st.lists(st.one_of(random_parts, truncated, huge_shapes, wrong_dtypes, bad_start_docs), max_size=6)


def test_garbage_on_the_bus_is_counted_and_the_worker_keeps_processing() -> None:
    """Fuzz: every bad message is counted once with its reason; a valid frame after it is processed."""
    unit = RecordingUnit()
    rss_before = rss_mib()
    rss_peak = [rss_before]
    with live_worker(unit) as (worker, _results, proxy):
        sock = raw_pub(proxy)
        try:
            join(lambda: sock.send_multipart(encode_heartbeat("fuzz")), worker)
            sock.send_multipart(encode_document("start", {"uid": RUN}, RUN, 0))
            state = {"seq": 0, "nan_seq": 0, "bad": 0}

            @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
            @given(garbage, st.lists(st.sampled_from([np.nan, np.inf, -np.inf]), max_size=2))
            def check(messages: list[list[bytes]], nonfinite: list[float]) -> None:
                before = sum(worker.receiver.decode_errors.values()) + sum(worker.dropped.values())
                for parts in messages:
                    sock.send_multipart(parts)
                for value in nonfinite:  # NaN / inf frames of the run: dropped, counted
                    frames = np.ones((2, 4, 4), np.float32)
                    frames[1, 2, 3] = value
                    sock.send_multipart(encode_frames(RUN, "nan", state["nan_seq"], frames), copy=False)
                    state["nan_seq"] += 2
                seq = state["seq"]
                good = np.full((1, 8, 8), seq % 60000, np.uint16)
                sock.send_multipart(encode_frames(RUN, "ccd", seq, good), copy=False)
                state["seq"] += 1
                unit.wait_for(lambda: seq in unit.seqs.get("ccd", ()))
                after = sum(worker.receiver.decode_errors.values()) + sum(worker.dropped.values())
                # nonfinite frame batches count their n = 2 frames as dropped
                assert after - before == len(messages) + 2 * len(nonfinite), (messages, worker.status())
                state["bad"] += len(messages) + len(nonfinite)
                rss_peak.append(rss_mib())

            check()
            assert unit.seqs.get("nan") is None  # no NaN frame reached the unit
            assert worker.receiver.stats()["missed"] == 0
            stats = worker.status()
        finally:
            sock.close()
    rss_growth = max(rss_peak) - rss_before
    print(
        f"\nfuzz: bad messages sent {state['bad']}, valid frames sent {state['seq']}, processed "
        f"{unit.frames_used}; decode errors by field {dict(worker.receiver.decode_errors)}; "
        f"dropped {dict(worker.dropped)}; peak RSS growth {rss_growth:.1f} MiB"
    )
    assert unit.frames_used == state["seq"] == stats["frames_processed"]
    # Nothing was allocated from a declared shape (up to 2**160 bytes were declared).
    assert rss_growth < MAX_PAYLOAD_BYTES / 2**20 / 8


def test_garbage_on_the_status_socket_is_counted_and_the_orchestrator_keeps_reading() -> None:
    ctx = zmq.Context.instance()
    with StatusCollector() as collector:
        push = ctx.socket(zmq.PUSH)
        push.setsockopt(zmq.LINGER, 0)
        push.connect(collector.address)
        try:
            bad = [
                [b"status"],
                [b"status", b"\xc1\xc1"],
                [b"status", msgpack.packb({"v": 1, "kind": "status"})],
                _frame_with(shape=[2**30, 2**30]),
                encode_heartbeat("not a status"),
                # decodes, but the report itself is nonsense: unhashable / wrong-typed worker
                encode_status({"worker": [1, 2], "pid": {"a": 1}}),
                encode_status({"worker": {"x": 1}}),
            ]
            for parts in bad:
                push.send_multipart(parts)
            push.send_multipart(encode_status({"worker": "probe", "pid": 1, "ready": True}))
            reports: list[dict[str, Any]] = []
            deadline = time.monotonic() + 10
            while not any(r.get("worker") == "probe" for r in reports):
                assert time.monotonic() < deadline
                reports += collector.poll(100)
            print(f"\nstatus socket: bad messages sent {len(bad)}, counted {collector.decode_errors}, "
                  f"valid reports read {len(reports)}")
            assert collector.decode_errors == 5
        finally:
            push.close()


def test_orchestrator_ignores_status_reports_with_unhashable_worker_names(tmp_path: Any) -> None:
    from speckleflow.services.live import LiveSession
    from speckleflow.services.tiled_server import DataDirectory

    session = LiveSession(DataDirectory.create(tmp_path / "data"), workers=())

    class _Collector:
        def poll(self, timeout_ms: int = 0) -> list[dict[str, Any]]:
            return [{"worker": [1, 2]}, {"worker": {"a": 1}}, {"pid": 3}, {"worker": "fth", "pid": 4}]

    session.collector = _Collector()  # type: ignore[assignment]
    session.poll_status()  # no TypeError: bad reports are skipped
    assert session.status_rejected == 2


# --------------------------------------------------------------------------- slow consumer


def test_slow_consumer_is_bounded_by_high_water_marks_and_publishes_its_drops() -> None:
    """A unit at ~1 ms per frame behind a publisher at full speed: drops, counted and published."""
    hwm = 20
    frame = np.zeros((1, 256, 128), np.uint16)  # 64 KiB per message
    unit = RecordingUnit(seconds_per_frame=0.001)
    sent = 3000
    rss_before = rss_mib()
    rss = [rss_before]
    with live_worker(unit, proxy_hwm=hwm, rcvhwm=hwm) as (worker, results, proxy):  # noqa: SIM117
        with BusPublisher(proxy.frontend_address, sndhwm=hwm) as publisher:  # needs the proxy's address
            join(publisher.heartbeat, worker)
            publisher.publish_document("start", {"uid": RUN, "time": 0.0})
            unit.wait_for(lambda: bool(unit.starts))
            for i in range(sent):
                publisher.publish_frames(RUN, "ccd", frame)
                if i % 100 == 0:
                    rss.append(rss_mib())
            rss.append(rss_mib())
            # Recovery: keep publishing until a frame sent after the burst is processed.
            newest = sent - 1
            deadline = time.monotonic() + 30
            while not any(s >= sent for s in unit.seqs.get("ccd", ())[-5:]):
                assert time.monotonic() < deadline, worker.status()
                newest = publisher.publish_frames(RUN, "ccd", frame)
                rss.append(rss_mib())
                with unit.cond:
                    unit.cond.wait(0.05)
            publisher.publish_document("stop", {"uid": "s", "run_start": RUN, "exit_status": "success"})
            published = results.wait_final(RUN, "probe")
    last = max(unit.seqs["ccd"])
    rss_growth = max(rss) - rss_before
    bus = worker.receiver.stats()
    produced = newest + 1
    print(
        f"\nslow consumer: frames produced {produced}, seen by the worker {worker.frames_seen}, "
        f"processed {worker.frames_processed}, missed (sequence gaps) {bus['missed']} in {bus['gaps']} gaps, "
        f"lost after the last processed frame (no later frame to reveal them) {produced - last - 1}; "
        f"Tiled status: missed {published['missed']}, gaps {published['gaps']}, status {published['status']}; "
        f"RSS high-water growth {rss_growth:.1f} MiB for {produced * frame.nbytes / 2**20:.0f} MiB published"
    )
    assert bus["missed"] > 0 and bus["gaps"] >= 1
    # Every frame up to the last one processed is either processed or counted as missed.
    assert worker.frames_processed + bus["missed"] == last + 1
    assert published["status"] == "final"
    assert published["missed"] == bus["missed"] and published["gaps"] == bus["gaps"]
    assert published["frames_processed"] == worker.frames_processed
    # Queued messages are bounded by the high-water marks, not by what was published.
    assert rss_growth < 0.25 * produced * frame.nbytes / 2**20


# --------------------------------------------------------------------------- late join


def _start_and_descriptor(uid: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    start = {"uid": uid, "time": 0.0, "plan_name": "cci_series"}
    descriptor = {"uid": "d1", "name": "primary", "run_start": uid, "data_keys": {},
                  "configuration": {"ccd": {"data": {"ccd_geometry": "{}"}}}}
    return start, [descriptor]


def test_worker_joining_mid_run_fetches_the_run_documents_and_reports_the_gap() -> None:
    calls: list[str] = []

    def run_documents(uid: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        calls.append(uid)
        return _start_and_descriptor(uid)

    unit = RecordingUnit()
    first = 37  # the frames 0..36 went by before this worker (re)started
    with live_worker(unit, run_documents=run_documents) as (worker, results, proxy):
        sock = raw_pub(proxy)
        try:
            join(lambda: sock.send_multipart(encode_heartbeat("late")), worker)
            for seq in range(first, first + 10):
                sock.send_multipart(encode_frames(RUN, "ccd", seq, np.zeros((1, 4, 4), np.uint16)), copy=False)
            unit.wait_for(lambda: len(unit.seqs.get("ccd", ())) == 10)
            sock.send_multipart(encode_document("stop", {"uid": "s", "run_start": RUN, "exit_status": "success"},
                                               RUN, 99))
            published = results.wait_final(RUN, "probe")
        finally:
            sock.close()
    print(f"\nlate join: frames produced {first + 10}, processed {worker.frames_processed}, "
          f"Tiled status missed {published['missed']} in {published['gaps']} gap(s), dropped {published['dropped']}")
    assert calls == [RUN]
    assert unit.starts[0][0] == RUN and unit.descriptors[0]["name"] == "primary"
    assert unit.seqs["ccd"] == list(range(first, first + 10))
    assert published["status"] == "final"
    assert published["missed"] == first and published["gaps"] == 1
    assert published["documents_missed"] == 99  # start, descriptors, events it never saw
    assert published["frames_seen"] == published["frames_processed"] == 10
    assert published["dropped_total"] == 0


def test_worker_keeps_running_while_the_run_documents_are_unavailable() -> None:
    attempts: list[float] = []

    def run_documents(uid: str) -> None:
        attempts.append(time.monotonic())
        raise ConnectionError("Tiled is down")

    unit = RecordingUnit()
    with live_worker(unit, run_documents=run_documents) as (worker, _results, proxy):
        sock = raw_pub(proxy)
        try:
            join(lambda: sock.send_multipart(encode_heartbeat("late")), worker)
            for seq in range(5):
                sock.send_multipart(encode_frames(RUN, "ccd", seq, np.zeros((1, 4, 4), np.uint16)), copy=False)
            sock.send_multipart(encode_document("start", {"uid": "next"}, "next", 0))
            unit.wait_for(lambda: bool(unit.starts))  # the worker is alive and takes the next run
        finally:
            sock.close()
    print(f"\nTiled down at late join: fetch attempts {len(attempts)}, dropped {dict(worker.dropped)}")
    assert len(attempts) == 1  # rate-limited: one attempt per second per run
    assert worker.dropped["no start document for run"] == 5
    assert unit.starts[0][0] == "next" and not unit.seqs


# --------------------------------------------------------------------------- stop lost on the bus


def test_worker_closes_a_run_whose_stop_was_lost_from_the_raw_record() -> None:
    """Stop document and the last 3 frames lost: after a quiet spell the stop comes from the raw record."""
    asked: list[str] = []
    stop = {"uid": "s", "run_start": RUN, "exit_status": "success", "num_events": {"primary": 10}}

    def run_stop(uid: str) -> tuple[dict[str, Any], dict[str, int]] | None:
        asked.append(uid)
        return (stop, {"ccd": 10}) if uid == RUN else None

    unit = RecordingUnit()
    with live_worker(unit, run_stop=run_stop, stop_quiet_s=0.3) as (worker, results, proxy):
        sock = raw_pub(proxy)
        try:
            join(lambda: sock.send_multipart(encode_heartbeat("pub")), worker)
            sock.send_multipart(encode_document("start", {"uid": RUN, "time": 0.0}, RUN, 0))
            for seq in range(7):  # frames 7, 8, 9 and the stop never reach the worker
                sock.send_multipart(encode_frames(RUN, "ccd", seq, np.zeros((1, 4, 4), np.uint16)), copy=False)
            published = results.wait_final(RUN, "probe")
        finally:
            sock.close()
    print(f"\nstop lost: frames produced 10, processed {published['frames_processed']}, missed "
          f"{published['missed']} (tail {published['tail_missed']}), stop from {published['stop_source']}")
    assert asked and set(asked) == {RUN}
    assert unit.stops == [stop]
    assert published["stop_source"] == "raw record" and published["run_state"] == "stopped (success)"
    assert published["frames_processed"] == 7 and published["tail_missed"] == 3 and published["missed"] == 3


def test_worker_closes_an_open_run_when_the_next_starts_without_its_stop() -> None:
    unit = RecordingUnit()
    with live_worker(unit, run_stop=lambda uid: None, stop_quiet_s=60) as (worker, results, proxy):
        sock = raw_pub(proxy)
        try:
            join(lambda: sock.send_multipart(encode_heartbeat("pub")), worker)
            sock.send_multipart(encode_document("start", {"uid": RUN, "time": 0.0}, RUN, 0))
            sock.send_multipart(encode_document("start", {"uid": "next", "time": 1.0}, "next", 0))
            first = results.wait_final(RUN, "probe")
            unit.wait_for(lambda: len(unit.starts) == 2)
        finally:
            sock.close()
    assert first["run_state"] == "stopped (unknown)" and first["stop_source"] == "none"
    assert unit.stops[0]["exit_status"] == "unknown"
    assert worker.run_uid == "next" and worker.run_state == "running"
