"""Ground-truth reference for the lattice analysis, from a ptycho run's ``truth`` stream.

The simulator stores every frozen-phonon configuration's atoms in 3-D (ase order
x, y, z, Å), the equilibrium positions and, for a harmonic model, the analytic Green's
tensor (3 n_atoms × 3 n_atoms, Å²). The reconstruction sees projected columns along the
beam (z), in-plane (y, x). This module groups the atoms into columns and returns the
column sites, the column positions of every configuration and both Green's tensors in
the column/in-plane form that :func:`.correlations.similarity` compares with.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from .correlations import (
    column_groups,
    column_positions,
    displacements,
    greens_tensor,
    in_plane_greens,
)

__all__ = ["TruthReference", "truth_reference"]


@dataclass(frozen=True)
class TruthReference:
    """Projected ground truth.

    Attributes
    ----------
    sites_A : ndarray, shape (n_columns, 2) — equilibrium column sites (y, x), Å.
    groups : list of int arrays — atom indices of every column.
    positions_A : ndarray, shape (n_conf, n_columns, 2) — column positions, Å.
    greens_sample_A2 : ndarray, shape (2 n_columns, 2 n_columns) — G of the
        configurations (eq. 2 with ddof = 1 about their mean), Å².
    greens_analytic_A2 : ndarray or None — the analytic G projected the same way, Å²
        (None when the truth has none or it is NaN-filled).
    """

    sites_A: np.ndarray
    groups: list[np.ndarray]
    positions_A: np.ndarray
    greens_sample_A2: np.ndarray
    greens_analytic_A2: np.ndarray | None


def truth_reference(
    atom_positions_A: ArrayLike,
    atom_equilibrium_A: ArrayLike,
    *,
    greens_analytic_A2: ArrayLike | None = None,
    weights: ArrayLike | None = None,
    tol_A: float = 0.2,
    axes: tuple[int, int] = (1, 0),
) -> TruthReference:
    """Columns, column positions and in-plane Green's tensors of the truth stream.

    Parameters
    ----------
    atom_positions_A : array_like, shape (n_conf, n_atoms, 3) — every configuration, Å.
    atom_equilibrium_A : array_like, shape (n_atoms, 3) — equilibrium positions, Å.
    greens_analytic_A2 : array_like, shape (3 n_atoms, 3 n_atoms), optional — Å².
    weights : array_like, shape (n_atoms,), optional — weight of each atom in its
        column's position (e.g. its projected-potential strength); default equal.
    tol_A : float — in-plane distance below which atoms share a column, Å.
    axes : (int, int) — input components taken as (y, x); (1, 0) for ase's (x, y, z).

    Returns
    -------
    TruthReference

    Raises
    ------
    ValueError
        If the shapes disagree.
    """
    pos = np.asarray(atom_positions_A, dtype=np.float64)
    eq = np.asarray(atom_equilibrium_A, dtype=np.float64)
    if pos.ndim != 3 or eq.ndim != 2 or pos.shape[1:] != eq.shape:
        raise ValueError(
            f"atom_positions_A (n_conf, n_atoms, 3) and atom_equilibrium_A (n_atoms, 3) "
            f"disagree: {pos.shape} vs {eq.shape}"
        )
    groups, sites = column_groups(eq, tol_A=tol_A, axes=axes)
    cols = column_positions(pos, groups, axes=axes, weights=weights)
    g_sample = greens_tensor(displacements(cols))
    g_analytic = None
    if greens_analytic_A2 is not None:
        g3 = np.asarray(greens_analytic_A2, dtype=np.float64)
        if g3.shape != (3 * len(eq), 3 * len(eq)):
            raise ValueError(f"greens_analytic_A2 has shape {g3.shape}, need {(3 * len(eq),) * 2}")
        if np.isfinite(g3).all():
            g_analytic = in_plane_greens(g3, groups, axes=axes, weights=weights)
    return TruthReference(sites_A=sites, groups=groups, positions_A=cols,
                          greens_sample_A2=g_sample, greens_analytic_A2=g_analytic)
