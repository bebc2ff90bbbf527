"""``speckleflow run ptycho``: a simulated 4D-STEM ptychography acquisition into Tiled (CAVIAR).

1. The crystal (hBN few-layer along [0001] or Si along [110]) and its frozen-phonon
   configurations (none, Einstein, correlated harmonic lattice at T) are simulated with
   abTEM (:class:`~speckleflow.devices.crystal_sample.CrystalSample`) — or loaded from
   the disk cache keyed by every parameter — with a progress bar per configuration.
2. The live session starts (embedded Tiled unless ``--tiled-uri``, the ZeroMQ proxy; no
   online worker: the reconstruction runs on the stored run).
3. A RunEngine runs :func:`speckleflow.plans.ptycho_scan` with the DE-Celeritas-like
   :class:`~speckleflow.devices.ptycho_camera.PtychoCamera` flown by the scan
   controller; TiledWriter writes ``raw/<uid>`` (start document with the probe, scan,
   detector and sample keys of ``services/ptycho/CAVIAR_CONTRACT.md``, the ``primary`` frames from the
   camera's HDF5 file, the ``truth`` stream with every configuration's atom positions
   and the analytic Green's tensor).
4. A summary: frames in the camera file and in Tiled, the simulation time (or cache
   hit), where the run is.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .live import LiveSession
from .live_display import end_session
from .run_engine import RunMonitor, live_run_engine
from .tiled_server import DataDirectory

__all__ = ["PtychoRunOptions", "PtychoRunResult", "build_sample", "run_ptycho"]


@dataclass
class PtychoRunOptions:
    """Options of ``speckleflow run ptycho`` (Å, mrad, eV, K).

    crystal : ``"hBN-<n>L"`` or ``"Si-<n>c"``. phonon_model : ``none`` | ``einstein`` |
    ``correlated``. temperature : T, K. configurations : frozen-phonon configurations.
    einstein_sigma : Einstein rms, Å (None: the harmonic rms at T). source_fwhm : Gaussian
    source FWHM, Å (0 coherent). dose : electrons per Å² of scanned area. nx, ny, step :
    the raster, Å. detector : (qy, qx) pixels. energy, semiangle, defocus, max_angle :
    the probe and the detector's half field. sampling, slice_thickness : multislice, Å.
    margin : supercell room around the scan for the probe tails, Å.
    """

    crystal: str = "hBN-1L"
    phonon_model: str = "correlated"
    temperature: float = 300.0
    configurations: int = 10
    einstein_sigma: float | None = None
    source_fwhm: float = 0.0
    source_points: int = 3
    dose: float = 1e5
    nx: int = 16
    ny: int = 16
    step: float = 0.3
    detector: tuple[int, int] = (64, 64)
    energy: float = 200e3
    semiangle: float = 25.0
    defocus: float = 0.0
    max_angle: float = 50.0
    sampling: float = 0.08
    slice_thickness: float = 1.0
    margin: float = 5.0
    frame_rate: float = 1000.0
    seed: int = 0
    cache_dir: Path | None = None
    data_dir: Path = Path("speckleflow-data")
    tiled_uri: str | None = None
    api_key: str | None = None
    keep_serving: bool = False
    host: str = "127.0.0.1"
    batch_size: int = 64
    threads: int = 1
    extra_md: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        """Raises ValueError naming the bad option (the sample parameters check the rest)."""
        from speckleflow.devices.crystal import parse_crystal

        parse_crystal(self.crystal)
        for name in ("nx", "ny"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be ≥ 1 scan positions, got {getattr(self, name)}")
        if self.phonon_model == "none" and self.configurations != 1:
            self.configurations = 1  # a coherent crystal has one configuration
        if not (math.isfinite(self.dose) and self.dose > 0):
            raise ValueError(f"--dose must be > 0 electrons/Å², got {self.dose}")
        if self.margin < 0:
            raise ValueError(f"--margin must be ≥ 0 Å, got {self.margin}")
        if self.threads < 1:
            raise ValueError(f"--threads must be ≥ 1, got {self.threads}")


@dataclass
class PtychoRunResult:
    uid: str | None
    exit_status: str
    frames_acquired: int
    frames_expected: int
    frames_in_raw: int
    truth_in_raw: bool
    tiled_uri: str
    simulation_seconds: float
    from_cache: bool
    cache_path: str
    metadata: dict[str, Any]


def build_sample(opts: PtychoRunOptions) -> Any:
    """The :class:`CrystalSample` the options describe (nothing simulated yet).

    Raises
    ------
    ValueError
        For an invalid crystal, phonon model, size or angle (message names it).
    """
    from speckleflow.devices.crystal import CrystalSpec, parse_crystal, supercell_for_scan
    from speckleflow.devices.crystal_sample import CrystalSample, SimulationParams

    kind, layers = parse_crystal(opts.crystal)
    span = max(opts.nx - 1, opts.ny - 1) * opts.step
    spec = CrystalSpec(kind, layers=layers, repeats=supercell_for_scan(kind, span, opts.margin))
    params = SimulationParams(
        crystal=spec, scan_shape=(opts.ny, opts.nx), step_A=opts.step, detector_shape=tuple(opts.detector),
        energy_eV=opts.energy, semiangle_mrad=opts.semiangle, defocus_A=opts.defocus, max_angle_mrad=opts.max_angle,
        phonon_model=opts.phonon_model, temperature_K=opts.temperature, n_configurations=opts.configurations,
        einstein_sigma_A=opts.einstein_sigma, source_fwhm_A=opts.source_fwhm, source_points=opts.source_points,
        sampling_A=opts.sampling, slice_thickness_A=opts.slice_thickness, seed=opts.seed,
    )  # fmt: skip
    return CrystalSample(params, dose=opts.dose, cache_dir=opts.cache_dir, num_threads=opts.threads)


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console,
    )  # fmt: skip


def run_ptycho(opts: PtychoRunOptions, console: Console | None = None) -> PtychoRunResult:
    """Simulate, acquire and store a ptychography run; see the module docstring.

    Raises
    ------
    ValueError
        For invalid options (the message names the option and value); nothing started.
    """
    opts.validate()
    console = console or Console()
    from bluesky.utils import RunEngineInterrupted
    from speckleflow.devices import ScanController
    from speckleflow.devices.ptycho_camera import PtychoCamera
    from speckleflow.plans import ptycho_scan

    sample = build_sample(opts)
    p = sample.params
    console.print(
        f"crystal {p.crystal.name} ({len(sample.atoms)} atoms, supercell {sample.cell[0, 0]:.1f}×"
        f"{sample.cell[1, 1]:.1f} Å), phonons: {p.phonon_model} at {p.temperature_K:g} K × "
        f"{p.n_configurations}, source FWHM {p.source_fwhm_A:g} Å; probe {p.energy_eV / 1e3:g} kV, "
        f"{p.semiangle_mrad:g} mrad, defocus {p.defocus_A:g} Å; scan {opts.nx}×{opts.ny} at {p.step_A:g} Å; "
        f"detector {p.detector_shape[0]}×{p.detector_shape[1]}"
    )
    progress = _progress(console)
    with progress:
        task = progress.add_task("abTEM multislice (configurations)", total=p.n_configurations)
        sample.simulate(progress=lambda done, total, msg: progress.update(task, completed=done, description=msg))
    console.print(
        f"simulation: {'cache hit' if sample.from_cache else 'computed'} in {sample.simulation_seconds:.1f} s "
        f"({sample.cache_path()})"
    )

    data_dir = DataDirectory.create(opts.data_dir)
    session = LiveSession(data_dir, workers=(), tiled_uri=opts.tiled_uri, api_key=opts.api_key, host=opts.host)
    monitor = RunMonitor()
    n_frames = opts.nx * opts.ny
    scan = ScanController(name="scan")
    camera = PtychoCamera(sample, scan, data_dir.detector, batch_size=opts.batch_size, name="celeritas")
    keep = False
    try:
        with console.status("starting services") as status:
            session.start(progress=lambda msg: status.update(msg))
        camera.publisher = session.publisher
        console.print(f"Tiled: [bold]{session.tiled_uri}[/bold]   bus: {session.frontend} → {session.backend}")
        RE = live_run_engine(session, data_dir, monitor)
        frames = _progress(console)
        frames_task = frames.add_task("frames acquired", total=n_frames)
        stop_display = threading.Event()

        def refresher(live: Live) -> None:
            while not stop_display.wait(0.25):
                frames.update(frames_task, completed=camera.get_index())

        with Live(frames, console=console, refresh_per_second=4, transient=False) as live:
            thread = threading.Thread(target=refresher, args=(live,), daemon=True)
            thread.start()
            try:
                RE(ptycho_scan(camera, scan, opts.nx, opts.ny, opts.step, frame_rate=opts.frame_rate,
                               md={"sample": {"model": "CrystalSample"}, **opts.extra_md}))  # fmt: skip
            except (RunEngineInterrupted, KeyboardInterrupt):
                if RE.state != "idle":
                    RE.abort(reason="interrupted by the user (Ctrl-C)")
            finally:
                stop_display.set()
                thread.join()
                frames.update(frames_task, completed=camera.get_index())
        uid = monitor.uid
        acquired = camera.get_index()
        frames_in_raw, truth_in_raw = 0, False
        if uid and acquired:
            try:
                frames_in_raw = session.raw_frame_count(uid, camera.image_key)
                truth_in_raw = "truth" in session.client["raw"][uid]
            except Exception as exc:  # noqa: BLE001
                console.print(f"[red]could not read the raw record back from Tiled: {exc}[/red]")
        keep = opts.keep_serving
        result = PtychoRunResult(
            uid=uid, exit_status=monitor.exit_status, frames_acquired=acquired, frames_expected=n_frames,
            frames_in_raw=frames_in_raw, truth_in_raw=truth_in_raw, tiled_uri=session.tiled_uri,
            simulation_seconds=sample.simulation_seconds, from_cache=sample.from_cache,
            cache_path=str(sample.cache_path()), metadata=camera.ptycho_metadata(),
        )  # fmt: skip
        print_summary(result, console, data_dir.root)
        return result
    finally:
        end_session(session, keep, console)


def print_summary(result: PtychoRunResult, console: Console, data_dir: Path) -> None:
    """End-of-run table: frames, simulation, probe and sample, where the run is."""
    md = result.metadata
    console.print()
    table = Table(title=f"run {result.uid}  —  exit status: {result.exit_status}")
    table.add_column("quantity")
    table.add_column("value", justify="right")
    table.add_row("frames acquired (camera file)", f"{result.frames_acquired} of {result.frames_expected}")
    table.add_row("frames in the raw record (Tiled)", str(result.frames_in_raw))
    table.add_row("truth stream in Tiled", "yes" if result.truth_in_raw else "no")
    table.add_row("simulation", f"{'cache hit' if result.from_cache else 'abTEM'}, {result.simulation_seconds:.1f} s")
    table.add_row("crystal / phonon model", f"{md['crystal']} / {md['phonon_model']} ({md['n_configurations']} conf.)")
    table.add_row("probe", f"{md['energy_eV'] / 1e3:g} kV, {md['semiangle_mrad']:g} mrad, defocus {md['defocus_A']:g} Å")
    table.add_row("electrons per pattern", f"{md['electrons_per_pattern']:.4g} ({md['dose_e_per_A2']:.4g} e/Å²)")
    console.print(table)
    if result.frames_in_raw != result.frames_acquired:
        console.print(
            f"[red]raw record incomplete: {result.frames_in_raw} of {result.frames_acquired} frames; "
            f"documents backed up in {data_dir / 'backup'}[/red]"
        )
    if result.uid:
        console.print(
            f"Tiled: {result.tiled_uri}\n"
            f"  raw run:   raw/{result.uid} (primary: celeritas_image, celeritas_scan_ix/iy; truth: atom "
            "positions per configuration, Green's tensor)\n"
            f"  cache:     {result.cache_path}\n"
            f"Reconstruct it (mixed-object multislice ptychography, then the lattice analysis against "
            f"the truth):\n  speckleflow process ptycho {result.uid[:8]} --data-dir {data_dir} --states 10 "
            "(or --tiled-uri/--api-key for the server the run went to)"
        )
