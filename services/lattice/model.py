"""The projected 2-D lattice of a run's crystal, and D(q) from a field cut out of it.

Gladyshev et al. (2025), CAVIAR, eqs. (5)–(6) need the primitive cell, the basis of
projected column sites, the column masses and the high-symmetry path of the crystal the
run looked at. :func:`projected_lattice` builds them from what a run stores — the
``crystal`` name of the start document (``"hBN-<n>L[0001]"`` or ``"Si-<n>c[110]"``) and
the truth stream's equilibrium atoms and masses:

- columns: the atoms grouped along the beam (:func:`.correlations.column_groups`); a
  column's mass is the sum of its atoms' masses (the projection moves them together);
- hBN along [0001]: honeycomb columns, primitive a1 = a (0, 1), a2 = a (√3/2, 1/2) in
  (y, x), two columns per cell (B- and N-topped), path Γ–M–K–Γ; a = √3 × the column
  nearest-neighbour distance (the B–N bond a/√3);
- Si along [110]: the rectangular cell a/√2 (y, [1̄10]) × a (x, [001]) holding two
  dumbbells, four columns, path Γ–X–S–Y–Γ (:mod:`.dynamics`); a = 4 × the column
  nearest-neighbour distance (the dumbbell a/4).

The lattice constant comes from the stored equilibrium sites, not from a table, so a
run of another lattice constant is modelled as stored; every site must then fit the
lattice (:func:`.dynamics.assign_cells`) or a ValueError names the crystal.

:func:`cropped_field_dispersion` takes the largest square block of whole primitive cells
from a reconstructed field (:func:`largest_block`), the Green's tensor of its sites with
each state's block translation and linear strain removed (:func:`.dynamics.detrend_greens`,
order 1; order 0 for a 2 × 2 block) and computes eq. (6) on the block's q grid
(:func:`.dynamics.dispersion`).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, replace

import numpy as np
from numpy.typing import ArrayLike

from .analysis import LatticeModel
from .correlations import column_groups
from .dynamics import DispersionResult, assign_cells, detrend_greens, dispersion, periodic_cut

__all__ = ["BlockDispersion", "cropped_field_dispersion", "crystal_kind", "largest_block",
           "projected_lattice"]

#: kind → (beam direction, path kind, columns per cell, lattice constant per nn column distance)
_KINDS: dict[str, tuple[str, str, int, float]] = {
    "hBN": ("[0001]", "hexagonal", 2, math.sqrt(3.0)),
    "Si": ("[110]", "rectangular", 4, 4.0),
}


def crystal_kind(crystal: str) -> str:
    """``"hBN"`` or ``"Si"`` from a run's crystal name (``"hBN-1L[0001]"``, ``"Si-2c[110]"``).

    Raises
    ------
    ValueError
        If the name is not hBN along [0001] or Si along [110] (the message names it).
    TypeError
        If it is not a str.
    """
    if not isinstance(crystal, str):
        raise TypeError(f"crystal must be a name like 'hBN-1L[0001]' or 'Si-1c[110]', got {crystal!r}")
    base, _, direction = crystal.partition("[")
    kind = base.split("-", 1)[0]
    if kind not in _KINDS:
        raise ValueError(f"no projected lattice model for crystal {crystal!r}: only hBN [0001] and Si [110]")
    if direction and "[" + direction != _KINDS[kind][0]:
        raise ValueError(f"no projected lattice model for crystal {crystal!r}: {kind} is modelled "
                         f"along {_KINDS[kind][0]} only")
    return kind


def _basis(sites: np.ndarray, cell: np.ndarray, tol_A: float) -> np.ndarray:
    """Distinct positions of the sites modulo the lattice (the first site's first, every
    other at its image nearest the first), Å."""
    inv = np.linalg.inv(cell)
    r0 = sites[0]
    found: list[np.ndarray] = []
    for s in sites:
        frac = (s - r0) @ inv
        frac = frac - np.floor(frac)
        for f in found:
            diff = frac - f
            if np.linalg.norm((diff - np.rint(diff)) @ cell) < tol_A:
                break
        else:
            found.append(frac)
    frac = np.array(found)
    frac[np.isclose(frac, 1.0, atol=1e-9)] = 0.0
    # of every position's images, the one nearest the first site: a compact basis
    images = np.array(list(itertools.product((-1, 0, 1), repeat=2)), dtype=np.float64)
    cand = (frac[:, None] + images[None]) @ cell  # (n_basis, 9, 2) Å from r0
    nearest = np.argmin(np.linalg.norm(cand, axis=-1), axis=1)
    return r0 + cand[np.arange(len(frac)), nearest]


def projected_lattice(
    crystal: str,
    atom_equilibrium_A: ArrayLike,
    masses_amu: ArrayLike,
    *,
    column_tol_A: float = 0.2,
    tol_A: float = 0.1,
    axes: tuple[int, int] = (1, 0),
    supercell: tuple[int, int] = (1, 1),
) -> LatticeModel:
    """The 2-D lattice of projected columns of a run's crystal, for eqs. (5)–(6).

    Parameters
    ----------
    crystal : str
        The start document's ``crystal``, e.g. ``"hBN-1L[0001]"``, ``"Si-2c[110]"``.
    atom_equilibrium_A : array_like, shape (n_atoms, 3), float
        Equilibrium positions of the truth stream, Å (ase order x, y, z).
    masses_amu : array_like, shape (n_atoms,), float
        Atom masses, amu.
    column_tol_A : float
        Atoms closer in plane than this share a column, Å.
    tol_A : float
        Largest distance of a column from its lattice position, Å.
    axes : (int, int)
        Input components taken as (y, x); (1, 0) for ase's (x, y, z).
    supercell : tuple of 2 ints
        Stored in the model (the block of cells the analysed sites span; set it with
        ``dataclasses.replace`` once the block is chosen, :func:`cropped_field_dispersion`).

    Returns
    -------
    LatticeModel
        ``cell_A`` (2, 2) rows a1, a2 (y, x), Å; ``basis_A`` (n_basis, 2) in the frame of
        the equilibrium positions, Å (n_basis 2 for hBN, 4 for Si); ``masses_amu``
        (n_basis,) column masses, amu; ``path`` "hexagonal" or "rectangular".

    Raises
    ------
    ValueError
        If the crystal is not hBN [0001] or Si [110], shapes disagree, or the columns do
        not form that lattice with equal masses on every sublattice (the message names
        the crystal).

    References
    ----------
    Gladyshev et al. (2025), CAVIAR, eqs. (5)–(6).
    """
    kind = crystal_kind(crystal)
    _, path, n_basis, a_per_nn = _KINDS[kind]
    eq = np.asarray(atom_equilibrium_A, dtype=np.float64)
    m = np.asarray(masses_amu, dtype=np.float64).reshape(-1)
    if eq.ndim != 2 or eq.shape[1] != 3 or m.shape != (len(eq),):
        raise ValueError(f"atom_equilibrium_A (n, 3) and masses_amu (n,) disagree: {eq.shape} vs {m.shape}")
    if np.any(~(m > 0)):
        raise ValueError(f"masses_amu of crystal {crystal!r} must be positive, got {m}")
    groups, sites = column_groups(eq, tol_A=column_tol_A, axes=axes)
    if len(sites) < n_basis:
        raise ValueError(f"crystal {crystal!r}: {len(sites)} columns, a cell holds {n_basis}")
    from scipy.spatial import cKDTree

    nn = float(cKDTree(sites).query(sites, k=2)[0][:, 1].min())
    a = a_per_nn * nn
    if kind == "hBN":
        cell = a * np.array([[0.0, 1.0], [math.sqrt(3.0) / 2, 0.5]])
    else:
        cell = np.array([[a / math.sqrt(2.0), 0.0], [0.0, a]])
    basis = _basis(sites, cell, tol_A)
    if len(basis) != n_basis:
        raise ValueError(f"the columns of crystal {crystal!r} (a = {a:.4f} Å from the nearest-neighbour "
                         f"distance) take {len(basis)} positions per cell, {n_basis} expected")
    try:
        sub, _ = assign_cells(sites, cell, basis, tol_A=tol_A)
    except ValueError as exc:
        raise ValueError(f"the columns of crystal {crystal!r} do not form its lattice: {exc}") from exc
    col_mass = np.array([m[g].sum() for g in groups])
    masses = np.zeros(n_basis)
    for s in range(n_basis):
        ms = col_mass[sub == s]
        if np.ptp(ms) > 1e-6 * ms.max():
            raise ValueError(f"crystal {crystal!r}: columns of sublattice {s} have different masses "
                             f"{np.unique(ms.round(4)).tolist()} amu")
        masses[s] = ms.mean()
    return LatticeModel(cell_A=cell, basis_A=basis, supercell=tuple(int(v) for v in supercell),  # type: ignore[arg-type]
                        masses_amu=masses, path=path)


def largest_block(
    sites_A: ArrayLike,
    cell_A: ArrayLike,
    basis_A: ArrayLike,
    *,
    min_cells: int = 2,
    tol_A: float = 0.3,
) -> tuple[np.ndarray, tuple[int, int]]:
    """The largest square block of whole primitive cells in a field (:func:`.dynamics.periodic_cut`).

    Rule: the largest n with an n × n block of complete cells in the field, n ≥
    ``min_cells``; of its positions, :func:`.dynamics.periodic_cut` takes the one nearest
    the field's centre. Square because the n × n q grid keeps the hexagonal zone's
    symmetry and the shorter side sets the leakage: on hBN-1L at 300 K (the truth G of
    3000 configurations in a 20 × 20 Å crop, detrended to order 1), the worst mean
    branch is 12–18 % off the model for 3 × 3 … 5 × 5 blocks, but 49–52 % for 3 × 4 and
    3 × 5 and 18–20 % for 4 × 5, 4 × 6 (``python bench/bench_lattice.py``, last table).

    Parameters
    ----------
    sites_A : array_like, shape (n_sites, 2) — the field's equilibrium sites (y, x), Å.
    cell_A, basis_A : primitive vectors (rows) and basis in the sites' frame, Å.
    min_cells : int — smallest side, cells.
    tol_A : float — site assignment tolerance, Å.

    Returns
    -------
    indices : ndarray of int64, shape (n_basis · n²,) — into ``sites_A``, ascending.
    n_cells : (int, int) — (n, n).

    Raises
    ------
    ValueError
        If no block of ``min_cells`` × ``min_cells`` cells is complete (the message gives
        the field's extent in cells).
    """
    s = np.atleast_2d(np.asarray(sites_A, dtype=np.float64))
    _, idx = assign_cells(s, cell_A, basis_A, tol_A=tol_A)
    extent = idx.max(axis=0) - idx.min(axis=0) + 1
    for n in range(int(extent.min()), int(min_cells) - 1, -1):
        try:
            return periodic_cut(s, cell_A, basis_A, (n, n), tol_A=tol_A), (n, n)
        except ValueError:
            continue
    raise ValueError(f"no complete block of {min_cells} × {min_cells} primitive cells in the field, "
                     f"which spans {extent.tolist()} cells")


@dataclass(frozen=True)
class BlockDispersion:
    """Phonon frequencies of a block cut from a field (:func:`cropped_field_dispersion`).

    Attributes
    ----------
    indices : ndarray of int64, shape (n_block,) — the block's sites in the field's order.
    n_cells : (int, int) — primitive cells along a1, a2.
    model : LatticeModel — the lattice with ``supercell = n_cells`` and the field's frame.
    detrend_order : int — polynomial order removed per state (:func:`.dynamics.detrend_greens`).
    dispersion : DispersionResult — ν(q) on the block's grid, the path and mean branches, THz.
    """

    indices: np.ndarray
    n_cells: tuple[int, int]
    model: LatticeModel
    detrend_order: int
    dispersion: DispersionResult


def cropped_field_dispersion(
    g_A2: ArrayLike,
    sites_A: ArrayLike,
    model: LatticeModel,
    temperature_K: float,
    *,
    block: tuple[ArrayLike, tuple[int, int]] | None = None,
    min_cells: int = 2,
    detrend_order: int | None = None,
    tol_A: float = 0.3,
) -> BlockDispersion:
    """D(q) = k_B T M^-½ ⟨ũ ũ†⟩⁻¹ M^-½ (eq. 6) of the largest whole-cell block of a field.

    Parameters
    ----------
    g_A2 : array_like, shape (2 n_sites, 2 n_sites) — Green's tensor of the field's sites
        (eq. 2, site-major, (y, x) per site), Å².
    sites_A : array_like, shape (n_sites, 2) — equilibrium sites (y, x), Å.
    model : LatticeModel — :func:`projected_lattice`, basis in the sites' frame.
    temperature_K : float — K.
    block : (indices, n_cells), optional — use this block (e.g. the one chosen for the
        reconstruction, to compare the truth on the same sites); default
        :func:`largest_block`.
    min_cells : int — smallest block side, cells.
    detrend_order : int, optional — 0 or 1, :func:`.dynamics.detrend_greens`. Default:
        1 (each state's block translation and linear strain removed) when every side
        has ≥ 3 cells, else 0 (the translation only): across two cells a linear ramp fits
        the zone-boundary mode exactly and removes it (hBN-1L 2 × 2, truth G of 3000
        configurations: mean branches 0.70–0.89 × the model with order 0, up to 3.4 ×
        with order 1; 3 × 3: 0.80–0.91 with order 0, 0.89–1.18 with order 1;
        ``python bench/bench_lattice.py``, last table).
    tol_A : float — site assignment tolerance, Å.

    Returns
    -------
    BlockDispersion

    Raises
    ------
    ValueError
        If no block fits, the shapes disagree or the temperature is not positive.

    References
    ----------
    Gladyshev et al. (2025), CAVIAR, eqs. (5)–(6).
    """
    s = np.atleast_2d(np.asarray(sites_A, dtype=np.float64))
    g = np.asarray(g_A2, dtype=np.float64)
    if g.shape != (2 * len(s), 2 * len(s)):
        raise ValueError(f"G has shape {g.shape}, expected {(2 * len(s),) * 2} for {len(s)} sites")
    if not temperature_K > 0:
        raise ValueError(f"temperature_K must be > 0 K, got {temperature_K!r}")
    if block is None:
        idx, n = largest_block(s, model.cell_A, model.basis_A, min_cells=min_cells, tol_A=tol_A)
    else:
        idx = np.asarray(block[0], dtype=np.int64)
        n = (int(block[1][0]), int(block[1][1]))
    if detrend_order is None:
        detrend_order = 1 if min(n) >= 3 else 0
    rows = np.stack([2 * idx, 2 * idx + 1], axis=1).ravel()
    g_block = detrend_greens(g[np.ix_(rows, rows)], s[idx], order=detrend_order)
    res = dispersion(g_block, s[idx], model.cell_A, model.basis_A, n, model.masses_amu,
                     float(temperature_K), path=model.path, tol_A=tol_A)
    return BlockDispersion(indices=idx, n_cells=n, model=replace(model, supercell=n),
                           detrend_order=detrend_order, dispersion=res)
