"""The ``speckleflow`` command line (typer). Heavy imports happen inside the commands."""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

app = typer.Typer(
    name="speckleflow",
    help=(
        "Live acquisition and online analysis for coherent imaging of fluctuating matter: "
        "Bluesky plans drive simulated instruments, frames stream over ZeroMQ to online "
        "workers, raw runs and results land in Tiled (raw/<uid>, analysis/<uid>/<technique>)."
    ),
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
run_app = typer.Typer(help="Run an experiment with the simulated devices, live, into Tiled.", no_args_is_help=True)
app.add_typer(run_app, name="run")


class WorkerKind(str, Enum):
    fth = "fth"
    cci = "cci"
    g2 = "g2"


DataDirOpt = Annotated[
    Path,
    typer.Option(
        envvar="SPECKLEFLOW_DATA_DIR",
        help="Data directory: embedded Tiled catalog, detector HDF5 files, logs. With --tiled-uri "
        "it must lie inside that server's readable storage.",
    ),
]

TiledUriOpt = Annotated[
    str | None,
    typer.Option(envvar="SPECKLEFLOW_TILED_URI", help="Use this Tiled server instead of the embedded one."),
]
ApiKeyOpt = Annotated[
    str | None,
    typer.Option(envvar="SPECKLEFLOW_API_KEY", help="Writer API key for --tiled-uri.", show_default=False),
]



def _run_and_exit(run: Callable[[], Any], console: Any) -> None:
    """Run a ``speckleflow run …`` acquisition and map its outcome to the exit code:
    0 success; 2 a bad option or a refused acquisition (``ValueError``, e.g.
    AcquisitionConstraintError); 1 a failure (``RuntimeError``/``TimeoutError`` or a
    run that failed); 130 an aborted run."""
    try:
        result = run()
    except ValueError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    except (RuntimeError, TimeoutError) as exc:
        console.print(f"[red]failed:[/red] {exc}")
        raise typer.Exit(1) from exc
    if result.exit_status != "success":
        raise typer.Exit(1 if result.exit_status == "fail" else 130)

@run_app.command("cci")
def run_cci_command(
    pairs: Annotated[int, typer.Option(help="Number of helicity pairs (+ then −); 2·pairs frames.", min=1)] = 400,
    exposure: Annotated[float, typer.Option(help="Exposure per frame, seconds of simulated sample time.")] = 1.0,
    photons: Annotated[
        float | None, typer.Option(help="Mean photons per frame (default: the simulator's default flux).")
    ] = None,
    detector_size: Annotated[int, typer.Option(help="Detector side, pixels (square).")] = 256,
    states_file: Annotated[
        Path | None,
        typer.Option(help="npz with `mz` (n_states, ny, nx) in [-1, 1], e.g. from mumax3 / magnum.np; "
                     "default: the built-in Swift–Hohenberg maze model."),
    ] = None,
    families: Annotated[int, typer.Option(help="Built-in model: families of states (each a maze + a locally different sibling).")] = 8,
    temperature: Annotated[float, typer.Option(help="Sample temperature, K (raises every hopping rate).")] = 300.0,
    seed: Annotated[int, typer.Option(help="Seed of the sample model, dynamics and photon noise (reproducible runs).")] = 0,
    data_dir: DataDirOpt = Path("speckleflow-data"),
    tiled_uri: TiledUriOpt = None,
    api_key: ApiKeyOpt = None,
    keep_serving: Annotated[bool, typer.Option(help="Leave the embedded Tiled server up after the run, for clients.")] = False,
    process: Annotated[
        bool, typer.Option(help="Run the full CCI pipeline at run end (same as `speckleflow process cci <uid>`).")
    ] = True,
    phase: Annotated[
        bool,
        typer.Option(help="After the CCI pipeline, phase-retrieve every state with >= 20 pairs "
                     "(same as `speckleflow process phase <uid>`)."),
    ] = True,
) -> None:
    """Coherent correlation imaging: helicity-pair FTH frames of a hopping magnetic maze.

    Starts an embedded Tiled server (unless --tiled-uri), the ZeroMQ proxy and the FTH
    preview worker, runs the `cci_series` plan with a RunEngine, shows progress, and
    prints the run uid and where its raw frames and results are. Ctrl-C aborts cleanly.
    """
    from rich.console import Console
    from speckleflow.services.run_cci import CCIRunOptions, run_cci

    console = Console()
    opts = CCIRunOptions(
        pairs=pairs,
        exposure=exposure,
        photons=photons,
        detector_size=detector_size,
        states_file=states_file,
        n_families=families,
        temperature=temperature,
        seed=seed,
        data_dir=data_dir,
        tiled_uri=tiled_uri,
        api_key=api_key,
        keep_serving=keep_serving,
        process=process,
        phase=phase,
    )
    _run_and_exit(lambda: run_cci(opts, console), console)


@run_app.command("ecm")
def run_ecm_command(
    nx: Annotated[int, typer.Option(help="Scan positions per row (fast axis).", min=1)] = 8,
    ny: Annotated[int, typer.Option(help="Scan rows.", min=1)] = 8,
    repeats: Annotated[
        int, typer.Option(help="Rasters N_t acquired without interruption (default: 12 τ at τ = 1 s).", min=2)
    ] = 300,
    frame_rate: Annotated[
        float, typer.Option(help="Camera frame rate f, Hz (dwell 1/f; default: time sampling 0.04 τ).")
    ] = 1_600.0,
    dose: Annotated[float, typer.Option(help="Electrons per pixel on the first ring per frame, I_s/(f·N_d).")] = 1.0,
    tau: Annotated[float, typer.Option(help="The simulated sample's median relaxation time τ, s.")] = 1.0,
    expected_tau: Annotated[
        float | None,
        typer.Option(help="τ, s, the time-sampling check assumes (default: --tau).", show_default=False),
    ] = None,
    override: Annotated[
        bool, typer.Option(help="Acquire even if a constraint fails (recorded in the start document).")
    ] = False,
    detector: Annotated[
        tuple[int, int], typer.Option(help="Camera readout ROWS COLS, pixels.")
    ] = (128, 256),
    seed: Annotated[int, typer.Option(help="Seed of the sample model, dynamics and counting noise.")] = 0,
    data_dir: DataDirOpt = Path("speckleflow-data"),
    tiled_uri: TiledUriOpt = None,
    api_key: ApiKeyOpt = None,
    keep_serving: Annotated[bool, typer.Option(help="Leave the embedded Tiled server up after the run, for clients.")] = False,
    process: Annotated[
        bool, typer.Option(help="Run the full ECM pipeline at run end (same as `speckleflow process ecm <uid>`).")
    ] = True,
) -> None:
    """k-resolved electron correlation microscopy: a 5D-STEM raster of a supercooled liquid.

    Checks the acquisition constraints (N_x·N_y/f < 0.05 τ, ≥ 1 electron per pixel on the
    first ring; refuses with exit code 2 unless --override), starts an embedded Tiled
    server (unless --tiled-uri), the ZeroMQ proxy and the online g2 worker, runs `ecm_5d`
    with a DE-Celeritas-like camera, shows progress and the live τ next to the truth, and
    prints where the raw run and the live g2 results are.
    """
    from rich.console import Console
    from speckleflow.services.process_ecm import process_ecm_at_run_end
    from speckleflow.services.run_ecm import ECMRunOptions, run_ecm

    console = Console()
    opts = ECMRunOptions(
        nx=nx, ny=ny, repeats=repeats, frame_rate=frame_rate, dose=dose, tau=tau, expected_tau=expected_tau,
        override=override, detector_rows=detector[0], detector_cols=detector[1], seed=seed, data_dir=data_dir,
        tiled_uri=tiled_uri, api_key=api_key, keep_serving=keep_serving,
    )
    _run_and_exit(lambda: run_ecm(opts, console, at_run_end=process_ecm_at_run_end if process else None), console)


class PhononModel(str, Enum):
    none = "none"
    einstein = "einstein"
    correlated = "correlated"


@run_app.command("ptycho")
def run_ptycho_command(
    crystal: Annotated[str, typer.Option(help="hBN-<n>L (few-layer hBN along [0001]) or Si-<n>c (Si along [110], n cells of a/√2).")] = "hBN-1L",
    phonons: Annotated[PhononModel, typer.Option(help="Frozen-phonon model: none (coherent), einstein (uncorrelated), correlated (harmonic lattice).")] = PhononModel.correlated,
    temperature: Annotated[float, typer.Option(help="Temperature T, K (harmonic lattice; Einstein σ from it by default).")] = 300.0,
    configurations: Annotated[int, typer.Option(help="Frozen-phonon configurations (1 with --phonons none).", min=1)] = 10,
    einstein_sigma: Annotated[float | None, typer.Option(help="Einstein rms displacement per component, Å (default: the harmonic rms at T).", show_default=False)] = None,
    source_fwhm: Annotated[float, typer.Option(help="Partial spatial coherence: Gaussian source FWHM, Å (0 = coherent).", min=0.0)] = 0.0,
    dose: Annotated[float, typer.Option(help="Electron dose, electrons per Å² of scanned area (per pattern: dose·step²).")] = 1e5,
    nx: Annotated[int, typer.Option(help="Scan positions per row (fast axis).", min=1)] = 16,
    ny: Annotated[int, typer.Option(help="Scan rows.", min=1)] = 16,
    step: Annotated[float, typer.Option(help="Scan step, Å.")] = 0.3,
    detector: Annotated[tuple[int, int], typer.Option(help="Camera pixels QY QX.")] = (64, 64),
    energy: Annotated[float, typer.Option(help="Beam energy, eV.")] = 200e3,
    semiangle: Annotated[float, typer.Option(help="Probe convergence semi-angle, mrad.")] = 25.0,
    defocus: Annotated[float, typer.Option(help="Probe defocus, Å (abTEM: −C10, positive = underfocus).")] = 0.0,
    max_angle: Annotated[float, typer.Option(help="Detector half field, mrad.")] = 50.0,
    sampling: Annotated[float, typer.Option(help="Multislice real-space sampling, Å.")] = 0.08,
    slice_thickness: Annotated[float, typer.Option(help="Multislice slice thickness, Å.")] = 1.0,
    seed: Annotated[int, typer.Option(help="Seed of the configurations and the Poisson noise.")] = 0,
    cache_dir: Annotated[Path | None, typer.Option(envvar="SPECKLEFLOW_CACHE", help="Simulation cache (default ~/.cache/speckleflow).", show_default=False)] = None,
    data_dir: DataDirOpt = Path("speckleflow-data"),
    tiled_uri: TiledUriOpt = None,
    api_key: ApiKeyOpt = None,
    keep_serving: Annotated[bool, typer.Option(help="Leave the embedded Tiled server up after the run, for clients.")] = False,
) -> None:
    """4D-STEM ptychography of a vibrating crystal (CAVIAR): abTEM simulation, flown raster, raw run in Tiled.

    Simulates (or loads from the cache) the frozen-phonon 4D-STEM data of the crystal with
    a progress bar, starts an embedded Tiled server (unless --tiled-uri), runs
    `ptycho_scan` with the DE-Celeritas-like camera, and prints where the raw run
    (frames, probe metadata, truth stream with every configuration) is.
    """
    from rich.console import Console
    from speckleflow.services.run_ptycho import PtychoRunOptions, run_ptycho

    console = Console()
    opts = PtychoRunOptions(
        crystal=crystal, phonon_model=phonons.value, temperature=temperature, configurations=configurations,
        einstein_sigma=einstein_sigma, source_fwhm=source_fwhm, dose=dose, nx=nx, ny=ny, step=step,
        detector=detector, energy=energy, semiangle=semiangle, defocus=defocus, max_angle=max_angle,
        sampling=sampling, slice_thickness=slice_thickness, seed=seed, cache_dir=cache_dir, data_dir=data_dir,
        tiled_uri=tiled_uri, api_key=api_key, keep_serving=keep_serving,
    )  # fmt: skip
    _run_and_exit(lambda: run_ptycho(opts, console), console)


process_app = typer.Typer(
    help="Full processing of a run stored in Tiled (results under analysis/<uid>/<technique>).",
    no_args_is_help=True,
)
app.add_typer(process_app, name="process")


def _process_stored_run(
    run_uid: str,
    title: str,
    build: Callable[[], Any],
    process: Callable[..., Any],
    show: Callable[[Any, str, Any], None],
    data_dir: Path,
    tiled_uri: str | None,
    api_key: str | None,
) -> None:
    """The body every ``process <technique>`` command shares: build and validate the
    options, connect (or serve --data-dir), run under progress bars, print the summary;
    an unknown run, a run without what the technique needs, or a bad option is exit 2."""
    from rich.console import Console
    from speckleflow.services.progress import StepProgress
    from speckleflow.services.raw_runs import RunContentError, UnknownRunError
    from speckleflow.services.tiled_server import tiled_client

    console = Console()
    try:
        opts = build()
        opts.validate()
        with (
            tiled_client(data_dir, tiled_uri, api_key) as client,
            StepProgress(console, f"{title} of {run_uid}") as progress,
        ):
            result = process(client, run_uid, opts, progress=progress)
    except (UnknownRunError, RunContentError, ValueError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    show(result, tiled_uri or f"the catalog of {data_dir}", console)


def _floats(option: str, text: str, n: int, names: str) -> tuple[float, ...]:
    """``n`` comma-separated floats of an option, e.g. ``--wall y0,x0,y1,x1``."""
    values = [float(v) for v in text.split(",")]
    if len(values) != n:
        raise ValueError(f"{option} needs {names}, got {text!r}")
    return tuple(values)


@process_app.command("cci")
def process_cci_command(
    run_uid: Annotated[str, typer.Argument(help="Run uid (raw/<uid>) or a unique prefix of >= 8 characters.")],
    threshold: Annotated[
        float, typer.Option(help="Single-frame misassignment rate above which internal modes are one state (0.01 = 1 %).")
    ] = 0.01,
    min_mode_size: Annotated[
        int | None, typer.Option(help="Smallest internal mode, pairs (default: the library's, 5).", show_default=False)
    ] = None,
    z_threshold: Annotated[
        float | None,
        typer.Option(help="Natural-division criterion: split a tree node when its step is this many standard "
                     "errors above the noise (default 3.3).", show_default=False),
    ] = None,
    reference_filter: Annotated[
        bool, typer.Option(help="Filter the difference holograms to the Patterson cross terms before correlating.")
    ] = False,
    chunk_pairs: Annotated[int, typer.Option(help="Helicity pairs read from Tiled per request (memory bound).", min=1)] = 128,
    scheduler: Annotated[
        str,
        typer.Option(help="Dask for the correlation matrix: 'local' (in-process cluster), a scheduler address "
                     "tcp://host:port, or 'none'."),
    ] = "local",
    figures_dir: Annotated[
        Path | None, typer.Option(help="Also write the figures as PNG files to DIR/<uid>/.", show_default=False)
    ] = None,
    detector: Annotated[str, typer.Option(help="ophyd name of the helicity CCD in the run.")] = "ccd",
    data_dir: DataDirOpt = Path("speckleflow-data"),
    tiled_uri: TiledUriOpt = None,
    api_key: ApiKeyOpt = None,
) -> None:
    """Coherent correlation imaging of a stored run, end to end (Klose et al., Nature 2023).

    Reads the helicity pairs of raw/<uid>, correlates their difference holograms
    (Pearson), clusters them into internal modes and states (1 % misassignment),
    averages and reconstructs every state and mode, and analyses the transitions and the
    pinning landscape. Results replace any earlier processing under analysis/<uid>/cci/
    (labels, state_images, state_holograms, correlation, linkage, transitions, figures/…);
    the online worker's `assignments` table stays.
    """
    from speckleflow.services.process_cci import (
        CCIProcessOptions,
        print_cci_processing,
        process_cci,
    )

    def build() -> CCIProcessOptions:
        return CCIProcessOptions(
            detector=detector,
            threshold=threshold,
            min_mode_size=min_mode_size,
            z_threshold=z_threshold,
            reference_filter=reference_filter,
            chunk_pairs=chunk_pairs,
            scheduler=None if scheduler == "none" else scheduler,
            figures_dir=figures_dir,
        )

    _process_stored_run(run_uid, "CCI full processing", build, process_cci, print_cci_processing,
                        data_dir, tiled_uri, api_key)


@process_app.command("ecm")
def process_ecm_command(
    run_uid: Annotated[str, typer.Argument(help="Run uid (raw/<uid>) or a unique prefix of >= 8 characters.")],
    n_phi: Annotated[
        int | None,
        typer.Option(help="k_φ bins over 2π (default: the fewest no wider than the probe convergence).",
                     show_default=False, min=1),
    ] = None,
    n_r: Annotated[
        int | None,
        typer.Option(help="k_r bins across the first-ring strip (default: one per pixel of strip width).",
                     show_default=False, min=1),
    ] = None,
    register: Annotated[bool, typer.Option(help="Correct sample drift by registering the ADF images.")] = True,
    rows_per_block: Annotated[
        int, typer.Option(help="Scan rows per g2 block (memory: rows·nx·repeats·strip pixels).", min=1)
    ] = 4,
    n_buffers: Annotated[int, typer.Option(help="Multi-tau buffers per level (even).", min=2)] = 16,
    scheduler: Annotated[
        str,
        typer.Option(help="Dask: 'local' (in-process cluster), a scheduler address tcp://host:port, or 'none'."),
    ] = "local",
    detector: Annotated[str, typer.Option(help="ophyd name of the camera in the run.")] = "celeritas",
    source: Annotated[
        str,
        typer.Option(help="Where frames are read: 'hdf5' (the camera's file, path from the run), 'tiled' "
                     "(HTTP, merged requests), or 'auto' (the file where reachable, on every Dask worker)."),
    ] = "auto",
    data_dir: DataDirOpt = Path("speckleflow-data"),
    tiled_uri: TiledUriOpt = None,
    api_key: ApiKeyOpt = None,
) -> None:
    """k-resolved electron correlation microscopy of a stored 5D-STEM run (Huang & Voyles).

    Virtual ADF per repeat, drift registration, (k_r, k_φ) binning of the first ring,
    per-(r, k_p) multi-tau g2 over scan repeats and KWW fits, τ histograms with
    log-normal fits, median τ vs k_r, domain size, ensemble g2 and two-time correlation.
    Results replace an earlier processing under analysis/<uid>/ecm/.
    """
    from speckleflow.services.ecm.pipeline import ECMOptions
    from speckleflow.services.process_ecm import (
        ECMProcessOptions,
        print_ecm_processing,
        process_ecm,
    )

    def build() -> ECMProcessOptions:
        ecm = ECMOptions(n_r=n_r, n_phi=n_phi, register=register, rows_per_block=rows_per_block,
                         n_buffers=n_buffers, scheduler=None if scheduler == "none" else scheduler)
        return ECMProcessOptions(detector=detector, ecm=ecm, source=source)

    _process_stored_run(run_uid, "ECM full processing", build, process_ecm, print_ecm_processing,
                        data_dir, tiled_uri, api_key)


@app.command("dashboard")
def dashboard_command(
    tiled_uri: TiledUriOpt = None,
    api_key: Annotated[
        str | None,
        typer.Option(envvar="SPECKLEFLOW_API_KEY", help="API key for --tiled-uri (a read-only key is enough).",
                     show_default=False),
    ] = None,
    data_dir: Annotated[
        Path,
        typer.Option(envvar="SPECKLEFLOW_DATA_DIR",
                     help="Without --tiled-uri: serve this directory's embedded catalog (as `process cci` does)."),
    ] = Path("speckleflow-data"),
    host: Annotated[str, typer.Option(help="Interface the web page binds to.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port of the web page.", min=1, max=65535)] = 8060,
    poll: Annotated[float, typer.Option(help="How often the page refreshes, seconds.", min=0.2)] = 1.0,
) -> None:
    """A live web page of the runs in Tiled: FTH preview, CCI states, transition network, g2, workers.

    The page lists current and past runs (newest first) and follows new runs as they
    start. The browser talks only to this server, which reads Tiled with its own
    client: the key never reaches the browser. Binds 127.0.0.1 unless --host says otherwise.
    """
    from rich.console import Console
    from speckleflow.services.dashboard import serve
    from speckleflow.services.tiled_server import tiled_client

    console = Console()
    try:
        with tiled_client(data_dir, tiled_uri, api_key) as client:
            console.print(f"dashboard: [bold]http://{host}:{port}/[/bold]  (Tiled: "
                          f"{tiled_uri or f'the catalog of {data_dir}'}; Ctrl-C stops it)")
            serve(client, host=host, port=port, poll_interval_s=poll)
    except ValueError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc


@process_app.command("phase")
def process_phase_command(
    run_uid: Annotated[str, typer.Argument(help="Run uid (raw/<uid>) or a unique prefix of >= 8 characters.")],
    state: Annotated[
        list[int] | None,
        typer.Option(help="CCI state to retrieve (repeat for several); default: every state with >= --min-pairs "
                     "pairs, or the whole run when it has no CCI labels.", show_default=False),
    ] = None,
    min_pairs: Annotated[int, typer.Option(help="Smallest CCI state retrieved by default, pairs.", min=1)] = 20,
    frc: Annotated[
        bool, typer.Option(help="Also retrieve the even/odd half-datasets and measure the FRC resolution (3× time).")
    ] = True,
    prtf_starts: Annotated[int, typer.Option(help="Random starts for the PRTF (0: none, else >= 2).", min=0)] = 0,
    wall: Annotated[
        str | None,
        typer.Option(help="Fit a Kittel profile tanh(x/δ) along y0,x0,y1,x1 (px of the mz image) across a wall.",
                     show_default=False),
    ] = None,
    pixel_size_nm: Annotated[
        float | None, typer.Option(help="Sample-plane pixel size, nm (resolutions in nm).", show_default=False)
    ] = None,
    raar: Annotated[int, typer.Option(help="RAAR iterations per helicity.", min=0)] = 300,
    er: Annotated[int, typer.Option(help="ER iterations per helicity after RAAR.", min=0)] = 100,
    coherence: Annotated[
        bool, typer.Option(help="Model partial coherence (Richardson–Lucy estimate of the coherence kernel).")
    ] = False,
    minus_seed: Annotated[
        str,
        typer.Option(help="Start of the − helicity: 'independent' (RAAR + ER on the + support; the default, "
                     "converges where the beamstop hides low q) or 'plus' (ER seeded with the + exit wave, "
                     "the paper's recipe; use with --raar-minus 0)."),
    ] = "independent",
    raar_minus: Annotated[
        int | None, typer.Option(help="RAAR iterations for the − helicity (default: --raar).", min=0, show_default=False)
    ] = None,
    focus_range_nm: Annotated[
        str | None,
        typer.Option(help="Refocus: search the propagation distance in A,B nm (angular spectrum, sharpness "
                     "metric); needs --wavelength-nm and --pixel-size-nm.", show_default=False),
    ] = None,
    wavelength_nm: Annotated[
        float | None, typer.Option(help="X-ray wavelength, nm (for --focus-range-nm).", show_default=False)
    ] = None,
    figures_dir: Annotated[
        Path | None, typer.Option(help="Also write the figures as PNG files to DIR/<uid>/<state>/.", show_default=False)
    ] = None,
    detector: Annotated[str, typer.Option(help="ophyd name of the helicity CCD in the run.")] = "ccd",
    data_dir: DataDirOpt = Path("speckleflow-data"),
    tiled_uri: TiledUriOpt = None,
    api_key: ApiKeyOpt = None,
) -> None:
    """Holography-aided phase retrieval of a stored run (Battistelli et al., Optica 2024).

    For every CCI state (or the whole run): FTH support, RAAR + ER for each helicity,
    mz = log|φ+/φ−| inside the support, FRC resolution between independent halves.
    Results replace an earlier retrieval under analysis/<uid>/phase/<state>/.
    """
    from speckleflow.services.phase import PhaseParams
    from speckleflow.services.process_phase import (
        PhaseProcessOptions,
        print_phase_processing,
        process_phase,
    )

    def build() -> PhaseProcessOptions:
        wall_px = None if wall is None else _floats("--wall", wall, 4, "y0,x0,y1,x1")
        focus = None if focus_range_nm is None else _floats("--focus-range-nm", focus_range_nm, 2, "A,B")
        params = PhaseParams(
            n_raar=raar, n_er=er, n_raar_minus=raar if raar_minus is None else raar_minus, n_er_minus=er,
            coherence=coherence, minus_seed=minus_seed, focus_range_nm=focus, wavelength_nm=wavelength_nm,
            pixel_size_nm=pixel_size_nm,
        )
        return PhaseProcessOptions(
            detector=detector, states=state or None, min_pairs=min_pairs, frc=frc, prtf_starts=prtf_starts,
            wall=wall_px, pixel_size_nm=pixel_size_nm, params=params, figures_dir=figures_dir,
        )

    _process_stored_run(run_uid, "phase retrieval", build, process_phase, print_phase_processing,
                        data_dir, tiled_uri, api_key)


class PtychoLoss(str, Enum):
    poisson = "poisson"
    amplitude = "amplitude"


class PtychoStateModel(str, Enum):
    pixels = "pixels"
    displacement = "displacement"


@process_app.command("ptycho")
def process_ptycho_command(
    run_uid: Annotated[str, typer.Argument(help="Run uid (raw/<uid>) or a unique prefix of >= 8 characters.")],
    slices: Annotated[int, typer.Option(help="Object slices (multislice).", min=1)] = 1,
    slice_thickness: Annotated[
        float | None,
        typer.Option(help="Slice spacing, Å (default: the run's sample_thickness_A / --slices).", show_default=False),
    ] = None,
    states: Annotated[int, typer.Option(help="Incoherent object states (> 1: the two-stage mixed-object fit).",
                                        min=1)] = 1,
    modes: Annotated[int, typer.Option(help="Incoherent probe modes.", min=1)] = 1,
    iterations: Annotated[int, typer.Option(help="Passes over all scan positions, both stages.", min=1)] = 50,
    first_stage: Annotated[
        int | None,
        typer.Option(help="Passes of the single-state stage (default: half of --iterations).", show_default=False),
    ] = None,
    loss: Annotated[PtychoLoss, typer.Option(help="Likelihood: Poisson or amplitude (Gaussian).")] = PtychoLoss.poisson,
    batch_size: Annotated[int, typer.Option(help="Scan positions per gradient step.", min=1)] = 32,
    lr: Annotated[float, typer.Option(help="Adam step of the object phase, rad.")] = 0.02,
    probe_lr: Annotated[float, typer.Option(help="Adam step of the probe (relative to its peak).")] = 0.01,
    position_correction: Annotated[bool, typer.Option(help="Refine the scan positions.")] = False,
    lr_final_fraction: Annotated[
        float, typer.Option(help="Step sizes decay over both stages to this fraction (1: constant).",
                            min=1e-6, max=1.0)
    ] = 0.1,
    state_model: Annotated[
        PtychoStateModel,
        typer.Option(help="Object states of stage 2: free pixels, or one base object warped per state."),
    ] = PtychoStateModel.pixels,
    oversampling: Annotated[
        float | None,
        typer.Option(help="Model window / detector width; the far field beyond the detector is computed "
                          "and dropped (default: detector + 2·semi-angle, so nothing scattered past the "
                          "detector's edge wraps onto it; 1: the detector grid).",
                     show_default=False, min=1.0),
    ] = None,
    pixel_quadrature: Annotated[
        int,
        typer.Option(help="Quadrature points per axis integrating the far field over each detector pixel, "
                          "as a pixel does (1: sample pixel centres; each point adds one FFT per state "
                          "and probe mode).", min=1, max=8),
    ] = 2,
    seed: Annotated[int, typer.Option(help="Seed of the state perturbations and minibatch order.")] = 0,
    threads: Annotated[
        int | None, typer.Option(help="torch threads (default: torch's).", show_default=False, min=1)
    ] = None,
    detector: Annotated[str, typer.Option(help="ophyd name of the camera in the run.")] = "celeritas",
    data_dir: DataDirOpt = Path("speckleflow-data"),
    tiled_uri: TiledUriOpt = None,
    api_key: ApiKeyOpt = None,
) -> None:
    """Mixed-object multislice maximum-likelihood ptychography of a stored 4D-STEM run (CAVIAR).

    Needs the optional extra: pip install 'speckleflow[ptycho]' (torch, CPU). Fits
    object states × slices and probe modes to the patterns with torch autograd (Adam),
    first one state with the probe modes, then the mixed object. Results replace an
    earlier reconstruction under analysis/<uid>/ptycho/ (object_phase, object_amplitude,
    probe_modes, loss, positions, state_weights).
    """
    from speckleflow.services.process_ptycho import (
        PtychoProcessOptions,
        print_ptycho_processing,
        process_ptycho,
    )

    def build() -> PtychoProcessOptions:
        return PtychoProcessOptions(
            detector=detector, n_slices=slices, n_states=states, n_modes=modes,
            slice_thickness_A=slice_thickness, iterations=iterations, first_stage_iterations=first_stage,
            loss=loss.value, batch_size=batch_size, lr=lr, probe_lr=probe_lr,
            position_correction=position_correction, state_model=state_model.value,
            lr_final_fraction=lr_final_fraction, oversampling=oversampling,
            pixel_quadrature=pixel_quadrature, seed=seed, threads=threads,
        )

    _process_stored_run(run_uid, "ptychography", build, process_ptycho, print_ptycho_processing,
                        data_dir, tiled_uri, api_key)


@app.command("serve")
def serve_command(
    data_dir: DataDirOpt = Path("speckleflow-data"),
    tiled_uri: TiledUriOpt = None,
    api_key: ApiKeyOpt = None,
    detector_size: Annotated[int, typer.Option(help="Detector side, pixels (square).")] = 256,
    families: Annotated[int, typer.Option(help="Built-in sample model: families of maze states.")] = 8,
    temperature: Annotated[float, typer.Option(help="Sample temperature, K.")] = 300.0,
    seed: Annotated[int, typer.Option(help="Seed of the sample model, dynamics and photon noise.")] = 0,
    states_file: Annotated[
        Path | None, typer.Option(help="npz with `mz` (n_states, ny, nx) instead of the built-in model.")
    ] = None,
    open_environment: Annotated[
        bool, typer.Option(help="Open the RunEngine environment at start (else: `qserver environment open`).")
    ] = True,
) -> None:
    """The long-running service, controlled through the Bluesky queue server.

    Starts Tiled (embedded unless --tiled-uri), the ZeroMQ proxy, the online workers
    (fth, cci, g2), redis-server and the RE Manager (bluesky-queueserver) with speckleflow's
    startup directory: devices `ccd` (helicity CCD on the simulated magnetic sample),
    `celeritas` and `scan` (5D-STEM), plans `cci_series`, `cci_until_covered`, `ecm_5d`,
    `ecm_adaptive`.
    Prints the addresses and how to submit a plan with `qserver`; Ctrl-C aborts a
    running plan and stops every process.
    """
    from rich.console import Console
    from speckleflow.services.serve import ServeOptions, serve

    console = Console()
    opts = ServeOptions(
        data_dir=data_dir,
        tiled_uri=tiled_uri,
        api_key=api_key,
        detector_size=detector_size,
        n_families=families,
        temperature=temperature,
        seed=seed,
        states_file=states_file,
        open_environment=open_environment,
    )
    try:
        serve(opts, console)
    except ValueError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    except (RuntimeError, TimeoutError, FileNotFoundError) as exc:
        console.print(f"[red]failed:[/red] {exc}")
        raise typer.Exit(1) from exc


@app.command("replay")
def replay_command(
    backup_dir: Annotated[
        Path, typer.Argument(help="TiledWriter's backup directory (DATA_DIR/backup), or one *.jsonl file in it.")
    ],
    data_dir: DataDirOpt = Path("speckleflow-data"),
    tiled_uri: TiledUriOpt = None,
    api_key: ApiKeyOpt = None,
) -> None:
    """Write runs that TiledWriter could not write (Tiled was down) from its backup into raw/.

    Each backed-up run (one *.jsonl file per run) replaces the partial raw/<uid> left by the
    failed write; the detector files stay where they are and are registered again. A run
    already complete in Tiled is left alone, and a file whose run is complete is renamed
    *.jsonl.replayed, so replaying twice is harmless. Exit status 1 if any run is still
    incomplete or a file could not be read.
    """
    from rich.console import Console
    from speckleflow.services.raw_record import replay_file
    from speckleflow.services.tiled_server import tiled_client

    console = Console()
    files = [backup_dir] if backup_dir.is_file() else sorted(backup_dir.glob("*.jsonl"))
    if not files:
        console.print(f"no *.jsonl backup in {backup_dir}")
        return
    failed = 0
    with tiled_client(data_dir, tiled_uri, api_key) as client:
        for path in files:
            try:
                check = replay_file(client, path)
                console.print(f"{path.name}: raw/{check.uid} {check.status}"
                              + ("" if check.has_stop else " (the backup has no stop document)"))
                failed += not check.complete
            except (ValueError, OSError, KeyError) as exc:
                failed += 1
                console.print(f"[red]{path.name}: not replayed: {exc}[/red]")
    if failed:
        raise typer.Exit(1)


@app.command("worker")
def worker_command(
    kind: Annotated[
        WorkerKind,
        typer.Argument(help="Which online worker: fth (FTH preview), cci (online CCI state assignment) or "
                       "g2 (rolling g2 / live τ of a 5D-STEM ECM run)."),
    ],
    bus: Annotated[str, typer.Option(help="The proxy's XPUB endpoint to subscribe to, e.g. tcp://127.0.0.1:5568.")],
    tiled_uri: Annotated[str, typer.Option(envvar="SPECKLEFLOW_TILED_URI", help="Tiled server for results.")],
    status: Annotated[str | None, typer.Option(help="Orchestrator's PULL endpoint for status reports.")] = None,
    n_rolling: Annotated[int, typer.Option(help="fth: pairs in the rolling preview sum.")] = 20,
    rate: Annotated[float, typer.Option(help="Maximum result updates per second (Hz); g2 at most 1.")] = 2.0,
    detector: Annotated[
        str | None, typer.Option(help="Detector (bus stream) to use; default ccd (fth, cci), celeritas (g2).")
    ] = None,
    rcvhwm: Annotated[
        int, typer.Option(min=1, help="Receive high-water mark of the bus socket (messages); beyond it frames "
                          "are dropped and counted as gaps, so queued memory stays bounded.")
    ] = 10_000,
    rcvbuf: Annotated[
        int, typer.Option(min=0, help="Kernel receive buffer of the bus socket (bytes); 0 keeps the OS default "
                          "(autotuned, often tens of MiB of frames before --rcvhwm applies).")
    ] = 0,
    debug_frame_delay: Annotated[
        float, typer.Option(min=0.0, help="Debugging and fault tests only: an artificial delay per frame (s) "
                            "that makes this worker a slow consumer. 0 adds nothing.")
    ] = 0.0,
) -> None:
    """One online worker process (what `speckleflow run` starts and compose.yaml runs).

    The Tiled API key comes from SPECKLEFLOW_API_KEY (never the command line); CURVE
    encryption of the bus from SPECKLEFLOW_CURVE_* (see speckleflow.streaming.curve); the
    byte budget of the bus receive queue from SPECKLEFLOW_RCV_QUEUE_MIB (default 64 MiB).
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    from speckleflow.services.results import ResultsPublisher
    from speckleflow.services.settings import WorkerSettings
    from speckleflow.services.workers.base import Worker
    from speckleflow.streaming import CurveConfig
    from tiled.client import from_uri

    # The results thread's first table writes would import these in the middle of the
    # first run (~150 MiB, seconds on a loaded machine, frames dropped meanwhile).
    for module in ("pandas", "pyarrow"):
        importlib.import_module(module)

    settings = WorkerSettings()
    api_key = settings.api_key.get_secret_value() if settings.api_key is not None else None
    results = ResultsPublisher(lambda: from_uri(tiled_uri, api_key=api_key))
    if kind is WorkerKind.cci:
        from speckleflow.services.workers.cci_worker import CCIAssignmentUnit

        unit = CCIAssignmentUnit(results, rate_hz=rate, detector=detector or "ccd")
    elif kind is WorkerKind.g2:
        from speckleflow.services.workers.g2_worker import G2Unit

        unit = G2Unit(results, rate_hz=min(rate, 1.0), detector=detector or "celeritas")
    else:
        from speckleflow.services.workers.fth_worker import FTHPreviewUnit

        unit = FTHPreviewUnit(results, n_rolling=n_rolling, rate_hz=rate, detector=detector or "ccd")
    from speckleflow.services.status_publisher import StatusPublisher
    from speckleflow.services.workers.resume import tiled_run_documents, tiled_run_stop

    worker = Worker(
        unit,
        bus,
        status_address=status,
        results=results,
        # its own connection: status never waits behind the results (see StatusPublisher)
        status_results=StatusPublisher(lambda: from_uri(tiled_uri, api_key=api_key)),
        curve=CurveConfig.from_env(),
        run_documents=tiled_run_documents(lambda: from_uri(tiled_uri, api_key=api_key)),
        max_queued_bytes=settings.max_queued_bytes,
        run_stop=tiled_run_stop(lambda: from_uri(tiled_uri, api_key=api_key)),
        rcvhwm=rcvhwm,
        rcvbuf=rcvbuf,
        frame_delay_s=debug_frame_delay,
    )
    worker.install_signal_handlers()
    raise typer.Exit(worker.serve())


def _stack_dumps_on_sigusr1() -> None:
    """``kill -USR1 <pid>`` prints every thread's Python stack to stderr (a hung process
    tells where it is; the process keeps running)."""
    import faulthandler
    import signal

    if hasattr(signal, "SIGUSR1"):
        faulthandler.register(signal.SIGUSR1, all_threads=True)


def main() -> None:  # pragma: no cover
    _stack_dumps_on_sigusr1()
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
