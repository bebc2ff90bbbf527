"""``speckleflow run ecm``: a simulated 5D-STEM ECM experiment, live, into Tiled.

A Bluesky RunEngine runs :func:`speckleflow.plans.ecm_5d` with a DE-Celeritas-like
camera (:class:`~speckleflow.devices.Celeritas`) looking at a supercooled liquid
(:class:`~speckleflow.devices.LiquidSample`) while a scan controller rasters the probe
``repeats`` times. The camera writes its own HDF5 file (registered by TiledWriter in
``raw/<uid>`` through StreamResource/StreamDatum) and publishes its frame batches on the
bus, where the online g2 worker (:mod:`.workers.g2_worker`) computes the rolling
ensemble g2, the live τ and the count rate into ``analysis/<uid>/g2/``.

The plan's acquisition constraints (time sampling N_x·N_y/f < 0.05 τ, counts
I_s/(f·N_d) ≥ 1) are checked before any service starts: a refused acquisition raises
:class:`~speckleflow.plans.ecm.AcquisitionConstraintError` with the plan's message
(the command line prints it and exits 2) unless ``override``.

Full processing at run end (``speckleflow process ecm``) is not called here by default:
``run_ecm(..., at_run_end=callable)`` is the hook for it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .live import LiveSession
from .live_display import (
    add_worker_rows,
    end_session,
    finalize_raw_record,
    worker_table,
)
from .run_engine import RunMonitor, live_run_engine
from .tiled_server import DataDirectory

#: ``at_run_end(session, run_uid, console)``: called after a successful run (hook for the
#: full ECM processing); its return value is kept in :attr:`ECMRunResult.processing`.
RunEndHook = Callable[[LiveSession, str, Console], Any]


@dataclass
class ECMRunOptions:
    """Options of ``speckleflow run ecm`` (units in the names' docs).

    nx, ny : scan positions per row and rows. repeats : rasters N_t (≥ 2).

    The defaults observe 12 τ (300 repeats × 64/1600 Hz = 12 s at τ = 1 s) with a time
    sampling of 0.04 τ and 1 e/pixel on the ring: the issue-5 accuracy conditions (≥ 10 τ,
    ≤ 0.05 τ, ≥ 1 e/pixel) with margin, and the fewest frames that meet them (≥ 200 per
    scan position: N_t ≥ 10 τ/(0.05 τ)), 19 200 frames.

    frame_rate : camera frame rate f, Hz (dwell 1/f). dose : electrons per pixel on the
    first ring per frame. tau : the simulated sample's median τ, s. expected_tau : the
    τ the constraint check assumes, s (default: ``tau``). override : acquire even if a
    constraint fails. detector_rows, detector_cols : camera readout, pixels.
    """

    nx: int = 8
    ny: int = 8
    repeats: int = 300
    frame_rate: float = 1_600.0
    dose: float = 1.0
    tau: float = 1.0
    expected_tau: float | None = None
    override: bool = False
    detector_rows: int = 128
    detector_cols: int = 256
    seed: int = 0
    data_dir: Path = Path("speckleflow-data")
    tiled_uri: str | None = None
    api_key: str | None = None
    keep_serving: bool = False
    workers: tuple[str, ...] = ("g2",)
    host: str = "127.0.0.1"
    batch_size: int = 64
    sample_options: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        """Raises ValueError naming the bad option."""
        for name in ("nx", "ny"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be ≥ 1 scan positions, got {getattr(self, name)}")
        if self.repeats < 2:
            raise ValueError(f"--repeats must be ≥ 2 (g2 needs two visits), got {self.repeats}")
        if not self.frame_rate > 0:
            raise ValueError(f"--frame-rate must be > 0 Hz, got {self.frame_rate}")
        if not self.dose > 0:
            raise ValueError(f"--dose must be > 0 electrons/pixel/frame, got {self.dose}")
        if not self.tau > 0:
            raise ValueError(f"--tau must be > 0 s, got {self.tau}")
        if self.expected_tau is not None and not self.expected_tau > 0:
            raise ValueError(f"--expected-tau must be > 0 s, got {self.expected_tau}")
        if self.detector_rows < 16 or self.detector_cols < 16:
            raise ValueError(f"--detector must be at least 16×16 pixels, got {self.detector_rows}×{self.detector_cols}")

    @property
    def check_tau(self) -> float:
        """τ the constraint check assumes, s."""
        return self.tau if self.expected_tau is None else self.expected_tau


@dataclass
class ECMRunResult:
    uid: str | None
    exit_status: str
    frames_acquired: int
    frames_expected: int
    frames_in_raw: int
    tiled_uri: str
    worker_status: dict[str, dict[str, Any]]
    gaps: list[dict[str, Any]]
    truth_tau: float
    raw_record: Any = None
    processing: Any = None

    @property
    def live_tau(self) -> float | None:
        """The g2 worker's last whole-ring τ estimate, s (None without one)."""
        return self.worker_status.get("g2", {}).get("unit", {}).get("tau_s")


#: Bytes a frame-batch message may carry beyond its frames (msgpack header: positions,
#: repeats, frame indices and times of the batch).
_HEADER_ALLOWANCE = 65_536


def g2_receive_hwm(opts: ECMRunOptions) -> int:
    """Receive high-water mark (messages) of the g2 worker's bus socket for this run.

    The worker's receiver keeps its queue within a byte budget (``SPECKLEFLOW_RCV_QUEUE_MIB``);
    when a larger message than its RCVHWM allows arrives, it moves to a new socket with a
    lower mark (libzmq cannot lower it on a connected socket: zeromq/libzmq#2509 — this
    run once lost every frame after the first 4 MiB batch that way). Given the mark
    before it connects — the budget over the largest batch message — the receiver has
    nothing to move.
    """
    from .settings import WorkerSettings

    batch_bytes = opts.batch_size * opts.detector_rows * opts.detector_cols * 2 + _HEADER_ALLOWANCE  # uint16
    return max(1, WorkerSettings().max_queued_bytes // batch_bytes)


def _plan(opts: ECMRunOptions, camera: Any, scan: Any, md: dict[str, Any]) -> Any:
    from speckleflow.plans import ecm_5d

    return ecm_5d(
        camera, scan, opts.nx, opts.ny, opts.repeats, opts.frame_rate,
        expected_tau=opts.check_tau, dose=opts.dose, override=opts.override, flush_period=0.5, md=md,
    )  # fmt: skip


def run_ecm(
    opts: ECMRunOptions,
    console: Console | None = None,
    *,
    at_run_end: RunEndHook | None = None,
) -> ECMRunResult:
    """Run the live ECM experiment end to end; see the module docstring.

    Parameters
    ----------
    opts : ECMRunOptions
    console : rich Console, optional
    at_run_end : callable, optional
        ``at_run_end(session, uid, console)`` after a successful run, while Tiled is
        still up — the hook for the full ECM processing (off by default).

    Raises
    ------
    AcquisitionConstraintError
        The plan refused the acquisition (a ValueError; the message names the failing
        constraint and what would satisfy it). Nothing was started.
    ValueError
        For invalid options (the message names the option and value).
    """
    opts.validate()
    console = console or Console()
    from bluesky.utils import RunEngineInterrupted
    from speckleflow.devices import Celeritas, LiquidSample, ScanController


    data_dir = DataDirectory.create(opts.data_dir)
    sample = LiquidSample(
        (opts.ny, opts.nx), detector_shape=(opts.detector_rows, opts.detector_cols), tau_median=opts.tau,
        dose=opts.dose, seed=opts.seed, **opts.sample_options,
    )  # fmt: skip
    truth_tau = sample.truth().ensemble_tau
    scan = ScanController(name="scan")
    camera = Celeritas(sample, scan, data_dir.detector, batch_size=opts.batch_size, name="celeritas")
    md = {"sample": {"model": "LiquidSample", "tau_median_s": opts.tau, "seed": opts.seed}}
    preflight = _plan(opts, camera, scan, md)
    try:
        next(preflight)  # the plan checks its constraints before its first message
    finally:
        preflight.close()

    session = LiveSession(
        data_dir, workers=opts.workers, tiled_uri=opts.tiled_uri, api_key=opts.api_key, host=opts.host,
        worker_args={"g2": ["--detector", camera.name, "--rcvhwm", str(g2_receive_hwm(opts))]},
    )  # fmt: skip
    monitor = RunMonitor()
    n_frames = opts.nx * opts.ny * opts.repeats
    keep = False
    try:
        with console.status("starting services") as status:
            session.start(progress=lambda msg: status.update(msg))
        camera.publisher = session.publisher
        console.print(
            f"Tiled: [bold]{session.tiled_uri}[/bold]   bus: {session.frontend} → {session.backend}   "
            f"raster {opts.nx}×{opts.ny} × {opts.repeats} repeats at {opts.frame_rate:g} Hz "
            f"(time sampling {opts.nx * opts.ny / opts.frame_rate:.4g} s), dose {opts.dose:g} e/px"
        )
        RE = live_run_engine(session, data_dir, monitor)

        progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            console=console,
        )  # fmt: skip
        frames_task = progress.add_task("frames acquired", total=n_frames)
        repeats_task = progress.add_task("repeats correlated (g2 worker)", total=opts.repeats)
        stop_display = threading.Event()

        def render() -> Group:
            progress.update(frames_task, completed=camera.get_index())
            unit = session.workers["g2"].status.get("unit", {}) if "g2" in session.workers else {}
            progress.update(repeats_task, completed=unit.get("repeats_done", 0))
            tau = unit.get("tau_s")
            rate = unit.get("count_rate")
            caption = (
                f"live τ (KWW, whole ring) = {'—' if tau is None else f'{tau:.4g} s'} · "
                f"truth: ensemble τ = {truth_tau:.4g} s · count rate on the ring = "
                f"{'—' if rate is None else f'{rate:.3g}'} e/px/frame (dose {opts.dose:g})"
            )
            return Group(progress, worker_table(session, caption))

        def refresher(live: Live) -> None:
            while not stop_display.wait(0.25):
                session.poll_status()
                live.update(render())

        with Live(render(), console=console, refresh_per_second=4, transient=False) as live:
            thread = threading.Thread(target=refresher, args=(live,), daemon=True)
            thread.start()
            try:
                RE(_plan(opts, camera, scan, md))
            except (RunEngineInterrupted, KeyboardInterrupt):
                if RE.state != "idle":
                    RE.abort(reason="interrupted by the user (Ctrl-C)")
            finally:
                stop_display.set()
                thread.join()
                if monitor.uid:
                    session.wait_workers_done(monitor.uid, timeout=60, exit_status=monitor.exit_status)
                live.update(render())
        uid = monitor.uid
        frames = camera.get_index()
        gaps = session.mark_dead_workers(uid, frames) if uid else []
        raw_check = None
        if uid and monitor.stop is not None:
            raw_check = finalize_raw_record(session, uid, monitor.stop, data_dir.backup, console)
        frames_in_raw = 0
        if uid and frames:
            try:
                frames_in_raw = session.raw_frame_count(uid, camera.image_key)
            except Exception as exc:  # noqa: BLE001
                console.print(f"[red]could not read the raw record back from Tiled: {exc}[/red]")
        keep = opts.keep_serving
        result = ECMRunResult(
            uid=uid, exit_status=monitor.exit_status, frames_acquired=frames, frames_expected=n_frames,
            frames_in_raw=frames_in_raw, tiled_uri=session.tiled_uri,
            worker_status={k: h.status for k, h in session.workers.items()}, gaps=gaps, truth_tau=truth_tau,
            raw_record=raw_check,
        )  # fmt: skip
        print_summary(result, console, data_dir.root)
        if at_run_end is not None and result.exit_status == "success" and uid:
            try:
                result.processing = at_run_end(session, uid, console)
            except Exception as exc:  # noqa: BLE001 — the raw run and live results are safe
                console.print(f"[red]processing at run end failed:[/red] {type(exc).__name__}: {exc}")
        return result
    finally:
        end_session(session, keep, console)


def print_summary(result: ECMRunResult, console: Console, data_dir: Path) -> None:
    """The end-of-run summary: frames, worker counters, live τ vs truth, where things are."""
    console.print()
    table = Table(title=f"run {result.uid}  —  exit status: {result.exit_status}")
    table.add_column("quantity")
    table.add_column("value", justify="right")
    table.add_row("frames acquired (camera file)", f"{result.frames_acquired} of {result.frames_expected}")
    table.add_row("frames in the raw record (Tiled)", str(result.frames_in_raw))
    add_worker_rows(table, result.worker_status)
    unit = result.worker_status.get("g2", {}).get("unit", {})
    tau = result.live_tau
    table.add_row("repeats correlated online", str(unit.get("repeats_done", 0)))
    table.add_row("live τ (KWW, whole ring), s", "—" if tau is None else f"{tau:.4g}")
    table.add_row("simulator truth: ensemble τ (median), s", f"{result.truth_tau:.4g}")
    table.add_row("count rate on the first ring, e/px/frame", str(unit.get("count_rate", "—")))
    console.print(table)
    for gap in result.gaps:
        console.print(f"[red]gap:[/red] {gap['reason']}; {gap['missing']} frames not processed online")
    if result.frames_in_raw != result.frames_acquired:
        console.print(
            f"[red]raw record incomplete: {result.frames_in_raw} of {result.frames_acquired} frames; "
            f"documents backed up in {data_dir / 'backup'}[/red]"
        )
    if result.uid:
        g2 = f"analysis/{result.uid}/g2"
        console.print(
            f"Tiled: {result.tiled_uri}\n"
            f"  raw run:   raw/{result.uid} (primary: celeritas_image, positions; truth: τ/β maps)\n"
            f"  live g2:   {g2}/ensemble (k_r, lag), {g2}/fit (τ per k_r), {g2}/count_rate, "
            f"{g2}/two_time, {g2}/virtual/adf\n"
            f"  read it:   from tiled.client import from_uri; "
            f"c = from_uri('{result.tiled_uri}', api_key=open('{data_dir / '.api_key'}').read())"
        )
