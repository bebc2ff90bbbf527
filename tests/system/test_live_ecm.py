"""The live ECM run end to end: RunEngine, flown camera, real ZeroMQ proxy, g2 worker, Tiled."""

from __future__ import annotations

import io

import numpy as np
import pytest
from rich.console import Console
from speckleflow.services.run_ecm import ECMRunOptions, run_ecm
from tiled.client import from_uri

pytestmark = [pytest.mark.system, pytest.mark.timeout(300)]


#: The live τ (the g2 worker's KWW fit of the whole-ring ensemble g2 with the finite-run
#: model) against the simulator's true ensemble τ (median of the τ map): the issue's
#: accuracy bound for ≥ 1 e/pixel, time sampling ≤ 0.05 τ and a run of ≥ 10 τ. Measured
#: here −6 % to −7 % on the default run (issue 5) and in tests/unit/test_ecm_pipeline.py.
LIVE_TAU_TOLERANCE = 0.10


def test_live_ecm_run_lands_raw_frames_and_rolling_g2(tmp_path):
    # 4×4 positions at 2560 Hz: time sampling 16/2560 = 6.25 ms = 0.042 τ at τ = 0.15 s;
    # 240 repeats observe 1.5 s = 10 τ (the accuracy conditions of issue 5, as few frames
    # as they allow: 3 840); 2 e/px on the ring.
    nx = ny = 4
    repeats, rate, tau = 240, 2560.0, 0.15
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
        # The final live τ in Tiled (not a `live` snapshot) against the simulator's truth.
        assert g2.metadata["status"] == "final" and g2["fit"].metadata["status"] == "final"
        live_tau = g2.metadata["tau_estimate_s"]
        assert live_tau is not None and live_tau == pytest.approx(g2["fit"].metadata["tau_ring"])
        truth_tau = float(np.asarray(run["truth"]["celeritas_truth_ensemble_tau"].read()).ravel()[0])
        assert truth_tau == pytest.approx(result.truth_tau)
        assert abs(live_tau / truth_tau - 1) < LIVE_TAU_TOLERANCE, (live_tau, truth_tau)
        assert result.live_tau == pytest.approx(live_tau, abs=2e-6)  # status rounds to 1 µs
        assert g2.metadata["count_rate"] == pytest.approx(2.0, rel=0.05)
        assert g2["virtual"]["adf"].shape == (repeats, ny, nx)
        assert list(g2["two_time"].dims) == ["k_r", "t1", "t2"]
        workers = c["analysis"][result.uid]["workers"]["g2"].metadata
        assert workers["frames_processed"] == n_frames and workers["dropped_total"] == 0
    finally:
        server.stop()
    assert result.worker_status["g2"]["frames_processed"] == n_frames
    assert f"analysis/{result.uid}/g2/ensemble" in out.replace("\n", "")
