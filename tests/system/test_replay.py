"""`speckleflow replay`: a run TiledWriter gave up on is written again from its backup, once.

A real RunEngine runs ``cci_series`` with the helicity CCD writing HDF5 files in the
Tiled server's readable storage. TiledWriter writes ``raw/<uid>`` until the 10th event
and then stops receiving documents (what happens when a write fails and the library
switches to its backup); the library's own JSON Lines backup writer
(``JSONLinesWriter``, the one TiledWriter's ``backup_directory`` uses) records every
document. The command replaces the partial run, keeps the detector files, and a second
replay changes nothing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

MAGNUMNP_STATES = Path(__file__).parents[1] / "data" / "maze_states_magnumnp_128.npz"

pytestmark = [pytest.mark.system, pytest.mark.timeout(300)]


def test_replay_writes_a_partial_run_again_keeps_detector_files_and_is_idempotent(tiled_server, tiled_client, tmp_path):
    from bluesky import RunEngine
    from bluesky_tiled_plugins import TiledWriter
    from bluesky_tiled_plugins.writing._json_writer import JSONLinesWriter
    from speckleflow.devices import HelicityCCD, MagneticSample
    from speckleflow.plans import cci_series
    from speckleflow.services.cli.main import app
    from speckleflow.services.raw_record import FRAMES_PUBLISHED_KEY, RECORD_KEY, backup_file

    pairs, cut = 8, 6
    backup_dir = tmp_path / "backup"
    detector_dir = tiled_server.data_dir.detector / tmp_path.name
    sample = MagneticSample.from_options(states_file=str(MAGNUMNP_STATES), seed=3, detector_shape=(128, 128))
    ccd = HelicityCCD(sample, detector_dir, name="ccd")
    writer = TiledWriter(tiled_client["raw"], batch_size=5)
    events = {"n": 0}

    def failing_writer(name, doc):
        if name == "event":
            events["n"] += 1
        if events["n"] <= cut:
            writer(name, doc)

    RE = RunEngine({}, call_returns_result=False)
    RE.subscribe(failing_writer)
    RE.subscribe(JSONLinesWriter(str(backup_dir)))
    (uid,) = RE(cci_series(ccd, pairs, 0.5))
    tiled_client["raw"][uid].update_metadata(metadata={FRAMES_PUBLISHED_KEY: {"ccd": 2 * pairs}})
    h5_files = sorted(detector_dir.glob("*.h5"))
    try:  # what TiledWriter had written: some rows, or not even the image key yet
        before = int(tiled_client["raw"][uid]["primary"][ccd.image_key].shape[0])
    except KeyError:
        before = 0
    assert before < 2 * pairs and h5_files

    runner = CliRunner()
    argv = ["replay", str(backup_dir), "--tiled-uri", tiled_server.uri, "--api-key", tiled_server.api_key]
    first = runner.invoke(app, argv)
    print(first.output)
    assert first.exit_code == 0, first.output
    assert f"raw/{uid} replayed" in first.output
    run = tiled_client["raw"][uid]
    images = run["primary"][ccd.image_key]
    after = int(images.shape[0])
    record = run.metadata[RECORD_KEY]
    assert after == 2 * pairs and record["status"] == "replayed" and record["has_stop"]
    assert run.metadata[FRAMES_PUBLISHED_KEY]["ccd"] == 2 * pairs  # our notes survive the replay
    assert sorted(detector_dir.glob("*.h5")) == h5_files  # Tiled deleted only what it manages
    last = np.asarray(images[-1])
    assert last.shape == (128, 128) and last.any()  # read from the detector file, registered again
    replayed = backup_file(backup_dir, uid).with_suffix(".jsonl.replayed")
    assert replayed.is_file() and not backup_file(backup_dir, uid).exists()

    # Again: the directory holds nothing left to replay; the replayed file on its own is
    # recognised as complete in Tiled and left alone ("complete", not "replayed": no
    # delete, no rewrite).
    again = runner.invoke(app, argv)
    assert again.exit_code == 0 and "no *.jsonl backup" in again.output, again.output
    explicit = runner.invoke(app, [*argv[:1], str(replayed), *argv[2:]])
    print(explicit.output)
    assert explicit.exit_code == 0 and f"raw/{uid} complete" in explicit.output, explicit.output
    assert int(tiled_client["raw"][uid]["primary"][ccd.image_key].shape[0]) == 2 * pairs
    assert sorted(detector_dir.glob("*.h5")) == h5_files
    print(f"replay: frames produced {2 * pairs}, in the raw record before {before}, after {after}; "
          f"detector files kept {len(h5_files)}")


def test_queue_server_runengine_replays_at_each_stop(tiled_server, tiled_client, tmp_path):
    """RawRecordCheckAtStop (subscribed in the queue-server profile) replays right after the run."""
    from bluesky import RunEngine
    from bluesky_tiled_plugins import TiledWriter
    from bluesky_tiled_plugins.writing._json_writer import JSONLinesWriter
    from speckleflow.devices import HelicityCCD, MagneticSample
    from speckleflow.plans import cci_series
    from speckleflow.services.raw_record import RECORD_KEY, RawRecordCheckAtStop

    pairs = 8
    detector_dir = tiled_server.data_dir.detector / tmp_path.name
    sample = MagneticSample.from_options(states_file=str(MAGNUMNP_STATES), seed=4, detector_shape=(128, 128))
    ccd = HelicityCCD(sample, detector_dir, name="ccd")
    writer = TiledWriter(tiled_client["raw"], batch_size=4)
    seen = {"events": 0}

    def failing_writer(name, doc):  # gives up after 5 events, as TiledWriter does on a failed write
        seen["events"] += name == "event"
        if seen["events"] <= 5:
            writer(name, doc)

    check = RawRecordCheckAtStop(tiled_client, tmp_path / "backup")
    RE = RunEngine({}, call_returns_result=False)
    RE.subscribe(failing_writer)
    RE.subscribe(JSONLinesWriter(str(tmp_path / "backup")))
    RE.subscribe(check)
    (uid,) = RE(cci_series(ccd, pairs, 0.5))
    for thread in check.threads:
        thread.join(60)
    run = tiled_client["raw"][uid]
    print(f"queue-server run: frames produced {2 * pairs}, raw record after the check "
          f"{run['primary'][ccd.image_key].shape[0]}, status {check.checks[uid].status}")
    assert check.checks[uid].status == "replayed"
    assert run.metadata[RECORD_KEY]["status"] == "replayed"
    assert int(run["primary"][ccd.image_key].shape[0]) == 2 * pairs
