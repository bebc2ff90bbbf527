"""The online CCI assignment worker in a live run: states appear in Tiled while frames
stream, and they agree with the simulator's ground truth."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import numpy as np
import pytest
from rich.console import Console
from tiled.client import from_uri

from speckleflow.services.run_cci import CCIRunOptions, run_cci
from speckleflow.services.tiled_server import DataDirectory, EmbeddedTiled

pytestmark = [pytest.mark.system, pytest.mark.timeout(600)]


def test_online_assignments_land_in_tiled_and_match_truth(tmp_path):
    pairs = 300
    console = Console(file=io.StringIO(), width=200)
    # 280 K and 0.5-s frames: the sample changes state every few tens of pairs, so a
    # short run visits several states with few hop-mixed pairs.
    opts = CCIRunOptions(pairs=pairs, data_dir=tmp_path / "data", seed=0, temperature=280.0,
                         exposure=0.5, keep_serving=False)
    result = run_cci(opts, console)
    output = console.file.getvalue()
    print(output)
    assert result.exit_status == "success"
    cci = result.worker_status["cci"]
    assert cci["frames_processed"] == 2 * pairs, cci
    assert "online estimate" in output

    data_dir = DataDirectory.create(tmp_path / "data")
    server = EmbeddedTiled(data_dir, data_dir.api_key()).start(timeout=120)
    try:
        c = from_uri(server.uri, api_key=data_dir.api_key())
        node = c["analysis"][result.uid]["cci"]["assignments"]
        table = node.read()
        assert list(table.columns) == ["pair", "time", "state", "score", "runner_up", "n_templates"]
        current = table.groupby("pair")["state"].last()  # the last row of a pair is its state
        assert sorted(current.index) == list(range(pairs))
        md = node.metadata
        assert md["status"] == "final" and md["source_run_uid"] == result.uid
        counts = md["state_counts"]
        assert md["n_templates"] == len(counts) >= 2
        assigned = current[current >= 0]
        # Live counts and the table agree, state by state.
        assert np.bincount(assigned, minlength=len(counts)).tolist() == counts
        assert len(assigned) >= 0.95 * pairs

        truth_frames = np.asarray(c["raw"][result.uid]["truth"]["ccd_truth_state"].read())
        assert truth_frames.shape == (2 * pairs,)  # no lost or duplicated rows in raw
        truth = truth_frames[1::2]  # state at the end of each pair
        pure = truth_frames[0::2] == truth_frames[1::2]
        # Map each online state to the true state most of its pairs are in.
        mapping = {s: np.bincount(truth[assigned.index[assigned == s]]).argmax() for s in set(assigned)}
        mapped = np.array([mapping.get(s, -1) for s in current])
        late = np.arange(pairs) >= 100
        agreement = float(np.mean(mapped[late & pure] == truth[late & pure]))
        # Measured 0.93 on this short run (the 3 000-pair accuracy test is in
        # tests/unit/test_cci_online.py); this checks the plumbing keeps the labels.
        assert agreement >= 0.9, agreement
        # Latency is reported (its budget is checked by bench/bench_cci_online.py, not
        # by a timed test on a shared machine).
        assert set(md["latency_ms"]) == {"p50", "p99", "max"}

        # The full pipeline ran at run end (run_cci's default) and published its products.
        assert "full CCI processing at run end" in output
        assert result.processing is not None
        _check_full_processing(c, result.uid, truth, pure, pairs)
        _check_phase_retrieval(c, result.uid, output)
    finally:
        server.stop()

    # `speckleflow process cci` on the stored run, as a user would: it re-processes and
    # replaces the products; a wrong uid is a clear error and exit code 2.
    cli = [sys.executable, "-m", "speckleflow.services.cli.main", "process", "cci"]
    env = {**os.environ, "COLUMNS": "200"}
    done = subprocess.run([*cli, result.uid[:8], "--data-dir", str(tmp_path / "data"), "--threshold", "0.02",
                           "--scheduler", "none", "--figures-dir", str(tmp_path / "figs")],
                          capture_output=True, text=True, timeout=300, env=env, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    flat = "".join(done.stdout.split())  # rich wraps long lines on a non-terminal
    assert f"CCIofrun{result.uid}" in flat and "pairsperstate" in flat, done.stdout
    assert {p.name for p in (tmp_path / "figs" / result.uid).iterdir()} >= {
        "state_timeline.png", "state_images.png", "transition_network.png", "dendrogram.png", "pinning.png"}
    bad = subprocess.run([*cli, "0000000000", "--data-dir", str(tmp_path / "data")],
                         capture_output=True, text=True, timeout=300, env=env, check=False)
    assert bad.returncode == 2 and "no run '0000000000'" in bad.stdout, bad.stdout + bad.stderr
    server = EmbeddedTiled(data_dir, data_dir.api_key()).start(timeout=120)
    try:
        c = from_uri(server.uri, api_key=data_dir.api_key())
        node = c["analysis"][result.uid]["cci"]
        assert node.metadata["full_processing"]["parameters"]["threshold"] == 0.02
        _check_full_processing(c, result.uid, truth, pure, pairs)
    finally:
        server.stop()


def _check_phase_retrieval(c, uid: str, output: str) -> None:
    """Run end: every CCI state with >= 20 pairs phase-retrieved, with an FRC resolution."""
    assert "phase retrieval of the CCI states" in output
    phase = c["analysis"][uid]["phase"]
    counts = c["analysis"][uid]["cci"].metadata["full_processing"]["summary"]["state_counts"]
    expected = {f"state_{s}" for s, n in enumerate(counts) if n >= 20}
    assert set(phase) == expected and expected
    for summary in phase.metadata["states"]:
        # Measured 1.0-1.6 px on this run (the aperture is 64 px across); no correlation
        # between the halves would give 256 px.
        assert summary["resolution_px"] < 3.0, summary
    node = phase[sorted(expected)[0]]
    mz, support = node["mz"].read(), node["mz_support"].read().astype(bool)
    assert mz.shape == support.shape and node["mz"].metadata["dims"] == ["y", "x"]
    assert np.all(mz[~support] == 0) and np.std(mz[support]) > 0
    assert node["exit_wave_plus"].dtype == np.complex64
    assert list(node["frc"].read().columns) == ["frequency", "frc", "threshold"]
    assert node["figures"]["mz"].shape[-1] == 4


def _check_full_processing(c, uid: str, truth: np.ndarray, pure: np.ndarray, pairs: int) -> None:
    node = c["analysis"][uid]["cci"]
    fp = node.metadata["full_processing"]
    assert fp["status"] == "final" and fp["source_run_uid"] == uid
    summary = fp["summary"]
    labels = node["labels"].read()
    assert list(labels.columns) == ["pair", "time", "state", "internal_mode", "score"]
    assert labels["pair"].tolist() == list(range(pairs))
    assert np.all(np.diff(labels["time"]) >= 0)
    state = labels["state"].to_numpy()
    n_states = summary["n_states"]
    assert np.bincount(state[state >= 0], minlength=n_states).tolist() == summary["state_counts"]
    # Against the simulator: every true state with >= 40 hop-free pairs in this run has
    # its own state, and most hop-free pairs carry the state of their true state
    # (measured 0.92: one sibling with 24 pairs is not resolved in a 300-pair run; the
    # 3 000-pair accuracy of the clustering is tested in tests/unit/test_cci_clustering.py).
    majority = {t: np.bincount(state[pure & (truth == t)] + 1).argmax() - 1
                for t in np.unique(truth[pure]) if np.sum(pure & (truth == t)) >= 40}
    assert len(majority) >= 2 and -1 not in majority.values()
    assert len(set(majority.values())) == len(majority), majority
    mapping = {s: np.bincount(truth[state == s]).argmax() for s in range(n_states)}
    mapped = np.array([mapping.get(s, -1) for s in state])
    assert float(np.mean(mapped[pure] == truth[pure])) >= 0.9
    images = node["state_images"]
    assert images.shape[0] == n_states and images.metadata["dims"] == ["state", "y", "x"]
    holograms = node["state_holograms"]
    assert holograms.shape[:2] == (n_states, 2)
    for key in ("correlation", "linkage", "misassignment", "state_distance", "transitions", "dwell",
                "wall_occupancy"):
        assert node[key].metadata["source_run_uid"] == uid, key
    for name in ("state_timeline", "dendrogram", "transition_network", "state_images", "pinning"):
        fig = node["figures"][name]
        assert fig.shape[-1] == 4 and fig.dtype == np.uint8, name
