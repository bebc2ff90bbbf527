"""The lattice step of ``process ptycho``: atoms, displacements and G of the object states.

Glue between a :class:`~speckleflow.services.ptycho.result.ReconstructionResult`, the
run's ``truth`` stream and :func:`speckleflow.services.lattice.analysis.analyse_states`
(Gladyshev et al. 2025, eqs. 1–4): the expected projected sites come from the truth's
equilibrium structure, moved into the scan frame (scan position (y, x) Å =
``scan_origin_A`` + (iy, ix)·``scan_step_A``, services/ptycho/CAVIAR_CONTRACT.md) and restricted to the
scanned field; the reference G is that of the truth configurations projected onto the
same columns (with ~10 states, sampling alone limits the agreement with the analytic G,
see ``bench/bench_lattice.py``). With enough object states the phonon frequencies
(eqs. 5–6) of the largest block of whole primitive cells in the field are computed from
the reconstructed G and, as the reference, from the truth configurations' G on the same
block (:mod:`speckleflow.services.lattice.model`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from .raw_runs import RunContentError

__all__ = ["MIN_VIBRATION_A", "LatticeProducts", "lattice_products", "min_states_for_frequencies", "read_truth"]

#: Smallest state-to-state column scatter (u rms, Å) reported as a vibration on coherent data.
MIN_VIBRATION_A = 0.01


@dataclass(frozen=True)
class LatticeProducts:
    """What the lattice step publishes (lengths Å, G Å²).

    Attributes
    ----------
    sites_A : ndarray, shape (n_sites, 2) — expected column sites in the scan frame, (y, x).
    atoms_A : ndarray, shape (n_states, n_sites, 2) — column positions per object state.
    greens_tensor_A2 : ndarray, shape (2 n_sites, 2 n_sites) — reconstructed G (eq. 2).
    greens_truth_A2 : ndarray, shape (2 n_sites, 2 n_sites) — G of the truth configurations.
    debye_waller_A2 : ndarray, shape (n_sites,) — B = 8π²⟨u²⟩.
    summary : dict — LSM, CSM, found fraction, u rms, Einstein ratio, bond correlations,
        mean branch frequencies and their block (or ``frequencies_skipped``).
    figures : dict of name → (h, w, 4) uint8 RGBA.
    frequencies : BlockDispersion or None — eq. (6) from the reconstructed G on the
        largest block of whole primitive cells in the field (vibrating runs).
    frequencies_truth : BlockDispersion or None — the same from G of the truth
        configurations on the same block.
    """

    sites_A: np.ndarray
    atoms_A: np.ndarray
    greens_tensor_A2: np.ndarray
    greens_truth_A2: np.ndarray
    debye_waller_A2: np.ndarray
    summary: dict[str, Any]
    figures: dict[str, np.ndarray]
    frequencies: Any = None
    frequencies_truth: Any = None


def _truth_column(run: Any, suffix: str) -> np.ndarray | None:
    node = run["truth"]
    keys = [k for k in node if k.endswith(suffix)]
    if not keys:
        return None
    return np.asarray(node[keys[0]].read())[0]


def read_truth(run: Any) -> dict[str, np.ndarray] | None:
    """The crystal's ground truth from the run's ``truth`` stream, or None without one.

    Returns
    -------
    dict or None
        ``atom_positions`` (n_conf, n_atoms, 3) Å, ``atom_equilibrium`` (n_atoms, 3) Å
        (ase order x, y, z), ``greens_tensor_analytic`` (3 n_atoms, 3 n_atoms) Å²,
        ``masses_amu`` (n_atoms,) amu and ``temperature_K`` () K, each absent if not stored.

    Raises
    ------
    RunContentError
        If the stream exists but lacks the atom positions.
    """
    if "truth" not in run:
        return None
    out: dict[str, np.ndarray] = {}
    for name in ("atom_positions", "atom_equilibrium", "greens_tensor_analytic", "masses_amu", "temperature_K"):
        value = _truth_column(run, name)
        if value is not None:
            out[name] = value
    if "atom_positions" not in out or "atom_equilibrium" not in out:
        raise RunContentError(f"the truth stream has no atom_positions/atom_equilibrium; it has {list(run['truth'])}")
    return out


def lattice_products(
    result: Any,
    truth: dict[str, np.ndarray],
    start: dict[str, Any],
    *,
    margin_A: float = 0.0,
) -> LatticeProducts:
    """Run the lattice analysis of a reconstruction against the run's truth.

    Parameters
    ----------
    result : ReconstructionResult
        ``object_phase`` (n_states, n_slices, H, W), ``pixel_size_A``, ``object_origin_A``
        and the refined ``positions_A`` (n_positions, 2) Å in the scan frame.
    truth : dict
        From :func:`read_truth`.
    start : dict
        The run's start document (``scan_origin_A``; ``crystal`` and ``temperature_K``
        for the phonon frequencies).
    margin_A : float
        Sites up to this far outside the scanned rectangle are analysed too, Å.

    Returns
    -------
    LatticeProducts

    Raises
    ------
    ValueError
        If fewer than two truth columns lie in the scanned field.
    """
    from .lattice.analysis import analyse_states
    from .lattice.atoms import atom_table, register_sites
    from .lattice.correlations import column_groups
    from .lattice.figures import correlation_figure, greens_figure
    from .lattice.truth import truth_reference

    positions = np.asarray(truth["atom_positions"], dtype=np.float64)
    equilibrium = np.asarray(truth["atom_equilibrium"], dtype=np.float64)
    # displacements and G need two or more object states; a one-state reconstruction still
    # gets its columns located; a coherent run (one configuration) reconstructed with
    # several states is checked for vibrations that are not there
    n_states = result.object_phase.shape[0]
    vibrating = positions.shape[0] >= 2 and n_states >= 2
    analytic = truth.get("greens_tensor_analytic")
    ref = (truth_reference(positions, equilibrium, greens_analytic_A2=analytic)
           if positions.shape[0] >= 2 else None)
    _, all_sites = column_groups(equilibrium)
    origin = np.asarray(start.get("scan_origin_A", [0.0, 0.0]), dtype=np.float64)
    sites = all_sites - origin
    pos = np.asarray(result.positions_A, dtype=np.float64)
    lo, hi = pos.min(axis=0) - margin_A, pos.max(axis=0) + margin_A
    inside = np.flatnonzero(np.all((sites >= lo) & (sites <= hi), axis=1))
    if inside.size < 2:
        raise ValueError(f"only {inside.size} truth columns lie in the scanned field {lo}–{hi} Å")
    sites = sites[inside]
    d = np.linalg.norm(sites[:, None] - sites[None], axis=-1)
    nn = float(np.min(d[d > 0.3]))  # columns closer than 0.3 Å are one column
    radius, cutoff = 0.35 * nn, 1.15 * nn
    if not vibrating and n_states < 2:
        return _static_products(result, sites, nn, radius, atom_table, register_sites)
    if not vibrating:
        return _coherent_products(result, sites, nn, radius, cutoff)
    assert ref is not None
    idx = np.stack([2 * inside, 2 * inside + 1], axis=1).ravel()
    g_truth = ref.greens_sample_A2[np.ix_(idx, idx)]
    g_model = None if ref.greens_analytic_A2 is None else ref.greens_analytic_A2[np.ix_(idx, idx)]
    analysis = analyse_states(_analysis_phase(result), result.pixel_size_A, result.object_origin_A, sites,
                              radius_A=radius, cutoff_A=cutoff, reference_greens_A2=g_truth,
                              model_greens_A2=g_model, **_mixed_state(result))
    scalars = {k: (v if np.isfinite(v) else None) for k, v in analysis.summary().items()}
    summary = {**scalars, **_position_error(analysis.atoms.positions_A, sites),
               "n_sites": len(sites), "nearest_neighbour_A": nn,
               "com_radius_A": radius, "pair_cutoff_A": cutoff,
               "registration_shift_A": [float(v) for v in analysis.shift_A],
               "estimator": analysis.estimator,
               "information_limit_per_A": _information_limit(result),
               "reference": "G of the truth configurations, projected columns",
               "neighbour_correlation_model": (None if g_model is None else
                                               "analytic G of the truth stream, projected columns")}
    figures = {
        "correlation_vectors": correlation_figure(sites, analysis.greens_tensor_A2, cutoff_A=cutoff,
                                                  g_ref_A2=g_truth,
                                                  note=_note(analysis)),
        "greens_tensor": greens_figure(analysis.greens_tensor_A2),
    }
    freq, freq_truth, freq_summary, freq_figures = _frequencies(
        analysis.greens_tensor_A2, g_truth, g_model, sites, origin, truth, start, n_states)
    summary.update(freq_summary)
    figures.update(freq_figures)
    return LatticeProducts(sites, analysis.atoms.positions_A, analysis.greens_tensor_A2, g_truth,
                           analysis.debye_waller_A2, summary, figures, freq, freq_truth)


def min_states_for_frequencies(n_basis: int, dim: int = 2) -> int:
    """Object states needed for D(q): max(2·dim + 2, n_basis·dim + 1).

    2·dim + 2 as for the Einstein check; n_basis·dim + 1 because ⟨ũ ũ†⟩(q) is
    (n_basis·dim)² and a covariance about the states' mean has rank ≤ n_states − 1: with
    fewer states some branches of the pseudo-inverse (eq. 6) are 0 THz. hBN: 6, Si [110]: 9.
    """
    return max(2 * dim + 2, n_basis * dim + 1)


def _frequencies(g: np.ndarray, g_truth: np.ndarray, g_model: np.ndarray | None, sites: np.ndarray,
                 origin: np.ndarray, truth: dict[str, np.ndarray], start: dict[str, Any],
                 n_states: int) -> tuple[Any, Any, dict[str, Any], dict[str, np.ndarray]]:
    """Mean branch frequencies (eq. 6) of the largest whole-cell block of the field.

    The run's crystal (start document ``crystal``) as a projected lattice from the truth's
    equilibrium atoms and masses (:func:`.lattice.model.projected_lattice`), moved into the
    scan frame; the largest square block of whole primitive cells, n × n with n ≥ 2
    (:func:`.lattice.model.largest_block`); its G detrended to order 1 (order 0 for
    n = 2, :func:`.lattice.model.cropped_field_dispersion`); at the run's
    ``temperature_K``. The truth configurations' G on the same block is the reference;
    with the truth's analytic G, its mean branches on the same block (the same cut, no
    sampling noise) go into the summary as ``mean_branch_model_THz``. Returns (reconstruction, truth, summary entries, figures); when D(q) cannot be formed
    the summary has ``frequencies_skipped`` (why) and the rest is empty.
    """
    from dataclasses import replace

    from .lattice.figures import dispersion_figure
    from .lattice.model import cropped_field_dispersion, projected_lattice

    crystal = start.get("crystal")
    temperature = start.get("temperature_K", truth.get("temperature_K"))
    try:
        if crystal is None:
            raise ValueError("the start document names no crystal")
        if truth.get("masses_amu") is None:
            raise ValueError("the truth stream has no masses_amu")
        if temperature is None or not float(temperature) > 0:
            raise ValueError(f"the run's temperature_K {temperature!r} is not > 0 K")
        model = projected_lattice(str(crystal), truth["atom_equilibrium"], truth["masses_amu"])
        model = replace(model, basis_A=model.basis_A - origin)
        need = min_states_for_frequencies(len(model.basis_A))
        if n_states < need:
            raise ValueError(f"{n_states} object states: D(q) of {crystal} needs >= {need}")
        rec = cropped_field_dispersion(g, sites, model, float(temperature))
    except ValueError as exc:
        return None, None, {"frequencies_skipped": str(exc)}, {}
    ref = cropped_field_dispersion(g_truth, sites, model, float(temperature),
                                   block=(rec.indices, rec.n_cells))
    d, dt = rec.dispersion, ref.dispersion
    summary = {
        "mean_branch_THz": [float(v) for v in d.mean_branch_THz],
        "mean_branch_truth_THz": [float(v) for v in dt.mean_branch_THz],
        "frequency_path": "–".join(d.labels),
        "frequency_block_cells": list(rec.n_cells),
        "frequency_block_sites": len(rec.indices),
        "frequency_detrend_order": rec.detrend_order,
        "frequency_temperature_K": float(temperature),
    }
    if g_model is not None:
        model_block = cropped_field_dispersion(g_model, sites, model, float(temperature),
                                               block=(rec.indices, rec.n_cells))
        summary["mean_branch_model_THz"] = [float(v) for v in model_block.dispersion.mean_branch_THz]
    fmt = ", ".join
    title = (f"{crystal}, {rec.n_cells[0]}×{rec.n_cells[1]} cells: mean branches "
             f"{fmt(f'{v:.1f}' for v in d.mean_branch_THz)} THz\n(truth, grey: "
             f"{fmt(f'{v:.1f}' for v in dt.mean_branch_THz)} THz)")
    figure = dispersion_figure(d, reference_THz=dt.frequencies_THz[dt.path_index], title=title)
    return rec, ref, summary, {"dispersion": figure}


def _mixed_state(result: Any) -> dict[str, Any]:
    """Keyword arguments selecting the mixed-state estimator of u and G (complex states).

    The states of a mixed-object fit are fixed only up to a unitary mix; G is read from
    the rotation-invariant coefficients (services/lattice/mixed_state.py), in cells of
    ``analyse_states``' default radius (0.6 nearest-neighbour distances), from states
    low-passed to the fit's information limit (:func:`_information_limit`). Without
    complex states (an old result), the per-state centres of mass are used.
    """
    obj = getattr(result, "object", None)
    if obj is None or not np.iscomplexobj(obj):
        return {}
    return {"objects": obj, "weights": getattr(result, "state_weights", None),
            "k_max_per_A": _information_limit(result)}


def _analysis_phase(result: Any) -> np.ndarray:
    """Object phase (n_states, n_slices, H, W) for the atom table: the states low-passed to
    the fit's information limit when it is recorded (a model window wider than the
    detector holds unconstrained frequencies that make per-state peak finding miss
    columns), else the published phase."""
    from .lattice.mixed_state import band_limit

    obj = getattr(result, "object", None)
    k_max = _information_limit(result)
    if obj is None or not np.iscomplexobj(obj) or k_max is None:
        return np.asarray(result.object_phase)
    return np.angle(band_limit(obj, result.pixel_size_A, k_max)).astype(np.float32)


def _information_limit(result: Any) -> float | None:
    """The fit's object information limit, 1/Å, from its parameters (None if unrecorded)."""
    from .ptycho.geometry import information_limit_per_A

    params = getattr(result, "params", None) or {}
    keys = ("detector_pixels", "angular_sampling_mrad", "semiangle_mrad", "wavelength_A")
    if any(params.get(k) is None for k in keys):
        return None
    return information_limit_per_A(*(params[k] for k in keys))


def _position_error(atoms_A: np.ndarray, sites_A: np.ndarray) -> dict[str, float | None]:
    """rms distance, Å, of the state-mean column positions from the truth sites.

    Measured in the scan frame without the registration shift, so a misplaced object
    (origin, scan geometry) shows here; None when no column was found.
    """
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a column found in no state
        mean = np.nanmean(atoms_A, axis=0)
    err = np.linalg.norm(mean - sites_A, axis=-1)
    err = err[np.isfinite(err)]
    return {"position_error_rms_A": float(np.sqrt(np.mean(err**2))) if err.size else None}


def _note(analysis: Any) -> str | None:
    """The Einstein check's line for the arrow plot (None with fewer than six states)."""
    return None if analysis.neighbour_test is None else analysis.neighbour_test.label()


def _coherent_products(result: Any, sites: np.ndarray, nn: float, radius: float,
                       cutoff: float) -> LatticeProducts:
    """Object states of a coherent run (one truth configuration): is a vibration found?

    The truth has no displacements (its G is zero), so LSM/CSM are undefined. The states'
    scatter about their mean column positions, u rms (eq. 1), is compared with a
    threshold, ``vibration_found`` = u rms > max(position error, ``MIN_VIBRATION_A``):
    the position error is the rms distance of the state-mean columns from the truth sites
    (:func:`_position_error`, registration included) — a scatter smaller than the
    accuracy with which the columns are placed is no evidence of vibration; the floor
    0.01 Å is the per-state detection error at which the analysis still recovers the
    correlations of a 300 K crystal (CSM ≥ 0.9, tests/unit/test_lattice_cases.py), so a
    smaller u cannot be told from detection noise either. This is our definition of the
    issue's "coherent data: LSM ≈ 0 (no vibration found)".
    """
    from .lattice.analysis import analyse_states
    from .lattice.figures import correlation_figure, greens_figure

    analysis = analyse_states(_analysis_phase(result), result.pixel_size_A, result.object_origin_A, sites,
                              radius_A=radius, cutoff_A=cutoff, **_mixed_state(result))
    scalars = {k: (v if np.isfinite(v) else None) for k, v in analysis.summary().items()}
    err = _position_error(analysis.atoms.positions_A, sites)
    u_rms, threshold = scalars.get("u_rms_A"), err["position_error_rms_A"]
    if threshold is not None:
        threshold = max(threshold, MIN_VIBRATION_A)
    found = None if u_rms is None or threshold is None else bool(u_rms > threshold)
    summary = {**scalars, **err, "lsm": None, "csm": None, "n_sites": len(sites),
               "nearest_neighbour_A": nn, "com_radius_A": radius, "pair_cutoff_A": cutoff,
               "registration_shift_A": [float(v) for v in analysis.shift_A],
               "vibration_threshold_A": threshold, "vibration_found": found,
               "estimator": analysis.estimator,
               "information_limit_per_A": _information_limit(result),
               "reference": "coherent run: one truth configuration, no displacements"}
    g_zero = np.zeros_like(analysis.greens_tensor_A2)
    figures = {
        "correlation_vectors": correlation_figure(sites, analysis.greens_tensor_A2, cutoff_A=cutoff,
                                                  note=_note(analysis)),
        "greens_tensor": greens_figure(analysis.greens_tensor_A2),
    }
    return LatticeProducts(sites, analysis.atoms.positions_A, analysis.greens_tensor_A2, g_zero,
                           analysis.debye_waller_A2, summary, figures)


def _static_products(result: Any, sites: np.ndarray, nn: float, radius: float,
                     atom_table: Any, register_sites: Any) -> LatticeProducts:
    """Columns of a coherent run or a one-state reconstruction: no displacements, no G.

    The atoms are located as in the vibrating case (registration, peaks, centre of mass);
    G, Debye-Waller, LSM and CSM need two configurations and two states and are NaN/None.
    """
    phase = _analysis_phase(result)
    mean_proj = phase.sum(axis=1, dtype=np.float64).mean(axis=0)
    shift = register_sites(mean_proj, result.pixel_size_A, result.object_origin_A, sites)
    table = atom_table(phase, result.pixel_size_A, result.object_origin_A, sites + shift, radius_A=radius)
    n = 2 * len(sites)
    nan_g = np.full((n, n), np.nan)
    summary: dict[str, Any] = {
        "found_fraction": table.found_fraction, **_position_error(table.positions_A, sites),
        "u_rms_A": None, "lsm": None, "csm": None, "n_sites": len(sites),
        "nearest_neighbour_A": nn, "com_radius_A": radius,
        "registration_shift_A": [float(v) for v in shift],
        "vibrations": "not analysed: displacements need two or more truth configurations and object states",
    }
    return LatticeProducts(sites, table.positions_A, nan_g, nan_g.copy(), np.full(len(sites), np.nan),
                           summary, {})
