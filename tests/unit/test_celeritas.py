"""The Celeritas-like camera: detector response, and a flown acquisition in a RunEngine."""

from __future__ import annotations

import itertools
from collections import Counter

import h5py
import numpy as np
import pytest
from bluesky import RunEngine
from speckleflow.devices import Celeritas, DetectorResponse, LiquidSample, ScanController
from speckleflow.plans import ecm_5d


def test_counting_mode_with_corrections_returns_the_electrons():
    resp = DetectorResponse((64, 64), read_noise=2.0, seed=1)
    electrons = np.random.default_rng(0).poisson(0.8, (20, 64, 64))
    out = resp.process(electrons)
    assert out.dtype == np.uint16
    assert np.mean(out == electrons) > 0.999


def test_without_dark_correction_counting_sees_the_dark_offset():
    resp = DetectorResponse((32, 32), read_noise=0.0, dark_level=100.0, adu_per_electron=20.0)
    zeros = np.zeros((2, 32, 32), int)
    assert resp.process(zeros).max() == 0
    assert resp.process(zeros, dark_correction=False).mean() == pytest.approx(5.0, abs=0.2)  # 100 ADU / 20


def test_integrating_mode_outputs_adu_and_gain_correction_flattens():
    resp = DetectorResponse((32, 32), read_noise=0.0, gain_sd=0.1, adu_per_electron=20.0)
    ones = np.full((1, 32, 32), 10)
    flat = resp.process(ones, counting=False)
    assert flat.mean() == pytest.approx(200.0, abs=1.0) and flat.std() < 1.0
    raw_gain = resp.process(ones, counting=False, gain_correction=False)
    assert raw_gain.std() > 10.0


def test_threshold_suppresses_read_noise_events():
    resp = DetectorResponse((128, 128), read_noise=4.0, adu_per_electron=20.0, seed=3)  # 0.2 e rms
    zeros = np.zeros((10, 128, 128), int)
    assert resp.process(zeros, threshold=0.1).mean() > 10 * resp.process(zeros, threshold=0.5).mean()


def _camera(tmp_path, **kw):
    sample = LiquidSample((8, 8), detector_shape=(64, 64), tau_median=1.0, seed=2, **kw)
    scan = ScanController(name="scan")
    return Celeritas(sample, scan, tmp_path, batch_size=32), scan, sample


def test_ecm_5d_flies_the_camera_into_its_hdf5_file(tmp_path):
    cam, scan, sample = _camera(tmp_path, drift_velocity_nm_s=(0.0, 1.0))
    docs = []
    RE = RunEngine({})
    RE.subscribe(lambda name, doc: docs.append((name, doc)))
    RE(ecm_5d(cam, scan, 8, 8, 20, 2000.0, expected_tau=1.0, dose=2.0, flush_period=0.05))
    names = Counter(n for n, _ in docs)
    assert names["stream_resource"] == 5 and names["stop"] == 1
    assert docs[-1][1]["exit_status"] == "success"
    descriptors = {d["name"]: d for n, d in docs if n == "descriptor"}
    assert set(descriptors) == {"primary", "truth"}
    keys = descriptors["primary"]["data_keys"]
    assert keys["celeritas_image"]["external"] == "STREAM:" and keys["celeritas_image"]["shape"] == [64, 64]
    assert keys["celeritas_image"]["dtype_numpy"] == "<u2"
    config = descriptors["primary"]["configuration"]["celeritas"]["data"]
    assert config["celeritas_frame_rate"] == 2000.0 and config["celeritas_dose"] == 2.0
    # StreamDatums of each data key tile 0 … 1280 without gaps.
    for key in keys:
        sres = {d["uid"] for n, d in docs if n == "stream_resource" and d["data_key"] == key}
        ranges = [(d["indices"]["start"], d["indices"]["stop"]) for n, d in docs
                  if n == "stream_datum" and d["stream_resource"] in sres]
        assert ranges[0][0] == 0 and ranges[-1][1] == 1280
        assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))
    with h5py.File(cam.file_path, "r") as f:
        frames = f["/entry/data/data"]
        assert frames.shape == (1280, 64, 64) and frames.dtype == np.uint16
        assert frames.chunks == (1, 64, 64) and frames.compression == "gzip"
        ix, iy, rep = (f[f"/entry/data/{k}"][()] for k in ("scan_ix", "scan_iy", "repeat"))
        t = f["/entry/data/sim_time"][()]
        ring = frames[()][:, sample.ring_mask]
    assert ix.tolist()[:10] == [0, 1, 2, 3, 4, 5, 6, 7, 0, 1] and iy[8] == 1 and rep[-1] == 19
    np.testing.assert_allclose(np.diff(t), 1 / 2000.0)
    assert ring.mean() == pytest.approx(2.0, rel=0.05)
    truth = next(d for n, d in docs if n == "event" and d["descriptor"] == descriptors["truth"]["uid"])["data"]
    assert np.asarray(truth["celeritas_truth_tau"]).shape == (8, 8, 8)
    drift = np.asarray(truth["celeritas_truth_drift"])
    assert drift.shape == (20, 3)
    np.testing.assert_allclose(drift[:, 2], drift[:, 0] * 1.0)  # dx = v·t
    assert truth["celeritas_truth_ensemble_tau"] == pytest.approx(np.median(truth["celeritas_truth_tau"]))


def test_frame_rate_must_match_the_scan_dwell(tmp_path):
    cam, scan, _ = _camera(tmp_path)
    cam.stage()
    try:
        scan.dwell.put(1e-3)
        cam.frame_rate.put(2000.0)
        with pytest.raises(ValueError, match="does not match the scan dwell"):
            cam.kickoff()
        scan.nx.put(16)
        cam.frame_rate.put(1000.0)
        with pytest.raises(ValueError, match="larger than the sample model"):
            cam.kickoff()
    finally:
        cam.unstage()


def test_unstage_mid_acquisition_stops_cleanly(tmp_path):
    cam, scan, _ = _camera(tmp_path)
    cam.stage()
    scan.stage()
    for sig, value in ((scan.nx, 8), (scan.ny, 8), (scan.repeats, 10_000), (scan.dwell, 1e-3)):
        sig.put(value)
    cam.frame_rate.put(1000.0)
    cam.kickoff()
    status = cam.complete()
    scan.kickoff()
    cam.unstage()
    scan.unstage()
    with pytest.raises(RuntimeError):
        status.wait(5)
    assert cam._written < 640_000
