"""Throughput of the live data bus next to raw pyzmq, end to end across processes.

For each socket pattern (PUSH/PULL, PUB/SUB), transport (tcp loopback, ipc) and payload
(256×128 uint16 one frame per message, the same batched 64 per message, 1024×1024
uint16), measures frames/s from a sender in this process to a receiver in a separate
(spawned) process:

- **ours**: ``encode_frames`` (PUSH) or ``BusPublisher.publish_frames`` (PUB) →
  ZeroMQ → ``decode`` + ``SequenceTracker`` (PULL) or ``BusReceiver.recv`` (SUB);
- **raw**: ``send_multipart([b"frame", array], copy=False)`` →
  ``recv_multipart(copy=False)`` on the same socket types — the transport's ceiling.

Rates are counted at the receiver between its first and last data message; each cell
is the median of interleaved repeats (raw and ours alternate, so drifts hit both).
PUB/SUB is measured twice: as deployed (the sender never blocks, the PUB socket drops
at the high-water mark when the receiver falls behind — "delivered" says how much
arrived, "lost / seen by seq" how many frames were lost and how many of those the
receiver's sequence numbers revealed: losses after the last received frame of a stream
stay invisible until a later frame arrives) and with ``XPUB_NODROP`` (the sender is
paced by back-pressure: the sustainable rate). High-water marks are sized to a 256 MiB
budget per socket (ZeroMQ counts messages, not bytes).

Run ``python bench/bench_streaming.py`` (about 45 s) or ``--quick`` (a few seconds).
"""

from __future__ import annotations

import argparse
import faulthandler
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import msgpack
import numpy as np
import zmq
from benchtable import print_table
from speckleflow.streaming import (
    BusPublisher,
    BusReceiver,
    DocumentMessage,
    FrameMessage,
    HeartbeatMessage,
    SequenceTracker,
    decode,
    encode_document,
    encode_frames,
    encode_heartbeat,
)

GOAL_RATIO = 0.5
GOAL_BATCHED_FPS = 40_000
HWM_BUDGET_BYTES = 256 << 20
RECEIVE_TIMEOUT_MS = 20_000
RUN_UID = "bench-run"


@dataclass(frozen=True)
class Case:
    """One measured configuration."""

    pattern: str  # "push" | "pub" | "pub-nodrop"
    transport: str  # "tcp" | "ipc"
    frame_shape: tuple[int, int]
    batch: int

    @property
    def label(self) -> str:
        ny, nx = self.frame_shape
        return f"{ny}×{nx} ×{self.batch}"

    @property
    def message_bytes(self) -> int:
        ny, nx = self.frame_shape
        return ny * nx * 2 * self.batch

    @property
    def hwm(self) -> int:
        return int(max(4, min(10_000, HWM_BUDGET_BYTES // self.message_bytes)))


@dataclass
class Result:
    """What the receiver measured."""

    frames: int
    messages: int
    frames_per_s: float
    sent_frames: int
    missed: int


# --------------------------------------------------------------------------- control


def _send(conn: Connection, obj: Any) -> None:
    """Control messages between the two processes as msgpack, not pickle."""
    conn.send_bytes(msgpack.packb(obj))


def _recv(conn: Connection) -> Any:
    return msgpack.unpackb(conn.recv_bytes())


# --------------------------------------------------------------------------- receiver


def _receive(ctx: zmq.Context, conn: Connection, cmd: dict[str, Any]) -> dict[str, Any]:
    """Receive one case's stream; report counts and timing to the parent."""
    address, impl, pattern, hwm = cmd["address"], cmd["impl"], cmd["pattern"], cmd["hwm"]
    first = last = 0.0
    frames = messages = first_n = 0
    joined = False
    tracker = SequenceTracker()
    perf_counter = time.perf_counter

    subscriber = pattern != "push"
    if impl == "ours" and subscriber:
        receiver = BusReceiver(address, context=ctx, rcvhwm=hwm, tracker=tracker)
        _send(conn, "ready")
        try:
            while True:
                message = receiver.recv(timeout_ms=RECEIVE_TIMEOUT_MS)
                kind = type(message)
                if kind is FrameMessage:
                    now = perf_counter()
                    n = message.header.shape[0]
                    if not messages:
                        first, first_n = now, n
                    last = now
                    messages += 1
                    frames += n
                elif kind is HeartbeatMessage:
                    if not joined:
                        joined = True
                        _send(conn, "joined")
                elif kind is DocumentMessage:
                    break  # the "stop" document ends the case
                elif message is None and not receiver.decode_errors:
                    raise TimeoutError(f"receiver timed out: {receiver.stats()}")
        finally:
            receiver.close()
    else:
        sock = ctx.socket(zmq.SUB if subscriber else zmq.PULL)
        sock.setsockopt(zmq.RCVHWM, hwm)
        sock.setsockopt(zmq.LINGER, 0)
        if subscriber:
            sock.setsockopt(zmq.SUBSCRIBE, b"")
        sock.connect(address)
        _send(conn, "ready")
        recv = sock.recv_multipart
        nframes_raw = cmd["batch"]
        try:
            while True:
                if not sock.poll(RECEIVE_TIMEOUT_MS):
                    raise TimeoutError("receiver timed out")
                parts = recv(copy=False)
                if impl == "raw":
                    if len(parts) == 2:
                        now = perf_counter()
                        if not messages:
                            first, first_n = now, nframes_raw
                        last = now
                        messages += 1
                        frames += nframes_raw
                    elif parts[0].bytes == b"h":
                        if not joined:
                            joined = True
                            _send(conn, "joined")
                    else:
                        break  # b"e"
                else:
                    message = decode(parts)
                    kind = type(message)
                    if kind is FrameMessage:
                        now = perf_counter()
                        header = message.header
                        n = header.shape[0]
                        tracker.update(header.run_uid, header.stream, header.seq, n)
                        if not messages:
                            first, first_n = now, n
                        last = now
                        messages += 1
                        frames += n
                    elif kind is HeartbeatMessage:
                        if not joined:
                            joined = True
                            _send(conn, "joined")
                    else:
                        break
        finally:
            sock.close()
    elapsed = last - first
    rate = (frames - first_n) / elapsed if elapsed > 0 else float("nan")
    return {"frames": frames, "messages": messages, "fps": rate, "missed": tracker.missed}


def _receiver_process(conn: Connection) -> None:
    faulthandler.enable()  # SIGABRT prints where the receiver is
    ctx = zmq.Context()
    try:
        while (cmd := _recv(conn)) is not None:
            try:
                _send(conn, _receive(ctx, conn, cmd))
            except Exception as exc:  # noqa: BLE001 — reported to the parent, which raises
                _send(conn, {"error": f"{type(exc).__name__}: {exc}"})
    finally:
        ctx.term()


# --------------------------------------------------------------------------- sender


def _endpoint(transport: str, ipc_dir: str, index: str) -> str:
    return "tcp://127.0.0.1:*" if transport == "tcp" else f"ipc://{ipc_dir}/bench-{index}"


def _wait_for(conn: Connection, expected: str, timeout_s: float = 30.0) -> None:
    if not conn.poll(timeout_s):
        raise TimeoutError(f"receiver did not say {expected!r} within {timeout_s} s")
    reply = _recv(conn)
    if reply != expected:
        raise RuntimeError(f"receiver said {reply!r}, expected {expected!r}")


def _measure(
    ctx: zmq.Context, conn: Connection, case: Case, impl: str, duration_s: float, endpoint: str
) -> Result:
    frames = np.random.default_rng(0).integers(
        0, 4096, (case.batch, *case.frame_shape), dtype=np.uint16
    )
    n = case.batch
    publisher: BusPublisher | None = None
    sock: zmq.Socket | None = None
    if impl == "ours" and case.pattern == "pub":
        publisher = BusPublisher(endpoint, bind=True, context=ctx, sndhwm=case.hwm, name="bench")
        address = publisher.address

        def send_control() -> None:
            publisher.heartbeat()

        def send_end() -> None:
            publisher.publish_document("stop", {"uid": "s", "run_start": RUN_UID})

    else:
        sock = ctx.socket(zmq.PUSH if case.pattern == "push" else zmq.PUB)
        sock.setsockopt(zmq.SNDHWM, case.hwm)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDTIMEO, RECEIVE_TIMEOUT_MS)  # a dead receiver: fail, not hang
        if case.pattern == "pub-nodrop":
            # Back-pressure instead of drops: the sender is paced by the receiver, so
            # this measures the sustainable rate (a live publisher must never do this).
            sock.setsockopt(zmq.XPUB_NODROP, 1)
        sock.bind(endpoint)
        address = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        if impl == "raw":
            control, end = [b"h"], [b"e"]
        else:
            control = encode_heartbeat("bench")
            end = encode_document("stop", {"uid": "s", "run_start": RUN_UID}, RUN_UID, 0)

        # Control messages never block: with PUSH or XPUB_NODROP a full queue would
        # block the send, and the receiver stops reading once it has seen the end.
        def send_control() -> None:
            try:
                sock.send_multipart(control, flags=zmq.NOBLOCK)
            except zmq.Again:
                pass

        def send_end() -> None:
            try:
                sock.send_multipart(end, flags=zmq.NOBLOCK)
            except zmq.Again:
                pass

    _send(
        conn,
        {"address": address, "impl": impl, "pattern": case.pattern, "hwm": case.hwm, "batch": n},
    )
    try:
        _wait_for(conn, "ready")
        # Beat the slow joiner (PUB/SUB) and make sure the connection is up (PUSH).
        while True:
            send_control()
            if conn.poll(0.005):
                reply = _recv(conn)
                if reply != "joined":
                    raise RuntimeError(f"receiver: {reply}")
                break
        sent = 0
        perf_counter = time.perf_counter
        t_end = perf_counter() + duration_s
        if publisher is not None:
            publish = publisher.publish_frames
            while perf_counter() < t_end:
                publish(RUN_UID, "ccd", frames)
                sent += n
        elif impl == "raw":
            send = sock.send_multipart
            parts = [b"frame", frames]
            while perf_counter() < t_end:
                send(parts, copy=False)
                sent += n
        else:
            send = sock.send_multipart
            seq = 0
            while perf_counter() < t_end:
                send(encode_frames(RUN_UID, "ccd", seq, frames), copy=False)
                seq += n
            sent = seq
        # The end marker can be dropped by PUB at the HWM: repeat until answered.
        while True:
            send_end()
            if conn.poll(0.01):
                break
        reply = _recv(conn)
    finally:
        if publisher is not None:
            publisher.close(linger_ms=0)
        if sock is not None:
            sock.close(linger=0)
    if "error" in reply:
        raise RuntimeError(f"receiver failed: {reply['error']}")
    return Result(reply["frames"], reply["messages"], reply["fps"], sent, reply["missed"])


# --------------------------------------------------------------------------- report


def _median(results: list[Result]) -> Result:
    """Median rate of repeated measurements; counts summed."""
    return Result(
        frames=sum(r.frames for r in results),
        messages=sum(r.messages for r in results),
        frames_per_s=float(np.median([r.frames_per_s for r in results])),
        sent_frames=sum(r.sent_frames for r in results),
        missed=sum(r.missed for r in results),
    )


def _cases(quick: bool) -> list[Case]:
    transports = ("ipc",) if quick else ("tcp", "ipc")
    payloads = [((256, 128), 1), ((256, 128), 64)] + ([] if quick else [((1024, 1024), 1)])
    return [
        Case(pattern, transport, shape, batch)
        for pattern in ("push", "pub", "pub-nodrop")
        for transport in transports
        for shape, batch in payloads
    ]


def _verdict(case: Case, ratio: float, ours_fps: float) -> str:
    notes = [f"ratio {'ok' if ratio >= GOAL_RATIO else 'LOW'}"]
    if case.frame_shape == (256, 128) and case.batch > 1:
        if case.pattern == "pub":  # the sender spins and drops: not a sustainable rate
            notes.append("fps: see nodrop")
        else:
            notes.append(f"fps {'ok' if ours_fps >= GOAL_BATCHED_FPS else 'LOW'}")
    return ", ".join(notes)


def _rows(results: list[tuple[Case, Result, Result]]) -> list[list[str]]:
    rows = []
    for case, raw, ours in results:
        ratio = ours.frames_per_s / raw.frames_per_s if raw.frames_per_s > 0 else float("nan")
        mbs = ours.frames_per_s * case.message_bytes / case.batch / 1e6
        delivered = (ours.frames / ours.sent_frames) if ours.sent_frames else float("nan")
        rows.append(
            [
                PATTERN_NAMES[case.pattern],
                case.transport,
                case.label,
                f"{raw.frames_per_s:,.0f}",
                f"{ours.frames_per_s:,.0f}",
                f"{ratio:.2f}",
                f"{mbs:,.0f}",
                f"{delivered:.0%}",
                f"{ours.sent_frames - ours.frames:,} / {ours.missed:,}",
                _verdict(case, ratio, ours.frames_per_s),
            ]
        )
    return rows


PATTERN_NAMES = {"push": "PUSH/PULL", "pub": "PUB/SUB", "pub-nodrop": "PUB/SUB nodrop"}

HEADERS = [
    "pattern",
    "transport",
    "frames ×/msg",
    "raw fps",
    "ours fps",
    "ours/raw",
    "ours MB/s",
    "delivered",
    "lost / seen by seq",
    "goals",
]


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the table.

    Parameters
    ----------
    argv : list of str, optional
        ``--quick`` (few-second smoke run), ``--duration S`` (seconds per
        measurement), ``--repeats K`` (measurements per cell, median reported),
        ``--plain`` (no rich).

    Returns
    -------
    int
        0.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few-second smoke run")
    parser.add_argument("--duration", type=float, default=None, help="seconds per measurement")
    parser.add_argument("--repeats", type=int, default=None, help="measurements per cell")
    parser.add_argument("--plain", action="store_true", help="plain-text table")
    args = parser.parse_args(argv)
    duration = args.duration if args.duration is not None else (0.15 if args.quick else 0.3)
    repeats = args.repeats if args.repeats is not None else (1 if args.quick else 3)

    started = time.perf_counter()
    # Watchdog: a stuck benchmark prints where it is stuck and exits non-zero.
    faulthandler.dump_traceback_later(60 if args.quick else 240, exit=True)
    spawn = mp.get_context("spawn")
    parent, child = spawn.Pipe()
    process = spawn.Process(target=_receiver_process, args=(child,), daemon=True)
    process.start()
    ctx = zmq.Context()
    ipc_dir = tempfile.mkdtemp(prefix="sfbench-")
    results: list[tuple[Case, Result, Result]] = []
    endpoints = (f"{i}" for i in range(1_000_000))
    try:
        if not args.quick:  # warm up allocators, page cache, CPU clocks; discarded
            warm = Case("push", "ipc", (256, 128), 64)
            for impl in ("raw", "ours"):
                _measure(ctx, parent, warm, impl, 0.5, _endpoint("ipc", ipc_dir, next(endpoints)))
        for case in _cases(args.quick):
            runs: dict[str, list[Result]] = {"raw": [], "ours": []}
            for repeat in range(repeats):
                # interleaved, alternating order: drifts hit both sides alike
                order = ("raw", "ours") if repeat % 2 == 0 else ("ours", "raw")
                for impl in order:
                    endpoint = _endpoint(case.transport, ipc_dir, next(endpoints))
                    runs[impl].append(_measure(ctx, parent, case, impl, duration, endpoint))
            results.append((case, _median(runs["raw"]), _median(runs["ours"])))
    finally:
        _send(parent, None)
        process.join(10)
        if process.is_alive():
            process.kill()
        ctx.term()
        shutil.rmtree(ipc_dir, ignore_errors=True)
    faulthandler.cancel_dump_traceback_later()
    total = time.perf_counter() - started
    title = (
        f"speckleflow bus vs raw pyzmq — frames/s, sender → receiver in another process "
        f"({os.cpu_count()} cores, zmq {zmq.zmq_version()}, pyzmq {zmq.pyzmq_version()}, "
        f"median of {repeats} × {duration:g} s interleaved, {total:.0f} s total)"
    )
    print_table(HEADERS, _rows(results), title, plain=args.plain, right=range(3, 7))
    print(
        f"goals: ours/raw ≥ {GOAL_RATIO:.0%}; 256×128 batched ≥ {GOAL_BATCHED_FPS:,} frames/s "
        "end to end. HWM per socket = 256 MiB / message size. PUB/SUB: the sender never "
        "blocks and drops at the HWM; PUB/SUB nodrop: paced by back-pressure."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
