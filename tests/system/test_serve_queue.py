"""`speckleflow serve` end to end: plans submitted through the Bluesky queue server.

One service for the module (Tiled, proxy, fth + cci workers, redis-server, RE Manager
with speckleflow's startup directory), started by :func:`speckleflow.services.serve.serve`
in a thread, as the CLI runs it. Plans go in through ``bluesky_queueserver_api``'s
REManagerAPI over 0MQ; runs are read back from Tiled; the last test stops the service
and checks that no process is left behind.
"""

from __future__ import annotations

import io
import shutil
import threading

import numpy as np
import pytest
from bluesky_queueserver_api import BPlan
from rich.console import Console
from speckleflow.services.processes import live_group_members, wait_until
from speckleflow.services.serve import ServeOptions, Service, serve

pytestmark = [
    pytest.mark.system,
    pytest.mark.timeout(400),
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed"),
]


class _Running:
    def __init__(self, service: Service, thread: threading.Thread, stop: threading.Event, out: io.StringIO):
        self.service = service
        self.thread = thread
        self.stop = stop
        self.out = out


@pytest.fixture(scope="module")
def running(tmp_path_factory):
    # 2 families (4 states) at 280 K, 0.5-s frames: the sample stays in a state for a
    # few tens of pairs, so a short run visits more than one state with clean pairs.
    opts = ServeOptions(
        data_dir=tmp_path_factory.mktemp("serve") / "data",
        detector_size=128,
        n_families=2,
        temperature=280.0,
        seed=0,
    )
    out = io.StringIO()
    console = Console(file=out, width=200)
    ready: dict[str, Service] = {}
    errors: list[BaseException] = []
    stop = threading.Event()

    def target() -> None:
        try:
            serve(opts, console, stop=stop, on_ready=lambda s: ready.setdefault("service", s))
        except BaseException as exc:  # noqa: BLE001 — reported by the fixture
            errors.append(exc)

    thread = threading.Thread(target=target, name="speckleflow-serve", daemon=True)
    thread.start()

    def failed() -> str | None:
        return f"serve failed: {errors[0]!r}\n{out.getvalue()}" if errors else None

    wait_until(lambda: "service" in ready, 240, interval=0.2, what="speckleflow serve to start", abort=failed)
    yield _Running(ready["service"], thread, stop, out)
    stop.set()
    thread.join(60)


def _run_plan(service: Service, plan: BPlan, timeout: float = 180) -> str:
    """Submit ``plan``, start the queue, wait until idle; return the run uid."""
    RM = service.manager.api()
    added = RM.item_add(plan)
    assert added["success"], added
    RM.queue_start()
    RM.wait_for_idle(timeout=timeout)
    result = RM.history_get()["items"][-1]["result"]
    assert result["exit_status"] == "completed", result
    (uid,) = result["run_uids"]
    service.session.wait_workers_done(uid, timeout=30)
    return uid


def test_serve_prints_where_everything_is(running):
    text = running.out.getvalue()
    service = running.service
    assert service.session.tiled_uri in text
    assert service.manager.control_addr in text
    assert "qserver" in text and "queue add plan" in text
    assert service.session.api_key not in text
    # The key reaches the children through their environment, never argv or a log.
    for proc in service.children():
        assert service.session.api_key not in " ".join(proc.argv)
    for log in service.data_dir.logs.iterdir():
        assert service.session.api_key not in log.read_text(errors="replace"), log
    RM = service.manager.api()
    assert {"cci_series", "cci_until_covered"} <= set(RM.plans_allowed()["plans_allowed"])
    assert "ccd" in RM.devices_allowed()["devices_allowed"]


def test_cci_series_through_the_queue_lands_in_tiled(running):
    service = running.service
    pairs = 12
    uid = _run_plan(service, BPlan("cci_series", "ccd", pairs, 0.5))
    client = service.session.client
    run = client["raw"][uid]
    assert run.metadata["start"]["plan_name"] == "cci_series"
    assert run.metadata["stop"]["exit_status"] == "success"
    images = run["primary"]["ccd_image"]
    assert images.shape == (2 * pairs, 128, 128)
    assert images[3].sum() > 0
    assert list(np.asarray(run["primary"]["ccd_helicity"].read())[:4]) == [1, -1, 1, -1]
    # The online workers saw every frame of the queue server's RunEngine.
    fth = client["analysis"][uid]["fth"]["sum"].metadata
    assert fth["status"] == "final" and fth["pair_range"] == [0, pairs - 1]
    assignments = client["analysis"][uid]["cci"]["assignments"].metadata
    assert assignments["status"] == "final"
    assert assignments["pairs_total"] == pairs
    for kind, handle in service.session.workers.items():
        assert handle.status["frames_processed"] >= 2 * pairs, (kind, handle.status)
    print(f"frames produced {2 * pairs}, in raw record {images.shape[0]}, "
          f"seen by workers {[h.status['frames_processed'] for h in service.session.workers.values()]}")


def test_adaptive_plan_stops_when_every_state_is_covered(running):
    """cci_until_covered reads the real online worker's counts from Tiled and stops early."""
    service = running.service
    min_pairs, max_pairs = 10, 400
    uid = _run_plan(service, BPlan("cci_until_covered", "ccd", min_pairs, max_pairs, 0.5,
                                   check_every=5, min_states=2))
    run = service.session.client["raw"][uid]
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
    # The counts it decided on were the worker's: the final table holds at least as many.
    final = service.session.client["analysis"][uid]["cci"]["assignments"].metadata
    assert final["pairs_total"] == taken
    print(f"adaptive run: {taken} pairs of {max_pairs}, counts at stop {counts}, "
          f"final online counts {final['state_counts']}; reason: {stop['reason']}")


def test_stop_leaves_no_process_behind(running):
    service = running.service
    groups = {p.pid: live_group_members(p.pid) for p in service.children()}
    manager_group = groups[service.manager.process.pid]
    assert len(manager_group) >= 2, manager_group  # the RE Manager and its RunEngine worker
    pids = {pid for members in groups.values() for pid in members}
    running.stop.set()
    running.thread.join(90)
    assert not running.thread.is_alive()
    assert "stopped" in running.out.getvalue()
    left = {pgid: live_group_members(pgid) for pgid in groups}
    assert not any(left.values()), left
    for pid in pids:
        assert not _alive(pid), pid
    print(f"stopped {len(pids)} processes in {len(groups)} process groups; none left")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")
