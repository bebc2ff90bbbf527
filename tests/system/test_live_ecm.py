"""The live ECM run end to end: RunEngine, flown camera, real ZeroMQ proxy, g2 worker, Tiled."""

from __future__ import annotations

import io

import numpy as np
import pytest
from rich.console import Console
from speckleflow.services.run_ecm import ECMRunOptions, run_ecm
from tiled.client import from_uri

pytestmark = [pytest.mark.system, pytest.mark.timeout(300)]


def test_live_ecm_run_lands_raw_frames_and_rolling_g2(tmp_path):
    # 8×8 positions at 2560 Hz: time sampling 0.025 s = 0.025 τ; 60 repeats, 2 e/px on the ring.
    nx = ny = 8
    repeats, rate, tau = 60, 2560.0, 1.0
    console = Console(file=io.StringIO(), width=160)
    opts = ECMRunOptions(nx=nx, ny=ny, repeats=repeats, frame_rate=rate, dose=2.0, tau=tau,
                         detector_rows=64, detector_cols=128, seed=3, data_dir=tmp_path / "data")
    result = run_ecm(opts, console)
    out = console.file.getvalue()
    n_frames = nx * ny * repeats
    assert result.exit_status == "success", out
    assert result.frames_acquired == result.frames_in_raw == n_frames

    # The run's embedded server has stopped: serve its catalog again to read everything back.
    from speckleflow.services.tiled_server import DataDirectory, EmbeddedTiled

    data_dir = DataDirectory.create(tmp_path / "data")
    server = EmbeddedTiled(data_dir, data_dir.api_key()).start(timeout=120)
    try:
        c = from_uri(server.uri, api_key=server.api_key)
        run = c["raw"][result.uid]
        assert run.metadata["stop"]["exit_status"] == "success"
        assert run["primary"]["celeritas_image"].shape == (n_frames, 64, 128)
        g2 = c["analysis"][result.uid]["g2"]
        ens = g2["ensemble"]
        assert list(ens.dims) == ["k_r", "lag"]
        md = ens.metadata
        assert md["status"] == "final" and md["repeats_done"] == repeats
        assert ens.shape == (len(md["k_r"]), len(md["lag"]))
        assert md["time_sampling_s"] == pytest.approx(nx * ny / rate, rel=1e-6)
        curves = ens.read()
        assert np.isfinite(curves[:, 1:]).all() and (curves[:, 1] > 1).all()  # correlated at lag 1
        fit = g2["fit"].read()
        assert {"k_r", "tau", "beta", "contrast"} <= set(fit.columns) and len(fit) == ens.shape[0]
        assert g2.metadata["count_rate"] == pytest.approx(2.0, rel=0.05)
        assert g2["virtual"]["adf"].shape == (repeats, ny, nx)
        assert list(g2["two_time"].dims) == ["k_r", "t1", "t2"]
        workers = c["analysis"][result.uid]["workers"]["g2"].metadata
        assert workers["frames_processed"] == n_frames and workers["dropped_total"] == 0
    finally:
        server.stop()
    assert result.worker_status["g2"]["frames_processed"] == n_frames
    assert f"analysis/{result.uid}/g2/ensemble" in out.replace("\n", "")
