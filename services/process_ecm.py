"""``speckleflow process ecm <run uid>``: full k-resolved ECM of a 5D-STEM run stored in Tiled.

Reads ``raw/<uid>`` lazily — the camera's frames a range at a time from its HDF5 file
when reachable, else through Tiled in merged, bounded requests (:mod:`.run_frames`), the
scan position and repeat of every frame from the ``primary`` columns, the geometry and
frame rate from the camera's configuration, the repeat period from the start document —
runs :func:`speckleflow.services.ecm.pipeline.run_ecm` and publishes under
``analysis/<uid>/ecm/`` (every node with provenance metadata and all parameters):

=======================  ==========================================================
``tau``                  (scan_y, scan_x, k_r, k_phi) KWW τ, s (NaN: not fitted)
``beta``, ``contrast``   the same for β and A
``tau_sigma``, …         one-σ uncertainties of τ (s), β, A
``fit_quality/flags``    KWW flag bits (0 = good; meanings in metadata)
``fit_quality/chi2``     reduced χ² of every fit
``g2``                   (k_r, lag) ensemble g2 per k_r bin; ``lag`` in s in metadata
``two_time``             (k_r, t1, t2) ensemble two-time correlation per k_r bin
``drift``                (repeat, axis) drift (dy, dx) per repeat, scan steps
``adf``                  (repeat, scan_y, scan_x) virtual ADF images
``tau_histograms``       table: k_phi_bin, k_phi, tau_low, tau_high, count
``lognormal_fits``       table: k_phi_bin, k_phi, median_tau, sigma_ln_tau, …
``tau_vs_k_r``           table: k_r, median_tau, q25, q75, n
``figures/<name>``       (y, x, rgba) uint8: tau_maps, g2, tau_histogram
=======================  ==========================================================

The ``ecm`` container's metadata carries the summary: median τ, ensemble fit per k_r,
domain size ξ_τ, measured counts per ring pixel, the good-fit fraction and timings.
"""

from __future__ import annotations

import time as _time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .layout import analysis_container, ensure_layout, provenance
from .raw_runs import RunContentError, json_config, open_run, read_column, stream_configuration
from .run_frames import SOURCES, HDF5Frames, TiledFrames, open_frames

__all__ = ["ECMProcessOptions", "ECMProcessResult", "HDF5Frames", "StoredECMRun", "TiledFrames",
           "index_stored_run", "process_ecm", "steps"]

ProgressCallback = Callable[[str, int, int], None]


def steps() -> tuple[str, ...]:
    """Every step reported to ``progress(step, done, total)``, in order."""
    from .ecm.pipeline import steps as pipeline_steps

    return ("reading", *pipeline_steps(), "publishing")


@dataclass
class ECMProcessOptions:
    """Parameters of ``speckleflow process ecm`` (recorded in the results' metadata).

    Attributes
    ----------
    detector : str
        ophyd name of the camera in the run (data keys ``<detector>_image``, …).
    ecm : ECMOptions
        The pipeline's parameters (bins, registration, blocks, scheduler).
    source : {"auto", "hdf5", "tiled"}
        Where the frames are read: the camera's HDF5 file directly (its path from the
        run's StreamResource), Tiled over HTTP, or ``"auto"``: the file where it is
        reachable (on every Dask worker), Tiled elsewhere (:func:`.run_frames.open_frames`).
    """

    detector: str = "celeritas"
    ecm: Any = None
    source: str = "auto"

    def __post_init__(self) -> None:
        if self.ecm is None:
            from .ecm.pipeline import ECMOptions

            self.ecm = ECMOptions()

    def validate(self) -> None:
        if not self.detector:
            raise ValueError("--detector must name the camera")
        if self.source not in SOURCES:
            raise ValueError(f"--source must be one of {', '.join(SOURCES)}, got {self.source!r}")
        self.ecm.validate()

    def parameters(self) -> dict[str, Any]:
        return {"detector": self.detector, "source": self.source, **self.ecm.parameters()}


@dataclass
class StoredECMRun:
    """What :func:`index_stored_run` found in a stored 5D-STEM run."""

    uid: str
    geometry: dict[str, Any]
    frame_rate: float
    scan: Any
    ix: np.ndarray
    iy: np.ndarray
    repeat: np.ndarray
    frames: HDF5Frames | TiledFrames
    start: dict[str, Any] = field(default_factory=dict)


def index_stored_run(run: Any, detector: str = "celeritas", source: str = "auto") -> StoredECMRun:
    """Geometry, raster, repeat period and per-frame positions of a stored ECM run.

    ``source`` chooses the frame reader (:func:`.run_frames.open_frames`).

    The repeat period is the start document's ``time_sampling_s`` (N_x·N_y/f plus
    flyback, written by the ``ecm_5d`` plan); without it, N_x·N_y/f from the camera's
    ``frame_rate``.

    Raises
    ------
    RunContentError
        If the run lacks the camera's configuration, geometry, frames, position columns,
        or a raster size.
    """
    from .ecm.pipeline import ScanInfo

    uid = run.item["id"]
    start = dict(run.metadata.get("start", {}))
    config = stream_configuration(run, "primary", detector)
    geometry = json_config(config, f"{detector}_geometry")
    if f"{detector}_frame_rate" not in config:
        raise RunContentError(f"configuration of {detector!r} has no frame_rate; it has {sorted(config)}")
    frame_rate = float(config[f"{detector}_frame_rate"])
    pattern = start.get("plan_pattern_args") or {}
    try:
        nx, ny, repeats = int(pattern["nx"]), int(pattern["ny"]), int(pattern["repeats"])
    except (KeyError, TypeError, ValueError) as exc:
        raise RunContentError(
            f"run {uid}: the start document has no plan_pattern_args with nx, ny, repeats (an ecm_5d run?)"
        ) from exc
    period = float(start.get("time_sampling_s") or nx * ny / frame_rate)
    ix = read_column(run, "primary", f"{detector}_scan_ix")
    iy = read_column(run, "primary", f"{detector}_scan_iy")
    repeat = read_column(run, "primary", f"{detector}_repeat")
    key = f"{detector}_image"
    if key not in run["primary"]:
        raise RunContentError(f"stream 'primary' of run {uid} has no {key!r}")
    frames = open_frames(run["primary"][key], source)
    if frames.shape[0] != ix.size:
        raise RunContentError(f"run {uid}: {frames.shape[0]} frames but {ix.size} scan positions")
    scan = ScanInfo(nx=nx, ny=ny, repeats=repeats, repeat_period=period,
                    scan_step_nm=geometry.get("scan_step_nm"))
    return StoredECMRun(uid, geometry, frame_rate, scan, ix, iy, repeat, frames, start)


@dataclass
class ECMProcessResult:
    """What :func:`process_ecm` did."""

    uid: str
    result: Any
    published: list[str]
    timings: dict[str, float]
    summary: dict[str, Any]


def process_ecm(
    client: Any,
    uid: str,
    opts: ECMProcessOptions | None = None,
    *,
    progress: ProgressCallback | None = None,
) -> ECMProcessResult:
    """Run the full ECM pipeline on ``raw/<uid>`` and publish under ``analysis/<uid>/ecm``.

    Parameters
    ----------
    client : tiled.client container
        Root of a Tiled server with write access.
    uid : str
        Run uid (or a unique prefix of ≥ 8 characters).
    opts : ECMProcessOptions
    progress : callable, optional
        ``progress(step, done, total)``, ``step`` in :func:`steps`.

    Returns
    -------
    ECMProcessResult

    Raises
    ------
    UnknownRunError
        If there is no such run.
    RunContentError
        If the run is not a 5D-STEM ECM run (no camera geometry, positions or raster).
    ValueError
        For bad options, or an incomplete raster.
    """
    from .ecm.geometry import DetectorGeometry
    from .ecm.pipeline import run_ecm

    opts = opts or ECMProcessOptions()
    opts.validate()
    timings: dict[str, float] = {}
    t0 = _time.perf_counter()
    if progress is not None:
        progress("reading", 0, 1)
    run = open_run(client, uid)
    stored = index_stored_run(run, opts.detector, opts.source)
    geometry = DetectorGeometry.from_mapping(stored.geometry)
    if progress is not None:
        progress("reading", 1, 1)
    timings["reading"] = _time.perf_counter() - t0
    result = run_ecm(stored.frames, geometry, stored.scan, opts.ecm, ix=stored.ix, iy=stored.iy,
                     repeat=stored.repeat, progress=progress)
    timings.update(result.timings)
    t0 = _time.perf_counter()
    summary = _summary(stored, result)
    published = _publish(client, stored, opts, result, summary, progress)
    timings["publishing"] = _time.perf_counter() - t0
    summary["timings_s"] = {k: round(v, 3) for k, v in timings.items()}
    return ECMProcessResult(stored.uid, result, published, timings, summary)


def _finite(v: Any) -> float | None:
    v = float(v)
    return v if np.isfinite(v) else None


def _summary(stored: StoredECMRun, result: Any) -> dict[str, Any]:
    ens = result.ensemble_fit
    dom = result.domain
    return {
        "median_tau_s": _finite(result.median_tau),
        "good_fit_fraction": float(result.good_fraction),
        "mean_counts_per_ring_pixel": float(result.mean_counts),
        "repeat_period_s": stored.scan.repeat_period,
        "frame_rate_hz": stored.frame_rate,
        "field_of_view": list(result.field.shape),
        "ensemble_fit": {
            "k_r": result.polar.k_r_centers.tolist(),
            "tau_s": [_finite(v) for v in np.atleast_1d(ens.tau)],
            "beta": [_finite(v) for v in np.atleast_1d(ens.beta)],
            "contrast": [_finite(v) for v in np.atleast_1d(ens.A)],
            "flags": [int(v) for v in np.atleast_1d(ens.flags)],
        },
        "domain_size": None if dom is None else {
            "fwhm_scan_steps": dom.fwhm, "fwhm_err_scan_steps": dom.fwhm_err,
            "fwhm_nm": dom.fwhm_nm, "fwhm_err_nm": dom.fwhm_err_nm,
        },
        "lognormal_all": None if result.lognormal_all is None else asdict(result.lognormal_all),
        "constraint_override": bool(stored.start.get("constraint_override", False)),
        "ecm_constraints": stored.start.get("ecm_constraints"),
    }


def _publish(client: Any, stored: StoredECMRun, opts: ECMProcessOptions, result: Any,
             summary: dict[str, Any], progress: ProgressCallback | None) -> list[str]:
    """Write the products under analysis/<uid>/ecm (replacing an earlier processing)."""
    import pandas as pd

    from .ecm.figures import g2_figure, tau_histogram_figure, tau_maps_figure
    from .ecm.kww import KWWFlag
    from .ecm.pipeline import ALGORITHM

    ensure_layout(client)
    node = analysis_container(client, stored.uid, "ecm")
    params = {**opts.parameters(), **result.parameters}
    polar = result.polar
    axes = {"k_r": polar.k_r_centers.tolist(), "k_phi": polar.k_phi_centers.tolist(),
            "k_r_units": "1/angstrom", "k_phi_units": "rad",
            "scan_rows": [result.field.rows.start, result.field.rows.stop],
            "scan_cols": [result.field.cols.start, result.field.cols.stop]}

    def md(name: str, dims: list[str], units: str | None = None, **extra: Any) -> dict[str, Any]:
        m = provenance(stored.uid, "ecm", ALGORITHM, params, status="final", dims=dims, **extra)
        if units:
            m["units"] = units
        m["name"] = name
        return m

    hyper = ["scan_y", "scan_x", "k_r", "k_phi"]
    lags_s = result.lags.tolist()
    two_dt = result.two_time_repeats * stored.scan.repeat_period
    arrays: dict[str, tuple[np.ndarray, list[str], str | None, dict[str, Any]]] = {
        "tau": (result.tau, hyper, "s", axes),
        "beta": (result.beta, hyper, None, axes),
        "contrast": (result.contrast, hyper, None, axes),
        "tau_sigma": (result.sigma_tau, hyper, "s", axes),
        "beta_sigma": (result.sigma_beta, hyper, None, axes),
        "contrast_sigma": (result.sigma_contrast, hyper, None, axes),
        "g2": (result.g2_ensemble, ["k_r", "lag"], None,
               {"lag": lags_s, "lag_units": "s", "lag_repeats": result.lag_repeats.tolist(),
                "k_r": axes["k_r"], "fit": summary["ensemble_fit"]}),
        "two_time": (result.two_time, ["k_r", "t1", "t2"], None,
                     {"time_per_frame_s": two_dt, "repeats_per_frame": result.two_time_repeats,
                      "k_r": axes["k_r"]}),
        "drift": (result.drift.shift, ["repeat", "axis"], "scan steps",
                  {"axis": ["dy", "dx"], "correlation": result.drift.correlation.tolist(),
                   "reference": result.drift.reference}),
        "adf": (result.adf, ["repeat", "scan_y", "scan_x"], "counts", {}),
    }
    counts, edges = result.histograms
    kphi = polar.k_phi_centers
    hist = pd.DataFrame({
        "k_phi_bin": np.repeat(np.arange(counts.shape[0]), counts.shape[1]),
        "k_phi": np.repeat(kphi, counts.shape[1]),
        "tau_low": np.tile(edges[:-1], counts.shape[0]),
        "tau_high": np.tile(edges[1:], counts.shape[0]),
        "count": counts.ravel(),
    })
    fits = result.lognormal
    lognormal = pd.DataFrame({
        "k_phi_bin": np.arange(len(fits)),
        "k_phi": kphi,
        "median_tau": [np.nan if f is None else f.median for f in fits],
        "sigma_ln_tau": [np.nan if f is None else f.sigma for f in fits],
        "median_tau_err": [np.nan if f is None else f.median_err for f in fits],
        "sigma_ln_tau_err": [np.nan if f is None else f.sigma_err for f in fits],
        "n": [0 if f is None else f.n for f in fits],
    })
    tvk = result.tau_vs_k_r
    tau_vs_kr = pd.DataFrame({"k_r": polar.k_r_centers, "median_tau": tvk.median, "q25": tvk.q25,
                              "q75": tvk.q75, "n": tvk.n})
    tables = {
        "tau_histograms": (hist, "τ histograms per k_φ bin (good fits); τ in s, k_φ in rad"),
        "lognormal_fits": (lognormal, "log-normal fit of τ per k_φ bin (scipy lognorm, loc = 0); τ in s"),
        "tau_vs_k_r": (tau_vs_kr, "median and quartiles of τ per k_r bin (good fits); τ in s, k_r in 1/Å"),
    }
    good_tau = result.good_tau()
    figures = {
        "tau_maps": tau_maps_figure(good_tau, kphi, scan_step_nm=stored.scan.scan_step_nm),
        "g2": g2_figure(result.lags, result.g2_ensemble, result.ensemble_fit, polar.k_r_centers),
        "tau_histogram": tau_histogram_figure(counts, edges, fits, kphi),
    }
    names = (list(arrays) + ["fit_quality/flags", "fit_quality/chi2"] + list(tables)
             + [f"figures/{k}" for k in figures])
    old = [k for k in list(arrays) + list(tables) if k in node]
    if old:
        node.delete_contents(old, external_only=False)
    for sub in ("figures", "fit_quality"):
        if sub in node:
            node.delete_contents([sub], recursive=True, external_only=False)
    total = len(names) + 1
    done = 0

    def tick() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress("publishing", done, total)

    if progress is not None:
        progress("publishing", 0, total)
    for key, (arr, dims, units, extra) in arrays.items():
        node.write_array(np.ascontiguousarray(arr), key=key, metadata=md(key, dims, units, **extra))
        tick()
    quality = node.create_container("fit_quality", metadata=md("fit_quality", []))
    flag_names = {str(int(f)): f.name for f in KWWFlag if f.value}
    quality.write_array(np.ascontiguousarray(result.flags), key="flags",
                        metadata=md("flags", hyper, None, flag_bits=flag_names, **axes))
    tick()
    quality.write_array(np.ascontiguousarray(result.chi2_reduced), key="chi2",
                        metadata=md("chi2", hyper, "reduced chi-square (unit weights)", **axes))
    tick()
    for key, (df, description) in tables.items():
        node.write_table(df, key=key, metadata=md(key, list(df.columns), description=description))
        tick()
    figs = node.create_container("figures", metadata=md("figures", []))
    for key, rgba in figures.items():
        figs.write_array(rgba, key=key, metadata=md(key, ["y", "x", "rgba"], "uint8 RGBA"))
        tick()
    node.update_metadata(
        metadata={"full_processing": {**provenance(stored.uid, "ecm", ALGORITHM, params, status="final"),
                                      "summary": summary}},
        drop_revision=True,
    )
    tick()
    return names


def print_ecm_processing(result: ECMProcessResult, where: str, console: Any) -> None:
    """Summary table of an ECM processing."""
    from rich.table import Table

    s = result.summary
    r = result.result
    table = Table(title=f"k-resolved ECM of run {result.uid}")
    table.add_column("quantity")
    table.add_column("value", justify="right")
    med = s.get("median_tau_s")
    table.add_row("median τ", "—" if med is None else f"{med:.4g} s")
    table.add_row("good fits", f"{100 * s['good_fit_fraction']:.1f} %")
    table.add_row("field of view", "×".join(map(str, s["field_of_view"])) + " positions")
    table.add_row("(k_r, k_φ) bins", f"{r.polar.n_r} × {r.polar.n_phi}")
    table.add_row("counts per ring pixel", f"{s['mean_counts_per_ring_pixel']:.3g}")
    dom = s.get("domain_size")
    if dom:
        size = f"{dom['fwhm_nm']:.3g} nm" if dom.get("fwhm_nm") else f"{dom['fwhm_scan_steps']:.3g} steps"
        table.add_row("domain size ξ_τ", size)
    for step, sec in result.timings.items():
        table.add_row(f"time: {step}", f"{sec:.2f} s")
    console.print(table)
    console.print(f"results in {where}: analysis/{result.uid}/ecm/ — {', '.join(result.published)}")


def process_ecm_at_run_end(session: Any, uid: str, console: Any) -> ECMProcessResult | None:
    """``run_ecm``'s run-end hook: the full pipeline with progress bars; a failure is
    reported and recorded in Tiled (``analysis/<uid>/ecm`` status ``failed``), not raised."""
    from .ecm.pipeline import ALGORITHM, ECMOptions
    from .run_end import process_at_run_end

    # One k_r bin across the ring's FWHM and k_φ bins no wider than the probe convergence
    # (the paper's rule): ≈ 25 pixels per bin on a 128×256 camera, enough that the
    # per-(position, bin) τ are not biased short by counting noise at 1 e/pixel.
    opts = ECMProcessOptions(ecm=ECMOptions(n_r=1))
    return process_at_run_end(
        session, uid, console, title="full ECM processing at run end", what="full ECM processing",
        technique="ecm", algorithm=ALGORITHM, parameters=opts.parameters(),
        process=lambda client, u, progress: process_ecm(client, u, opts, progress=progress),
        show=print_ecm_processing,
    )
