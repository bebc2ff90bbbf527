"""ptycho_scan: its messages, and a real RunEngine flying the camera over a simulated crystal."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

pytest.importorskip("abtem")

from bluesky import RunEngine
from plan_doubles import messages
from speckleflow.devices import ScanController
from speckleflow.devices.crystal import CrystalSpec
from speckleflow.devices.crystal_sample import CrystalSample, SimulationParams
from speckleflow.devices.ptycho_camera import PtychoCamera
from speckleflow.plans import ptycho_scan

CONTRACT_KEYS = (
    "technique", "energy_eV", "semiangle_mrad", "defocus_A", "scan_step_A", "scan_shape", "detector_shape",
    "angular_sampling_mrad", "dose_e_per_A2", "crystal", "phonon_model", "temperature_K", "n_configurations",
    "source_fwhm_A", "sample_thickness_A", "cell_A", "simulator",
)  # fmt: skip


@pytest.fixture(scope="session")
def small_sample(tmp_path_factory):
    # Same parameters as test_crystal_sample's: the session's cache serves both.
    params = SimulationParams(
        CrystalSpec("hBN", layers=1, repeats=(4, 3)), scan_shape=(4, 4), step_A=0.3, detector_shape=(32, 32),
        n_configurations=2, sampling_A=0.1, max_angle_mrad=50.0, semiangle_mrad=25.0,
    )  # fmt: skip
    sample = CrystalSample(params, dose=2e4, cache_dir=tmp_path_factory.getbasetemp() / "crystal-cache")
    sample.simulate()
    return sample


@pytest.fixture
def camera(small_sample, tmp_path):
    scan = ScanController(name="scan")
    return PtychoCamera(small_sample, scan, tmp_path / "det", batch_size=5, name="celeritas"), scan


def test_messages(camera):
    cam, scan = camera
    msgs = messages(ptycho_scan(cam, scan, 4, 3, 0.3))
    commands = [m.command for m in msgs]
    assert commands[:2] == ["stage", "stage"] and commands[-2:] == ["unstage", "unstage"]
    start = next(m for m in msgs if m.command == "open_run").kwargs
    for key in CONTRACT_KEYS:
        assert key in start, key
    assert start["technique"] == "ptycho" and start["scan_shape"] == [3, 4] and start["num_points"] == 12
    assert start["plan_name"] == "ptycho_scan" and start["phonon_model"] == "correlated"
    assert commands.index("kickoff") < commands.index("complete") < commands.index("close_run")
    assert [m.obj.name for m in msgs if m.command == "kickoff"] == ["celeritas", "scan"]
    assert "create" in commands and next(m for m in msgs if m.command == "create").kwargs["name"] == "truth"
    mv = {m.obj.name: m.args[0] for m in msgs if m.command == "set"}
    assert mv["scan_nx"] == 4 and mv["scan_ny"] == 3 and mv["scan_repeats"] == 1


def test_bad_arguments_refused_before_any_message(camera):
    cam, scan = camera
    with pytest.raises(ValueError, match="step"):
        next(ptycho_scan(cam, scan, 4, 4, 0.25))  # the sample was simulated at 0.3 Å
    with pytest.raises(ValueError, match="nx"):
        next(ptycho_scan(cam, scan, 0, 4, 0.3))
    with pytest.raises(TypeError, match="ptycho_metadata"):
        next(ptycho_scan(object(), scan, 4, 4, 0.3))


def test_run_engine_flies_the_camera_and_reads_the_truth(camera, small_sample):
    cam, scan = camera
    docs: list[tuple[str, dict]] = []
    RE = RunEngine({}, call_returns_result=False)
    RE.subscribe(lambda name, doc: docs.append((name, doc)))
    RE(ptycho_scan(cam, scan, 4, 4, 0.3, flush_period=0.05))
    names = [n for n, _ in docs]
    stop = next(d for n, d in docs if n == "stop")
    assert stop["exit_status"] == "success"
    start = next(d for n, d in docs if n == "start")
    assert start["dose_e_per_A2"] == 2e4 and start["scan_origin_A"] == pytest.approx(list(small_sample.scan_origin))
    assert "stream_resource" in names and "stream_datum" in names
    truth_desc = next(d for n, d in docs if n == "descriptor" and d["name"] == "truth")
    truth = next(d for n, d in docs if n == "event" and d["descriptor"] == truth_desc["uid"])["data"]
    assert np.asarray(truth["celeritas_truth_atom_positions"]).shape == (2, 48, 3)
    assert np.asarray(truth["celeritas_truth_greens_tensor_analytic"]).shape == (144, 144)
    # frames in the camera file: raster order, Poisson counts at dose·step² electrons
    with h5py.File(cam.file_path, "r") as f:
        frames = f["/entry/data/data"][()]
        ix, iy = f["/entry/data/scan_ix"][()], f["/entry/data/scan_iy"][()]
    assert frames.shape == (16, 32, 32) and frames.dtype == np.uint16
    assert np.array_equal(iy * 4 + ix, np.arange(16))
    expected = small_sample.simulate().reshape(16, 32, 32).sum(axis=(1, 2)) * small_sample.electrons_per_pattern
    assert np.all(np.abs(frames.sum(axis=(1, 2)) - expected) < 6 * np.sqrt(expected))
