"""One call from reconstructed object phases to the CAVIAR lattice results.

``analyse_states`` chains :mod:`.atoms` (registration, detection, centre of mass, site
matching), :mod:`.correlations` (eqs. 1–4, Debye–Waller, Einstein check) and, given a
periodic lattice model, :mod:`.dynamics` (eqs. 5–6). It takes plain arrays — the
``ReconstructionResult`` fields ``object_phase``, ``pixel_size_A``, ``object_origin_A``
and the expected sites — and returns plain arrays for publication under
``analysis/<uid>/ptycho/`` (the process step that publishes them is not here: this
package stays pure compute).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from .atoms import AtomTable, atom_table, register_sites
from .correlations import (
    NeighbourCorrelationTest,
    Similarity,
    bond_correlation,
    debye_waller,
    displacements,
    einstein_ratio,
    greens_tensor,
    neighbour_correlation_test,
    neighbour_pairs,
    similarity,
)
from .dynamics import DispersionResult, dispersion
from .mixed_state import (
    column_displacements,
    equivalent_configurations,
    greens_from_displacements,
    projected_transmission,
)

__all__ = ["LatticeAnalysis", "LatticeModel", "analyse_states"]


@dataclass(frozen=True)
class LatticeModel:
    """The periodic 2-D lattice behind the projected sites, for eqs. (5)–(6).

    Attributes
    ----------
    cell_A : ndarray, shape (2, 2) — primitive vectors as rows, (y, x), Å.
    basis_A : ndarray, shape (n_basis, 2) — basis positions in the sites' frame, Å.
    supercell : tuple of 2 ints — primitive cells the sites span (periodic).
    masses_amu : ndarray, shape (n_basis,) — column mass per sublattice, amu.
    path : str — "hexagonal" (hBN [0001]) or "rectangular" (Si [110]).
    """

    cell_A: np.ndarray
    basis_A: np.ndarray
    supercell: tuple[int, int]
    masses_amu: np.ndarray
    path: str = "hexagonal"


@dataclass(frozen=True)
class LatticeAnalysis:
    """Results of :func:`analyse_states` (lengths Å, G in Å², frequencies THz).

    Attributes
    ----------
    atoms : AtomTable — positions per state (and slice), in the frame of ``sites_A``
        shifted by ``shift_A``.
    shift_A : ndarray, shape (2,) — registration offset applied to the sites, Å.
    displacements_A : ndarray, shape (n_states, n_atoms, 2) — eq. (1): per state from the
        centres of mass, or, with ``estimator == "mixed-state"``, the real configurations
        equivalent to the states' complex coefficients (:mod:`.mixed_state`).
    greens_tensor_A2 : ndarray, shape (2 n_atoms, 2 n_atoms) — eq. (2), ddof = 1.
    debye_waller_A2 : ndarray, shape (n_atoms,) — B = 8π²⟨u²⟩ (in-plane mean).
    pairs : ndarray, shape (n_pairs, 2) — directed neighbour pairs within ``cutoff_A``.
    einstein_ratio : float — mean ‖G_ij‖ / mean ‖G_ii‖ over the pairs.
    bond_correlation : (float, float) — signed longitudinal / transverse ρ.
    neighbour_test : NeighbourCorrelationTest or None — the Einstein check: whitened
        neighbour correlation vs its distribution for independent configurations (and a
        model G); None with fewer than 2d + 2 = 6 states (the test is void below).
    similarity : Similarity or None — LSM/CSM against the reference G, if given.
    dispersion : DispersionResult or None — if a lattice model and temperature are given.
    estimator : str — "centre of mass" (per-state atoms, the paper's reading) or
        "mixed-state" (rotation-invariant, :mod:`.mixed_state`).
    """

    atoms: AtomTable
    shift_A: np.ndarray
    displacements_A: np.ndarray
    greens_tensor_A2: np.ndarray
    debye_waller_A2: np.ndarray
    pairs: np.ndarray
    einstein_ratio: float
    bond_correlation: tuple[float, float]
    neighbour_test: NeighbourCorrelationTest | None
    similarity: Similarity | None
    dispersion: DispersionResult | None
    estimator: str = "centre of mass"

    def summary(self) -> dict[str, float]:
        """Scalars for metadata: found fraction, mean B, ratios, LSM/CSM, mean branches."""
        out = {
            "found_fraction": self.atoms.found_fraction,
            "u_rms_A": float(np.sqrt(np.nanmean(self.displacements_A**2))),
            "debye_waller_mean_A2": float(np.nanmean(self.debye_waller_A2)),
            "einstein_ratio": self.einstein_ratio,
            "bond_correlation_longitudinal": self.bond_correlation[0],
            "bond_correlation_transverse": self.bond_correlation[1],
            **(self.neighbour_test.summary() if self.neighbour_test is not None else {}),
        }
        if self.similarity is not None:
            out["lsm"] = self.similarity.lsm
            out["csm"] = self.similarity.csm
        if self.dispersion is not None:
            for k, v in enumerate(self.dispersion.mean_branch_THz):
                out[f"mean_branch_{k}_THz"] = float(v)
        return out


def analyse_states(
    phase: ArrayLike,
    pixel_size_A: float,
    origin_A: ArrayLike,
    sites_A: ArrayLike,
    *,
    radius_A: float,
    cutoff_A: float,
    register: bool = True,
    reference_greens_A2: ArrayLike | None = None,
    model_greens_A2: ArrayLike | None = None,
    lattice: LatticeModel | None = None,
    temperature_K: float | None = None,
    threshold_rel: float = 0.25,
    unbias_states: bool = False,
    objects: ArrayLike | None = None,
    weights: ArrayLike | None = None,
    cell_radius_A: float | None = None,
    k_max_per_A: float | None = None,
) -> LatticeAnalysis:
    """Atoms, displacements, G, Debye–Waller, LSM/CSM and phonon frequencies of states.

    Parameters
    ----------
    phase : array_like, shape (n_states, n_slices, H, W), float — object phase, rad.
    pixel_size_A : float — Å per pixel.
    origin_A : array_like, shape (2,) — (y, x) of pixel (0, 0), Å.
    sites_A : array_like, shape (n_atoms, 2) — expected projected sites (y, x), Å.
    radius_A : float — centre-of-mass disc radius, Å.
    cutoff_A : float — neighbour pairs for G blocks, LSM/CSM and the Einstein check, Å.
    register : bool — shift the sites onto the state-averaged phase first.
    reference_greens_A2 : array_like, shape (2 n_atoms, 2 n_atoms), optional — ground
        truth G of the same sites (e.g. from the truth configurations, or the analytic
        model through :func:`.correlations.in_plane_greens`), Å².
    model_greens_A2 : array_like, shape (2 n_atoms, 2 n_atoms), optional — a model G
        (e.g. the analytic correlated one) whose N-state distribution of the neighbour
        correlation is reported next to the null's (:func:`.correlations.neighbour_correlation_test`).
    lattice : LatticeModel, optional — with ``temperature_K``, compute eqs. (5)–(6)
        (the sites must span the periodic supercell).
    temperature_K : float, optional — K.
    threshold_rel : float — peak threshold, :func:`.atoms.detect_atoms`.
    unbias_states : bool — scale D(q) by the inverse-Wishart factor for the number of
        states (:func:`.dynamics.dynamical_matrix`). Off by default (eq. 6 as written):
        the factor makes the mean of D right, but with ~10 states the eigenvalues still
        spread, and it then lowers the soft branches (``bench/bench_lattice.py``).
    objects : array_like, shape (n_states, n_slices, H, W), complex, optional — the
        complex object states. Given, u and G come from the rotation-invariant
        mixed-state estimator (:mod:`.mixed_state`) instead of the per-state centres of
        mass; the atom table (found fraction, mean positions) is still read per state.
    weights : array_like, shape (n_states,), optional — state weights (equal if None).
    cell_radius_A : float, optional — the mixed-state fit's cell radius, Å (default
        0.6 × the sites' nearest-neighbour distance).
    k_max_per_A : float, optional — the objects' information limit, 1/Å: the mixed-state
        estimator low-passes the states to it (:func:`.mixed_state.band_limit`).

    Returns
    -------
    LatticeAnalysis

    Raises
    ------
    ValueError
        For bad shapes or sizes (see the called functions), or a lattice model without a
        temperature.
    """
    ph = np.asarray(phase)
    if ph.ndim != 4:
        raise ValueError(f"phase must have shape (n_states, n_slices, H, W), got {ph.shape}")
    sites = np.asarray(sites_A, dtype=np.float64)
    if lattice is not None and temperature_K is None:
        raise ValueError("a lattice model needs temperature_K for the dynamical matrix")
    shift = np.zeros(2)
    if register:
        mean_proj = ph.sum(axis=1, dtype=np.float64).mean(axis=0)
        shift = register_sites(mean_proj, pixel_size_A, origin_A, sites,
                               threshold_rel=threshold_rel)
    table = atom_table(ph, pixel_size_A, origin_A, sites + shift, radius_A=radius_A,
                       threshold_rel=threshold_rel)
    estimator = "centre of mass"
    if objects is None:
        u = displacements(table.positions_A)
        g = greens_tensor(u)
    else:
        states = projected_transmission(objects)
        if states.shape[0] != ph.shape[0]:
            raise ValueError(f"objects has {states.shape[0]} states, phase {ph.shape[0]}")
        if cell_radius_A is None:
            d = np.linalg.norm(sites[:, None] - sites[None], axis=-1)
            cell_radius_A = 0.6 * float(np.min(d[d > 0])) if len(sites) > 1 else 2 * radius_A
        v = column_displacements(states, pixel_size_A, origin_A, sites + shift, radius_A=cell_radius_A,
                                 weights=weights, k_max_per_A=k_max_per_A)
        g = greens_from_displacements(v, weights)
        u = equivalent_configurations(v, weights)
        estimator = "mixed-state"
    pairs = neighbour_pairs(sites, cutoff_A)
    sim = None
    if reference_greens_A2 is not None:
        sim = similarity(g, reference_greens_A2, pairs)
    disp = None
    if lattice is not None:
        disp = dispersion(g, sites, lattice.cell_A, lattice.basis_A, lattice.supercell,
                          lattice.masses_amu, float(temperature_K), path=lattice.path,
                          n_states=ph.shape[0] if unbias_states else None)
    return LatticeAnalysis(
        atoms=table,
        shift_A=shift,
        displacements_A=u,
        greens_tensor_A2=g,
        debye_waller_A2=debye_waller(g),
        pairs=pairs,
        einstein_ratio=einstein_ratio(g, pairs),
        bond_correlation=bond_correlation(g, sites, pairs),
        neighbour_test=(neighbour_correlation_test(g, pairs, ph.shape[0],
                                                   model_greens_A2=model_greens_A2)
                        if ph.shape[0] >= 2 * sites.shape[1] + 2 else None),
        similarity=sim,
        dispersion=disp,
        estimator=estimator,
    )
