"""The STEM scan controller: raster order, timing with flyback, batches, flying."""

from __future__ import annotations

import numpy as np
import pytest
from speckleflow.devices.scan import RasterScan, ScanController


def test_raster_order_and_timestamps_without_flyback():
    r = RasterScan(nx=3, ny=2, repeats=2, dwell=1e-3)
    p = r.points()
    assert r.n_frames == len(p) == 12
    assert p.ix.tolist() == [0, 1, 2] * 4
    assert p.iy.tolist() == [0, 0, 0, 1, 1, 1] * 2
    assert p.repeat.tolist() == [0] * 6 + [1] * 6
    np.testing.assert_allclose(p.time, np.arange(12) * 1e-3)
    assert r.repeat_period == pytest.approx(6e-3)  # N_x·N_y/f


def test_flyback_adds_dead_time_per_line_and_per_raster():
    r = RasterScan(nx=2, ny=2, repeats=3, dwell=1.0, line_flyback=0.5, frame_flyback=2.0)
    assert r.line_period == 2.5 and r.repeat_period == 7.0 and r.duration == 21.0
    p = r.points()
    np.testing.assert_allclose(p.time[:5], [0.0, 1.0, 2.5, 3.5, 7.0])
    # Every position is revisited exactly every repeat period, without interruption.
    for ix, iy in [(0, 0), (1, 1)]:
        t = p.time[(p.ix == ix) & (p.iy == iy)]
        np.testing.assert_allclose(np.diff(t), 7.0)


def test_batches_cover_every_point_once():
    r = RasterScan(nx=5, ny=3, repeats=4, dwell=0.1)
    batches = list(r.batches(7))
    assert [len(b) for b in batches] == [7] * 8 + [4]
    np.testing.assert_array_equal(np.concatenate([b.frame_index for b in batches]), np.arange(60))
    assert len(r.points(58, 100)) == 2


@pytest.mark.parametrize(
    "kwargs, match",
    [({"nx": 0}, "nx"), ({"repeats": 1.5}, "repeats"), ({"dwell": 0.0}, "dwell"), ({"line_flyback": -1.0}, "flyback")],
)
def test_bad_rasters_are_refused(kwargs, match):
    opts = {"nx": 2, "ny": 2, "repeats": 2, "dwell": 1e-3, **kwargs}
    with pytest.raises(ValueError, match=match):
        RasterScan(**opts)


def test_controller_emits_points_and_completes():
    scan = ScanController(name="scan")
    for sig, value in ((scan.nx, 4), (scan.ny, 2), (scan.repeats, 3), (scan.dwell, 1e-4)):
        sig.put(value)
    with pytest.raises(RuntimeError, match="kickoff"):
        scan.complete()
    assert scan.kickoff().done
    status = scan.complete()
    raster = scan.wait_started(timeout=1)
    assert raster is not None and raster.n_frames == 24
    got = []
    while (pts := scan.next_points(10)) is not None:
        got.append(pts)
        assert status.done == (scan.emitted == 24)
    assert [len(p) for p in got] == [10, 10, 4]
    assert status.done and status.success
    assert (scan.ix.get(), scan.iy.get(), scan.repeat.get()) == (3, 1, 2)
    assert scan.sim_time.get() == pytest.approx(23e-4)
    assert "scan_nx" in scan.read_configuration() and scan.describe()["scan_ix"]["dtype"] == "integer"


def test_aborted_scan_fails_its_status():
    scan = ScanController(name="scan")
    scan.kickoff()
    status = scan.complete()
    scan.next_points(5)
    scan.stop()
    with pytest.raises(RuntimeError, match="stopped"):
        status.wait(1)
    assert scan.next_points(5) is None
