"""Faults during a live run: pause/resume, abort, frames lost at the end, a slow consumer, Tiled restarted.

Real processes on 127.0.0.1: the Tiled server, the ZeroMQ proxy and the FTH worker are
children of a :class:`~speckleflow.services.live.LiveSession`; the RunEngine, the bus
publisher and TiledWriter run in the test process (as in ``speckleflow run``). Faults
are injected from RunEngine callbacks; waits poll worker status with a timeout. Each
test prints its figures: frames produced, frames in the raw record (read from Tiled),
frames seen by the worker, misses and drops.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil
import pytest
from rich.console import Console
from speckleflow.services.live import LiveSession
from speckleflow.services.processes import wait_until
from speckleflow.services.tiled_server import DataDirectory, EmbeddedTiled

MAGNUMNP_STATES = Path(__file__).parents[1] / "data" / "maze_states_magnumnp_128.npz"

pytestmark = [pytest.mark.system, pytest.mark.timeout(600)]

SIZE = 128


class Docs:
    """RunEngine callback keeping the run's uid, stop document and frames produced."""

    def __init__(self) -> None:
        self.uid: str | None = None
        self.stop: dict[str, Any] | None = None
        self.primary: set[str] = set()
        self.frames = 0

    def __call__(self, name: str, doc: dict[str, Any]) -> None:
        if name == "start":
            self.uid, self.stop, self.frames, self.primary = doc["uid"], None, 0, set()
        elif name == "descriptor" and doc["name"] == "primary":
            self.primary.add(doc["uid"])
        elif name == "event" and doc["descriptor"] in self.primary:
            self.frames += 1
        elif name == "stop":
            self.stop = doc


@contextmanager
def live(tmp_path, **kw: Any) -> Iterator[LiveSession]:
    session = LiveSession(DataDirectory.create(tmp_path / "data"), workers=("fth",), **kw)
    try:
        session.start(timeout=300)
        yield session
    finally:
        session.stop()


def rig(session: LiveSession, publisher: Any = None, size: int = SIZE):
    """RunEngine + bus publisher + TiledWriter (with its backup directory) + the helicity CCD."""
    from bluesky import RunEngine
    from bluesky_tiled_plugins import TiledWriter
    from speckleflow.devices import HelicityCCD, MagneticSample
    from speckleflow.services.raw_record import FramesPublishedNote

    sample = MagneticSample.from_options(states_file=str(MAGNUMNP_STATES), seed=1, detector_shape=(size, size))
    ccd = HelicityCCD(sample, session.data_dir.detector, publisher=publisher or session.publisher, name="ccd")
    RE = RunEngine({}, call_returns_result=False)
    docs = Docs()
    RE.subscribe(session.publisher)
    RE.subscribe(docs)
    RE.subscribe(FramesPublishedNote(session.publisher, session.client))
    RE.subscribe(TiledWriter(session.client["raw"], backup_directory=str(session.data_dir.backup), batch_size=50))
    return RE, ccd, docs


def worker_status(session: LiveSession, uid: str, kind: str = "fth") -> dict[str, Any]:
    """The worker's counters of run ``uid`` as it published them in Tiled once it closed the run.

    ``analysis/<uid>/workers/<kind>`` metadata (status ``final``), polled with a bound.
    """
    session.wait_workers_done(uid, timeout=60)
    status = session.workers[kind].status
    assert status.get("run_uid") == uid and status["run_state"].startswith("stopped"), status
    record: dict[str, Any] = {}

    def final() -> bool:
        try:
            record.update(session.client["analysis"][uid]["workers"][kind].metadata)
        except KeyError:
            return False
        return record.get("status") == "final"

    wait_until(final, 60, interval=0.2, what=f"the final status of {kind} for run {uid} in Tiled")
    return record


def tiled_worker_record(session: LiveSession, uid: str, kind: str = "fth") -> dict[str, Any]:
    """What the worker published in Tiled for run ``uid`` (status node and its technique node)."""
    node = session.client["analysis"][uid]
    return {"workers": dict(node["workers"][kind].metadata), "technique": dict(node[kind].metadata)}


def descendants(session: LiveSession) -> list[psutil.Process]:
    procs = []
    for child in session.children():
        if child.alive():
            p = psutil.Process(child.pid)
            procs += [p, *p.children(recursive=True)]
    return procs


def gone(proc: psutil.Process) -> bool:
    try:
        return proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def figures(label: str, produced: int, in_raw: int, status: dict[str, Any]) -> str:
    return (
        f"\n{label}: frames produced {produced}, in the raw record (Tiled) {in_raw}, seen by fth "
        f"{status['frames_seen']}, processed {status['frames_processed']}, missed {status['missed']} "
        f"(of which at the end of the stream {status.get('tail_missed', 0)}) in {status['gaps']} gap(s), "
        f"dropped {status['dropped']}, stop document from {status.get('stop_source') or '?'}"
    )


# --------------------------------------------------------------------------- pause/resume, abort, tail


def test_pause_resume_abort_and_frames_lost_at_the_end(tmp_path):
    from bluesky.utils import RunEngineInterrupted
    from speckleflow.plans import cci_series

    pairs = 20
    with live(tmp_path) as session:
        procs = descendants(session)
        assert len(procs) >= 3  # tiled, proxy, worker
        lossy = TailLossLink(session.publisher)
        RE, ccd, docs = rig(session, publisher=lossy)

        # 1. Pause mid-run (deferred: at the next pair's checkpoint), then resume. The
        #    request comes from another thread, as an operator's does: request_pause
        #    waits for the RunEngine's loop, so called from a document callback (which
        #    runs in that loop) it would wait for itself.
        operator: list[threading.Thread] = []

        def pause_midway(name, doc):
            if name == "event" and doc["descriptor"] in docs.primary and doc["seq_num"] == pairs:
                operator.append(threading.Thread(target=RE.request_pause, kwargs={"defer": True}))
                operator[-1].start()

        token = RE.subscribe(pause_midway)
        with pytest.raises(RunEngineInterrupted):
            RE(cci_series(ccd, pairs, 0.5))
        assert RE.state == "paused" and docs.stop is None
        paused_at = docs.frames
        RE.unsubscribe(token)
        operator[-1].join(timeout=10)
        session.poll_status(100)
        assert session.workers["fth"].status.get("run_state") == "running"  # the run stays open
        RE.resume()
        uid = docs.uid
        assert docs.stop["exit_status"] == "success"
        status = worker_status(session, uid)
        in_raw = session.raw_frame_count(uid, ccd.image_key)
        print(figures(f"pause at frame {paused_at}, resume", docs.frames, in_raw, status))
        assert pairs <= paused_at < 2 * pairs
        assert in_raw == docs.frames == 2 * pairs
        assert status["frames_processed"] == 2 * pairs and status["missed"] == 0
        rec = tiled_worker_record(session, uid)
        assert rec["workers"]["status"] == "final" and rec["technique"]["run_exit_status"] == "success"

        # 2. Abort mid-run: stop document 'abort', the worker closes the run with it.
        def abort_midway(name, doc):
            if name == "event" and doc["descriptor"] in docs.primary and doc["seq_num"] == pairs:
                operator.append(threading.Thread(target=RE.request_pause, kwargs={"defer": False}))
                operator[-1].start()

        token = RE.subscribe(abort_midway)
        with pytest.raises(RunEngineInterrupted):
            RE(cci_series(ccd, pairs, 0.5))
        RE.unsubscribe(token)
        operator[-1].join(timeout=10)
        RE.abort(reason="fault test: operator abort")
        uid = docs.uid
        assert docs.stop["exit_status"] == "abort"
        status = worker_status(session, uid)
        assert status["run_state"] == "stopped (abort)"
        assert session.workers["fth"].status["run_state"] == "stopped (abort)"
        in_raw = session.raw_frame_count(uid, ccd.image_key)
        print(figures("abort", docs.frames, in_raw, status))
        assert in_raw == docs.frames < 2 * pairs
        assert status["frames_processed"] == docs.frames
        rec = tiled_worker_record(session, uid)
        assert rec["workers"]["run_state"] == "stopped (abort)"
        assert rec["technique"]["run_exit_status"] == "abort"
        assert session.client["raw"][uid].metadata["stop"]["exit_status"] == "abort"

        # 3. The last 3 frames of a run lost between detector and bus: no later frame
        #    reveals them; the stop's frames_published does.
        lossy.lose_last = 3
        lossy.total = 2 * pairs
        RE(cci_series(ccd, pairs, 0.5))
        uid = docs.uid
        status = worker_status(session, uid)
        in_raw = session.raw_frame_count(uid, ccd.image_key)
        print(figures("last 3 frames lost on the bus", docs.frames, in_raw, status))
        assert lossy.lost == 3
        assert in_raw == docs.frames == 2 * pairs  # the raw record never depends on the bus
        assert status["tail_missed"] == 3 and status["missed"] == 3
        assert status["frames_seen"] + status["missed"] == 2 * pairs
    # No orphan: every process the session started (and their children) is gone.
    left = [p.pid for p in procs if not gone(p)]
    assert not left, f"processes left behind: {left}"
    print(f"processes started and all gone: {[p.pid for p in procs]}")


class TailLossLink:
    """Fault injection: a detector-to-bus link that loses the last ``lose_last`` frames of a run.

    Sits between the CCD and the real :class:`~speckleflow.streaming.BusPublisher`; the
    lost frames are numbered (the publisher's sequence advances, as when a message is
    sent and then dropped on the way) but never sent.
    """

    def __init__(self, bus: Any) -> None:
        self.bus = bus
        self.lose_last = 0
        self.total = 0
        self.lost = 0

    @property
    def current_run_uid(self) -> str | None:
        return self.bus.current_run_uid

    def publish_frames(self, run_uid: str, stream: str, frames: Any, **fields: Any) -> int:
        seq = self.bus.next_seq(run_uid, stream)
        if self.lose_last and seq >= self.total - self.lose_last:
            n = 1 if frames.ndim == 2 else frames.shape[0]
            with self.bus._lock:  # numbered and lost: the publisher's own count moves on
                self.bus._next_seq[(run_uid, stream)] = seq + n
            self.lost += n
            return seq
        return self.bus.publish_frames(run_uid, stream, frames, **fields)


# --------------------------------------------------------------------------- slow consumer


def test_slow_worker_in_a_live_run_bounded_drops_published_raw_complete(tmp_path):
    from speckleflow.plans import cci_series

    # What may wait for the worker is bounded by the high-water marks (messages) AND the
    # kernel socket buffers (bytes; by default autotuned to tens of MiB, which would hold
    # this whole run): backlog <= 2 * hwm messages + ~2 * 2 * buf bytes, about 4.3 MiB of
    # 512 KiB frames, against 60 MiB published. At 0.4 s per frame the worker falls
    # behind unless the run lasts over ~45 s.
    pairs, hwm, buf, delay, size = 60, 4, 64 * 1024, 0.4, 512
    # --n-rolling 2: the preview's rolling window (2 MiB per pair at 512²) fills within the
    # warm-up run, so what grows in the measured run is the backlog.
    args = {"fth": ["--debug-frame-delay", str(delay), "--rcvhwm", str(hwm), "--rcvbuf", str(buf),
                    "--n-rolling", "2"]}
    with live(tmp_path, worker_args=args, bus_hwm=hwm, bus_sndbuf=buf) as session:
        RE, ccd, docs = rig(session, size=size)
        worker = psutil.Process(session.workers["fth"].process.pid)
        # A short first run warms the worker up (its first Tiled writes import the array
        # and table stacks: ~150 MiB, once); the second run's RSS then shows the backlog.
        RE(cci_series(ccd, 3, 0.5))
        worker_status(session, docs.uid)
        rss: list[int] = []
        done_sampling = threading.Event()

        def sample_rss() -> None:
            while True:
                rss.append(worker.memory_info().rss)
                if done_sampling.wait(0.1):  # the sampling period; set when the run ends
                    return

        sampler = threading.Thread(target=sample_rss, daemon=True)
        sampler.start()
        try:
            RE(cci_series(ccd, pairs, 0.5))
        finally:
            done_sampling.set()
            sampler.join(10)
        uid = docs.uid
        status = worker_status(session, uid)
        in_raw = session.raw_frame_count(uid, ccd.image_key)
        growth = (max(rss) - rss[0]) / 2**20
        published = docs.frames * size * size * 2 / 2**20
        print(figures(f"slow worker ({delay * 1e3:.0f} ms/frame, hwm {hwm}, socket buffers {buf // 1024} KiB)",
                      docs.frames, in_raw, status)
              + f"; worker RSS {rss[0] / 2**20:.0f} MiB at the start of the run, growth {growth:.1f} MiB "
              f"({len(rss)} samples) for {published:.0f} MiB of frames published; results {status['results']}")
        assert in_raw == docs.frames == 2 * pairs  # raw complete whatever the worker does
        assert status["missed"] > 0  # the slow worker fell behind and ZeroMQ dropped
        # Every frame produced was either seen or counted missed (in-run or tail gaps).
        assert status["frames_seen"] + status["missed"] == 2 * pairs
        assert status["frames_processed"] + status["dropped_total"] == status["frames_seen"]
        # Unbounded queues would hold what the worker never got to: > 40 MiB here. The
        # bus backlog is bounded at ~4 MiB; the rest of the growth (15-25 MiB measured
        # on a loaded machine) is the worker's own: previews waiting for Tiled, allocator.
        assert growth < 0.5 * published
        assert status["status"] == "final"  # these counters are what the worker published in Tiled
        # The stop document shares the high-water marks with the frames: if it was lost,
        # the worker read it back from raw/<uid> (with the frames published per stream).
        assert status["stop_source"] in ("bus", "raw record")


# --------------------------------------------------------------------------- Tiled restarted mid-run


def test_tiled_server_restarted_mid_run_loses_nothing(tmp_path):
    from speckleflow.services.run_cci import CCIRunOptions, run_cci

    pairs = 40
    outage: dict[str, Any] = {}
    primary: set[str] = set()

    up, release = threading.Event(), threading.Event()

    def restart(session: LiveSession) -> None:
        old = session.tiled
        new = EmbeddedTiled(old.data_dir, old.api_key, read_api_key=old.read_api_key, port=old.port, host=old.host)
        try:
            new.start(timeout=300)
            session.tiled = new
        finally:
            up.set()
        # Children die with the THREAD that started them (PR_SET_PDEATHSIG, see
        # ChildProcess): this one lives until the test is done with the server.
        release.wait(600)

    def kill_then_restart(session, name, doc):
        if name == "descriptor" and doc["name"] == "primary":
            primary.add(doc["uid"])
        if name == "stop" and "thread" in outage:
            # The run ends only once the server is back (a loaded machine takes long to
            # start Tiled): what TiledWriter failed to write must then be replayed.
            up.wait(timeout=300)
        if name != "event" or doc["descriptor"] not in primary:
            return
        if doc["seq_num"] == 10 and "killed" not in outage:
            outage["killed"] = session.tiled.process.pid
            session.tiled.process.kill()
        elif doc["seq_num"] == 45 and "thread" not in outage:
            # Restart in the background: TiledWriter's next batch (event 50) meets the outage.
            outage["thread"] = threading.Thread(target=restart, args=(session,), daemon=True)
            outage["thread"].start()

    console = Console(file=io.StringIO(), width=160)
    opts = CCIRunOptions(pairs=pairs, data_dir=tmp_path / "data", detector_size=SIZE, seed=2,
                         states_file=MAGNUMNP_STATES, workers=("fth",), process=False)
    try:
        result = run_cci(opts, console, on_document=kill_then_restart)
    finally:
        release.set()
    print(console.file.getvalue())
    outage["thread"].join(timeout=60)
    check = result.raw_record
    fth = result.worker_status["fth"]
    print(figures(f"Tiled killed (pid {outage['killed']}) and restarted; raw record {check.status}",
                  result.frames_acquired, result.frames_in_raw, fth)
          + f"; worker results: {fth['results']}")
    assert not psutil.pid_exists(outage["killed"]) or gone(psutil.Process(outage["killed"]))
    assert result.exit_status == "success"
    assert check is not None and check.complete, check
    assert result.frames_in_raw == result.frames_acquired == 2 * pairs
    assert "killed" in outage and up.is_set() and "thread" in outage  # killed at event 10, back before the stop
    # The worker's results met the outage (the Tiled client retries a refused connection
    # itself, ~20 s, before our publisher's own retries): none failed or was dropped;
    # any still pending at the end of the run are flushed when the worker shuts down.
    results = fth["results"]
    assert results["failed"] == 0 and results["dropped"] == 0
    assert results["written"] + results["pending"] == results["submitted"]  # pending: in flight included
    assert fth["frames_processed"] == 2 * pairs
    # TiledWriter's backup exists only if the outage outlasted the Tiled client's retries.
    print(f"backup files: {sorted(p.name for p in (tmp_path / 'data' / 'backup').iterdir())}")
