"""A worker killed and restarted mid-run resumes at the next frame and reports the gap.

Real RunEngine, proxy, workers and Tiled (loopback). The run's ``on_document`` hook kills
the FTH worker halfway and starts a new one; the hook waits until the new worker has
subscribed (the run goes on afterwards). The new worker never saw the run's start
document: it reads the start and descriptors back from ``raw/<uid>`` and processes the
frames that follow; the frames before its first one are its gap.
"""

from __future__ import annotations

import io

import pytest
from rich.console import Console
from speckleflow.services.run_cci import CCIRunOptions, run_cci

pytestmark = [pytest.mark.system, pytest.mark.timeout(600)]


def test_restarted_worker_resumes_at_the_next_frame_and_reports_the_gap(tmp_path):
    pairs = 60
    restart: dict = {}

    def kill_and_restart_fth(session, name, doc):
        if name == "event" and doc.get("seq_num") == pairs and "old_pid" not in restart:
            old = session.workers["fth"].process
            restart["old_pid"] = old.pid
            old.kill()
            old.stop(timeout=10)
            new = session.start_worker("fth")
            restart["new_pid"] = new.process.pid
            session.wait_workers_ready(timeout=120)

    console = Console(file=io.StringIO(), width=160)
    opts = CCIRunOptions(pairs=pairs, data_dir=tmp_path / "data", detector_size=128, seed=4,
                         workers=("fth",), keep_serving=False, process=False)
    result = run_cci(opts, console, on_document=kill_and_restart_fth)
    output = console.file.getvalue()
    print(output)
    fth = result.worker_status["fth"]
    produced = result.frames_acquired
    assert restart["new_pid"] != restart["old_pid"] and fth["pid"] == restart["new_pid"]
    assert result.exit_status == "success"
    assert result.frames_in_raw == produced == 2 * pairs  # the raw record never depends on workers
    assert result.gaps == []  # every worker alive at the end
    # The new worker joined the run and finished it.
    assert fth["run_uid"] == result.uid and fth["run_state"].startswith("stopped")
    processed, missed = fth["frames_processed"], fth["missed"]
    # It saw nothing before the restart (≈ 2·pairs − 1 frames published by then) and
    # everything after it: what it did not process is exactly the gap it reports.
    assert missed >= pairs and processed > 0
    assert processed + missed == produced, fth
    assert fth["documents_missed"] > 0  # start, descriptors and events sent before the restart

    print(
        f"frames produced {produced}, in the raw record {result.frames_in_raw}, processed by the "
        f"restarted fth worker {processed}, reported missed {missed} in {fth['gaps']} gap(s), "
        f"dropped {fth['dropped']}"
    )
