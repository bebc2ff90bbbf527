"""Fourier-transformed displacements, dynamical matrix and phonon frequencies.

Gladyshev et al. (2025), CAVIAR, arXiv:2309.12017:

- eq. (5) ``ũ_s(q) = N_s^{-1/2} Σ_{i ∈ s} u_i exp(−i q·R_i)`` for every sublattice s
  (R_i the equilibrium site, q on the grid the supercell allows);
- eq. (6) in the classical harmonic limit ``⟨ũ ũ†⟩(q) = k_B T Φ(q)⁻¹``, so the
  dynamical matrix is ``D(q) = k_B T · M^{-1/2} ⟨ũ ũ†⟩⁻¹ M^{-1/2}``, whose eigenvalues
  are ω².

Units: u in Å, masses in amu, T in K, k_B T in eV → ω² in eV Å⁻² amu⁻¹; frequencies
are returned as ν = ω / 2π in THz (1 (eV Å⁻² amu⁻¹)^{1/2} ↔ 15.633 THz).

Projections: in-plane tables (d = 2) see only displacements perpendicular to the beam,
averaged along each projected column, i.e. q_z = 0 and in-plane polarisations. For hBN
along [0001] the columns form the honeycomb lattice (path Γ–M–K–Γ, ``"hexagonal"``);
for Si along [110] the dumbbell columns form a centred-rectangular 2-D lattice which we
treat with the rectangular cell a/√2 × a holding two dumbbells, i.e. four columns
(path Γ–X–S–Y–Γ, ``"rectangular"``; the conventional cell folds the zone once): the
frequencies are those of the [110]-projected displacement field.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "THZ_PER_SQRT_EV_A2_AMU",
    "DispersionResult",
    "assign_cells",
    "detrend_greens",
    "dispersion",
    "dynamical_matrix",
    "fourier_covariance",
    "fourier_displacements",
    "frequencies_THz",
    "high_symmetry_path",
    "periodic_cut",
    "supercell_q",
]

K_B_EV_PER_K = 8.617333262e-5
# sqrt(1 eV / (1 Å² · 1 amu)) in rad/s, divided by 2π, in THz
THZ_PER_SQRT_EV_A2_AMU = float(
    np.sqrt(1.602176634e-19 / (1e-20 * 1.66053906660e-27)) / (2 * np.pi) / 1e12
)


def _cell(cell_A: ArrayLike) -> np.ndarray:
    c = np.atleast_2d(np.asarray(cell_A, dtype=np.float64))
    if c.shape[0] != c.shape[1] or abs(np.linalg.det(c)) < 1e-12:
        raise ValueError(f"cell_A must be a non-singular (d, d) matrix of row vectors, got {c!r}")
    return c


def _reciprocal(cell: np.ndarray) -> np.ndarray:
    """Rows b_k with a_j · b_k = 2π δ_jk, Å⁻¹."""
    return 2 * np.pi * np.linalg.inv(cell).T


def assign_cells(
    sites_A: ArrayLike,
    cell_A: ArrayLike,
    basis_A: ArrayLike,
    *,
    tol_A: float = 0.3,
) -> tuple[np.ndarray, np.ndarray]:
    """Sublattice and unit-cell index of every site: ``R_i = n_i · cell + basis[s_i]``.

    Parameters
    ----------
    sites_A : array_like, shape (n_atoms, d) — equilibrium sites, Å.
    cell_A : array_like, shape (d, d) — primitive lattice vectors as rows, Å (same
        component order as the sites, e.g. (y, x)).
    basis_A : array_like, shape (n_basis, d) — basis positions (including any origin
        offset), Å.
    tol_A : float — largest distance of a site from its lattice position, Å.

    Returns
    -------
    sublattice : ndarray, shape (n_atoms,), int64
    cell_index : ndarray, shape (n_atoms, d), int64

    Raises
    ------
    ValueError
        If a site matches no basis position within ``tol_A``.
    """
    s = np.atleast_2d(np.asarray(sites_A, dtype=np.float64))
    c = _cell(cell_A)
    basis = np.asarray(basis_A, dtype=np.float64).reshape(-1, c.shape[0])
    if s.shape[1] != c.shape[0]:
        raise ValueError(f"sites_A has {s.shape[1]} components, cell_A is {c.shape}")
    inv = np.linalg.inv(c)
    best = np.full(len(s), np.inf)
    sub = np.full(len(s), -1, dtype=np.int64)
    idx = np.zeros(s.shape, dtype=np.int64)
    for b, tau in enumerate(basis):
        frac = (s - tau) @ inv
        n = np.rint(frac)
        err = np.linalg.norm((frac - n) @ c, axis=1)
        better = err < best
        best[better] = err[better]
        sub[better] = b
        idx[better] = n[better].astype(np.int64)
    bad = np.flatnonzero(best > tol_A)
    if len(bad):
        raise ValueError(
            f"{len(bad)} site(s) fit no basis position within {tol_A} Å, e.g. site {bad[0]} "
            f"at {s[bad[0]]} (off by {best[bad[0]]:.3f} Å)"
        )
    return sub, idx


def supercell_q(cell_A: ArrayLike, supercell: tuple[int, ...]) -> np.ndarray:
    """Wave vectors allowed by a periodic supercell of ``supercell`` primitive cells.

    Parameters
    ----------
    cell_A : array_like, shape (d, d) — primitive vectors (rows), Å.
    supercell : tuple of d ints — repetitions along every primitive vector.

    Returns
    -------
    ndarray, shape (prod(supercell), d), float64 — ``q = Σ_k (m_k / n_k) b_k``, rad/Å,
    m_k = 0 … n_k − 1.
    """
    c = _cell(cell_A)
    n = tuple(int(v) for v in supercell)
    if len(n) != c.shape[0] or min(n) < 1:
        raise ValueError(f"supercell must hold {c.shape[0]} positive ints, got {supercell!r}")
    grids = np.meshgrid(*[np.arange(k) / k for k in n], indexing="ij")
    frac = np.stack([g.ravel() for g in grids], axis=1)
    return frac @ _reciprocal(c)


def _phase_matrix(
    sites: np.ndarray, sublattice: np.ndarray, n_basis: int, q: np.ndarray, d: int
) -> np.ndarray:
    """A(q) of shape (n_q, n_basis d, n_atoms d): ũ = A u (eq. 5)."""
    n = len(sites)
    counts = np.bincount(sublattice, minlength=n_basis).astype(np.float64)
    if np.any(counts == 0):
        raise ValueError(f"every sublattice needs a site; counts per sublattice {counts}")
    e = np.exp(-1j * (q @ sites.T)) / np.sqrt(counts[sublattice])[None]  # (n_q, n)
    a = np.zeros((len(q), n_basis, d, n, d), dtype=np.complex128)
    for k in range(d):
        a[:, sublattice, k, np.arange(n), k] = e
    return a.reshape(len(q), n_basis * d, n * d)


def fourier_displacements(
    u_A: ArrayLike,
    sites_A: ArrayLike,
    sublattice: ArrayLike,
    q: ArrayLike,
    *,
    n_basis: int | None = None,
) -> np.ndarray:
    """Fourier-transformed displacements per sublattice, eq. (5).

    Parameters
    ----------
    u_A : array_like, shape (n_states, n_atoms, d) — displacements, Å (NaN → 0).
    sites_A : array_like, shape (n_atoms, d) — equilibrium sites R_i, Å.
    sublattice : array_like, shape (n_atoms,), int — from :func:`assign_cells`.
    q : array_like, shape (n_q, d) — wave vectors, rad/Å.
    n_basis : int, optional — number of sublattices (default max + 1).

    Returns
    -------
    ndarray, shape (n_states, n_q, n_basis, d), complex128 — ũ, Å.
    """
    u = np.nan_to_num(np.asarray(u_A, dtype=np.float64))
    s = np.asarray(sites_A, dtype=np.float64)
    sub = np.asarray(sublattice, dtype=np.int64)
    qq = np.atleast_2d(np.asarray(q, dtype=np.float64))
    if u.ndim != 3 or u.shape[1:] != s.shape or len(sub) != len(s):
        raise ValueError(f"shapes disagree: u {u.shape}, sites {s.shape}, sublattice {sub.shape}")
    nb = int(sub.max()) + 1 if n_basis is None else int(n_basis)
    d = s.shape[1]
    a = _phase_matrix(s, sub, nb, qq, d)
    nq, k, m = a.shape
    ut = u.reshape(u.shape[0], m).astype(np.complex128) @ a.reshape(nq * k, m).T
    return ut.reshape(u.shape[0], nq, nb, d)


def fourier_covariance(
    g_A2: ArrayLike,
    sites_A: ArrayLike,
    sublattice: ArrayLike,
    q: ArrayLike,
    *,
    n_basis: int | None = None,
) -> np.ndarray:
    """``⟨ũ ũ†⟩(q)`` from a Green's tensor: ``A(q) G A(q)†`` with A the eq. (5) transform.

    For G the sample Green's tensor of displacements u this equals the state average of
    ``ũ ũ†`` built by :func:`fourier_displacements` (same normalisation as G).

    Parameters
    ----------
    g_A2 : array_like, shape (n_atoms d, n_atoms d) — Green's tensor, Å² (NaN → 0).
    sites_A, sublattice, q, n_basis : see :func:`fourier_displacements`.

    Returns
    -------
    ndarray, shape (n_q, n_basis d, n_basis d), complex128 — Hermitian, Å².
    """
    g = np.nan_to_num(np.asarray(g_A2, dtype=np.float64))
    s = np.asarray(sites_A, dtype=np.float64)
    sub = np.asarray(sublattice, dtype=np.int64)
    d = s.shape[1]
    if g.shape != (len(s) * d, len(s) * d):
        raise ValueError(f"G has shape {g.shape}, expected {(len(s) * d,) * 2} for the sites")
    nb = int(sub.max()) + 1 if n_basis is None else int(n_basis)
    a = _phase_matrix(s, sub, nb, np.atleast_2d(np.asarray(q, dtype=np.float64)), d)
    nq, k, m = a.shape
    ag = (a.reshape(nq * k, m) @ g.astype(np.complex128)).reshape(nq, k, m)
    c = np.einsum("qkm,qlm->qkl", ag, np.conj(a))
    return 0.5 * (c + np.conj(c.transpose(0, 2, 1)))


def dynamical_matrix(
    covariance_A2: ArrayLike,
    masses_amu: ArrayLike,
    temperature_K: float,
    *,
    rcond: float = 1e-8,
    n_states: int | None = None,
    real_q: ArrayLike | None = None,
) -> np.ndarray:
    """``D(q) = k_B T · M^{-1/2} ⟨ũ ũ†⟩⁻¹ M^{-1/2}``, eq. (6).

    Directions without any displacement variance (e.g. the uniform translation at Γ,
    absent from displacements about the mean) get a zero eigenvalue: the inverse is the
    Hermitian pseudo-inverse, dropping eigenvalues below ``rcond`` times the largest
    eigenvalue over all q.

    With few states the inverse of a sample covariance is biased upwards: for
    Gaussian displacements and a covariance estimated from N states about their mean
    (ν = N − 1 degrees of freedom, p kept eigenvalues), ``E[Ĉ⁻¹] = ν / (ν − p) C⁻¹``
    (complex Wishart; q ≢ −q) or ``ν / (ν − p − 1) C⁻¹`` (real Wishart; 2q a reciprocal
    lattice vector, e.g. Γ and M). Giving ``n_states`` multiplies D(q) by the inverse
    factor, so that the mean of D is right; with N = 10 states and 2 sublattices
    in-plane (p = 4) the raw D is 1.8× (complex q) or 2.25× (real q) too large on
    average. Its eigenvalues are still spread by the sampling noise (the stiffest mode
    up, the softest down), so frequencies from few states stay biased either way:
    ``bench/bench_lattice.py`` prints both estimates against a model.

    Parameters
    ----------
    covariance_A2 : array_like, shape (n_q, n_basis d, n_basis d), complex — Å².
    masses_amu : array_like, shape (n_basis,) — mass of every sublattice, amu.
    temperature_K : float — sample temperature, K.
    rcond : float — pseudo-inverse cutoff relative to the largest eigenvalue over all q.
    n_states : int, optional — number of states the covariance was estimated from (with
        their mean removed and divided by N − 1); None: no bias correction.
    real_q : array_like, shape (n_q,), bool, optional — q points with 2q ≡ 0 (real ũ);
        needed with ``n_states`` (default: all complex).

    Returns
    -------
    ndarray, shape (n_q, n_basis d, n_basis d), complex128 — D, eV Å⁻² amu⁻¹.

    Raises
    ------
    ValueError
        If the temperature or a mass is not positive, shapes disagree, or ``n_states``
        is too small for the bias correction (ν ≤ p + 1).
    """
    c = np.asarray(covariance_A2, dtype=np.complex128)
    if c.ndim == 2:
        c = c[None]
    m = np.asarray(masses_amu, dtype=np.float64).reshape(-1)
    if not temperature_K > 0:
        raise ValueError(f"temperature_K must be > 0 K, got {temperature_K!r}")
    if np.any(~(m > 0)):
        raise ValueError(f"masses_amu must be positive, got {m}")
    nbd = c.shape[-1]
    if c.shape[-2] != nbd or nbd % len(m):
        raise ValueError(f"covariance shape {c.shape} does not fit {len(m)} sublattice masses")
    d = nbd // len(m)
    inv_sqrt_m = 1.0 / np.sqrt(np.repeat(m, d))
    w, v = np.linalg.eigh(c)
    cutoff = rcond * max(float(w.max()), 0.0)  # relative to the largest over all q
    inv_w = np.where(w > cutoff, 1.0 / np.where(w > cutoff, w, 1.0), 0.0)
    cinv = (v * inv_w[:, None, :]) @ np.conj(v.transpose(0, 2, 1))
    if n_states is not None:
        nu = int(n_states) - 1
        kept = (w > cutoff).sum(axis=1)
        real = np.zeros(len(c), bool) if real_q is None else np.asarray(real_q, bool).reshape(-1)
        if real.shape != (len(c),):
            raise ValueError(f"real_q must have shape ({len(c)},), got {real.shape}")
        free = nu - kept - real
        if np.any(free <= 0):
            raise ValueError(
                f"n_states={n_states} too small to unbias D(q) with up to {kept.max()} modes "
                f"per q: need n_states > {int((kept + real).max()) + 1}"
            )
        cinv = cinv * (free / nu)[:, None, None]
    return K_B_EV_PER_K * temperature_K * inv_sqrt_m[:, None] * cinv * inv_sqrt_m[None, :]


def frequencies_THz(dyn: ArrayLike) -> np.ndarray:
    """Phonon frequencies ν = √(eigenvalues of D) / 2π, sorted ascending per q.

    Parameters
    ----------
    dyn : array_like, shape (n_q, k, k), complex — D in eV Å⁻² amu⁻¹.

    Returns
    -------
    ndarray, shape (n_q, k), float64 — THz (negative round-off eigenvalues give 0).
    """
    w2 = np.linalg.eigvalsh(np.asarray(dyn, dtype=np.complex128))
    return np.sqrt(np.clip(w2, 0.0, None)) * THZ_PER_SQRT_EV_A2_AMU


def high_symmetry_path(kind: str, cell_A: ArrayLike) -> tuple[list[str], np.ndarray]:
    """Corners of a high-symmetry path of a 1-D or 2-D lattice.

    Parameters
    ----------
    kind : {"chain", "hexagonal", "rectangular"} — Γ–X (1-D), Γ–M–K–Γ (hexagonal, e.g.
        hBN along [0001]) or Γ–X–S–Y–Γ (rectangular, e.g. Si columns along [110]).
    cell_A : array_like, shape (d, d) — primitive vectors (rows), Å.

    Returns
    -------
    labels : list of str
    corners : ndarray, shape (n_corners, d), float64 — rad/Å.

    Raises
    ------
    ValueError
        For an unknown kind or a cell that does not fit it.
    """
    c = _cell(cell_A)
    b = _reciprocal(c)
    d = c.shape[0]
    if kind == "chain":
        if d != 1:
            raise ValueError(f"kind 'chain' needs a 1-D cell, got {c.shape}")
        return ["Γ", "X"], np.array([[0.0], 0.5 * b[0]])
    if d != 2:
        raise ValueError(f"kind {kind!r} needs a 2-D cell, got {c.shape}")
    if kind == "hexagonal":
        if not np.isclose(np.linalg.norm(b[0]), np.linalg.norm(b[1]), rtol=1e-3):
            raise ValueError("hexagonal path needs |a1| = |a2|")
        cosang = b[0] @ b[1] / (np.linalg.norm(b[0]) * np.linalg.norm(b[1]))
        g = b[1] if cosang > 0 else b[0] + b[1]  # the neighbour of b1 at 60°
        if not np.isclose(abs(cosang), 0.5, atol=1e-3):
            raise ValueError("hexagonal path needs a 60° or 120° angle between a1 and a2")
        return ["Γ", "M", "K", "Γ"], np.array([[0.0, 0.0], 0.5 * b[0], (b[0] + g) / 3, [0.0, 0.0]])
    if kind == "rectangular":
        if not np.isclose(c[0] @ c[1], 0.0, atol=1e-6 * np.abs(c).max() ** 2):
            raise ValueError("rectangular path needs orthogonal a1, a2")
        return ["Γ", "X", "S", "Y", "Γ"], np.array(
            [[0.0, 0.0], 0.5 * b[0], 0.5 * (b[0] + b[1]), 0.5 * b[1], [0.0, 0.0]]
        )
    raise ValueError(f"kind must be 'chain', 'hexagonal' or 'rectangular', got {kind!r}")


@dataclass(frozen=True)
class DispersionResult:
    """Phonon frequencies on the supercell's q grid and along a high-symmetry path.

    Attributes
    ----------
    q : ndarray, shape (n_q, d) — allowed wave vectors, rad/Å.
    frequencies_THz : ndarray, shape (n_q, n_branches) — ν per q, ascending.
    path_index : ndarray, shape (n_path,), int — rows of ``q`` lying on the path
        (after folding by reciprocal lattice vectors), ordered along it.
    path_distance : ndarray, shape (n_path,) — position along the path, rad/Å.
    labels : list of str; label_distance : ndarray — corner labels and their positions.
    mean_branch_THz : ndarray, shape (n_branches,) — mean of every (sorted) branch over
        the path points other than Γ.
    """

    q: np.ndarray
    frequencies_THz: np.ndarray
    path_index: np.ndarray
    path_distance: np.ndarray
    labels: list[str]
    label_distance: np.ndarray
    mean_branch_THz: np.ndarray


def _on_path(
    q: np.ndarray, corners: np.ndarray, b: np.ndarray, tol: float
) -> tuple[np.ndarray, np.ndarray]:
    d = q.shape[1]
    shifts = np.stack(
        np.meshgrid(*[np.arange(-2, 3)] * d, indexing="ij"), axis=-1
    ).reshape(-1, d) @ b
    seg_start = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(corners, axis=0), axis=1))])
    idx, dist = [], []
    for i, qi in enumerate(q):
        images = qi[None] + shifts
        best = None
        for k in range(len(corners) - 1):
            p0, p1 = corners[k], corners[k + 1]
            seg = p1 - p0
            length = float(np.linalg.norm(seg))
            t = np.clip((images - p0) @ seg / length**2, 0.0, 1.0)
            off = np.linalg.norm(images - (p0 + t[:, None] * seg), axis=1)
            j = int(np.argmin(off))
            if off[j] < tol:
                s = seg_start[k] + t[j] * length
                best = s if best is None else min(best, s)
        if best is not None:
            idx.append(i)
            dist.append(best)
    order = np.argsort(dist, kind="stable")
    return np.asarray(idx, dtype=np.int64)[order], np.asarray(dist)[order]


def dispersion(
    g_A2: ArrayLike,
    sites_A: ArrayLike,
    cell_A: ArrayLike,
    basis_A: ArrayLike,
    supercell: tuple[int, ...],
    masses_amu: ArrayLike,
    temperature_K: float,
    *,
    path: str = "hexagonal",
    tol_A: float = 0.3,
    n_states: int | None = None,
    noise_variance_A2: float = 0.0,
) -> DispersionResult:
    """Phonon frequencies from a Green's tensor: eq. (5) → eq. (6) → ν(q) and branch means.

    Parameters
    ----------
    g_A2 : array_like, shape (n_atoms d, n_atoms d) — Green's tensor (eq. 2), Å².
    sites_A : array_like, shape (n_atoms, d) — equilibrium sites, Å; a periodic supercell
        of ``supercell`` primitive cells.
    cell_A, basis_A : primitive vectors (rows) and basis, Å (:func:`assign_cells`).
    supercell : tuple of d ints — primitive cells along each primitive vector.
    masses_amu : array_like, shape (n_basis,) — mass per sublattice, amu.
    temperature_K : float — K.
    path : str — see :func:`high_symmetry_path`.
    tol_A : float — site assignment tolerance, Å.
    n_states : int, optional — states behind G (``greens_tensor(..., ddof=1)``): unbias
        the inverse covariance (:func:`dynamical_matrix`); None for an exact G.
    noise_variance_A2 : float — variance per component of the position measurement
        error, Å² (e.g. the ⟨u²⟩ found on coherent data). White, site-independent errors
        add this constant to every eigenvalue of ⟨ũũ†⟩(q), which lowers the stiffest
        modes most; it is subtracted from the diagonal of G before eq. (5). 0: none.

    Returns
    -------
    DispersionResult
    """
    s = np.atleast_2d(np.asarray(sites_A, dtype=np.float64))
    c = _cell(cell_A)
    basis = np.asarray(basis_A, dtype=np.float64).reshape(-1, c.shape[0])
    sub, _ = assign_cells(s, c, basis, tol_A=tol_A)
    q = supercell_q(c, supercell)
    if not noise_variance_A2 >= 0:
        raise ValueError(f"noise_variance_A2 must be >= 0 Å², got {noise_variance_A2!r}")
    g = np.asarray(g_A2, dtype=np.float64)
    if noise_variance_A2:
        g = g - noise_variance_A2 * np.eye(len(g))
    cov = fourier_covariance(g, s, sub, q, n_basis=len(basis))
    frac2 = 2 * (q @ c.T) / (2 * np.pi)  # 2q in units of the reciprocal vectors
    real = np.all(np.isclose(frac2, np.rint(frac2), atol=1e-9), axis=1)
    dyn = dynamical_matrix(cov, masses_amu, temperature_K, n_states=n_states, real_q=real)
    freq = frequencies_THz(dyn)
    labels, corners = high_symmetry_path(path, c)
    b = _reciprocal(c)
    tol = 1e-6 * float(np.linalg.norm(b, axis=1).min())
    pidx, pdist = _on_path(q, corners, b, tol)
    label_d = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(corners, axis=0), axis=1))])
    not_gamma = np.linalg.norm(q[pidx], axis=1) > tol
    if not not_gamma.any():
        raise ValueError(f"supercell {supercell} has no q point on the {path} path besides Γ")
    mean = freq[pidx[not_gamma]].mean(axis=0)
    return DispersionResult(q=q, frequencies_THz=freq, path_index=pidx, path_distance=pdist,
                            labels=labels, label_distance=label_d, mean_branch_THz=mean)


def periodic_cut(
    sites_A: ArrayLike,
    cell_A: ArrayLike,
    basis_A: ArrayLike,
    n_cells: tuple[int, ...],
    *,
    tol_A: float = 0.3,
) -> np.ndarray:
    """The sites of a block of ``n_cells`` whole primitive cells, nearest the field's centre.

    Eqs. (5)–(6) need displacements on a periodic supercell, but a reconstructed field
    is a cut of a larger crystal (any shape). This picks the parallelogram block of
    n_1 × n_2 primitive cells with every basis site present whose centre is nearest the
    centre of the field; :func:`dispersion` then treats the block as its periodic
    supercell. The cut is not periodic: ũ(q) on the block's q grid is the transform of
    the field times a rectangular window, so modes of other q (mostly the strong
    long-wavelength acoustic ones) leak in and lower the frequencies;
    :func:`detrend_greens` removes most of that leakage (measured on hBN with the
    analytic G: 4 × 4 cells cut from an 8 × 5 orthogonal supercell give mean branches
    0.81–0.93 × the model's without, 0.88–1.11 × with detrending).

    Parameters
    ----------
    sites_A : array_like, shape (n_atoms, d) — equilibrium sites of the field, Å.
    cell_A, basis_A : primitive vectors (rows) and basis, Å (:func:`assign_cells`).
    n_cells : tuple of d ints — cells along each primitive vector.
    tol_A : float — site assignment tolerance, Å.

    Returns
    -------
    ndarray of int64, shape (n_basis · Π n_cells,) — indices into ``sites_A``, ascending.

    Raises
    ------
    ValueError
        If no such block is complete in the field (the message gives the field's extent
        in cells).
    """
    c = _cell(cell_A)
    basis = np.asarray(basis_A, dtype=np.float64).reshape(-1, c.shape[0])
    n = tuple(int(v) for v in n_cells)
    if len(n) != c.shape[0] or min(n) < 1:
        raise ValueError(f"n_cells must hold {c.shape[0]} positive ints, got {n_cells!r}")
    sub, idx = assign_cells(sites_A, c, basis, tol_A=tol_A)
    nb = len(basis)
    lo, hi = idx.min(axis=0), idx.max(axis=0)
    present = np.zeros(tuple(hi - lo + 1) + (nb,), dtype=bool)
    present[tuple((idx - lo).T) + (sub,)] = True
    full = present.all(axis=-1)  # cell holds every basis site
    ranges = [range(m - k + 1) for m, k in zip(full.shape, n, strict=True)]
    starts = np.array([st for st in itertools.product(*ranges)
                       if full[tuple(slice(a, a + k) for a, k in zip(st, n, strict=True))].all()],
                      dtype=np.int64).reshape(-1, len(n))
    if len(starts) == 0:
        raise ValueError(f"no complete block of {n} cells in the field, which spans cells "
                         f"{lo.tolist()}…{hi.tolist()}")
    centre = (idx - lo).mean(axis=0)
    best = starts[np.argmin(np.linalg.norm(starts + (np.array(n) - 1) / 2 - centre, axis=1))]
    rel = idx - lo - best
    inside = np.all((rel >= 0) & (rel < np.array(n)), axis=1)
    return np.flatnonzero(inside).astype(np.int64)


def detrend_greens(g_A2: ArrayLike, sites_A: ArrayLike, *, order: int = 1) -> np.ndarray:
    """G of the displacements with each state's uniform translation (and linear strain) removed.

    ``G' = P G P`` with P the projector, per component, off the polynomials of the site
    coordinates up to ``order`` (0: the block's mean displacement; 1: also linear
    gradients). For a block cut from a larger crystal (:func:`periodic_cut`) these carry
    the phonons longer than the block, which leak into every q of its grid; removing
    them is our choice of leakage control (a taper window lowered the frequencies
    further in our test). It also removes the q = 0 translation of the block.

    Parameters
    ----------
    g_A2 : array_like, shape (n d, n d) — Green's tensor of the block's sites, Å².
    sites_A : array_like, shape (n, d) — their equilibrium positions, Å.
    order : int — 0 or 1.

    Returns
    -------
    ndarray, shape (n d, n d), float64 — Å².

    Raises
    ------
    ValueError
        If ``order`` is not 0 or 1 or the shapes disagree.
    """
    s = np.atleast_2d(np.asarray(sites_A, dtype=np.float64))
    g = np.asarray(g_A2, dtype=np.float64)
    n, d = s.shape
    if order not in (0, 1):
        raise ValueError(f"order must be 0 or 1, got {order!r}")
    if g.shape != (n * d, n * d):
        raise ValueError(f"G has shape {g.shape}, expected {(n * d,) * 2} for {n} sites")
    x = np.ones((n, 1)) if order == 0 else np.concatenate([np.ones((n, 1)), s - s.mean(axis=0)], axis=1)
    p = np.eye(n) - x @ np.linalg.pinv(x)
    pf = np.kron(p, np.eye(d))
    return pf @ np.nan_to_num(g) @ pf
