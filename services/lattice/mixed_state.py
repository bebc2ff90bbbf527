"""Column displacements of a mixed object, free of the decomposition's unitary ambiguity.

A mixed-object reconstruction fits the patterns with ``I = Σ_m w_m |F[P · O_m]|²``
(Gladyshev et al. 2025; Thibault & Menzel, Nature 494, 68 (2013) for mixed states). The
data fix only the object's density matrix ``ρ = Σ_m w_m O_m O_m^†``: any unitary mix
``O'_m = Σ_n U_mn √(w_n/w'_m) O_n`` of the states fits equally well. For a crystal whose
frozen-phonon configuration ``n`` moves column ``i`` by ``u_i^n`` (eq. 1), to first order

``O_n(r) = O_0(r) − Σ_i u_i^n · ∇O_0(r)``  near column i,

so a mixed state ``m`` reads ``c_m O_0 − Σ_i v_i^m · ∇O_0`` with *complex* coefficients
``v_i^m = Σ_n U_mn u_i^n`` (and ``c_m = Σ_n U_mn``). A centre of mass of the phase of state
``m`` sees ``Re v`` only, scaled by ``1/c_m``: the per-state columns of a rotated but exact
decomposition scatter at random (measured on synthetic states, ``tests/unit/
test_lattice_mixed_state.py``: CSM 0.99 → 0.1 under a random complex unitary). The
invariant is

``Σ_m w_m v_i^m (v_j^m)^† = Σ_n w_n u_i^n (u_j^n)^T`` = G_ij (eq. 2, about the mean),

which is what :func:`greens_from_displacements` returns. The coefficients come from a
linear least-squares fit, per column, of every state onto ``{O_0, −∂_y O_0, −∂_x O_0}``
inside the column's Voronoi cell (:func:`column_displacements`), with ``O_0`` the
leading eigenvector of ρ (:func:`coherent_object`): the object the configurations share.
Two more functions, ``(y − y_i) O_0`` and ``(x − x_i) O_0``, take up a phase varying slowly
across the cell, which is not a displacement.
This estimator is our construction (the paper reads atoms per state); it reduces to the
per-state reading when the fit happens to return the configurations themselves.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from .atoms import _check_pixel, _check_points

__all__ = [
    "band_limit",
    "coherent_object",
    "column_displacements",
    "equivalent_configurations",
    "greens_from_displacements",
    "projected_transmission",
]


def _weights(weights: ArrayLike | None, n: int) -> np.ndarray:
    w = np.full(n, 1.0 / n) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (n,):
        raise ValueError(f"weights must have shape ({n},), got {w.shape}")
    if not np.all(np.isfinite(w)) or np.any(w < 0) or not w.sum() > 0:
        raise ValueError(f"weights must be finite, non-negative and not all zero, got {w}")
    return w / w.sum()


def projected_transmission(objects: ArrayLike) -> np.ndarray:
    """Product over slices of the transmission functions (projection approximation).

    Parameters
    ----------
    objects : array_like, shape (n_states, n_slices, H, W), complex

    Returns
    -------
    ndarray, shape (n_states, H, W), complex128

    Raises
    ------
    ValueError
        If ``objects`` is not 4-D complex, or holds NaN or inf.
    """
    obj = np.asarray(objects)
    if obj.ndim != 4 or not np.iscomplexobj(obj):
        raise ValueError(f"objects must be complex (n_states, n_slices, H, W), got {obj.dtype} {obj.shape}")
    if not np.all(np.isfinite(obj)):
        raise ValueError("objects hold NaN or inf values")
    return obj.astype(np.complex128).prod(axis=1)


def coherent_object(states: ArrayLike, weights: ArrayLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The leading eigenvector of ρ = Σ_m w_m O_m O_m^† and ρ's eigenvalues.

    Computed from the (N × N) Gram matrix of the weighted states, so the pixel count
    does not matter. The eigenvector is scaled to carry its eigenvalue's norm and given
    the global phase of the weighted mean state.

    Parameters
    ----------
    states : array_like, shape (N, H, W), complex — object states (one slice or projected).
    weights : array_like, shape (N,), optional — state weights (normalised here; equal if None).

    Returns
    -------
    o0 : ndarray, shape (H, W), complex128
    eigenvalues : ndarray, shape (N,), float64 — of ρ, descending (their sum is Σ_m w_m ‖O_m‖²).

    Raises
    ------
    ValueError
        For a wrong shape or weights.
    """
    o = np.asarray(states)
    if o.ndim != 3:
        raise ValueError(f"states must have shape (N, H, W), got {o.shape}")
    n = o.shape[0]
    w = _weights(weights, n)
    flat = o.reshape(n, -1).astype(np.complex128) * np.sqrt(w)[:, None]
    gram = flat.conj() @ flat.T
    lam, vec = np.linalg.eigh(gram)
    lam, vec = lam[::-1].clip(min=0.0), vec[:, ::-1]
    e0 = vec[:, 0] @ flat  # ρ e0 = λ0 e0, ‖e0‖² = λ0
    mean = (w[:, None] * o.reshape(n, -1)).sum(axis=0)
    overlap = np.vdot(e0, mean)
    if abs(overlap) > 0:
        e0 = e0 * (overlap / abs(overlap))
    return e0.reshape(o.shape[1:]), lam


def _mirror_spectrum(f: np.ndarray) -> np.ndarray:
    """FFT over the last two axes of ``f`` (..., H, W) mirror-extended to (..., 2H, 2W)."""
    ext = np.concatenate([f, f[..., ::-1, :]], axis=-2)
    return np.fft.fft2(np.concatenate([ext, ext[..., ::-1]], axis=-1))


def band_limit(states: ArrayLike, pixel_size_A: float, k_max_per_A: float) -> np.ndarray:
    """Object states with every spatial frequency above ``k_max_per_A`` removed.

    A ptychographic fit constrains only the object frequencies that scatter the probe onto
    the detector, ``|k| ≤ (θ_det + α)/λ`` (detector half-field θ_det, probe semi-angle α);
    what a finer object grid holds beyond is unconstrained noise, which the gradient of
    :func:`column_displacements` would amplify. Low-pass by FFT of the mirror-extended
    image (no wrap-around step at the edges) with a circular cut-off.

    Parameters
    ----------
    states : array_like, shape (..., H, W), complex
    pixel_size_A : float — Å per pixel.
    k_max_per_A : float — cut-off spatial frequency, 1/Å (no cycles·2π).

    Returns
    -------
    ndarray, shape (..., H, W), complex128

    Raises
    ------
    ValueError
        For a non-positive pixel size or cut-off.
    """
    pixel = _check_pixel(pixel_size_A)
    if not (np.isfinite(k_max_per_A) and k_max_per_A > 0):
        raise ValueError(f"k_max_per_A must be a positive number, got {k_max_per_A!r}")
    f = np.asarray(states, dtype=np.complex128)
    h, w = f.shape[-2:]
    ky = np.fft.fftfreq(2 * h, pixel)[:, None]
    kx = np.fft.fftfreq(2 * w, pixel)[None, :]
    keep = np.hypot(ky, kx) <= k_max_per_A
    return np.fft.ifft2(_mirror_spectrum(f) * keep)[..., :h, :w]


def _spectral_gradient(f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(∂_y f, ∂_x f) per pixel by FFT of the mirror-extended image (no wrap-around step)."""
    h, w = f.shape
    spec = _mirror_spectrum(f)
    ky = 2j * np.pi * np.fft.fftfreq(2 * h)[:, None]
    kx = 2j * np.pi * np.fft.fftfreq(2 * w)[None, :]
    return np.fft.ifft2(spec * ky)[:h, :w], np.fft.ifft2(spec * kx)[:h, :w]


def column_displacements(
    states: ArrayLike,
    pixel_size_A: float,
    origin_A: ArrayLike,
    sites_A: ArrayLike,
    *,
    radius_A: float,
    weights: ArrayLike | None = None,
    min_pixels: int = 6,
    k_max_per_A: float | None = None,
    ramps: bool = True,
) -> np.ndarray:
    """Complex displacement coefficients v_i^m of every column in every state.

    Parameters
    ----------
    states : array_like, shape (N, H, W), complex — object states (projected, e.g. by
        :func:`projected_transmission`).
    pixel_size_A : float — Å per pixel.
    origin_A : array_like, shape (2,) — (y, x) of pixel (0, 0), Å.
    sites_A : array_like, shape (n_sites, 2) — mean column positions (y, x), Å.
    radius_A : float — pixels of a column's Voronoi cell farther than this from its site
        are left out of its fit, Å.
    weights : array_like, shape (N,), optional — state weights (equal if None).
    min_pixels : int — a column with fewer pixels in its cell gets NaN.
    k_max_per_A : float, optional — low-pass the states to this spatial frequency first
        (:func:`band_limit`), 1/Å: the reconstruction's information limit. Measured on
        noise-free correlated hBN-1L fitted on a 0.167 Å grid: u rms 0.020 Å without,
        0.031 Å with the limit (truth 0.039 Å); LSM 0.36 → 0.72, CSM 0.88 → 0.92.
    ramps : bool — also fit ``(a · (r − r_i)) O_0`` in each cell: a phase (or amplitude)
        that varies slowly across the cell, which a state picks up where the patterns
        hardly constrain it (spatial frequencies below the probe's), and which is not a
        column displacement but leaks into ``v`` when left out. Measured on noise-free
        hBN-1L (16 × 16, 10 states, 100 + 100 passes, window 96): coherent data read 0.0145
        Å rms of false vibration without, 0.0115 Å with; correlated data CSM 0.815 → 0.837
        (u rms 0.0237 → 0.0221 Å, truth 0.0353 Å).

    Returns
    -------
    ndarray, shape (N, n_sites, 2), complex128
        ``v`` in Å (y, x), from the least-squares fit of ``O_m`` by
        ``c O_0 − v · ∇O_0 (+ (a · (r − r_i)) O_0)`` in each cell (module docstring). NaN
        for columns outside the image.

    Raises
    ------
    ValueError
        For bad shapes, a non-positive pixel size or radius.
    """
    o = np.asarray(states)
    if o.ndim != 3 or not np.iscomplexobj(o):
        raise ValueError(f"states must be complex (N, H, W), got {o.dtype} {o.shape}")
    pixel = _check_pixel(pixel_size_A)
    if not radius_A > 0:
        raise ValueError(f"radius_A must be > 0, got {radius_A!r}")
    sites = _check_points(sites_A, "sites_A")
    origin = np.asarray(origin_A, dtype=np.float64)
    n, h, w = o.shape
    if k_max_per_A is not None:
        o = band_limit(o, pixel, k_max_per_A)
    o0, _ = coherent_object(o, weights)
    gy, gx = _spectral_gradient(o0)
    yy = origin[0] + np.arange(h)[:, None] * pixel
    xx = origin[1] + np.arange(w)[None, :] * pixel
    d2 = (yy[None] - sites[:, 0, None, None]) ** 2 + (xx[None] - sites[:, 1, None, None]) ** 2
    cell, nearest = np.argmin(d2, axis=0), np.min(d2, axis=0)
    v = np.full((n, len(sites), 2), np.nan + 0j)
    n_basis = 5 if ramps else 3
    for i in range(len(sites)):
        mask = (cell == i) & (nearest < radius_A**2)
        if mask.sum() < max(int(min_pixels), n_basis):
            continue
        columns = [o0[mask], -gy[mask], -gx[mask]]
        if ramps:
            dy = np.broadcast_to(yy, (h, w))[mask] - sites[i, 0]
            dx = np.broadcast_to(xx, (h, w))[mask] - sites[i, 1]
            columns += [dy * o0[mask], dx * o0[mask]]
        coef, *_ = np.linalg.lstsq(np.stack(columns, axis=1), o[:, mask].T, rcond=None)
        v[:, i, :] = coef[1:3].T * pixel
    return v


def greens_from_displacements(v_A: ArrayLike, weights: ArrayLike | None = None) -> np.ndarray:
    """G = n/(n − 1) · Σ_m w_m Re(v^m v^m†), the rotation-invariant eq. (2).

    Parameters
    ----------
    v_A : array_like, shape (N, n_sites, d), complex — from :func:`column_displacements`.
    weights : array_like, shape (N,), optional — state weights (equal if None).

    Returns
    -------
    ndarray, shape (d n_sites, d n_sites), float64, Å²
        Blocks ordered site-major as :func:`.correlations.greens_tensor`; the factor
        n/(n − 1) with n = 1/Σw² (N for equal weights) matches its ddof = 1. NaN rows and
        columns for columns without coefficients.

    Raises
    ------
    ValueError
        For a wrong shape or weights, or fewer than two states.
    """
    v = np.asarray(v_A)
    if v.ndim != 3:
        raise ValueError(f"v_A must have shape (N, n_sites, d), got {v.shape}")
    n = v.shape[0]
    if n < 2:
        raise ValueError(f"G needs at least two states, got {n}")
    w = _weights(weights, n)
    flat = v.reshape(n, -1)
    g = np.einsum("m,mi,mj->ij", w, flat, flat.conj()).real
    n_eff = 1.0 / float(np.sum(w**2))
    return g * (n_eff / (n_eff - 1.0)) if n_eff > 1 else g


def equivalent_configurations(v_A: ArrayLike, weights: ArrayLike | None = None) -> np.ndarray:
    """Real displacements u (N, n_sites, d) with the same G as the complex v.

    The data fix G, not the configurations: these are one real set with
    ``(1/N) Σ_m u^m u^m† = Σ_m w_m Re(v^m v^m†)``, from the singular
    value decomposition of ``[√w Re v; √w Im v]``, the N largest singular directions
    (exact when that matrix has rank ≤ N, as first-order displacements of N
    configurations give; else the best rank-N approximation).
    They equal the true configurations only up to an orthogonal mix; use them for
    per-state displays and eq. (5), not as the states' own atom positions.

    Returns
    -------
    ndarray, shape (N, n_sites, d), float64, Å (NaN where v is NaN)

    Raises
    ------
    ValueError
        For a wrong shape or weights.
    """
    v = np.asarray(v_A)
    if v.ndim != 3:
        raise ValueError(f"v_A must have shape (N, n_sites, d), got {v.shape}")
    n, k, d = v.shape
    w = _weights(weights, n)
    flat = v.reshape(n, -1)
    good = np.all(np.isfinite(flat), axis=0)
    s = np.concatenate([np.sqrt(w)[:, None] * flat[:, good].real,
                        np.sqrt(w)[:, None] * flat[:, good].imag])
    _, sing, vt = np.linalg.svd(s, full_matrices=False)
    r = min(n, len(sing))
    out = np.full((n, k * d), np.nan)
    out[:, good] = 0.0
    out[:r, good] = np.sqrt(n) * sing[:r, None] * vt[:r]
    return out.reshape(n, k, d)
