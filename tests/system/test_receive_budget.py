"""A stalled consumer's receive queue stays within its byte budget (not 10 000 messages).

The receiver runs in a child process (its resident memory is what is measured). It takes
frame messages of 256 KiB until it has moved to a socket whose RCVHWM fits the budget
(the first frame starts the move), then stops reading: a stalled worker. The test process
publishes through an XPUB socket with ``XPUB_NODROP``, so that instead of dropping it
blocks once the whole path (its own queue, the kernel's socket buffers, the receiver's
queue) is full: a send that times out is the event "the stalled receiver's queue is full".
Then the child reports its memory growth and drains, counting what it had queued.
Without a budget the same receiver queues as many messages as its RCVHWM allows.
"""

from __future__ import annotations

import select
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import zmq
from speckleflow.streaming import BusReceiver, encode_frames

pytestmark = [pytest.mark.system, pytest.mark.timeout(60)]

FRAME_SHAPE = (1, 256, 512)  # one uint16 Celeritas-like frame per message: 256 KiB
BUDGET = 4 * 2**20  # bytes

CHILD = textwrap.dedent(
    """
    import sys
    from speckleflow.streaming import BusReceiver

    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096

    address, budget, rcvhwm = sys.argv[1], sys.argv[2], int(sys.argv[3])
    rx = BusReceiver(address, rcvhwm=rcvhwm, max_queued_bytes=None if budget == "none" else int(budget))
    while rx.recv(timeout_ms=5000) is None or rx.frames == 0 or rx.stats()["hand_over"]:
        pass  # the first frame moves the receiver to a socket within the budget; until it has
    print("stalled", rx.rcvhwm, rss(), rx.frames, flush=True)
    sys.stdin.readline()  # the test says: the path is full
    print("full", rss(), flush=True)
    n = 0
    while rx.recv(timeout_ms=2000) is not None:  # a silence, not a slow moment under load
        n += 1
    print("drained", n, flush=True)
    """
)


def _flood(budget: int | None, rcvhwm: int) -> dict[str, int]:
    """Run a stalled receiver child; return its queue figures."""
    ctx = zmq.Context.instance()
    xpub = ctx.socket(zmq.XPUB)
    xpub.setsockopt(zmq.LINGER, 0)
    xpub.setsockopt(zmq.XPUB_NODROP, 1)
    xpub.setsockopt(zmq.SNDHWM, 2)
    xpub.setsockopt(zmq.SNDTIMEO, 1000)
    port = xpub.bind_to_random_port("tcp://127.0.0.1")
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, f"tcp://127.0.0.1:{port}", "none" if budget is None else str(budget), str(rcvhwm)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert xpub.poll(30_000), "the receiver never subscribed"
        xpub.recv()  # its first subscription: it is connected
        frames = np.ones(FRAME_SHAPE, np.uint16)
        seq = 0
        while not select.select([child.stdout], [], [], 0.05)[0]:  # frames until it stalls
            xpub.send_multipart(encode_frames("run", "celeritas", seq, frames), copy=False)
            seq += 1
            assert seq < 200, "the receiver never finished moving to its budgeted socket"
        word, hwm, rss0, before = child.stdout.readline().split()
        assert word == "stalled"
        # Frames sent while the receiver moved (seq of them) that it had not read yet
        # when it stalled are still in its queue: they are drained with the rest.
        preceding = seq - int(before)
        sent = 0
        while True:  # until a send blocks for SNDTIMEO: the stalled receiver's path is full
            try:
                xpub.send_multipart(encode_frames("run", "celeritas", seq, frames), copy=False)
            except zmq.Again:
                break
            seq += 1
            sent += 1
            assert sent < 5000, "the path never filled up"
        child.stdin.write("go\n")
        child.stdin.flush()
        word, rss_full = child.stdout.readline().split()
        assert word == "full"
        word, drained = child.stdout.readline().split()
        assert word == "drained"
        assert child.wait(30) == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
        xpub.close(linger=0)
    return {
        "rcvhwm": int(hwm),
        "sent": sent,
        "queued": preceding + sent,
        "drained": int(drained),
        "growth": int(rss_full) - int(rss0),
    }


def test_a_stalled_receiver_holds_at_most_its_byte_budget():
    message = sum(memoryview(p).nbytes for p in encode_frames("run", "celeritas", 0, np.ones(FRAME_SHAPE, np.uint16)))
    bounded = _flood(BUDGET, 10_000)
    unbounded = _flood(None, 200)  # the same receiver counting messages only (200 × 256 KiB)
    mib = 2**20
    print(
        f"\nmessage {message / 1024:.0f} KiB; budget {BUDGET / mib:.0f} MiB -> RCVHWM {bounded['rcvhwm']}: sent "
        f"{bounded['sent']} into the stalled path (+{bounded['queued'] - bounded['sent']} unread from the move), queued in the receiver {bounded['drained']}, its memory "
        f"growth {bounded['growth'] / mib:.1f} MiB; without a budget (RCVHWM 200): sent {unbounded['sent']}, "
        f"queued {unbounded['drained']}, growth {unbounded['growth'] / mib:.1f} MiB"
    )
    assert bounded["rcvhwm"] == BUDGET // message
    # Nothing was dropped (XPUB_NODROP) nor repeated by the socket hand-over: the receiver
    # drained exactly what was sent and it had not read before it stalled.
    assert bounded["drained"] == bounded["queued"] and unbounded["drained"] == unbounded["queued"]
    # The stated bound: the budget plus the message being received (one more), in the process.
    assert bounded["growth"] <= BUDGET + 2 * message
    # The measurement sees queued messages: the count-bounded queue grows far beyond it.
    assert unbounded["growth"] > 4 * BUDGET


def test_the_budget_lowers_rcvhwm_to_whole_messages_and_never_raises_it():
    rx = BusReceiver("tcp://127.0.0.1:1", rcvhwm=50, max_queued_bytes=1000)
    try:
        rx._fit_hwm(100)
        assert rx.rcvhwm == 10 and rx.replacements == 1
        rx._fit_hwm(60)  # smaller messages do not raise it back
        assert rx.wanted_rcvhwm == 10
        rx._fit_hwm(10_000)  # larger than the budget: still one message ...
        assert rx.wanted_rcvhwm == 1 and rx.stats()["largest_message"] == 10_000
        assert rx.rcvhwm == 10 and rx.replacements == 1  # ... once the hand-over is over
        rx._stop_draining()
        rx._fit_hwm(50)
        assert rx.rcvhwm == 1 and rx.replacements == 2
    finally:
        rx.close()
    big = BusReceiver("tcp://127.0.0.1:1", rcvhwm=5, max_queued_bytes=10**9)
    try:
        big._fit_hwm(100)
        assert big.rcvhwm == 5  # never above the rcvhwm given
    finally:
        big.close()
    with pytest.raises(ValueError, match="max_queued_bytes"):
        BusReceiver("tcp://127.0.0.1:1", max_queued_bytes=0)


def _xpub() -> tuple[zmq.Socket, str]:
    xpub = zmq.Context.instance().socket(zmq.XPUB)
    xpub.setsockopt(zmq.LINGER, 0)
    port = xpub.bind_to_random_port("tcp://127.0.0.1")
    return xpub, f"tcp://127.0.0.1:{port}"


def _subscribed(xpub: zmq.Socket) -> None:
    assert xpub.poll(10_000), "no subscription reached the publisher"
    xpub.recv()


def test_the_receiver_keeps_receiving_after_its_mark_is_lowered_under_a_burst():
    # Lowering RCVHWM on the connected socket (as the receiver once did) left it never
    # readable again once a burst filled its queue (zeromq/libzmq#2509): here every
    # message after the first was lost, the last one included.
    xpub, address = _xpub()
    rx = BusReceiver(address, rcvhwm=10_000, max_queued_bytes=2**20)
    try:
        _subscribed(xpub)
        frames = np.ones(FRAME_SHAPE, np.uint16)
        xpub.send_multipart(encode_frames("run", "celeritas", 0, frames), copy=False)
        assert rx.recv(timeout_ms=10_000) is not None
        assert rx.rcvhwm == 3 and rx.replacements == 1  # 1 MiB over 256 KiB messages
        _subscribed(xpub)  # the replacement socket subscribed
        for seq in range(1, 201):  # a burst the receiver does not read
            xpub.send_multipart(encode_frames("run", "celeritas", seq, frames), copy=False)
        seqs = []
        while (message := rx.recv(timeout_ms=1000)) is not None:
            seqs.append(message.header.seq)
        xpub.send_multipart(encode_frames("run", "celeritas", 201, frames), copy=False)
        last = rx.recv(timeout_ms=10_000)
        print(f"\nburst of 200 after the first: {len(seqs)} received, {rx.tracker.missed} missed")
        assert last is not None and last.header.seq == 201
        assert seqs == sorted(set(seqs))  # in order, none twice
    finally:
        rx.close()
        xpub.close(linger=0)


def test_a_larger_message_during_a_hand_over_loses_and_repeats_nothing():
    # A 16 KiB message moves the receiver to a socket of 63 (1 MiB budget); an unread
    # burst of 9 more and then two 256 KiB messages (656 KiB: within the budget, so the
    # hand-over may read all of it from the old socket) goes into both sockets; the first
    # 256 KiB one arrives while the old socket is still being read. Replacing the new
    # socket right then (as the receiver once did) closed the old one with the last
    # message in it and delivered the new one's copies of the nine again.
    xpub, address = _xpub()
    rx = BusReceiver(address, rcvhwm=10_000, max_queued_bytes=2**20)
    small, large = np.ones((1, 64, 128), np.uint16), np.ones(FRAME_SHAPE, np.uint16)
    size = {
        name: sum(memoryview(p).nbytes for p in encode_frames("run", "celeritas", 0, frames))
        for name, frames in (("small", small), ("large", large))
    }
    try:
        _subscribed(xpub)
        xpub.send_multipart(encode_frames("run", "celeritas", 0, small), copy=False)
        assert rx.recv(timeout_ms=10_000) is not None
        assert rx.rcvhwm == 2**20 // size["small"] and rx.replacements == 1
        _subscribed(xpub)  # the replacement socket subscribed
        for seq in range(1, 12):
            frames = small if seq < 10 else large
            xpub.send_multipart(encode_frames("run", "celeritas", seq, frames), copy=False)
        seqs = []
        while (message := rx.recv(timeout_ms=2000)) is not None:
            seqs.append(message.header.seq)
        assert seqs == list(range(1, 12)) and rx.tracker.missed == 0
        assert rx.wanted_rcvhwm == 2**20 // size["large"]
        # The lower mark comes once the hand-over is over, which may take a few more
        # messages (the old socket is read while it has any; at most the byte budget of
        # them): nothing lost meanwhile. ci11 had the 12th still from the old socket.
        seq = 11
        while rx.replacements < 2 and seq < 60:
            seq += 1
            xpub.send_multipart(encode_frames("run", "celeritas", seq, large), copy=False)
            message = rx.recv(timeout_ms=10_000)
            assert message is not None and message.header.seq == seq
        stats = rx.stats()
        print(f"\nreceived {seqs} and {seq - 11} more, missed {stats['missed']}, duplicates "
              f"dropped {rx.duplicates}, replaced again at message {seq}")
        assert rx.replacements == 2 and rx.rcvhwm == rx.wanted_rcvhwm and stats["missed"] == 0
    finally:
        rx.close()
        xpub.close(linger=0)


def test_the_hand_over_to_a_lower_mark_loses_nothing_when_the_consumer_keeps_up():
    xpub, address = _xpub()
    rx = BusReceiver(address, rcvhwm=10_000, max_queued_bytes=2**20)
    try:
        _subscribed(xpub)
        seqs = []
        for seq in range(40):  # one message at a time, each read before the next is sent
            shape = (1, 128, 256) if seq < 5 else FRAME_SHAPE  # 64 KiB, then 256 KiB
            xpub.send_multipart(encode_frames("run", "celeritas", seq, np.ones(shape, np.uint16)), copy=False)
            message = rx.recv(timeout_ms=10_000)
            assert message is not None, f"message {seq} did not arrive"
            seqs.append(message.header.seq)
        assert seqs == list(range(40))
        assert rx.replacements == 2 and rx.tracker.missed == 0
    finally:
        rx.close()
        xpub.close(linger=0)
