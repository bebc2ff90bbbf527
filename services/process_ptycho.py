"""``speckleflow process ptycho <run uid>``: mixed-object multislice ptychography of a stored run.

Reads ``raw/<uid>`` as services/ptycho/CAVIAR_CONTRACT.md fixes it — the start document's probe and
detector parameters (``energy_eV``, ``semiangle_mrad``, ``defocus_A``,
``angular_sampling_mrad``, ``scan_step_A``, ``scan_shape``, ``sample_thickness_A``), the
camera's frames ``<detector>_image`` (n_positions, qy, qx) in raster order and the scan
positions in Å from the ``primary`` data keys ending in ``scan_y_A`` / ``scan_x_A``
(without them: the raster ``(iy, ix) · scan_step_A`` from ``<detector>_scan_iy/ix`` or
from ``scan_shape``) — runs :func:`speckleflow.services.ptycho.fit.reconstruct` and
publishes under ``analysis/<uid>/ptycho/``:

====================  ===============================================================
``object_phase``      (state, slice, y, x) float32, rad
``object_amplitude``  (state, slice, y, x) float32, |O|
``probe_modes``       (mode, part, y, x) float32, part = (real, imag), √electrons
``loss``              (iteration,) float64, loss per detector pixel per pass
``positions``         (position, axis) float64, refined scan positions (y, x), Å
``state_weights``     (state,) float64
``sites``             (site, axis) float64, expected column sites (y, x), Å  ┐ with a
``atoms``             (state, site, axis) float64, column positions, Å        │ ``truth``
``greens_tensor``     (2 site, 2 site) float64, G = ⟨u ⊗ u⟩ (eq. 2), Å²       │ stream:
``greens_truth``      the same from the truth configurations, Å²             │ lattice
``debye_waller``      (site,) float64, B = 8π²⟨u²⟩, Å²                        │ analysis
``frequencies``       (path point, branch) float64, ν along the path, THz    │
``frequencies_truth`` the same from the truth configurations' G, THz         │
``figures/<name>``    (y, x, rgba) uint8: correlation_vectors, greens_tensor, ┘
                      dispersion
====================  ===============================================================

``frequencies`` (vibrating runs with enough object states, the crystal hBN [0001] or
Si [110]): D(q) (Gladyshev et al. eq. 6) of the largest block of whole primitive cells
in the scanned field, its G detrended to order 1; the metadata names the path's points
and their distances, the q points, the block and the lattice model.

Every node carries provenance metadata with all parameters; the container's
``reconstruction`` metadata holds the summary (pixel size, origin, final loss, versions
of speckleflow, torch and abTEM, the source run's crystal and phonon model).
"""

from __future__ import annotations

import time as _time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import numpy as np

from .layout import analysis_container, ensure_layout, provenance
from .raw_runs import RunContentError, iter_frames, open_run, read_column

ProgressCallback = Callable[[str, int, int], None]

STEPS = ("reading", "stage 1", "stage 2", "lattice", "publishing")


def steps() -> tuple[str, ...]:
    """Every step reported to ``progress(step, done, total)``, in order ("stage 2" only
    with more than one object state)."""
    return STEPS


@dataclass
class PtychoProcessOptions:
    """Parameters of ``speckleflow process ptycho`` (recorded in the results' metadata).

    Attributes
    ----------
    detector : str
        ophyd name of the camera (data key ``<detector>_image``).
    n_slices, n_states, n_modes : int
        Object slices, object states, probe modes.
    slice_thickness_A : float or None
        Slice spacing, Å; None: the run's ``sample_thickness_A / n_slices``.
    iterations, first_stage_iterations : int, int or None
        Passes over the scan in all and in the single-state stage.
    loss : str
        "poisson" or "amplitude".
    batch_size : int
        Positions per gradient step.
    lr, probe_lr : float
        Adam step sizes (object in rad, probe relative).
    position_correction : bool
        Refine the scan positions.
    lr_final_fraction : float
        Step sizes decay exponentially over both stages to this fraction (hBN-1L
        correlated, 16 × 16, 40 passes: 0.1 raised the mean-phase correlation with the
        truth 0.79 → 0.86 at 1e5 e/Å² and 0.92 → 0.97 at 1e7 e/Å², lower final loss).
    oversampling : float or None
        Model window over detector width (None: the smallest window that keeps scattering
        beyond the detector's edge off it, :func:`~speckleflow.services.ptycho.geometry.model_window`).
    pixel_quadrature : int
        Gauss–Legendre points per axis integrating each detector pixel (1: pixel centres;
        :func:`~speckleflow.services.ptycho.model.pixel_tilts`).
    state_model : str
        "pixels" (free states, the paper's) or "displacement" (one base object warped by a
        smooth field per state, :mod:`~speckleflow.services.ptycho.states`).
    seed, threads : int, int or None
        Seed; torch threads.
    extra : dict
        Further keyword arguments of :func:`~speckleflow.services.ptycho.fit.reconstruct`
        (e.g. ``fixed_amplitude``, ``learn_state_weights``, ``state_perturbation_rad``).
    """

    detector: str = "celeritas"
    n_slices: int = 1
    n_states: int = 1
    n_modes: int = 1
    slice_thickness_A: float | None = None
    iterations: int = 50
    first_stage_iterations: int | None = None
    loss: str = "poisson"
    batch_size: int = 32
    lr: float = 0.02
    probe_lr: float = 0.01
    position_correction: bool = False
    lr_final_fraction: float = 0.1
    oversampling: float | None = None
    pixel_quadrature: int = 2
    state_model: str = "pixels"
    seed: int = 0
    threads: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        if not self.detector:
            raise ValueError("--detector must name the camera")
        for name in ("n_slices", "n_states", "n_modes", "iterations", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if not 0 < self.lr_final_fraction <= 1:
            raise ValueError(f"lr_final_fraction must be in (0, 1], got {self.lr_final_fraction!r}")
        if self.state_model not in ("pixels", "displacement"):
            raise ValueError(f"state_model must be 'pixels' or 'displacement', got {self.state_model!r}")
        if self.loss not in ("poisson", "amplitude"):
            raise ValueError(f"loss must be 'poisson' or 'amplitude', got {self.loss!r}")
        if self.slice_thickness_A is not None and not self.slice_thickness_A > 0:
            raise ValueError(f"slice_thickness_A must be > 0, got {self.slice_thickness_A!r}")
        if self.oversampling is not None and not self.oversampling >= 1:
            raise ValueError(f"oversampling must be >= 1, got {self.oversampling!r}")
        if not 1 <= int(self.pixel_quadrature) <= 8:
            raise ValueError(f"pixel_quadrature must be in [1, 8], got {self.pixel_quadrature!r}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads!r}")
        if self.first_stage_iterations is not None and not 0 <= self.first_stage_iterations < self.iterations:
            raise ValueError(f"first_stage_iterations must be in [0, {self.iterations}), "
                             f"got {self.first_stage_iterations!r}")

    def parameters(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class StoredPtychoRun:
    """What :func:`read_stored_run` found in a stored ptycho run."""

    uid: str
    start: dict[str, Any]
    data: Any  # PtychoData
    positions_source: str


_REQUIRED = ("energy_eV", "semiangle_mrad", "angular_sampling_mrad")


def _positions(run: Any, start: dict[str, Any], detector: str, n: int) -> tuple[np.ndarray, str]:
    primary = run["primary"]
    keys = list(primary)
    ys = [k for k in keys if k.endswith("scan_y_A")]
    xs = [k for k in keys if k.endswith("scan_x_A")]
    if ys and xs:
        pos = np.stack([read_column(run, "primary", ys[0]), read_column(run, "primary", xs[0])], axis=1)
        return pos.astype(np.float64), f"data keys {ys[0]}, {xs[0]}"
    step = start.get("scan_step_A")
    if step is None:
        raise RunContentError("the run has no scan_y_A/scan_x_A data keys and no scan_step_A in its start document")
    step = float(step)
    if f"{detector}_scan_iy" in keys and f"{detector}_scan_ix" in keys:
        iy = read_column(run, "primary", f"{detector}_scan_iy")
        ix = read_column(run, "primary", f"{detector}_scan_ix")
        return np.stack([iy, ix], axis=1).astype(np.float64) * step, f"{detector}_scan_iy/ix × scan_step_A"
    shape = start.get("scan_shape")
    if not shape or int(shape[0]) * int(shape[1]) != n:
        raise RunContentError(f"no scan positions in the run and scan_shape {shape!r} does not match {n} frames")
    iy, ix = np.meshgrid(np.arange(int(shape[0])), np.arange(int(shape[1])), indexing="ij")
    return np.stack([iy.ravel(), ix.ravel()], axis=1) * step, "raster from scan_shape × scan_step_A"


def read_stored_run(run: Any, detector: str = "celeritas") -> StoredPtychoRun:
    """The patterns, positions and probe parameters of a stored ptycho run.

    Raises
    ------
    RunContentError
        If the start document lacks a probe parameter, the frames are missing or not a
        square (n, Q, Q) stack, or positions and frames disagree.
    """
    from .ptycho.result import PtychoData

    uid = run.item["id"]
    start = dict(run.metadata.get("start", {}))
    missing = [k for k in _REQUIRED if k not in start]
    if missing:
        raise RunContentError(f"run {uid}: the start document lacks {missing} (a ptycho run?)")
    sampling = start["angular_sampling_mrad"]
    sampling = [float(v) for v in (sampling if isinstance(sampling, list | tuple) else [sampling] * 2)]
    if len(sampling) != 2 or abs(sampling[0] - sampling[1]) > 1e-9 * abs(sampling[0]):
        raise RunContentError(f"run {uid}: angular_sampling_mrad {sampling!r} must be equal along y and x")
    if "primary" not in run:
        raise RunContentError(f"run {uid} has no stream 'primary'; it has {list(run)}")
    key = f"{detector}_image"
    node = run["primary"]
    if key not in node:
        raise RunContentError(f"stream 'primary' of run {uid} has no {key!r}; it has {list(node)}")
    n = int(node[key].shape[0])
    frames = np.concatenate([c.frames for c in iter_frames(run, "primary", key, np.arange(n))])
    if frames.ndim != 3 or frames.shape[1] != frames.shape[2]:
        raise RunContentError(f"run {uid}: frames have shape {frames.shape}, expected (n, Q, Q)")
    positions, source = _positions(run, start, detector, n)
    if positions.shape[0] != n:
        raise RunContentError(f"run {uid}: {n} frames but {positions.shape[0]} scan positions")
    data = PtychoData(
        patterns=frames.astype(np.float32),
        positions_A=positions,
        energy_eV=float(start["energy_eV"]),
        semiangle_mrad=float(start["semiangle_mrad"]),
        angular_sampling_mrad=sampling[0],
        defocus_A=float(start.get("defocus_A", 0.0)),
        Cs_A=float(start.get("Cs_A", 0.0)),
    )
    try:
        data.validate()
    except ValueError as exc:
        raise RunContentError(f"run {uid}: {exc}") from exc
    return StoredPtychoRun(uid, start, data, source)


@dataclass
class PtychoProcessResult:
    """What :func:`process_ptycho` did."""

    uid: str
    result: Any  # ReconstructionResult
    published: list[str]
    timings: dict[str, float]
    summary: dict[str, Any]


def _version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def process_ptycho(
    client: Any,
    uid: str,
    opts: PtychoProcessOptions | None = None,
    *,
    progress: ProgressCallback | None = None,
) -> PtychoProcessResult:
    """Reconstruct a stored ptycho run and publish it under ``analysis/<uid>/ptycho``.

    Parameters
    ----------
    client : tiled client
        Root of the Tiled server holding ``raw/<uid>``.
    uid : str
        Run uid or a unique prefix of ≥ 8 characters.
    opts : PtychoProcessOptions or None
        Parameters (defaults when None).
    progress : callable or None
        ``progress(step, done, total)`` over :func:`steps`; when it also has an
        ``info(step, text)`` method (:class:`~speckleflow.services.progress.StepProgress`)
        the current loss is shown beside the bar.

    Raises
    ------
    UnknownRunError
        If the run is not in Tiled.
    RunContentError
        If the run lacks what ptychography needs.
    ValueError
        For bad options.
    """
    from .ptycho.fit import reconstruct

    opts = opts or PtychoProcessOptions()
    opts.validate()
    timings: dict[str, float] = {}
    t0 = _time.perf_counter()
    if progress is not None:
        progress("reading", 0, 1)
    run = open_run(client, uid)
    stored = read_stored_run(run, opts.detector)
    if progress is not None:
        progress("reading", 1, 1)
    timings["reading"] = _time.perf_counter() - t0

    thickness = opts.slice_thickness_A
    if thickness is None:
        total = stored.start.get("sample_thickness_A")
        thickness = float(total) / opts.n_slices if total else 1.0
    first = opts.first_stage_iterations
    if opts.n_states > 1 and first is None:
        first = opts.iterations // 2
    stage1 = opts.iterations if opts.n_states == 1 else first

    def on_iteration(iteration: int, loss: float) -> None:
        if progress is None:
            return
        if iteration <= stage1:
            step, done, total = "stage 1", iteration, stage1
        else:
            step, done, total = "stage 2", iteration - stage1, opts.iterations - stage1
        progress(step, done, total)
        info = getattr(progress, "info", None)
        if callable(info):
            info(step, f"loss {loss:.5g}")

    t0 = _time.perf_counter()
    result = reconstruct(
        stored.data, n_slices=opts.n_slices, slice_thickness_A=thickness, n_states=opts.n_states,
        n_modes=opts.n_modes, iterations=opts.iterations, first_stage_iterations=first,
        loss=opts.loss, batch_size=opts.batch_size, lr=opts.lr, probe_lr=opts.probe_lr,
        position_correction=opts.position_correction, state_model=opts.state_model,
        lr_final_fraction=opts.lr_final_fraction, oversampling=opts.oversampling,
        pixel_quadrature=int(opts.pixel_quadrature), seed=opts.seed, threads=opts.threads,
        progress=on_iteration, **opts.extra,
    )
    timings["reconstruction"] = _time.perf_counter() - t0
    t0 = _time.perf_counter()
    lattice, lattice_summary = _lattice_step(run, stored, result, progress)
    timings["lattice"] = _time.perf_counter() - t0
    t0 = _time.perf_counter()
    summary = {
        "final_loss": float(result.loss[-1]),
        "pixel_size_A": result.pixel_size_A,
        "slice_thickness_A": result.slice_thickness_A,
        "object_origin_A": [float(v) for v in result.object_origin_A],
        "object_shape": list(result.object.shape),
        "state_weights": result.state_weights.tolist(),
        "positions_source": stored.positions_source,
        "seconds_per_iteration": result.params["seconds_per_iteration"],
        "versions": {"speckleflow": _version("speckleflow"), "torch": _version("torch"),
                     "abtem": _version("abtem"), "ase": _version("ase")},
        "source": {k: stored.start.get(k) for k in (
            "crystal", "phonon_model", "temperature_K", "n_configurations", "source_fwhm_A",
            "dose_e_per_A2", "sample_thickness_A", "simulator")},
        "lattice": lattice_summary,
    }
    published = _publish(client, stored, opts, result, summary, progress, lattice)
    timings["publishing"] = _time.perf_counter() - t0
    summary["timings_s"] = {k: round(v, 3) for k, v in timings.items()}
    return PtychoProcessResult(stored.uid, result, published, timings, summary)


def _lattice_step(run: Any, stored: StoredPtychoRun, result: Any,
                  progress: ProgressCallback | None) -> tuple[Any, dict[str, Any]]:
    """The lattice analysis against the run's truth, or (None, why it was skipped).

    A run without a ``truth`` stream, or whose scanned field holds too few columns, still
    gets its reconstruction published; the summary says why the lattice step was skipped.
    """
    from .ptycho_lattice import lattice_products, read_truth

    if progress is not None:
        progress("lattice", 0, 1)
    truth = read_truth(run)
    if truth is None:
        products, info = None, {"skipped": "the run has no truth stream (expected sites unknown)"}
    else:
        try:
            products = lattice_products(result, truth, stored.start)
            info = products.summary
        except ValueError as exc:
            products, info = None, {"skipped": str(exc)}
    if progress is not None:
        progress("lattice", 1, 1)
    return products, info


def _publish(client: Any, stored: StoredPtychoRun, opts: PtychoProcessOptions, result: Any,
             summary: dict[str, Any], progress: ProgressCallback | None,
             lattice: Any = None) -> list[str]:
    """Write the products under analysis/<uid>/ptycho (replacing an earlier reconstruction)."""
    from .ptycho.fit import ALGORITHM

    ensure_layout(client)
    node = analysis_container(client, stored.uid, "ptycho")
    params = {**opts.parameters(), **{k: v for k, v in result.params.items() if not k.startswith("seconds")}}
    geometry = {"pixel_size_A": result.pixel_size_A, "slice_thickness_A": result.slice_thickness_A,
                "object_origin_A": summary["object_origin_A"]}
    probe = np.stack([result.probe.real, result.probe.imag], axis=1).astype(np.float32)
    arrays: dict[str, tuple[np.ndarray, list[str], str, dict[str, Any]]] = {
        "object_phase": (result.object_phase, ["state", "slice", "y", "x"], "rad", geometry),
        "object_amplitude": (np.abs(result.object).astype(np.float32), ["state", "slice", "y", "x"], "1",
                             geometry),
        "probe_modes": (probe, ["mode", "part", "y", "x"], "sqrt(electrons)",
                        {"part": ["real", "imag"], "pixel_size_A": result.pixel_size_A,
                         "centre_px": [probe.shape[-2] // 2, probe.shape[-1] // 2]}),
        "loss": (result.loss, ["iteration"], f"{result.params['loss']} loss per detector pixel",
                 {"stage_boundary": result.params["first_stage_iterations"]}),
        "positions": (result.positions_A, ["position", "axis"], "angstrom",
                      {"axis": ["y", "x"], "source": stored.positions_source}),
        "state_weights": (result.state_weights, ["state"], "1", {}),
    }
    if lattice is not None:
        arrays.update({
            "sites": (lattice.sites_A, ["site", "axis"], "angstrom", {"axis": ["y", "x"]}),
            "atoms": (lattice.atoms_A, ["state", "site", "axis"], "angstrom", {"axis": ["y", "x"]}),
            "greens_tensor": (lattice.greens_tensor_A2, ["site_axis", "site_axis"], "angstrom**2",
                              {"order": "site-major, (y, x) per site", "equation": "Gladyshev et al. eq. 2"}),
            "greens_truth": (lattice.greens_truth_A2, ["site_axis", "site_axis"], "angstrom**2",
                             {"order": "site-major, (y, x) per site", "source": "truth configurations"}),
            "debye_waller": (lattice.debye_waller_A2, ["site"], "angstrom**2", {"definition": "8π²⟨u²⟩"}),
        })
        for key, block, source in (("frequencies", lattice.frequencies, "reconstructed G"),
                                   ("frequencies_truth", lattice.frequencies_truth, "G of the truth configurations")):
            if block is not None:
                arrays[key] = _frequency_array(block, source)
    stale = [k for k in ("sites", "atoms", "greens_tensor", "greens_truth", "debye_waller", "frequencies",
                         "frequencies_truth") if k in node]
    old = sorted(set([k for k in arrays if k in node] + stale))
    if old:
        node.delete_contents(old, external_only=False)
    if "figures" in node:
        node.delete_contents(["figures"], recursive=True, external_only=False)
    figures = {} if lattice is None else lattice.figures
    total = len(arrays) + len(figures) + 1
    if progress is not None:
        progress("publishing", 0, total)
    for done, (key, (arr, dims, units, extra)) in enumerate(arrays.items(), start=1):
        md = provenance(stored.uid, "ptycho", ALGORITHM, params, status="final", dims=dims,
                        units=units, name=key, **extra)
        node.write_array(np.ascontiguousarray(arr), key=key, metadata=md)
        if progress is not None:
            progress("publishing", done, total)
    if figures:
        figs = node.create_container("figures", metadata=provenance(
            stored.uid, "ptycho", ALGORITHM, params, status="final", dims=[], name="figures"))
        for done, (key, rgba) in enumerate(figures.items(), start=len(arrays) + 1):
            figs.write_array(rgba, key=key, metadata=provenance(
                stored.uid, "ptycho", ALGORITHM, params, status="final", dims=["y", "x", "rgba"],
                units="uint8 RGBA", name=key))
            if progress is not None:
                progress("publishing", done, total)
        arrays.update({f"figures/{k}": (v, [], "", {}) for k, v in figures.items()})
    node.update_metadata(
        metadata={"reconstruction": {**provenance(stored.uid, "ptycho", ALGORITHM, params, status="final"),
                                     "summary": summary}},
        drop_revision=True,
    )
    if progress is not None:
        progress("publishing", total, total)
    return list(arrays)


def _frequency_array(block: Any, source: str) -> tuple[np.ndarray, list[str], str, dict[str, Any]]:
    """Branch frequencies along the path of a :class:`~.lattice.model.BlockDispersion`, for publishing."""
    d = block.dispersion
    corners = [f"{label} at {dist:.4f} 1/Å" for label, dist in zip(d.labels, d.label_distance, strict=True)]
    return (np.ascontiguousarray(d.frequencies_THz[d.path_index]), ["path_point", "branch"], "THz", {
        "source": source, "equation": "Gladyshev et al. eqs. 5-6, D(q) = k_BT M^-1/2 <u~ u~*>^-1 M^-1/2",
        "path": "–".join(d.labels), "path_labels": list(d.labels),
        "path_label_distance_per_A": [float(v) for v in d.label_distance],
        "path_points": corners,
        "path_distance_per_A": [float(v) for v in d.path_distance],
        "q_per_A": d.q[d.path_index].tolist(), "q_axis": ["y", "x"],
        "mean_branch_THz": [float(v) for v in d.mean_branch_THz],
        "block_cells": list(block.n_cells), "block_sites": [int(i) for i in block.indices],
        "cell_A": block.model.cell_A.tolist(), "basis_A": block.model.basis_A.tolist(),
        "masses_amu": [float(v) for v in block.model.masses_amu],
        "detrend_order": block.detrend_order,
    })


def print_ptycho_processing(result: PtychoProcessResult, where: str, console: Any) -> None:
    """Summary table of a ptychographic reconstruction."""
    from rich.table import Table

    s = result.summary
    r = result.result
    table = Table(title=f"mixed-object multislice ptychography of run {result.uid}")
    table.add_column("quantity")
    table.add_column("value", justify="right")
    table.add_row("object (states, slices, y, x)", "×".join(map(str, s["object_shape"])))
    table.add_row("probe modes", str(r.probe.shape[0]))
    window, det = r.params.get("window"), r.params.get("detector_pixels")
    table.add_row("pixel size", f"{s['pixel_size_A']:.4g} Å"
                  + (f" ({window}-pixel model window, {det}-pixel detector)" if window and det else ""))
    order = r.params.get("pixel_quadrature")
    if order:
        table.add_row("detector pixel", "centre sampled" if order == 1 else f"integrated over {order}×{order} tilts")
    table.add_row("slice thickness", f"{s['slice_thickness_A']:.4g} Å")
    table.add_row("loss first → last", f"{r.loss[0]:.4g} → {r.loss[-1]:.4g}")
    table.add_row("s per iteration", f"{s['seconds_per_iteration']:.3g}")
    lat = s.get("lattice") or {}
    if "skipped" in lat:
        table.add_row("lattice analysis", f"skipped: {lat['skipped']}")
    else:
        def num(key: str, fmt: str) -> str:
            return "—" if lat.get(key) is None else format(lat[key], fmt)
        table.add_row("columns found", f"{num('found_fraction', '.0%')} of {lat.get('n_sites')}")
        table.add_row("column position error vs truth", f"{num('position_error_rms_A', '.3g')} Å rms")
        table.add_row("u rms", f"{num('u_rms_A', '.3g')} Å")
        table.add_row("LSM / CSM vs truth", f"{num('lsm', '.3f')} / {num('csm', '.3f')}")
        if "vibration_found" in lat:  # coherent run, several object states
            table.add_row("vibration found (u rms > threshold)",
                          f"{lat['vibration_found']} ({num('vibration_threshold_A', '.3g')} Å)")
        table.add_row("bond correlation ρ_L", num("bond_correlation_longitudinal", "+.3f"))
        if "mean_branch_THz" in lat:
            branches = ", ".join(f"{v:.2f}" for v in lat["mean_branch_THz"])
            truth = ", ".join(f"{v:.2f}" for v in lat["mean_branch_truth_THz"])
            n1, n2 = lat["frequency_block_cells"]
            table.add_row(f"mean branches {lat['frequency_path']} ({n1}×{n2} cells; truth)",
                          f"{branches} ({truth}) THz")
            if "mean_branch_model_THz" in lat:
                model = ", ".join(f"{v:.2f}" for v in lat["mean_branch_model_THz"])
                table.add_row("mean branches of the analytic G, same cells", f"{model} THz")
        elif "frequencies_skipped" in lat:
            table.add_row("phonon frequencies", f"skipped: {lat['frequencies_skipped']}")
        table.add_row("neighbour correlation r (independent: mean ± std, p)",
                      f"{num('neighbour_correlation', '.3f')} ({num('neighbour_correlation_null_mean', '.3f')}"
                      f" ± {num('neighbour_correlation_null_std', '.3f')}, p {num('neighbour_correlation_p_value', '.3g')})")
    console.print(table)
    console.print(f"results: analysis/{result.uid}/ptycho/ ({', '.join(result.published)}) in {where}")
