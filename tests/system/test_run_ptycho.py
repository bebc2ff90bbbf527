"""`speckleflow run ptycho` end to end: abTEM simulation, flown camera, raw run with truth in Tiled."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("abtem")

from speckleflow.services.cli.main import app
from speckleflow.services.raw_runs import open_run
from tiled.client import from_uri
from typer.testing import CliRunner

pytestmark = [pytest.mark.system, pytest.mark.timeout(300)]


def test_run_ptycho_lands_frames_probe_metadata_and_truth(tmp_path, tiled_server):
    # 1-layer hBN, 4×4 scan at 0.3 Å, 32×32 detector, 2 correlated configurations, 0.1 Å sampling;
    # written into the session's Tiled server (the run's detector files inside its readable storage).
    args = [
        "run", "ptycho", "--crystal", "hBN-1L", "--phonons", "correlated", "--configurations", "2",
        "--temperature", "300", "--nx", "4", "--ny", "4", "--step", "0.3", "--detector", "32", "32",
        "--sampling", "0.1", "--dose", "20000", "--cache-dir", str(tmp_path / "cache"),
        "--data-dir", str(tiled_server.data_dir.detector / "ptycho-run"),
        "--tiled-uri", tiled_server.uri, "--api-key", tiled_server.api_key,
    ]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    out = " ".join(result.output.split())
    assert "16 of 16" in out and "raw/" in out and "computed in" in out
    uid = out.split("raw/")[1].split()[0]

    run = open_run(from_uri(tiled_server.uri, api_key=tiled_server.api_key), uid)
    start = run.metadata["start"]
    assert start["technique"] == "ptycho" and start["plan_name"] == "ptycho_scan"
    assert start["energy_eV"] == 200e3 and start["semiangle_mrad"] == 25.0 and start["defocus_A"] == 0.0
    assert start["scan_shape"] == [4, 4] and start["scan_step_A"] == 0.3 and start["detector_shape"] == [32, 32]
    assert start["angular_sampling_mrad"] == [3.125, 3.125] and start["crystal"] == "hBN-1L[0001]"
    assert start["phonon_model"] == "correlated" and start["n_configurations"] == 2
    assert set(start["simulator"]) == {"abtem", "ase"}
    frames = run["primary"]["celeritas_image"].read()
    assert frames.shape == (16, 32, 32) and frames.dtype == np.uint16
    electrons = 20000 * 0.3**2
    assert abs(frames.sum(axis=(1, 2)).mean() - electrons) < 0.05 * electrons
    truth = run["truth"]
    positions = np.asarray(truth["celeritas_truth_atom_positions"].read())[0]
    equilibrium = np.asarray(truth["celeritas_truth_atom_equilibrium"].read())[0]
    greens = np.asarray(truth["celeritas_truth_greens_tensor_analytic"].read())[0]
    # supercell 5×3 orthogonal cells (scan span + 5 Å margin each side) × 4 atoms
    assert positions.shape == (2, 60, 3) and equilibrium.shape == (60, 3) and greens.shape == (180, 180)
    u = positions - equilibrium
    assert 0.005 < np.sqrt((u**2).mean()) < 0.2
    assert np.allclose(greens, greens.T) and np.all(np.diag(greens) > 0)

