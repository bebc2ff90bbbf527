"""The live CCI run end to end: real RunEngine, real ZeroMQ proxy and workers, real Tiled."""

from __future__ import annotations

import io

import numpy as np
import pytest
from rich.console import Console
from tiled.client import from_uri

from speckleflow.services.run_cci import CCIRunOptions, run_cci

pytestmark = [pytest.mark.system, pytest.mark.timeout(600)]


def _client(result, data_dir):
    return from_uri(result.tiled_uri, api_key=(data_dir / ".api_key").read_text())


def _run(tmp_path, pairs, on_document=None, **kw):
    console = Console(file=io.StringIO(), width=160)
    # process=False: these tests are about the live path and the raw record; the run-end
    # CCI pipeline is tested in test_live_cci_assignment.py.
    opts = CCIRunOptions(pairs=pairs, data_dir=tmp_path / "data", detector_size=128, seed=3,
                         keep_serving=False, process=False, **kw)
    result = run_cci(opts, console, on_document=on_document)
    return result, console.file.getvalue()


def test_live_run_lands_raw_frames_truth_and_previews(tmp_path):
    from speckleflow.services.tiled_server import DataDirectory, EmbeddedTiled

    pairs = 60
    midway: dict = {}

    def read_while_running(session, name, doc):
        # A Tiled client reads the raw run and the live preview while the run goes on
        # (TiledWriter writes primary events in batches of 50).
        if name == "event" and doc.get("seq_num") == 2 * pairs - 10 and not midway:
            run = session.client["raw"][doc_uid["start"]]
            midway["stop"] = run.metadata.get("stop")
            midway["frames"] = run["primary"]["ccd_image"].shape[0]
            midway["frame_sum"] = int(run["primary"]["ccd_image"][0].sum())
            midway["fth"] = "fth" in session.client["analysis"][doc_uid["start"]]

    doc_uid: dict = {}

    def on_document(session, name, doc):
        if name == "start":
            doc_uid["start"] = doc["uid"]
        read_while_running(session, name, doc)

    result, output = _run(tmp_path, pairs, on_document=on_document)
    print(output)
    assert midway["stop"] is None  # read before the run ended
    assert 50 <= midway["frames"] < 2 * pairs and midway["frame_sum"] > 0
    assert midway["fth"]
    assert result.exit_status == "success"
    assert result.frames_acquired == 2 * pairs
    assert result.frames_in_raw == 2 * pairs
    assert result.gaps == []
    fth = result.worker_status["fth"]
    assert fth["frames_processed"] == 2 * pairs, fth
    assert fth["missed"] == 0
    assert result.uid in output and "raw/" in output

    # The run's Tiled server was stopped with the run; the catalog persists. Serve it again
    # and read everything back as a client would.
    data_dir = DataDirectory.create(tmp_path / "data")
    server = EmbeddedTiled(data_dir, data_dir.api_key()).start(timeout=120)
    try:
        c = from_uri(server.uri, api_key=data_dir.api_key())
        run = c["raw"][result.uid]
        assert run.metadata["stop"]["exit_status"] == "success"
        assert run.metadata["start"]["plan_name"] == "cci_series"
        images = run["primary"]["ccd_image"]
        assert images.shape == (2 * pairs, 128, 128)
        assert images.dtype == np.uint16
        frame = images[7]
        assert frame.sum() > 0
        helicity = np.asarray(run["primary"]["ccd_helicity"].read())
        assert list(helicity[:4]) == [1, -1, 1, -1]
        truth = np.asarray(run["truth"]["ccd_truth_state"].read())
        assert truth.shape == (2 * pairs,)
        assert truth.min() >= 0

        fth_node = c["analysis"][result.uid]["fth"]
        preview = fth_node["preview"]
        assert preview.shape[0] >= 1 and preview.shape[1:] == fth_node["sum"].shape
        md = preview.metadata
        assert md["source_run_uid"] == result.uid
        assert md["technique"] == "fth"
        assert md["status"] == "final"
        for key in ("algorithm", "parameters", "software_version", "pair_range"):
            assert key in md
        assert fth_node["sum"].metadata["pair_range"] == [0, pairs - 1]
        assert np.isfinite(fth_node["sum"].read()).all()
    finally:
        server.stop()


def test_raw_record_complete_when_preview_worker_is_killed(tmp_path):
    pairs = 80
    killed = {}

    def kill_fth_midway(session, name, doc):
        if name == "event" and doc.get("seq_num") == pairs and "pid" not in killed:
            proc = session.workers["fth"].process
            killed["pid"] = proc.pid
            proc.kill()

    result, output = _run(tmp_path, pairs, on_document=kill_fth_midway)
    print(output)
    assert "pid" in killed
    assert result.exit_status == "success"
    assert result.frames_in_raw == result.frames_acquired == 2 * pairs
    assert len(result.gaps) == 1
    gap = result.gaps[0]
    assert gap["worker"] == "fth"
    assert 0 < gap["missing"] <= 2 * pairs
    assert "gap:" in output and "exited" in output
    print(
        f"frames produced {result.frames_acquired}, in raw record {result.frames_in_raw}, "
        f"seen by fth {gap['processed']}, missing online {gap['missing']}"
    )


def test_run_into_an_existing_tiled_server(tiled_server):
    """--tiled-uri/--api-key: no embedded server; detector files inside the server's readable storage."""
    console = Console(file=io.StringIO(), width=160)
    opts = CCIRunOptions(pairs=10, data_dir=tiled_server.data_dir.root, detector_size=128, seed=5,
                         tiled_uri=tiled_server.uri, api_key=tiled_server.api_key, process=False)
    result = run_cci(opts, console)
    assert result.exit_status == "success"
    assert result.tiled_uri == tiled_server.uri
    c = from_uri(tiled_server.uri, api_key=tiled_server.api_key)
    assert c["raw"][result.uid]["primary"]["ccd_image"].shape == (20, 128, 128)
    assert c["analysis"][result.uid]["fth"]["sum"].metadata["status"] == "final"
    assert tiled_server.healthy()  # the user's server is left running
