"""Frame readers of stored runs (HDF5 direct, with a fallback) and the g2 blocks' merged
reads (``read_ranges``): same frames, same ECM products as reading range by range."""

from __future__ import annotations

import pickle
import warnings

import h5py
import numpy as np
import pytest
from speckleflow.devices.liquid import LiquidSample
from speckleflow.devices.scan import RasterScan
from speckleflow.services.ecm.geometry import DetectorGeometry
from speckleflow.services.ecm.pipeline import ArrayFrames, ECMOptions, ScanInfo, run_ecm
from speckleflow.services.raw_runs import RunContentError
from speckleflow.services.run_frames import HDF5Frames, TiledFrames, open_frames

N, REPEATS, RATE, DETECTOR = 4, 8, 1600.0, (48, 48)


class ShuffledRanges(ArrayFrames):
    """ArrayFrames with ``read_ranges`` answering in reverse order, counting calls."""

    calls = 0

    def read_ranges(self, ranges):
        type(self).calls += 1
        for i in reversed(range(len(ranges))):
            yield i, self.read(*ranges[i])


def test_g2_blocks_read_through_read_ranges_give_the_same_products():
    sample = LiquidSample((N, N), detector_shape=DETECTOR, dose=1.0, seed=2, n_components=4)
    scan = RasterScan(N, N, REPEATS, 1 / RATE)
    frames = np.empty((scan.n_frames, *DETECTOR), np.uint16)
    for pts in scan.batches(4096):
        frames[pts.frame_index] = sample.electrons(pts.ix, pts.iy, pts.time)
    geometry = DetectorGeometry.from_mapping(sample.geometry())
    info = ScanInfo(N, N, REPEATS, scan.repeat_period)
    opts = ECMOptions(n_r=1, n_phi=2, rows_per_block=2, scheduler=None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        plain = run_ecm(ArrayFrames(frames), geometry, info, opts)
        merged = run_ecm(ShuffledRanges(frames), geometry, info, opts)
    assert ShuffledRanges.calls == N // 2  # one call per g2 block
    for name in ("tau", "beta", "flags", "g2_ensemble", "two_time"):
        np.testing.assert_array_equal(getattr(merged, name), getattr(plain, name), err_msg=name)


@pytest.fixture
def h5file(tmp_path):
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 9, (40, 6, 5), dtype=np.uint16)
    path = tmp_path / "camera.h5"
    with h5py.File(path, "w", libver="latest") as f:
        f.create_dataset("/entry/data/data", data=frames, chunks=(1, 6, 5), compression="lzf")
    return path, frames


def test_hdf5_frames_read_ranges_and_pickle(h5file):
    path, frames = h5file
    reader = HDF5Frames(path, "/entry/data/data", n_frames=30)
    assert reader.shape == (30, 6, 5) and reader.direct
    np.testing.assert_array_equal(reader.read(3, 11), frames[3:11])
    got = dict(reader.read_ranges([(20, 30), (0, 2)]))
    np.testing.assert_array_equal(got[0], frames[20:30])
    np.testing.assert_array_equal(got[1], frames[0:2])
    clone = pickle.loads(pickle.dumps(reader))
    np.testing.assert_array_equal(clone.read(0, 30), frames[:30])
    with pytest.raises(ValueError, match=r"\[25, 31\)"):
        reader.read(25, 31)
    with pytest.raises(RunContentError, match="holds 40 frames"):
        HDF5Frames(path, "/entry/data/data", n_frames=41)
    reader.close()


def test_hdf5_frames_fall_back_where_the_file_is_not_readable(h5file, tmp_path):
    _, frames = h5file
    with pytest.raises(RunContentError, match="cannot read"):
        HDF5Frames(tmp_path / "missing.h5", "/entry/data/data")
    fallback = ShuffledRanges(frames)
    reader = HDF5Frames(tmp_path / "missing.h5", "/entry/data/data", fallback=fallback)
    assert not reader.direct and reader.shape == frames.shape
    np.testing.assert_array_equal(reader.read(5, 9), frames[5:9])
    got = dict(reader.read_ranges([(0, 3), (10, 12)]))  # the fallback's read_ranges
    np.testing.assert_array_equal(got[1], frames[10:12])


def test_reader_arguments_are_checked():
    with pytest.raises(ValueError, match="node or its uri"):
        TiledFrames()
    with pytest.raises(ValueError, match="source must be one of"):
        open_frames(object(), "nfs")
