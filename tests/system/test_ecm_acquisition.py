"""5D-STEM ECM acquisition end to end: real RunEngine, TiledWriter into a real Tiled server,
frames on a real ZeroMQ socket with scan positions in their headers."""

from __future__ import annotations

import time

import numpy as np
import pytest
import zmq
from speckleflow.devices import Celeritas, LiquidSample, ScanController
from speckleflow.plans import ecm_5d
from speckleflow.streaming.protocol import FrameMessage, HeartbeatMessage
from speckleflow.streaming.publisher import BusPublisher
from speckleflow.streaming.receiver import BusReceiver

pytestmark = [pytest.mark.system, pytest.mark.timeout(300)]

NX, NY, REPEATS, RATE = 8, 8, 50, 2000.0
DETECTOR = (64, 128)


def _join(publisher: BusPublisher, receiver: BusReceiver, timeout_s: float = 10.0) -> None:
    """Heartbeat until the subscriber sees one (beats the PUB/SUB slow joiner)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        publisher.heartbeat()
        if isinstance(receiver.recv(timeout_ms=20), HeartbeatMessage):
            return
    raise AssertionError("subscriber saw no heartbeat")


def test_ecm_5d_run_lands_in_tiled_and_streams_positions(tiled_server, tiled_client):
    from bluesky import RunEngine
    from bluesky_tiled_plugins import TiledWriter

    n_frames = NX * NY * REPEATS
    context = zmq.Context()
    publisher = BusPublisher("tcp://127.0.0.1:*", bind=True, context=context, name="test")
    receiver = BusReceiver(publisher.address, context=context)
    try:
        _join(publisher, receiver)
        sample = LiquidSample((NX, NY), detector_shape=DETECTOR, tau_median=1.0, seed=4,
                              drift_velocity_nm_s=(0.2, 0.0))
        scan = ScanController(name="scan")
        camera = Celeritas(sample, scan, tiled_server.data_dir.detector, publisher=publisher, batch_size=64)
        RE = RunEngine({})
        RE.subscribe(publisher)
        RE.subscribe(TiledWriter(tiled_client["raw"], batch_size=256))
        (uid,) = RE(ecm_5d(camera, scan, NX, NY, REPEATS, RATE, expected_tau=1.0, dose=1.0,
                           flush_period=0.2, md={"sample": "supercooled liquid (sim)"}))

        # Raw record in Tiled: every frame, uint16, with positions, and the truth stream.
        run = tiled_client["raw"][uid]
        assert run.metadata["stop"]["exit_status"] == "success"
        start = run.metadata["start"]
        assert start["plan_name"] == "ecm_5d" and start["ecm_constraints"]["counts"]["satisfied"] is True
        images = run["primary"]["celeritas_image"]
        assert images.shape == (n_frames, *DETECTOR)
        assert images.dtype == np.uint16
        last = images[n_frames - 1]
        assert last.sum() > 0
        ix = np.asarray(run["primary"]["celeritas_scan_ix"].read())
        iy = np.asarray(run["primary"]["celeritas_scan_iy"].read())
        repeat = np.asarray(run["primary"]["celeritas_repeat"].read())
        assert ix.shape == (n_frames,)
        k = np.arange(n_frames)
        np.testing.assert_array_equal(ix, k % NX)
        np.testing.assert_array_equal(iy, (k // NX) % NY)
        np.testing.assert_array_equal(repeat, k // (NX * NY))
        tau = np.asarray(run["truth"]["celeritas_truth_tau"].read())
        assert tau.shape == (1, NY, NX, 8) and (tau > 0).all()
        ring = images[:64][:, sample.ring_mask]
        assert 0.7 < ring.mean() < 1.3

        # The bus: every frame, in order, with (ix, iy), repeat and frame index per frame.
        got, positions, repeats, first = 0, [], [], None
        deadline = time.monotonic() + 30
        while got < n_frames and time.monotonic() < deadline:
            message = receiver.recv(timeout_ms=200)
            if not isinstance(message, FrameMessage) or message.header.stream != "celeritas":
                continue
            header = message.header
            assert header.run_uid == uid and header.seq == got
            assert message.frames.dtype == np.uint16 and message.frames.shape[1:] == DETECTOR
            if first is None:
                first = message.frames[0].copy()
            positions += header.fields["scan_position"]
            repeats += header.fields["repeat"]
            assert header.fields["scan_nx"] == NX and header.fields["scan_ny"] == NY
            got += message.frames.shape[0]
        assert got == n_frames
        assert positions[:NX + 1] == [[i, 0] for i in range(NX)] + [[0, 1]]
        assert positions[-1] == [NX - 1, NY - 1] and repeats[-1] == REPEATS - 1
        np.testing.assert_array_equal(first, images[0])  # the bus carries the recorded frames
        assert camera.publish_errors == 0
    finally:
        receiver.close()
        publisher.close()
        context.term()
