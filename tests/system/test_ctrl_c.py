"""Ctrl-C on `speckleflow run cci`: the run ends with exit status `abort`, no process is left."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from speckleflow.services.processes import wait_until

pytestmark = [pytest.mark.system, pytest.mark.timeout(300)]


def _processes_mentioning(text: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            env = (entry / "environ").read_bytes()
        except OSError:
            continue
        if text in cmdline or text.encode() in env:
            pids.append(int(entry.name))
    return pids


def _frames_written(detector: Path) -> int:
    import h5py

    for path in detector.glob("*.h5") if detector.exists() else ():
        try:
            with h5py.File(path, "r", swmr=True) as f:
                return int(f["/entry/data/data"].shape[0])
        except (OSError, KeyError):
            return 0
    return 0


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_ctrl_c_aborts_the_run_and_stops_every_child(tmp_path):
    data_dir = tmp_path / "data"
    env = {**os.environ, "COLUMNS": "200"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "speckleflow.services.cli.main", "run", "cci", "--pairs", "100000",
         "--detector-size", "128", "--data-dir", str(data_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )
    try:
        detector = data_dir / "detector"
        wait_until(lambda: _frames_written(detector) >= 20, 180, what="20 frames in the detector file")
        children = [p for p in _processes_mentioning(str(data_dir)) if p != proc.pid]
        assert children, "expected Tiled, proxy and worker processes"
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    print(out)
    assert "exit status: abort" in out
    acquired = int(out.split("frames acquired")[-1].split()[1].strip("│ "))
    in_raw = int(out.split("frames in the raw record (Tiled)")[-1].split()[1].strip("│ "))
    assert acquired >= 20 and in_raw == acquired, (acquired, in_raw)
    assert proc.returncode != 0
    wait_until(lambda: not [p for p in children if Path(f"/proc/{p}").exists()
                       and "zombie" not in (Path(f"/proc/{p}/status").read_text().lower())],
               30, what=f"children {children} to exit")
