"""Displacements, Green's tensor, correlation vectors, LSM/CSM and Debye–Waller factors.

Gladyshev et al. (2025), "Electron ptychography reveals correlated lattice vibrations at
atomic resolution" (CAVIAR), arXiv:2309.12017:

- eq. (1) displacement of atom i in object state n: ``u_i^n = r_i^n − ⟨r_i⟩_n``;
- eq. (2) lattice Green's tensor ``G_ij = ⟨u_i ⊗ u_j⟩_n`` (d × d blocks, Å²);
- eqs. (3)–(4) length and cosine similarity (LSM, CSM) of the correlation vectors of
  a reconstruction against ground truth. The paper's exact normalisation could not be
  checked here; the definitions below are our reading and are stated in
  :func:`correlation_vectors` and :func:`similarity`.

Vectors are stacked site-major: component a of atom i is index ``i * d + a``; with the
in-plane tables of :mod:`.atoms`, d = 2 and the components are (y, x).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "NeighbourCorrelationTest",
    "Similarity",
    "bond_correlation",
    "column_groups",
    "column_positions",
    "correlation_vectors",
    "debye_waller",
    "displacements",
    "einstein_ratio",
    "greens_tensor",
    "in_plane_greens",
    "neighbour_correlation",
    "neighbour_correlation_test",
    "neighbour_pairs",
    "similarity",
]


def displacements(positions_A: ArrayLike) -> np.ndarray:
    """Displacements from the mean position over states, eq. (1).

    Parameters
    ----------
    positions_A : array_like, shape (n_states, n_atoms, d), float — atom positions per
        object state (or frozen-phonon configuration), Å; NaN marks a missing atom.

    Returns
    -------
    ndarray, shape (n_states, n_atoms, d), float64 — ``u_i^n = r_i^n − ⟨r_i⟩``, Å
    (the mean over the states where the atom was found); NaN stays NaN.

    Raises
    ------
    ValueError
        If the array is not 3-D or has fewer than two states.
    """
    r = np.asarray(positions_A, dtype=np.float64)
    if r.ndim != 3:
        raise ValueError(f"positions_A must have shape (n_states, n_atoms, d), got {r.shape}")
    if r.shape[0] < 2:
        raise ValueError(f"need at least two states to form displacements, got {r.shape[0]}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN site: mean stays NaN
        mean = np.nanmean(r, axis=0)
    return r - mean[None]


def greens_tensor(u_A: ArrayLike, *, ddof: int = 1) -> np.ndarray:
    """Lattice Green's tensor ``G = ⟨u ⊗ u⟩`` over states, eq. (2).

    Parameters
    ----------
    u_A : array_like, shape (n_states, n_atoms, d) — displacements (eq. 1), Å. NaN
        entries (atom not found in a state) are left out pairwise.
    ddof : int — 1 (default) divides by ``n − 1``: unbiased when ``u`` was formed with
        the mean over the same states (eq. 1); 0 is the plain average of eq. (2).

    Returns
    -------
    ndarray, shape (n_atoms * d, n_atoms * d), float64 — G, Å²; block (i, j) is
    ``G[i*d:(i+1)*d, j*d:(j+1)*d]``. NaN where fewer than ``ddof + 1`` states hold
    both atoms.

    Raises
    ------
    ValueError
        If ``u_A`` is not 3-D or ``ddof`` not 0 or 1.
    """
    u = np.asarray(u_A, dtype=np.float64)
    if u.ndim != 3:
        raise ValueError(f"u_A must have shape (n_states, n_atoms, d), got {u.shape}")
    if ddof not in (0, 1):
        raise ValueError(f"ddof must be 0 or 1, got {ddof!r}")
    flat = u.reshape(u.shape[0], -1)
    ok = np.isfinite(flat)
    z = np.where(ok, flat, 0.0)
    m = ok.astype(np.float64)
    num = z.T @ z
    cnt = m.T @ m - ddof
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(cnt > 0, num / np.where(cnt > 0, cnt, 1.0), np.nan)


def _blocks(g: np.ndarray, d: int) -> np.ndarray:
    """G (n d, n d) → blocks (n, n, d, d)."""
    g = np.asarray(g, dtype=np.float64)
    if g.ndim != 2 or g.shape[0] != g.shape[1] or g.shape[0] % d:
        raise ValueError(f"G must be square with a multiple of d={d} rows, got {g.shape}")
    n = g.shape[0] // d
    return g.reshape(n, d, n, d).transpose(0, 2, 1, 3)


def column_groups(
    equilibrium_A: ArrayLike, *, tol_A: float = 0.2, axes: tuple[int, int] = (1, 0)
) -> tuple[list[np.ndarray], np.ndarray]:
    """Group atoms into projected columns along the beam (z) by their in-plane position.

    Parameters
    ----------
    equilibrium_A : array_like, shape (n_atoms, 3) — equilibrium positions, Å, in the
        truth stream's order (ase: x, y, z).
    tol_A : float — atoms whose in-plane positions differ by less than this share a column.
    axes : (int, int) — which input components are (y, x); (1, 0) for ase's (x, y, z).

    Returns
    -------
    groups : list of ndarray of int — atom indices of every column.
    sites_A : ndarray, shape (n_columns, 2), float64 — column (y, x), Å (mean of its atoms).

    Raises
    ------
    ValueError
        If the array is not (n, 3) or ``tol_A`` is not positive.
    """
    from scipy.cluster.hierarchy import fcluster, linkage

    eq = np.asarray(equilibrium_A, dtype=np.float64)
    if eq.ndim != 2 or eq.shape[1] < 2:
        raise ValueError(f"equilibrium_A must have shape (n_atoms, 3), got {eq.shape}")
    if not tol_A > 0:
        raise ValueError(f"tol_A must be > 0 Å, got {tol_A!r}")
    yx = eq[:, list(axes)]
    if len(yx) == 1:
        labels = np.ones(1, dtype=int)
    else:
        labels = fcluster(linkage(yx, method="single"), t=tol_A, criterion="distance")
    groups = [np.flatnonzero(labels == k) for k in np.unique(labels)]
    groups.sort(key=lambda g: (round(float(yx[g, 0].mean()), 3), float(yx[g, 1].mean())))
    sites = np.array([yx[g].mean(axis=0) for g in groups])
    return groups, sites


def column_positions(
    positions_A: ArrayLike,
    groups: list[np.ndarray],
    *,
    axes: tuple[int, int] = (1, 0),
    weights: ArrayLike | None = None,
) -> np.ndarray:
    """Projected column positions per configuration: the (weighted) mean of its atoms.

    Parameters
    ----------
    positions_A : array_like, shape (n_conf, n_atoms, 3) — truth positions, Å (ase order).
    groups : list of int arrays — from :func:`column_groups`.
    axes : (int, int) — components taken as (y, x).
    weights : array_like, shape (n_atoms,), optional — e.g. atomic numbers, since the
        phase of a column weights its atoms roughly by their projected potential.

    Returns
    -------
    ndarray, shape (n_conf, n_columns, 2), float64 — (y, x), Å.
    """
    r = np.asarray(positions_A, dtype=np.float64)
    if r.ndim != 3:
        raise ValueError(f"positions_A must have shape (n_conf, n_atoms, 3), got {r.shape}")
    w = np.ones(r.shape[1]) if weights is None else np.asarray(weights, dtype=np.float64)
    yx = r[..., list(axes)]
    out = np.empty((r.shape[0], len(groups), 2))
    for k, g in enumerate(groups):
        out[:, k] = (yx[:, g] * w[g, None]).sum(axis=1) / w[g].sum()
    return out


def in_plane_greens(
    g3_A2: ArrayLike,
    groups: list[np.ndarray] | None = None,
    *,
    axes: tuple[int, int] = (1, 0),
    weights: ArrayLike | None = None,
) -> np.ndarray:
    """In-plane (y, x) Green's tensor of atoms or projected columns from a 3-D one.

    For columns, the column displacement is the weighted mean of its atoms' displacements,
    so ``G_IJ = Σ_{i∈I, j∈J} w_i w_j G_ij / (Σ w_I Σ w_J)``.

    Parameters
    ----------
    g3_A2 : array_like, shape (3 n_atoms, 3 n_atoms) — e.g. ``greens_tensor_analytic``
        of the truth stream, Å², components in the truth order (ase: x, y, z).
    groups : list of int arrays, optional — columns (:func:`column_groups`); None keeps
        every atom.
    axes, weights : see :func:`column_positions`.

    Returns
    -------
    ndarray, shape (2 n, 2 n), float64 — Å², n atoms or columns, components (y, x).
    """
    b = _blocks(np.asarray(g3_A2, dtype=np.float64), 3)[:, :, list(axes)][:, :, :, list(axes)]
    n = b.shape[0]
    if groups is None:
        groups = [np.array([i]) for i in range(n)]
    w = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)
    p = np.zeros((len(groups), n))
    for k, g in enumerate(groups):
        p[k, g] = w[g] / w[g].sum()
    out = np.einsum("Ii,Jj,ijab->IJab", p, p, b)
    m = len(groups)
    return out.transpose(0, 2, 1, 3).reshape(2 * m, 2 * m)


def neighbour_pairs(sites_A: ArrayLike, cutoff_A: float, *, directed: bool = True) -> np.ndarray:
    """Pairs of distinct sites closer than ``cutoff_A``.

    Parameters
    ----------
    sites_A : array_like, shape (n_atoms, d) — equilibrium sites, Å.
    cutoff_A : float — pair distance cutoff, Å.
    directed : bool — both (i, j) and (j, i) (default) or only i < j.

    Returns
    -------
    ndarray, shape (n_pairs, 2), int64 — sorted lexicographically.
    """
    from scipy.spatial import cKDTree

    s = np.asarray(sites_A, dtype=np.float64)
    if s.ndim != 2:
        raise ValueError(f"sites_A must have shape (n_atoms, d), got {s.shape}")
    if not cutoff_A > 0:
        raise ValueError(f"cutoff_A must be > 0 Å, got {cutoff_A!r}")
    pairs = cKDTree(s).query_pairs(float(cutoff_A), output_type="ndarray").astype(np.int64)
    if directed:
        pairs = np.concatenate([pairs, pairs[:, ::-1]])
    if len(pairs) == 0:
        return np.zeros((0, 2), dtype=np.int64)
    return pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]


def correlation_vectors(g_A2: ArrayLike, pairs: ArrayLike, d: int = 2) -> np.ndarray:
    """Correlation vectors of atom pairs: the rows of the off-diagonal blocks of G.

    Our reading of the paper's arrow plot: for the pair (i, j) and a direction a of atom
    i, the correlation vector is ``c_ij^(a) = ⟨u_{i,a} u_j⟩ = G_ij[a, :]`` — the mean
    displacement of atom j, in Å², when atom i moves along a, scaled by ⟨u_{i,a}²⟩^{1/2}
    times a unit. It keeps its magnitude, so a reconstruction without vibrations has
    vectors of (near) zero length.

    Parameters
    ----------
    g_A2 : array_like, shape (n d, n d) — Green's tensor, Å².
    pairs : array_like, shape (n_pairs, 2), int — (i, j) site pairs (:func:`neighbour_pairs`).
    d : int — components per atom (2 for in-plane (y, x)).

    Returns
    -------
    ndarray, shape (n_pairs, d, d), float64 — ``c[p, a, :]``, Å².
    """
    b = _blocks(np.asarray(g_A2), d)
    pr = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    return b[pr[:, 0], pr[:, 1]]


@dataclass(frozen=True)
class Similarity:
    """Agreement of two sets of correlation vectors.

    Attributes
    ----------
    lsm : float — length similarity, mean of ``min(|c|, |t|) / max(|c|, |t|)`` in [0, 1].
    csm : float — cosine similarity, mean of ``c·t / (|c| |t|)`` in [−1, 1].
    n_vectors : int — vectors compared (both lengths > 0 for CSM; either > 0 for LSM).
    """

    lsm: float
    csm: float
    n_vectors: int


def similarity(
    g_rec_A2: ArrayLike, g_ref_A2: ArrayLike, pairs: ArrayLike, d: int = 2
) -> Similarity:
    """LSM and CSM of reconstructed vs reference correlation vectors, eqs. (3)–(4).

    For every directed pair (i, j) within the cutoff and every direction a, the vectors
    ``c = G_rec,ij[a, :]`` and ``t = G_ref,ij[a, :]`` (:func:`correlation_vectors`) are
    compared: LSM = mean over vectors of ``min(|c|,|t|) / max(|c|,|t|)``, CSM = mean of
    the cosine of their angle. LSM is 1 for equal lengths and 0 when one of them vanishes:
    on coherent (vibration-free) data compared with the reference model G, LSM ≈ 0 says
    no vibration was found. This is our reading of the paper's eqs. (3)–(4).

    Parameters
    ----------
    g_rec_A2, g_ref_A2 : array_like, shape (n d, n d) — reconstructed and reference
        (ground truth: G of the truth configurations, or the analytic model) G, Å².
    pairs : array_like, shape (n_pairs, 2), int — from :func:`neighbour_pairs`.
    d : int — components per atom.

    Returns
    -------
    Similarity

    Raises
    ------
    ValueError
        If the two tensors differ in shape or no vector is comparable.
    """
    a = np.asarray(g_rec_A2, dtype=np.float64)
    b = np.asarray(g_ref_A2, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"G shapes differ: reconstructed {a.shape}, reference {b.shape}")
    c = correlation_vectors(a, pairs, d).reshape(-1, d)
    t = correlation_vectors(b, pairs, d).reshape(-1, d)
    ok = np.isfinite(c).all(axis=1) & np.isfinite(t).all(axis=1)
    lc, lt = np.linalg.norm(c[ok], axis=1), np.linalg.norm(t[ok], axis=1)
    any_len = np.maximum(lc, lt) > 0
    if not any_len.any():
        raise ValueError("no correlation vector with non-zero length to compare")
    lsm = float(np.mean(np.minimum(lc, lt)[any_len] / np.maximum(lc, lt)[any_len]))
    both = (lc > 0) & (lt > 0)
    cos = (c[ok][both] * t[ok][both]).sum(axis=1) / (lc[both] * lt[both])
    csm = float(np.mean(cos)) if both.any() else float("nan")
    return Similarity(lsm=lsm, csm=csm, n_vectors=int(any_len.sum()))


def debye_waller(g_A2: ArrayLike, d: int = 2) -> np.ndarray:
    """Debye–Waller factor per site, ``B = 8π² ⟨u²⟩``.

    ⟨u²⟩ is the mean-square displacement along one direction, taken as the mean of the
    d diagonal entries of G_ii (for in-plane tables: the in-plane average; the beam
    direction is not seen by projected positions).

    Parameters
    ----------
    g_A2 : array_like, shape (n d, n d) — Green's tensor, Å².
    d : int — components per atom.

    Returns
    -------
    ndarray, shape (n,), float64 — B, Å².
    """
    b = _blocks(np.asarray(g_A2), d)
    n = b.shape[0]
    diag = b[np.arange(n), np.arange(n)]
    return 8.0 * np.pi**2 * np.trace(diag, axis1=1, axis2=2) / d


def einstein_ratio(g_A2: ArrayLike, pairs: ArrayLike, d: int = 2) -> float:
    """How strongly neighbours are correlated: mean ‖G_ij‖ over pairs / mean ‖G_ii‖.

    Frobenius norms of the d × d blocks; 0 for independent (Einstein) vibrations with
    infinitely many states. A sample of N states leaves a floor: for independent,
    isotropic in-plane vibrations (d = 2) about ``0.94 (2 / (N − 1))^{1/2}`` (0.44 for
    N = 10), so with few states use :func:`neighbour_correlation_test`, which compares a
    whitened version with its simulated null distribution, or :func:`bond_correlation`,
    whose average over pairs is signed and falls as ``(N n_pairs)^{-1/2}``.

    Parameters
    ----------
    g_A2 : array_like, shape (n d, n d) — Green's tensor, Å².
    pairs : array_like, shape (n_pairs, 2), int — pairs within the cutoff.
    d : int — components per atom.

    Returns
    -------
    float — dimensionless ratio.
    """
    b = _blocks(np.asarray(g_A2), d)
    n = b.shape[0]
    pr = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    if len(pr) == 0:
        raise ValueError("no pairs: raise cutoff_A so that neighbours are included")
    off = np.linalg.norm(b[pr[:, 0], pr[:, 1]], axis=(1, 2))
    on = np.linalg.norm(b[np.arange(n), np.arange(n)], axis=(1, 2))
    return float(np.nanmean(off) / np.nanmean(on))


def bond_correlation(
    g_A2: ArrayLike, sites_A: ArrayLike, pairs: ArrayLike
) -> tuple[float, float]:
    """Signed longitudinal and transverse neighbour correlation, relative to ⟨u²⟩.

    ``ρ_L = mean_(i,j) e_ijᵀ G_ij e_ij / mean_i (tr G_ii / d)`` with ``e_ij`` the unit
    bond vector, and ``ρ_T`` the same with the in-plane perpendicular ``e_⊥`` (d = 2
    only; NaN otherwise). Independent (Einstein) vibrations give 0 within the sampling
    error ≈ ``(N n_pairs)^{-1/2}``; a harmonic lattice gives ρ_L > 0 for nearest
    neighbours (they move together along their bond at long wavelength).

    Parameters
    ----------
    g_A2 : array_like, shape (n d, n d) — Green's tensor, Å².
    sites_A : array_like, shape (n, d) — equilibrium sites, Å.
    pairs : array_like, shape (n_pairs, 2), int — pairs within the cutoff.

    Returns
    -------
    (float, float) — ρ_L, ρ_T, dimensionless.
    """
    s = np.asarray(sites_A, dtype=np.float64)
    d = s.shape[1]
    b = _blocks(np.asarray(g_A2), d)
    n = b.shape[0]
    pr = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    if len(pr) == 0:
        raise ValueError("no pairs: raise cutoff_A so that neighbours are included")
    e = s[pr[:, 1]] - s[pr[:, 0]]
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    blk = b[pr[:, 0], pr[:, 1]]
    diag = np.nanmean(np.trace(b[np.arange(n), np.arange(n)], axis1=1, axis2=2)) / d
    rho_l = float(np.nanmean(np.einsum("pa,pab,pb->p", e, blk, e)) / diag)
    if d != 2:
        return rho_l, float("nan")
    t = np.stack([-e[:, 1], e[:, 0]], axis=1)
    rho_t = float(np.nanmean(np.einsum("pa,pab,pb->p", t, blk, t)) / diag)
    return rho_l, rho_t


def neighbour_correlation(g_A2: ArrayLike, pairs: ArrayLike, d: int = 2) -> float:
    """Mean neighbour canonical correlation ``r = mean_(i,j) ‖G_ii^{-1/2} G_ij G_jj^{-1/2}‖ / d^{1/2}``.

    The off-diagonal block whitened by the on-site blocks is the cross-correlation matrix
    of the two sites' displacements; its Frobenius norm over d^{1/2} is the rms of their
    canonical correlations, in [0, 1] (for scalar displacements the absolute Pearson
    correlation |ρ_ij|). Whitening makes the statistic independent of the size and
    anisotropy of each site's vibration (and of the sample estimates of them), so its
    distribution for independent sites depends only on N, d and the pairs
    (:func:`neighbour_correlation_test`). It is 0 for independent (Einstein) vibrations
    with infinitely many states and > 0 for any finite sample: compare it with its null
    distribution, not with 0. Pairs with a NaN or singular block are left out.

    Parameters
    ----------
    g_A2 : array_like, shape (n d, n d) — Green's tensor, Å².
    pairs : array_like, shape (n_pairs, 2), int — pairs within the cutoff.
    d : int — components per atom.

    Returns
    -------
    float — dimensionless, in [0, 1].

    Raises
    ------
    ValueError
        If there is no pair or no pair with finite, non-singular blocks.
    """
    return float(np.nanmean(_pair_r(_blocks(np.asarray(g_A2), d), _pairs(pairs))))


def _pairs(pairs: ArrayLike) -> np.ndarray:
    pr = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    if len(pr) == 0:
        raise ValueError("no pairs: raise cutoff_A so that neighbours are included")
    return pr


def _inv_sqrt(blocks: np.ndarray) -> np.ndarray:
    """C^{-1/2} of symmetric d × d blocks (..., d, d); NaN for a NaN or singular block."""
    ok = np.isfinite(blocks).all(axis=(-2, -1))
    c = np.where(ok[..., None, None], blocks, 0.0)
    c = 0.5 * (c + np.swapaxes(c, -1, -2))
    if c.shape[-1] == 2:  # closed form: √C = (C + √det 1) / √(tr C + 2 √det)
        det = c[..., 0, 0] * c[..., 1, 1] - c[..., 0, 1] ** 2
        tr = c[..., 0, 0] + c[..., 1, 1]
        good = ok & (det > 1e-24 * np.maximum(tr, 1e-300) ** 2)
        sd = np.sqrt(np.where(good, det, 1.0))
        root = (c + sd[..., None, None] * np.eye(2)) / np.sqrt(np.where(good, tr + 2 * sd, 1.0))[..., None, None]
        adj = np.stack([np.stack([root[..., 1, 1], -root[..., 0, 1]], -1),
                        np.stack([-root[..., 1, 0], root[..., 0, 0]], -1)], -2)
        out = adj / sd[..., None, None]  # det √C = √det C
    else:
        w, v = np.linalg.eigh(c)
        good = ok & (w.min(axis=-1) > 1e-12 * np.maximum(w.max(axis=-1), 1e-300))
        inv = np.where(w > 0, 1.0 / np.sqrt(np.where(w > 0, w, 1.0)), 0.0)
        out = (v * inv[..., None, :]) @ np.swapaxes(v, -1, -2)
    return np.where(good[..., None, None], out, np.nan)


def _whitened_r(on: np.ndarray, off: np.ndarray, pr: np.ndarray) -> np.ndarray:
    """‖W_i G_ij W_j‖_F / d^½ from on-site blocks (..., n, d, d), pair blocks (..., P, d, d)."""
    w = _inv_sqrt(on)
    r = w[..., pr[:, 0], :, :] @ off @ w[..., pr[:, 1], :, :]
    return np.linalg.norm(r, axis=(-2, -1)) / np.sqrt(on.shape[-1])


def _pair_r(b: np.ndarray, pr: np.ndarray) -> np.ndarray:
    """Per pair whitened correlation of blocks (n, n, d, d)."""
    n = b.shape[0]
    r = _whitened_r(b[np.arange(n), np.arange(n)], b[pr[:, 0], pr[:, 1]], pr)
    if not np.isfinite(r).any():
        raise ValueError("no pair with finite, non-singular Green's tensor blocks")
    return r


_IDENTITY = np.eye(1)  # marker: draw independent unit-variance components


def _sampled_r(g_model: np.ndarray, n_sites: int, pr: np.ndarray, n_states: int, n_draws: int,
               d: int, rng: np.random.Generator) -> np.ndarray:
    """:func:`neighbour_correlation` of ``n_draws`` samples of N states drawn from N(0, G)."""
    m = n_sites * d
    u = rng.standard_normal((n_draws, n_states, m))  # (draws, N, n d)
    if g_model is not _IDENTITY:
        w, v = np.linalg.eigh(np.nan_to_num(g_model))
        u = u @ (v * np.sqrt(np.clip(w, 0.0, None))).T
    u -= u.mean(axis=1, keepdims=True)  # eq. (1): about the mean of the same states
    u = u.reshape(n_draws, n_states, m // d, d)
    # only the blocks the statistic reads (the common 1 / (N − 1) cancels)
    ut = u.transpose(0, 2, 3, 1)  # (draws, n, d, N)
    on = ut @ ut.transpose(0, 1, 3, 2)
    off = ut[:, pr[:, 0]] @ ut[:, pr[:, 1]].transpose(0, 1, 3, 2)
    return np.nanmean(_whitened_r(on, off, pr), axis=1)


@dataclass(frozen=True)
class NeighbourCorrelationTest:
    """The Einstein check as a test: measured neighbour correlation vs its null distribution.

    Attributes
    ----------
    statistic : float — :func:`neighbour_correlation` of the measured G.
    null_mean, null_std : float — its distribution for N independent Gaussian
        configurations (no neighbour correlation), by simulation.
    p_value : float — fraction of null draws ≥ the statistic, (k + 1) / (n_draws + 1):
        small says the neighbours are correlated; large is consistent with Einstein.
    model_mean, model_std : float — its distribution for N configurations of a
        model G, e.g. the correlated harmonic lattice (NaN without a model): what data
        of that model would give.
    n_states, n_pairs, n_draws : int
    """

    statistic: float
    null_mean: float
    null_std: float
    p_value: float
    model_mean: float
    model_std: float
    n_states: int
    n_pairs: int
    n_draws: int

    @property
    def z_null(self) -> float:
        """(statistic − null mean) / null std: the excess over independent vibrations."""
        return (self.statistic - self.null_mean) / self.null_std if self.null_std > 0 else float("nan")

    def summary(self) -> dict[str, float]:
        """Scalars for metadata, keys prefixed ``neighbour_correlation``."""
        return {
            "neighbour_correlation": self.statistic,
            "neighbour_correlation_null_mean": self.null_mean,
            "neighbour_correlation_null_std": self.null_std,
            "neighbour_correlation_p_value": self.p_value,
            "neighbour_correlation_model_mean": self.model_mean,
            "neighbour_correlation_model_std": self.model_std,
        }

    def label(self) -> str:
        """One line for a figure: measured r, null mean ± std, p, the correlated model."""
        text = (f"neighbour r = {self.statistic:.3f}; independent (N = {self.n_states}): "
                f"{self.null_mean:.3f} ± {self.null_std:.3f}, p = {self.p_value:.3g}")
        if np.isfinite(self.model_mean):
            text += f"; model {self.model_mean:.3f} ± {self.model_std:.3f}"
        return text


def neighbour_correlation_test(
    g_A2: ArrayLike,
    pairs: ArrayLike,
    n_states: int,
    *,
    model_greens_A2: ArrayLike | None = None,
    d: int = 2,
    n_draws: int = 200,
    seed: int = 0,
) -> NeighbourCorrelationTest:
    """Are neighbours correlated beyond what N independent configurations give by chance?

    The issue's Einstein check ("neighbour correlations vanish: |off-diagonal| small vs
    diagonal") as a parametric test. Statistic: ``r`` of :func:`neighbour_correlation`
    (mean whitened ‖G_ij‖ over the pairs). With N states its null value is far from 0
    (≈ (2/π)^{1/2} (N − 1)^{-1/2} ≈ 0.27 for one scalar pair; ≈ 0.45 for 2 × 2 blocks
    and N = 10), so it is compared with its distribution under the null hypothesis,
    computed by drawing ``n_draws`` sets of N independent Gaussian configurations (no
    correlation between sites), each taken about its own mean (eq. 1) and through
    eq. (2) with ddof = 1, like the data. The statistic is whitened per site, so this
    null does not depend on the sites' (unknown) on-site covariances: it is exact for
    Gaussian displacements up to the simulation error (a plug-in null with the measured
    G_ii would not be: their sampling anisotropy lowers its mean and gives false
    alarms). With a model G (e.g. the harmonic lattice's analytic G) the same is done
    for the correlated alternative, which shows how far apart the two cases are for N.

    Parameters
    ----------
    g_A2 : array_like, shape (n d, n d) — measured Green's tensor (eq. 2, ddof = 1), Å².
    pairs : array_like, shape (n_pairs, 2), int — neighbour pairs (directed or not).
    n_states : int — states (configurations) behind ``g_A2`` (≥ 2d + 2, i.e. 6 in-plane:
        with fewer, the whitened cross-correlation of two sites is 1 whatever the data).
    model_greens_A2 : array_like, shape (n d, n d), optional — a model G, Å² (e.g. the
        correlated harmonic lattice's), for the alternative's distribution.
    d : int — components per atom.
    n_draws : int — simulated sets per distribution (≥ 20).
    seed : int — seeds the simulation (reproducible results).

    Returns
    -------
    NeighbourCorrelationTest

    Raises
    ------
    ValueError
        If ``n_states`` < 2d + 2, ``n_draws`` < 20, shapes disagree or there are no usable
        pairs.
    """
    g = np.asarray(g_A2, dtype=np.float64)
    b = _blocks(g, d)
    n = b.shape[0]
    if int(n_states) != n_states or n_states < 2 * d + 2:
        raise ValueError(
            f"n_states must be an integer >= 2 d + 2 = {2 * d + 2}, got {n_states!r}: with "
            "N - 1 <= 2 d degrees of freedom the canonical correlations of two sites are all 1"
        )
    if int(n_draws) != n_draws or n_draws < 20:
        raise ValueError(f"n_draws must be an integer >= 20, got {n_draws!r}")
    pr = _pairs(pairs)
    stat = float(np.nanmean(_pair_r(b, pr)))
    rng = np.random.default_rng(seed)
    # the whitened statistic is pivotal: any on-site covariance gives the same null
    null = _sampled_r(_IDENTITY, n, pr, int(n_states), int(n_draws), d, rng)
    c_mean = c_std = float("nan")
    if model_greens_A2 is not None:
        gm = np.asarray(model_greens_A2, dtype=np.float64)
        if gm.shape != g.shape:
            raise ValueError(f"model_greens_A2 has shape {gm.shape}, the measured G {g.shape}")
        alt = _sampled_r(gm, n, pr, int(n_states), int(n_draws), d, rng)
        c_mean, c_std = float(alt.mean()), float(alt.std(ddof=1))
    p = float((1 + np.count_nonzero(null >= stat)) / (1 + len(null)))
    return NeighbourCorrelationTest(
        statistic=stat, null_mean=float(null.mean()), null_std=float(null.std(ddof=1)),
        p_value=p, model_mean=c_mean, model_std=c_std, n_states=int(n_states),
        n_pairs=len(pr), n_draws=int(n_draws),
    )
