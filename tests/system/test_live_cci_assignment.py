"""The online CCI assignment worker in a live run: states appear in Tiled while frames
stream, and they agree with the simulator's ground truth."""

from __future__ import annotations

import io

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
    finally:
        server.stop()
