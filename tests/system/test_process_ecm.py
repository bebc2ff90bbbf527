"""speckleflow process ecm end to end: a real RunEngine + TiledWriter run of the simulated
Celeritas camera into the Tiled fixture, then process_ecm on it (Dask LocalCluster)."""

from __future__ import annotations

import numpy as np
import pytest
from speckleflow.devices import Celeritas, LiquidSample, ScanController
from speckleflow.plans import ecm_5d

pytestmark = [pytest.mark.system, pytest.mark.timeout(300)]

N, REPEATS, RATE, DETECTOR = 8, 120, 1600.0, (48, 48)


def test_process_ecm_publishes_tau_g2_and_figures(tiled_server, tiled_client):
    from bluesky import RunEngine
    from speckleflow.services.ecm.pipeline import ECMOptions
    from speckleflow.services.process_ecm import ECMProcessOptions, process_ecm, steps
    from speckleflow.services.raw_writer import raw_run_writer

    sample = LiquidSample((N, N), detector_shape=DETECTOR, tau_median=1.0, seed=2, n_components=4)
    scan = ScanController(name="scan")
    camera = Celeritas(sample, scan, tiled_server.data_dir.detector, batch_size=512, compression="lzf")
    RE = RunEngine({})
    RE.subscribe(raw_run_writer(tiled_client["raw"], batch_size=1024))
    (uid,) = RE(ecm_5d(camera, scan, N, N, REPEATS, RATE, expected_tau=1.0, dose=1.0, flush_period=0.5))

    seen: list[str] = []
    opts = ECMProcessOptions(ecm=ECMOptions(n_r=1, n_phi=8, rows_per_block=N, scheduler="local"))
    with pytest.warns(UserWarning, match="wider than the probe"):
        out = process_ecm(tiled_client, uid[:12], opts, progress=lambda s, d, t: seen.append(s))
    assert out.uid == uid
    print("timings", {k: round(v, 2) for k, v in out.timings.items()})
    assert [s for s in steps() if s in seen] == list(steps())

    node = tiled_client["analysis"][uid]["ecm"]
    tau = node["tau"]
    assert tau.metadata["dims"] == ["scan_y", "scan_x", "k_r", "k_phi"] and tau.metadata["units"] == "s"
    assert tau.metadata["source_run_uid"] == uid and tau.metadata["status"] == "final"
    assert tau.metadata["parameters"]["repeat_period_s"] == pytest.approx(N * N / RATE)
    values = tau.read()
    assert values.shape == (N, N, 1, 8)
    g2 = node["g2"]
    assert g2.metadata["dims"] == ["k_r", "lag"] and len(g2.metadata["lag"]) == g2.shape[1]
    assert g2.metadata["lag"][1] == pytest.approx(N * N / RATE)
    for key in ("beta", "contrast", "two_time", "drift", "adf", "tau_histograms", "lognormal_fits",
                "tau_vs_k_r"):
        assert key in node
    assert set(node["fit_quality"]) == {"flags", "chi2"}
    assert set(node["figures"]) == {"tau_maps", "g2", "tau_histogram"}
    assert node["figures"]["g2"].read().shape[-1] == 4
    summary = node.metadata["full_processing"]["summary"]
    assert 0.9 < summary["mean_counts_per_ring_pixel"] < 1.1
    # 120 repeats (4.8 s ≈ 5 τ): a sanity bound, the accuracy tests are in tests/unit
    truth = np.asarray(tiled_client["raw"][uid]["truth"]["celeritas_truth_ensemble_tau"].read())[0]
    assert 0.6 < summary["median_tau_s"] / truth < 1.5
