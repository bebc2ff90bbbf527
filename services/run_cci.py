"""``speckleflow run cci``: a simulated CCI experiment, live, into Tiled.

A Bluesky RunEngine runs :func:`speckleflow.plans.cci_series` on a
:class:`~speckleflow.devices.HelicityCCD` looking at a hopping maze; frames go to the
detector's HDF5 file (registered by TiledWriter in ``raw/<uid>``) and over ZeroMQ to
the online workers, whose results land in ``analysis/<uid>/``. Progress is shown live;
Ctrl-C aborts the run cleanly (stop document ``abort``) and stops every process.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
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
from .tiled_server import DataDirectory


@dataclass
class CCIRunOptions:
    pairs: int = 400
    exposure: float = 1.0
    photons: float | None = None
    detector_size: int = 256
    states_file: Path | None = None
    n_families: int = 8
    temperature: float = 300.0
    seed: int = 0
    data_dir: Path = Path("speckleflow-data")
    tiled_uri: str | None = None
    api_key: str | None = None
    keep_serving: bool = False
    workers: tuple[str, ...] = ("fth", "cci")
    host: str = "127.0.0.1"
    process: bool = True
    phase: bool = True
    scheduler: str | None = "local"

    def validate(self) -> None:
        if self.pairs < 1:
            raise ValueError(f"--pairs must be ≥ 1, got {self.pairs}")
        if not self.exposure > 0:
            raise ValueError(f"--exposure must be > 0 s, got {self.exposure}")
        if self.photons is not None and not self.photons > 0:
            raise ValueError(f"--photons must be > 0, got {self.photons}")
        if self.detector_size < 64 or self.detector_size % 2:
            raise ValueError(f"--detector-size must be an even number ≥ 64 pixels, got {self.detector_size}")
        if self.states_file is not None and not Path(self.states_file).is_file():
            raise ValueError(f"--states-file {self.states_file} does not exist")


@dataclass
class RunResult:
    uid: str | None
    exit_status: str
    frames_acquired: int
    frames_in_raw: int
    tiled_uri: str
    worker_status: dict[str, dict[str, Any]]
    gaps: list[dict[str, Any]]
    raw_record: Any = None
    processing: Any = None
    phase: Any = None


class _RunMonitor:
    """RunEngine callback: counts frames and keeps the latest ground truth."""

    def __init__(self) -> None:
        self.uid: str | None = None
        self.frames = 0
        self.truth_state: int | None = None
        self.exit_status = "not started"
        self.stop: dict[str, Any] | None = None
        self._truth_desc: set[str] = set()

    def __call__(self, name: str, doc: dict[str, Any]) -> None:
        if name == "start":
            self.uid = doc["uid"]
            self.exit_status = "running"
        elif name == "descriptor" and doc.get("name") == "truth":
            self._truth_desc.add(doc["uid"])
        elif name == "event":
            if doc["descriptor"] in self._truth_desc:
                self.truth_state = next(
                    (v for k, v in doc["data"].items() if k.endswith("truth_state")), None
                )
            else:
                self.frames += 1
        elif name == "stop":
            self.exit_status = doc.get("exit_status", "unknown")
            self.stop = dict(doc)


def _status_table(session: LiveSession, monitor: _RunMonitor) -> Table:
    truth = "—" if monitor.truth_state is None else str(monitor.truth_state)
    cci = session.workers.get("cci")
    online = ""
    if cci is not None and cci.status.get("unit", {}).get("n_templates"):
        u = cci.status["unit"]
        current = u.get("current_state", -1)
        online = (
            f"online estimate: {'unassigned' if current < 0 else f'state {current}'} "
            f"of {u['n_templates']} found (own numbering) · "
        )
    return worker_table(session, f"{online}simulator truth: state {truth}")


def run_cci(
    opts: CCIRunOptions,
    console: Console | None = None,
    *,
    on_document: Callable[[LiveSession, str, dict[str, Any]], None] | None = None,
) -> RunResult:
    """Run the live CCI experiment end to end; see the module docstring.

    ``on_document(session, name, doc)``, if given, is subscribed to the RunEngine
    (fault-injection tests use it to kill a worker mid-run).

    Raises
    ------
    ValueError
        For invalid options (the message names the option and value).
    """
    opts.validate()
    console = console or Console()
    from bluesky.utils import RunEngineInterrupted
    from speckleflow.devices import HelicityCCD, MagneticSample
    from speckleflow.plans import cci_series

    from .run_engine import live_run_engine

    data_dir = DataDirectory.create(opts.data_dir)
    session = LiveSession(
        data_dir,
        workers=opts.workers,
        tiled_uri=opts.tiled_uri,
        api_key=opts.api_key,
        host=opts.host,
    )
    monitor = _RunMonitor()
    result_uid: str | None = None
    gaps: list[dict[str, Any]] = []
    frames_in_raw = 0
    keep = False
    try:
        with console.status("starting services") as status:
            session.start(progress=lambda msg: status.update(msg))
            status.update("building the sample model")
            sample = MagneticSample.from_options(
                states_file=str(opts.states_file) if opts.states_file else None,
                n_families=opts.n_families,
                seed=opts.seed,
                detector_shape=(opts.detector_size, opts.detector_size),
                temperature_K=opts.temperature,
            )
        console.print(
            f"Tiled: [bold]{session.tiled_uri}[/bold]   bus: {session.frontend} → {session.backend}   "
            f"sample: {sample.n_states} states ({sample.states.source})"
        )
        ccd = HelicityCCD(sample, data_dir.detector, publisher=session.publisher, name="ccd")
        if opts.photons is not None:
            ccd.photons_per_frame.put(float(opts.photons))

        hooks = [] if on_document is None else [lambda name, doc: on_document(session, name, doc)]
        RE = live_run_engine(session, data_dir, monitor, callbacks=hooks)

        progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
        )
        task = progress.add_task("frames acquired", total=2 * opts.pairs)
        stop_display = threading.Event()

        def render() -> Group:
            progress.update(task, completed=monitor.frames)
            return Group(progress, _status_table(session, monitor))

        def refresher(live: Live) -> None:
            while not stop_display.wait(0.25):
                session.poll_status()
                live.update(render())

        md = {"sample": {"source": sample.states.source, "n_states": sample.n_states, "seed": opts.seed,
                         "temperature_K": opts.temperature}}
        with Live(render(), console=console, refresh_per_second=4, transient=False) as live:
            thread = threading.Thread(target=refresher, args=(live,), daemon=True)
            thread.start()
            try:
                RE(cci_series(ccd, opts.pairs, opts.exposure, md=md))
            except (RunEngineInterrupted, KeyboardInterrupt):
                if RE.state != "idle":
                    RE.abort(reason="interrupted by the user (Ctrl-C)")
            finally:
                stop_display.set()
                thread.join()
                if monitor.uid:
                    session.wait_workers_done(monitor.uid, timeout=30, exit_status=monitor.exit_status)
                live.update(render())
        result_uid = monitor.uid
        if result_uid:
            gaps = session.mark_dead_workers(result_uid, monitor.frames)
        raw_check = None
        if result_uid and monitor.stop is not None:
            raw_check = finalize_raw_record(session, result_uid, monitor.stop, data_dir.backup, console)
        if result_uid and monitor.frames:  # an aborted run may have no primary stream yet
            try:
                frames_in_raw = session.raw_frame_count(result_uid, ccd.image_key)
            except Exception as exc:  # noqa: BLE001
                console.print(f"[red]could not read the raw record back from Tiled: {exc}[/red]")
        keep = opts.keep_serving
        result = RunResult(
            uid=result_uid,
            exit_status=monitor.exit_status,
            frames_acquired=monitor.frames,
            frames_in_raw=frames_in_raw,
            tiled_uri=session.tiled_uri,
            worker_status={k: h.status for k, h in session.workers.items()},
            gaps=gaps,
            raw_record=raw_check,
        )
        print_summary(result, console, data_dir.root)
        if opts.process and result.exit_status == "success" and result_uid:
            result.processing = _process_at_run_end(session, result_uid, opts, console)
            if opts.phase and result.processing is not None:
                result.phase = _phase_at_run_end(session, result_uid, console)
        return result
    finally:
        end_session(session, keep, console)


def _process_at_run_end(session: LiveSession, uid: str, opts: CCIRunOptions, console: Console) -> Any:
    """The full CCI pipeline on the finished run; a failure is reported, not raised."""
    from .process_cci import ALGORITHM, CCIProcessOptions, print_cci_processing, process_cci
    from .run_end import process_at_run_end

    popts = CCIProcessOptions(scheduler=opts.scheduler)
    return process_at_run_end(
        session, uid, console, title="full CCI processing at run end", what="full CCI processing",
        technique="cci", algorithm=ALGORITHM, parameters=popts.parameters(),
        process=lambda client, u, progress: process_cci(client, u, popts, progress=progress),
        show=print_cci_processing, metadata_key="full_processing",
    )


def _phase_at_run_end(session: LiveSession, uid: str, console: Console) -> Any:
    """Phase retrieval of every CCI state with >= 20 pairs; a failure is reported, not raised."""
    from .process_phase import ALGORITHM, PhaseProcessOptions, print_phase_processing, process_phase
    from .run_end import process_at_run_end

    popts = PhaseProcessOptions()
    return process_at_run_end(
        session, uid, console, title="phase retrieval of the CCI states", what="phase retrieval",
        technique="phase", algorithm=ALGORITHM, parameters=popts.parameters(),
        process=lambda client, u, progress: process_phase(client, u, popts, progress=progress),
        show=print_phase_processing,
    )


def print_summary(result: RunResult, console: Console, data_dir: Path) -> None:
    """The end-of-run summary: where everything is and what each worker saw."""
    console.print()  # the live display ends without a newline after its caption
    table = Table(title=f"run {result.uid}  —  exit status: {result.exit_status}")
    table.add_column("quantity")
    table.add_column("value", justify="right")
    table.add_row("frames acquired", str(result.frames_acquired))
    table.add_row("frames in the raw record (Tiled)", str(result.frames_in_raw))
    add_worker_rows(table, result.worker_status)
    console.print(table)
    for gap in result.gaps:
        console.print(f"[red]gap:[/red] {gap['reason']}; {gap['missing']} frames not processed online")
    if result.frames_in_raw != result.frames_acquired:
        console.print(
            f"[red]raw record incomplete: {result.frames_in_raw} of {result.frames_acquired} frames; "
            f"documents backed up in {data_dir / 'backup'}[/red]"
        )
    if result.uid:
        console.print(
            f"Tiled: {result.tiled_uri}\n"
            f"  raw run:   raw/{result.uid}\n"
            f"  results:   analysis/{result.uid}/fth/preview, analysis/{result.uid}/cci/assignments\n"
            f"  read it:   from tiled.client import from_uri; "
            f"c = from_uri('{result.tiled_uri}', api_key=open('{data_dir / '.api_key'}').read())"
        )
