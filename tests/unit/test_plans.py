"""The CCI plan: message structure, and a real RunEngine run with the simulated CCD."""

from __future__ import annotations

from pathlib import Path

import pytest
from ophyd import Component as Cpt
from ophyd import Device, Signal

from speckleflow.plans import cci_series


class _Detector(Device):
    """The smallest device with the signals the plan drives (no physics needed here)."""

    exposure_time = Cpt(Signal, value=1.0, kind="config")
    helicity = Cpt(Signal, value=1)


def test_cci_series_messages_alternate_helicity_and_open_one_run():
    det = _Detector(name="det")
    msgs = list(cci_series(det, 3, 0.5))
    commands = [m.command for m in msgs]
    assert commands[:2] == ["stage", "open_run"]
    assert commands[-2:] == ["close_run", "unstage"]
    sets = [m.args[0] for m in msgs if m.command == "set" and m.obj is det.helicity]
    assert sets == [1, -1] * 3
    assert commands.count("trigger") == 6
    assert commands.count("checkpoint") == 3
    open_run = next(m for m in msgs if m.command == "open_run")
    assert open_run.kwargs["plan_name"] == "cci_series"
    assert open_run.kwargs["num_points"] == 6
    assert open_run.kwargs["plan_args"]["num_pairs"] == 3


@pytest.mark.parametrize("pairs, exposure, match", [(0, 1.0, "num_pairs"), (2.5, 1.0, "num_pairs"), (2, 0.0, "exposure")])
def test_cci_series_rejects_bad_arguments(pairs, exposure, match):
    with pytest.raises(ValueError, match=match):
        list(cci_series(_Detector(name="det"), pairs, exposure))


def test_cci_series_with_simulated_ccd_in_a_run_engine(tmp_path):
    """Real RunEngine, real HDF5 file: every frame in the file, StreamDatum per frame, truth stream."""
    import h5py
    from bluesky import RunEngine

    from speckleflow.devices import HelicityCCD, MagneticSample
    from speckleflow.devices.maze import load_states

    sample = MagneticSample(load_states(Path(__file__).parents[1] / "data" / "maze_states_magnumnp_128.npz"), detector_shape=(128, 128), seed=1)
    ccd = HelicityCCD(sample, tmp_path)
    docs = []
    RE = RunEngine({})
    RE.subscribe(lambda name, doc: docs.append((name, doc)))
    RE(cci_series(ccd, 5, 0.5))
    names = [n for n, _ in docs]
    assert names.count("stream_resource") == 1
    assert names.count("stream_datum") == 10
    descriptors = {d["name"]: d for n, d in docs if n == "descriptor"}
    assert set(descriptors) == {"primary", "truth"}
    key = descriptors["primary"]["data_keys"]["ccd_image"]
    assert key["external"] == "STREAM:" and key["dtype_numpy"] == "<u2" and key["shape"] == [128, 128]
    assert descriptors["primary"]["configuration"]["ccd"]["data"]["ccd_geometry"].startswith("{")
    truth_events = [d for n, d in docs if n == "event" and d["descriptor"] == descriptors["truth"]["uid"]]
    assert len(truth_events) == 10
    assert all(0 <= e["data"]["ccd_truth_state"] < 16 for e in truth_events)
    with h5py.File(ccd.file_path, "r") as f:
        frames = f["/entry/data/data"][()]
    assert frames.shape == (10, 128, 128) and frames.dtype.str == "<u2"
    assert (frames.reshape(10, -1).sum(axis=1) > 0).all()
    assert docs[-1][1]["exit_status"] == "success"
