"""`speckleflow serve` end to end: plans submitted through the Bluesky queue server.

One service for the module, started as a user starts it: the ``speckleflow serve``
command in a subprocess (Tiled, proxy, fth, cci and g2 workers, redis-server, RE Manager with
speckleflow's startup directory). Plans go in through ``bluesky_queueserver_api``'s
REManagerAPI over 0MQ, at the control address the command printed; runs are read back
from Tiled; the last test sends SIGTERM (handled as Ctrl-C) and checks that no process is left.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from bluesky_queueserver_api import BPlan
from bluesky_queueserver_api.zmq import REManagerAPI
from foreground import sigint_default
from speckleflow.services.processes import wait_until
from tiled.client import from_uri

pytestmark = [
    pytest.mark.system,
    pytest.mark.timeout(400),
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed"),
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc"),
]


@dataclass
class _Service:
    proc: subprocess.Popen
    out_path: Path
    data_dir: Path
    api_key: str
    tiled_uri: str
    control_addr: str
    RM: Any
    client: Any

    def output(self) -> str:
        return self.out_path.read_text(errors="replace")


def _processes_mentioning(text: str) -> list[int]:
    """Live processes with ``text`` in their command line or environment (as test_ctrl_c does)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            env = (entry / "environ").read_bytes()
        except (OSError, IndexError):
            continue
        if state not in ("Z", "X") and (text in cmdline or text.encode() in env):
            pids.append(int(entry.name))
    return pids


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    # 2 families (4 states) at 280 K, 0.5-s frames: the sample stays in a state for a
    # few tens of pairs, so a short run visits more than one state with clean pairs.
    root = tmp_path_factory.mktemp("serve")
    data_dir = root / "data"
    out_path = root / "serve.out"
    env = {**os.environ, "COLUMNS": "250"}
    with open(out_path, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "speckleflow.services.cli.main", "serve", "--data-dir", str(data_dir),
             "--detector-size", "128", "--families", "2", "--temperature", "280", "--seed", "0"],
            preexec_fn=sigint_default, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
        )
    try:
        def exited() -> str | None:
            if proc.poll() is not None:
                return f"speckleflow serve exited with {proc.returncode}:\n{out_path.read_text()}"
            return None

        wait_until(lambda: "Ctrl-C stops everything" in out_path.read_text(), 240, interval=0.2,
                   what="speckleflow serve to start", abort=exited)
        text = out_path.read_text()
        tiled_uri = re.search(r"Tiled:\s+(http://\S+)", text).group(1)
        control_addr = re.search(r"control (tcp://\S+)", text).group(1)
        api_key = (data_dir / ".api_key").read_text().strip()
        RM = REManagerAPI(zmq_control_addr=control_addr, timeout_recv=10.0)
        svc = _Service(proc, out_path, data_dir, api_key, tiled_uri, control_addr, RM,
                       from_uri(tiled_uri, api_key=api_key))
        yield svc
        RM.close()
    finally:
        if proc.poll() is None:  # a test failed before Ctrl-C: stop it the same way
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(90)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def _run_plan(svc: _Service, plan: BPlan, timeout: float = 180) -> str:
    """Submit ``plan``, start the queue, wait until idle and the workers' results are final."""
    added = svc.RM.item_add(plan)
    assert added["success"], added
    svc.RM.queue_start()
    svc.RM.wait_for_idle(timeout=timeout)
    result = svc.RM.history_get()["items"][-1]["result"]
    assert result["exit_status"] == "completed", result
    (uid,) = result["run_uids"]

    def final() -> bool:
        try:
            analysis = svc.client["analysis"][uid]
            return all(analysis[t][n].metadata.get("status") == "final"
                       for t, n in (("fth", "sum"), ("cci", "assignments")))
        except KeyError:
            return False

    wait_until(final, 60, interval=0.2, what=f"final online results of run {uid}")
    return uid


def test_serve_prints_where_everything_is(service):
    text = service.output()
    assert "queue add plan" in text and "REManagerAPI" in text
    assert "redis:" in text and "ZeroMQ bus:" in text
    assert service.api_key not in text
    # The key reaches the children through their environment, never argv or a log.
    for pid in _processes_mentioning(str(service.data_dir)):
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        assert service.api_key.encode() not in cmdline, pid
    for log in (service.data_dir / "logs").iterdir():
        assert service.api_key not in log.read_text(errors="replace"), log
    assert set(service.RM.plans_allowed()["plans_allowed"]) == {"cci_series", "cci_until_covered", "ecm_5d", "ecm_adaptive"}
    assert {"ccd", "celeritas", "scan"} <= set(service.RM.devices_allowed()["devices_allowed"])


def test_cci_series_through_the_queue_lands_in_tiled(service):
    pairs = 12
    uid = _run_plan(service, BPlan("cci_series", "ccd", pairs, 0.5))
    run = service.client["raw"][uid]
    assert run.metadata["start"]["plan_name"] == "cci_series"
    assert run.metadata["stop"]["exit_status"] == "success"
    images = run["primary"]["ccd_image"]
    assert images.shape == (2 * pairs, 128, 128)
    assert images[3].sum() > 0
    assert list(np.asarray(run["primary"]["ccd_helicity"].read())[:4]) == [1, -1, 1, -1]
    # The online workers saw every frame of the queue server's RunEngine.
    fth = service.client["analysis"][uid]["fth"]["sum"].metadata
    assert fth["pair_range"] == [0, pairs - 1]
    assignments = service.client["analysis"][uid]["cci"]["assignments"].metadata
    assert assignments["pairs_total"] == pairs
    print(f"frames produced {2 * pairs}, in raw record {images.shape[0]}, pairs seen by fth "
          f"{fth['pair_range'][1] + 1}, by cci {assignments['pairs_total']}")


def test_adaptive_plan_stops_when_every_state_is_covered(service):
    """cci_until_covered reads the real online worker's counts from Tiled and stops early."""
    min_pairs, max_pairs = 10, 400
    uid = _run_plan(service, BPlan("cci_until_covered", "ccd", min_pairs, max_pairs, 0.5,
                                   check_every=5, min_states=2))
    run = service.client["raw"][uid]
    stop = run.metadata["stop"]
    assert stop["exit_status"] == "success"
    assert stop["reason"].startswith("coverage reached"), stop["reason"]
    decision = run["decision"].read()
    taken = int(decision["decision_pairs_taken"].values[0])
    counts = [int(c) for c in str(decision["decision_state_counts"].values[0]).split(",")]
    assert bool(decision["decision_covered"].values[0])
    assert len(counts) >= 2 and min(counts) >= min_pairs, counts
    assert taken < max_pairs  # stopped early, because of coverage
    assert run["primary"]["ccd_image"].shape[0] == 2 * taken
    final = service.client["analysis"][uid]["cci"]["assignments"].metadata
    assert final["pairs_total"] == taken  # the worker saw every pair the plan took
    print(f"adaptive run: {taken} pairs of {max_pairs}, counts at stop {counts}, "
          f"final online counts {final['state_counts']}; reason: {stop['reason']}")


def _frames_in_detector_files(data_dir: Path) -> int:
    """Frames of the newest CCD file (the running plan's), read as SWMR."""
    import h5py

    files = sorted((data_dir / "detector").glob("ccd_*.h5"), key=lambda p: p.stat().st_mtime)
    if not files:
        return 0
    try:
        with h5py.File(files[-1], "r", swmr=True) as f:
            return int(f["/entry/data/data"].shape[0])
    except (OSError, KeyError):
        return 0


def _live_descendants(pid: int) -> dict[int, str]:
    """Live descendants of ``pid`` (by parent pid in /proc), with their command lines."""
    parent: dict[int, int] = {}
    cmd: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError):
            continue
        if fields[0] not in ("Z", "X"):
            parent[int(entry.name)] = int(fields[1])
            cmd[int(entry.name)] = cmdline[:120]
    found: dict[int, str] = {}
    frontier = [pid]
    while frontier:
        p = frontier.pop()
        for child, ppid in parent.items():
            if ppid == p and child not in found:
                found[child] = cmd[child]
                frontier.append(child)
    return found


def test_sigterm_aborts_the_running_plan_and_stops_every_process(service):
    # A long plan is running when SIGTERM comes (what systemd, `docker stop` and `kill`
    # send; serve maps it to Ctrl-C's KeyboardInterrupt): its run must end with a stop
    # document. Before, SIGTERM killed serve at once (exit status -15, nothing stopped in
    # order; its children only got their parent-death signal).
    added = service.RM.item_add(BPlan("cci_series", "ccd", 100000, 0.5))
    assert added["success"], added
    service.RM.queue_start()
    runs: list[str] = []

    def running() -> bool:
        runs[:] = [r["uid"] for r in service.RM.re_runs("open")["run_list"]]
        return bool(runs)

    wait_until(running, 60, interval=0.2, what="the plan's run to open")
    (uid,) = runs
    wait_until(lambda: _frames_in_detector_files(service.data_dir) >= 10, 60, interval=0.2,
               what="frames of the running plan")
    children = _live_descendants(service.proc.pid)
    # Tiled, proxy, 2 workers, redis, RE Manager and the RunEngine worker it spawned.
    assert len(children) >= 7, children
    assert any("redis-server" in c for c in children.values()), children
    assert any("start-re-manager" in c for c in children.values()), children
    mentioning = set(_processes_mentioning(str(service.data_dir)))
    service.proc.send_signal(signal.SIGTERM)
    try:
        code = service.proc.wait(90)
    except subprocess.TimeoutExpired:  # show how far the shutdown got
        pytest.fail(f"no exit within 90 s of SIGTERM; output so far:\n{service.output()}")
    assert code == 0, service.output()
    assert "stopping (Ctrl-C or SIGTERM)" in service.output() and "stopped" in service.output()
    alive = set(_processes_mentioning(""))  # every live process
    left = {pid: c for pid, c in children.items() if pid in alive}
    assert left == {}, left
    assert set(_processes_mentioning(str(service.data_dir))) & mentioning == set()
    # The interrupted run is closed, in Tiled, as aborted (served again to read it back).
    from speckleflow.services.tiled_server import DataDirectory, EmbeddedTiled

    directory = DataDirectory.create(service.data_dir)
    server = EmbeddedTiled(directory, directory.api_key()).start(timeout=120)
    try:
        run = from_uri(server.uri, api_key=directory.api_key())["raw"][uid]
        assert run.metadata["stop"]["exit_status"] == "abort", run.metadata["stop"]
        print(f"aborted run: {run.metadata['stop']['num_events']}")
    finally:
        server.stop()
    print(f"SIGTERM stopped speckleflow serve and its {len(children)} processes; none left")
