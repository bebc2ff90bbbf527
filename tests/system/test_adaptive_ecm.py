"""The adaptive 5D-STEM plan end to end: real RunEngine, flown camera, ZeroMQ bus, g2 worker, Tiled.

A supercooled liquid whose τ the requested frame rate undersamples (N_x·N_y/f₀ above
0.05·τ): the probe's live τ and count rate, read back from Tiled, must lead the plan to a
frame rate that satisfies both ECM constraints against the simulator's ground truth, and
the decision must be in the runs' documents.
"""

from __future__ import annotations

import time

import pytest
from bluesky import RunEngine
from bluesky_tiled_plugins import TiledWriter
from speckleflow.devices import Celeritas, LiquidSample, ScanController
from speckleflow.plans import ecm_adaptive
from speckleflow.services.live import LiveSession
from speckleflow.services.processes import wait_until
from speckleflow.services.queue.counts import tiled_g2_estimates
from speckleflow.services.tiled_server import DataDirectory

pytestmark = [pytest.mark.system, pytest.mark.timeout(240)]

NX = NY = 4
TAU = 0.1  # s, the sample's median τ
F0 = 1600.0  # Hz: N/f0 = 0.01 s > 0.05·τ = 0.005 s, undersampled 2×
DOSE_AT_F0 = 8.0  # e/px/frame on the ring at f0: the probe current allows f ≤ 12.8 kHz
PROBE_REPEATS = 120  # 1.2 s, ~12 τ: g2 is normalised over the probe, a short one biases τ low
REPEATS = 40  # rasters of the acquisition


def _decision(run) -> dict:
    """The one event of the run's ``decision`` stream, as {data key: value}."""
    ds = run["decision"].read()
    assert ds.sizes["time"] == 1
    return {k: ds[k].values[0] for k in ds.data_vars if k.startswith("decision_")}


def test_adaptive_ecm_raises_an_undersampling_frame_rate(tmp_path):
    data_dir = DataDirectory.create(tmp_path / "data")
    sample = LiquidSample((NY, NX), detector_shape=(32, 64), tau_median=TAU, tau_sigma=0.2,
                          dose=DOSE_AT_F0, seed=5)
    truth_tau = sample.truth().ensemble_tau
    assert NX * NY / F0 > 0.05 * truth_tau  # the premise: f0 undersamples this sample
    scan = ScanController(name="scan")
    camera = Celeritas(sample, scan, data_dir.detector, batch_size=64, name="celeritas")
    camera.dose.put(DOSE_AT_F0)
    session = LiveSession(data_dir, workers=("g2",), worker_args={"g2": ["--detector", "celeritas"]})
    try:
        t_start = time.monotonic()
        session.start(timeout=120)
        camera.publisher = session.publisher
        RE = RunEngine({}, call_returns_result=True)
        RE.subscribe(session.publisher)
        RE.subscribe(TiledWriter(session.client["raw"], backup_directory=str(data_dir.backup), batch_size=50))
        t0 = time.monotonic()
        result = RE(ecm_adaptive(camera, scan, NX, NY, REPEATS, F0, read_g2=tiled_g2_estimates(session.client),
                                 probe_repeats=PROBE_REPEATS, wait_timeout=90))
        elapsed = time.monotonic() - t0
        decision = result.plan_result
        assert decision.feasible, decision.reason
        f = decision.frame_rate
        print(f"\nprobe {decision.probe_uid}: live τ {decision.tau_s:.3g} s (truth {truth_tau:.3g} s), "
              f"count rate {decision.count_rate:.3g} e/px/frame at {F0:g} Hz -> f = {f:g} Hz, "
              f"predicted {decision.dose:.3g} e/px/frame; services {t0 - t_start:.1f} s, plan {elapsed:.1f} s"
              f"\n  {decision.reason}")
        # Against the simulator's ground truth: both constraints hold at the chosen rate.
        assert NX * NY / f < 0.05 * truth_tau
        assert decision.dose >= 1.0
        assert decision.count_rate == pytest.approx(DOSE_AT_F0, rel=0.1)
        assert f > F0

        uid = decision.acquisition_uid
        session.wait_workers_done(uid, timeout=60)
        c = session.client
        wait_until(lambda: c["analysis"][uid]["g2"].metadata.get("status") == "final", 60, interval=0.2,
                   what="the acquisition's final g2")
        probe, run = c["raw"][decision.probe_uid], c["raw"][uid]
        # The decision is in both runs' documents: decision stream, stop reason; start of the acquisition.
        for r in (probe, run):
            assert r.metadata["stop"]["exit_status"] == "success"
            assert r.metadata["stop"]["reason"] == decision.reason
            d = _decision(r)
            assert d["decision_frame_rate"] == pytest.approx(f)
            assert d["decision_probe_uid"] == decision.probe_uid
        start = run.metadata["start"]
        assert start["plan_name"] == "ecm_5d" and start["adaptive"]["role"] == "acquisition"
        assert start["frame_rate"] == pytest.approx(f)
        assert start["adaptive"]["decision"]["tau_s"] == pytest.approx(decision.tau_s)
        assert all(cst["satisfied"] for cst in start["ecm_constraints"].values())
        assert probe.metadata["start"]["adaptive"]["role"] == "probe"
        # The acquisition ran at f with the counts the plan predicted (same probe current).
        n = NX * NY * REPEATS
        assert run["primary"]["celeritas_image"].shape[0] == n
        g2 = c["analysis"][uid]["g2"].metadata
        assert g2["time_sampling_s"] == pytest.approx(NX * NY / f, rel=1e-3)
        assert g2["count_rate"] >= 1.0 and g2["count_rate"] == pytest.approx(decision.dose, rel=0.1)
        workers = c["analysis"][uid]["workers"]["g2"].metadata
        print(f"frames produced {n}, in raw record {run['primary']['celeritas_image'].shape[0]}, "
              f"processed by g2 {workers['frames_processed']}, dropped {workers['dropped_total']}; "
              f"acquisition count rate {g2['count_rate']:.3g}, live τ {g2.get('tau_estimate_s')}")
    finally:
        session.stop()
