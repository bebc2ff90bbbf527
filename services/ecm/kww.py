"""Kohlrausch–Williams–Watts (stretched-exponential) fits of g2, one per pixel.

k-resolved electron correlation microscopy (Huang & Voyles, 5D-STEM ECM) fits the
intensity autocorrelation of every (scan position, k-pixel) with

    g2(Δt) = 1 + A·exp(−2 (Δt/τ)^β),

the Siegert form of a stretched-exponential field correlation g1 = exp(−(Δt/τ)^β): τ is
the structural relaxation time, β the stretching exponent (β < 1 for the heterogeneous
dynamics of a supercooled liquid), A the speckle contrast.

:func:`fit_kww` runs a Levenberg–Marquardt least-squares fit of all pixels at once —
every pixel its own parameters, damping and convergence; the 3 × 3 normal equations of
all active pixels are solved as one batch — in chunks of pixels. Parameters are
(A, ln τ, β), so τ stays positive and steps in τ are relative. The start is a fast
linearised estimate per pixel: A from the first lags, then ln(−ln((g2 − 1)/A)/2) =
β ln Δt − β ln τ by least squares over the lags where the normalised decay lies between
0.05 and 0.95 (τ from the 1/e² crossing and β = 1 where that leaves fewer than two
lags). Uncertainties are the square roots of the diagonal of the covariance
(JᵀWJ)⁻¹, scaled by the reduced χ² unless ``absolute_sigma`` (scipy ``curve_fit``'s
convention); σ_τ = τ·σ_lnτ.

Lag 0 never enters a fit (it carries the shot noise of counting, not the dynamics), nor
do non-finite g2 values.

References
----------
L. Huang, P. M. Voyles et al., k-resolved electron correlation microscopy (5D-STEM).
R. Kohlrausch, Ann. Phys. 167, 179 (1854); G. Williams, D. C. Watts, Trans. Faraday
Soc. 66, 80 (1970).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .finite_run import FiniteRunKernel

__all__ = ["BETA_RANGE", "KWWFlag", "KWWResult", "fit_kww", "kww_g2"]

#: Accepted stretching exponents (lower bound exclusive): outside, BETA_OUT_OF_RANGE.
BETA_RANGE = (0.1, 2.0)
#: Pixels fitted together.
DEFAULT_CHUNK = 8192


class KWWFlag(enum.IntFlag):
    """Why a fit is not to be trusted (0 = good fit); flags combine bitwise."""

    OK = 0
    #: Levenberg–Marquardt stopped at ``max_iter`` or ran into non-finite values.
    NOT_CONVERGED = 1
    #: τ below the shortest or above the longest lag fitted: extrapolated, not measured.
    TAU_OUT_OF_RANGE = 2
    #: β ≤ 0.1 or β > 2.
    BETA_OUT_OF_RANGE = 4
    #: Fewer than four finite g2 values at lags > 0: nothing fitted, parameters NaN.
    TOO_FEW_POINTS = 8
    #: A ≤ 0: no decaying correlation (no speckle contrast, or no counts).
    NO_CONTRAST = 16


@dataclass(frozen=True)
class KWWResult:
    """Fitted KWW parameters, arrays of the pixel shape of the g2 given.

    Attributes
    ----------
    tau : ndarray, float64 — relaxation time τ in s.
    beta : ndarray, float64 — stretching exponent β.
    A : ndarray, float64 — contrast A.
    sigma_tau, sigma_beta, sigma_A : ndarray, float64 — one-standard-deviation
        uncertainties (s, 1, 1).
    flags : ndarray, int64 — :class:`KWWFlag` bits, 0 for a good fit.
    chi2_reduced : ndarray, float64 — Σ r²/(n − 3), r = (g2 − model)/σ (σ = 1 when no
        sigma is given): the fit quality.
    n_points : ndarray, int64 — lags fitted.
    n_iter : ndarray, int64 — Levenberg–Marquardt iterations.
    """

    tau: np.ndarray
    beta: np.ndarray
    A: np.ndarray
    sigma_tau: np.ndarray
    sigma_beta: np.ndarray
    sigma_A: np.ndarray
    flags: np.ndarray
    chi2_reduced: np.ndarray
    n_points: np.ndarray
    n_iter: np.ndarray

    @property
    def good(self) -> np.ndarray:
        """True where no flag is set."""
        return self.flags == 0


def kww_g2(
    dt: np.ndarray, tau: float | np.ndarray, beta: float | np.ndarray, A: float | np.ndarray,
    baseline: float = 1.0,
) -> np.ndarray:  # fmt: skip
    """The model g2 = baseline + A·exp(−2 (Δt/τ)^β) (Δt and τ in the same unit)."""
    dt = np.asarray(dt, dtype=np.float64)
    return baseline + np.asarray(A) * np.exp(-2.0 * (dt / np.asarray(tau)) ** np.asarray(beta))


def _model_and_jacobian(
    t: np.ndarray, A: np.ndarray, lntau: np.ndarray, beta: np.ndarray, baseline: float, jac: bool = True
) -> tuple[np.ndarray, np.ndarray | None]:
    """Model (n, m) and Jacobian (n, m, 3) wrt (A, ln τ, β) at lags t (m,) for n pixels
    (None instead of the Jacobian when not ``jac``)."""
    logt = np.log(t)[None, :]
    x = logt - lntau[:, None]  # ln(t/τ)
    s = np.exp(beta[:, None] * x)  # (t/τ)^β
    e = np.exp(-2.0 * s)
    f = baseline + A[:, None] * e
    if not jac:
        return f, None
    J = np.empty((*f.shape, 3))
    J[..., 0] = e
    J[..., 1] = 2.0 * A[:, None] * beta[:, None] * s * e
    J[..., 2] = -2.0 * A[:, None] * s * x * e
    return f, J


def _initial_guess(
    t: np.ndarray, y: np.ndarray, w: np.ndarray, baseline: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Linearised start (A, ln τ, β) for every pixel; y (n, m), w (n, m) 0 where unused."""
    _n, _m = y.shape
    valid = w > 0
    d = np.where(valid, y - baseline, np.nan)
    # contrast: mean of the first (up to) three valid lags
    first = np.cumsum(valid, axis=1) <= 3
    with np.errstate(invalid="ignore"):
        A0 = np.nanmean(np.where(first & valid, d, np.nan), axis=1)
        dmax = np.nanmax(d, axis=1)
    A0 = np.where(np.isfinite(A0) & (A0 > 0), A0, np.where(dmax > 0, dmax, 1e-3))
    z = d / A0[:, None]
    logt = np.log(t)[None, :]
    # regression of ln(−ln z / 2) on ln t over 0.05 < z < 0.95
    use = valid & (z > 0.05) & (z < 0.95)
    with np.errstate(invalid="ignore", divide="ignore"):
        u = np.log(-np.log(np.where(use, z, 0.5)) / 2.0)
    k = use.sum(axis=1)
    xs = np.where(use, logt, 0.0)
    us = np.where(use, u, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        xm = xs.sum(axis=1) / k
        um = us.sum(axis=1) / k
        sxx = (np.where(use, (logt - xm[:, None]) ** 2, 0.0)).sum(axis=1)
        sxu = (np.where(use, (logt - xm[:, None]) * (u - um[:, None]), 0.0)).sum(axis=1)
        slope = sxu / sxx
    beta0 = np.where((k >= 2) & np.isfinite(slope) & (slope > 0), slope, 1.0)
    beta0 = np.clip(beta0, 0.2, 1.8)
    with np.errstate(invalid="ignore", divide="ignore"):
        lntau_reg = xm - um / beta0
    # fallback: the 1/e² crossing of z (β = 1: z(τ) = e^−2), interpolated in ln t
    below = valid & (z < math.exp(-2.0))
    has = below.any(axis=1)
    j = np.argmax(below, axis=1)
    lntau_cross = np.where(has, logt[0, j], math.log(t[-1]) + 1.0)
    lntau0 = np.where((k >= 2) & np.isfinite(lntau_reg), lntau_reg, lntau_cross)
    span = math.log(t[-1] / t[0]) if t.size > 1 else 1.0
    lntau0 = np.clip(lntau0, math.log(t[0]) - span, math.log(t[-1]) + span)
    return A0, lntau0, beta0


#: ``model(A, ln τ, β, idx, jac)`` → (model (n, m), Jacobian (n, m, 3) or None if not jac).
Model = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray, bool], tuple[np.ndarray, np.ndarray | None]]


def _plain_model(t: np.ndarray, baseline: float) -> Model:
    def model(
        A: np.ndarray, lntau: np.ndarray, beta: np.ndarray, idx: np.ndarray, jac: bool = True
    ) -> tuple[np.ndarray, np.ndarray | None]:
        return _model_and_jacobian(t, A, lntau, beta, baseline, jac)

    return model


def _kernel_model(kernel: FiniteRunKernel, keep: np.ndarray, inv_pooled: np.ndarray, baseline: float) -> Model:
    """E[ĝ2] of the estimator (:mod:`.finite_run`) and its Jacobian wrt (A, ln τ, β)."""
    s = kernel.s[1:]
    logs = np.log(s)[None, :]
    m = int(keep.sum())
    K = np.concatenate([kernel.signal[keep].T, kernel.mean[keep].T], axis=1)  # (n_grid, 2m)
    K0, K = K[0], K[1:]  # s = 0: c(0)/A = 1, no τ or β dependence

    def model(
        A: np.ndarray, lntau: np.ndarray, beta: np.ndarray, idx: np.ndarray, jac: bool = True
    ) -> tuple[np.ndarray, np.ndarray | None]:
        x = logs - lntau[:, None]
        sb = np.exp(beta[:, None] * x)
        e = np.exp(-2.0 * sb)
        ip = inv_pooled[idx][:, None]

        def apply(v: np.ndarray, const: bool) -> np.ndarray:
            out = v @ K
            if const:
                out = out + K0
            return out[:, :m] - ip * out[:, m:]

        F = apply(e, True)
        if not jac:
            return baseline + A[:, None] * F, None
        J = np.empty((*F.shape, 3))
        J[..., 0] = F
        J[..., 1] = A[:, None] * apply(2.0 * beta[:, None] * sb * e, False)
        J[..., 2] = A[:, None] * apply(-2.0 * sb * x * e, False)
        return baseline + A[:, None] * F, J

    return model


def _fit_chunk(
    t: np.ndarray,
    y: np.ndarray,
    w: np.ndarray,
    model: Model,
    baseline: float,
    max_iter: int,
    ftol: float,
    xtol: float,
    fixed_A: np.ndarray | None = None,
    start: np.ndarray | None = None,
) -> tuple[np.ndarray, ...]:
    """Batched Levenberg–Marquardt on y (n, m) with weights w (1/σ², 0 = unused).

    ``fixed_A`` (n,): A held at that value where finite (only ln τ and β fitted).
    ``start`` (n, 3): (A, ln τ, β) to start from where all three are finite (else the
    linearised estimate).
    """
    n, _m = y.shape
    y0 = np.where(w > 0, y, 0.0)
    A, lntau, beta = _initial_guess(t, y, w, baseline)
    if start is not None:
        ok = np.isfinite(start).all(axis=1)
        A = np.where(ok, start[:, 0], A)
        lntau = np.where(ok, start[:, 1], lntau)
        beta = np.where(ok, start[:, 2], beta)
    hold = np.zeros(n, bool) if fixed_A is None else np.isfinite(fixed_A)
    if hold.any():
        A = np.where(hold, fixed_A, A)

    def freeze(H: np.ndarray, g: np.ndarray | None, sel: np.ndarray) -> None:
        h = hold[sel]
        if h.any():
            H[h, 0, :] = 0.0
            H[h, :, 0] = 0.0
            H[h, 0, 0] = 1.0
            if g is not None:
                g[h, 0] = 0.0
    p = np.stack([A, lntau, beta], axis=1)
    lo = np.array([-np.inf, math.log(t[0]) - 20.0, 1e-3])
    hi = np.array([np.inf, math.log(t[-1]) + 20.0, 10.0])
    everyone = np.arange(n)

    def cost_of(p: np.ndarray, idx: np.ndarray) -> np.ndarray:
        f, _ = model(p[:, 0], p[:, 1], p[:, 2], idx, False)
        return 0.5 * (w[idx] * (y0[idx] - f) ** 2).sum(axis=1)

    lam = np.full(n, 1e-3)
    cost = cost_of(p, everyone)
    active = np.isfinite(cost)
    converged = np.zeros(n, dtype=bool)
    n_iter = np.zeros(n, dtype=np.int64)
    for _ in range(max_iter):
        idx = np.flatnonzero(active)
        if idx.size == 0:
            break
        n_iter[idx] += 1
        fi, Ji = model(p[idx, 0], p[idx, 1], p[idx, 2], idx, True)
        assert Ji is not None
        wi = w[idx]
        r = y0[idx] - fi
        JtW = Ji * wi[..., None]
        H = np.einsum("nmi,nmj->nij", JtW, Ji)
        g = np.einsum("nmi,nm->ni", JtW, r)
        freeze(H, g, idx)
        diag = np.maximum(np.einsum("nii->ni", H), 1e-300)
        Hd = H + (lam[idx, None] * diag)[:, :, None] * np.eye(3)[None]
        try:
            step = np.linalg.solve(Hd, g[..., None])[..., 0]
        except np.linalg.LinAlgError:
            step = np.stack([np.linalg.lstsq(a, b, rcond=None)[0] for a, b in zip(Hd, g)])
        p_new = np.clip(p[idx] + step, lo, hi)
        cost_new = cost_of(p_new, idx)
        better = np.isfinite(cost_new) & (cost_new <= cost[idx])
        acc = idx[better]
        rel_drop = (cost[acc] - cost_new[better]) / np.maximum(cost[acc], 1e-300)
        small_step = (np.abs(step[better]) <= xtol * (np.abs(p[acc]) + xtol)).all(axis=1)
        p[acc] = p_new[better]
        cost[acc] = cost_new[better]
        lam[acc] = np.maximum(lam[acc] / 3.0, 1e-12)
        rej = idx[~better]
        lam[rej] *= 4.0
        done = acc[(rel_drop < ftol) | small_step]
        stuck = rej[lam[rej] > 1e12]  # no step lowers the cost: at a minimum
        converged[done] = True
        converged[stuck] = True
        active[done] = False
        active[stuck] = False
    _f, J = model(p[:, 0], p[:, 1], p[:, 2], everyone, True)
    assert J is not None
    JtW = J * w[..., None]
    H = np.einsum("nmi,nmj->nij", JtW, J)
    freeze(H, None, everyone)
    return p, cost, H, converged, n_iter


def fit_kww(
    lags: np.ndarray,
    g2: np.ndarray,
    *,
    time_per_lag: float,
    sigma: np.ndarray | None = None,
    absolute_sigma: bool = False,
    baseline: float = 1.0,
    max_iter: int = 100,
    chunk: int = DEFAULT_CHUNK,
    kernel: FiniteRunKernel | None = None,
    pooled: np.ndarray | float = 1.0,
    contrast: np.ndarray | float | None = None,
    start: KWWResult | None = None,
) -> KWWResult:
    """Fit g2 = baseline + A·exp(−2 (Δt/τ)^β) to every pixel.

    Parameters
    ----------
    lags : ndarray, shape (n_lags,) — lag of each g2 row in units of ``time_per_lag``
        (frames or scan repeats, as :meth:`MultiTauCorrelator.g2` returns them); lags
        <= 0 are left out of the fit.
    g2 : ndarray, shape (n_lags,) or (n_lags, *pixel_shape), float — g2 per lag and
        pixel; non-finite values are left out.
    time_per_lag : float — seconds per unit of ``lags`` (> 0): the frame period, or the
        scan repeat period N_x·N_y/f in ECM.
    sigma : ndarray, shape of g2, optional — standard error of each g2 value (weights
        1/σ²); None weighs all lags equally.
    absolute_sigma : bool — σ are absolute (covariance not scaled by the reduced χ²).
    baseline : float — the g2 baseline (1 for an ergodic sample).
    max_iter : int — Levenberg–Marquardt iterations at most.
    chunk : int — pixels fitted together (memory ≈ 60·n_lags·chunk bytes).
    kernel : FiniteRunKernel, optional — fit what the estimator measures over a finite
        run, E[ĝ2] = baseline + A·(K_signal − K_mean/n)·exp(−2(s/τ)^β)
        (:func:`.finite_run.estimator_kernel` of the same lags), instead of the process
        g2: removes the bias toward short τ of runs that are not ≫ τ. Its lags must be
        ``lags``.
    pooled : float or ndarray of pixel_shape — n, independent speckles pooled before
        normalisation in each g2 (1: a single pixel, or per-pixel normalised curves);
        only with ``kernel``.
    contrast : float or ndarray of pixel_shape, optional — hold A at this value where
        finite (fit ln τ and β only; σ_A = 0 there): A is a property of the detector
        pixels and the speckle visibility, shared by every scan position of a (k_r, k_φ)
        bin, and fitting it per curve adds noise to τ.
    start : KWWResult, optional — an earlier fit of the same curves (same pixel shape,
        τ in s): Levenberg–Marquardt starts from its (A, τ, β) where it has no flag,
        from the linearised estimate elsewhere. A refit with ``contrast`` after a free
        fit then needs a few iterations instead of a full descent (the minimum is the
        same to the fit's tolerance).

    Returns
    -------
    KWWResult — arrays of shape pixel_shape (0-d for a single curve); τ and σ_τ in s.

    Raises
    ------
    ValueError
        On mismatched shapes, non-finite or non-increasing lags, time_per_lag <= 0 or
        sigma <= 0 (the message names the value).
    """
    lags = np.asarray(lags, dtype=np.float64)
    g2 = np.asarray(g2, dtype=np.float64)
    if lags.ndim != 1:
        raise ValueError(f"lags must be 1-D, got shape {lags.shape}")
    if g2.ndim < 1 or g2.shape[0] != lags.size:
        raise ValueError(
            f"g2 must have shape (n_lags={lags.size}, ...), got {g2.shape}"
        )
    if not np.isfinite(lags).all():
        raise ValueError(f"lags must be finite, got {float(lags[~np.isfinite(lags)][0])!r}")
    if lags.size > 1 and np.any(np.diff(lags) <= 0):
        k = int(np.flatnonzero(np.diff(lags) <= 0)[0])
        raise ValueError(
            f"lags must increase, got {float(lags[k])!r} followed by {float(lags[k + 1])!r} at index {k}"
        )
    try:
        dt = float(time_per_lag)
    except (TypeError, ValueError):
        dt = math.nan
    if not (math.isfinite(dt) and dt > 0):
        raise ValueError(f"time_per_lag must be a finite number > 0 s, got {time_per_lag!r}")
    time_per_lag = dt
    if not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"max_iter must be an int >= 1, got {max_iter!r}")
    if not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk must be an int >= 1, got {chunk!r}")
    pixel_shape = g2.shape[1:]
    n_pix = math.prod(pixel_shape)
    Y = g2.reshape(lags.size, n_pix)
    if sigma is None:
        W = np.ones_like(Y)
    else:
        sig = np.asarray(sigma, dtype=np.float64)
        if sig.shape != g2.shape:
            raise ValueError(f"sigma must have the shape of g2 {g2.shape}, got {sig.shape}")
        S = sig.reshape(lags.size, n_pix)
        bad = np.isfinite(S) & (S <= 0)
        if bad.any():
            raise ValueError(f"sigma must be > 0, got {float(S[bad][0])!r}")
        with np.errstate(divide="ignore"):
            W = np.where(np.isfinite(S), 1.0 / S**2, 0.0)
    keep = lags > 0
    if not keep.any():
        raise ValueError(f"lags must contain lags > 0 to fit, got {lags!r}")
    if kernel is not None and not np.array_equal(kernel.lags, lags):
        raise ValueError(f"kernel lags {kernel.lags!r} are not the g2 lags {lags!r}")
    inv_pooled = 1.0 / np.broadcast_to(np.asarray(pooled, np.float64), pixel_shape).reshape(n_pix)
    if not (np.isfinite(inv_pooled).all() and (inv_pooled > 0).all()):
        raise ValueError(f"pooled must be > 0 pixels, got {pooled!r}")
    fixed = (None if contrast is None
             else np.broadcast_to(np.asarray(contrast, np.float64), pixel_shape).reshape(n_pix))
    p_start = None
    if start is not None:
        if np.shape(start.tau) != pixel_shape:
            raise ValueError(f"start must be a fit of pixel shape {pixel_shape}, got {np.shape(start.tau)}")
        ok = np.asarray(start.flags).reshape(n_pix) == 0
        with np.errstate(divide="ignore", invalid="ignore"):
            p_start = np.stack([np.asarray(start.A, np.float64).reshape(n_pix),
                                np.log(np.asarray(start.tau, np.float64).reshape(n_pix) / time_per_lag),
                                np.asarray(start.beta, np.float64).reshape(n_pix)], axis=1)
        p_start[~ok] = np.nan
    t = lags[keep]
    Y = Y[keep].T  # (n_pix, m)
    W = W[keep].T
    W = np.where(np.isfinite(Y), W, 0.0)
    n_points = (W > 0).sum(axis=1)

    tau = np.full(n_pix, np.nan)
    beta = np.full(n_pix, np.nan)
    A = np.full(n_pix, np.nan)
    s_tau = np.full(n_pix, np.nan)
    s_beta = np.full(n_pix, np.nan)
    s_A = np.full(n_pix, np.nan)
    chi2 = np.full(n_pix, np.nan)
    n_iter = np.zeros(n_pix, dtype=np.int64)
    flags = np.zeros(n_pix, dtype=np.int64)
    fit = n_points >= 4
    flags[~fit] |= KWWFlag.TOO_FEW_POINTS
    idx_fit = np.flatnonzero(fit)
    for c0 in range(0, idx_fit.size, chunk):
        idx = idx_fit[c0 : c0 + chunk]
        model = (_plain_model(t, baseline) if kernel is None
                 else _kernel_model(kernel, keep, inv_pooled[idx], baseline))
        p, cost, H, converged, it = _fit_chunk(t, Y[idx], W[idx], model, baseline, max_iter, 1e-10, 1e-10,
                                               None if fixed is None else fixed[idx],
                                               None if p_start is None else p_start[idx])
        dof = np.maximum(n_points[idx] - 3, 1)
        red = 2.0 * cost / dof
        with np.errstate(invalid="ignore"):
            try:
                cov = np.linalg.inv(H)
            except np.linalg.LinAlgError:
                cov = np.linalg.pinv(H)
        if not absolute_sigma:
            cov = cov * red[:, None, None]
        var = np.einsum("nii->ni", cov)
        sd = np.sqrt(np.where(var >= 0, var, np.nan))
        A[idx] = p[:, 0]
        tau[idx] = np.exp(p[:, 1]) * time_per_lag
        beta[idx] = p[:, 2]
        s_A[idx] = sd[:, 0] if fixed is None else np.where(np.isfinite(fixed[idx]), 0.0, sd[:, 0])
        s_tau[idx] = tau[idx] * sd[:, 1]
        s_beta[idx] = sd[:, 2]
        chi2[idx] = red
        n_iter[idx] = it
        bad_fit = ~converged | ~np.isfinite(p).all(axis=1) | ~np.isfinite(cost)
        flags[idx[bad_fit]] |= KWWFlag.NOT_CONVERGED
    tmin, tmax = t[0] * time_per_lag, t[-1] * time_per_lag
    with np.errstate(invalid="ignore"):
        flags[fit & ~((tau >= tmin) & (tau <= tmax))] |= KWWFlag.TAU_OUT_OF_RANGE
        flags[fit & ~((beta > BETA_RANGE[0]) & (beta <= BETA_RANGE[1]))] |= (
            KWWFlag.BETA_OUT_OF_RANGE
        )
        flags[fit & ~(A > 0)] |= KWWFlag.NO_CONTRAST

    def shaped(a: np.ndarray) -> np.ndarray:
        return a.reshape(pixel_shape)

    return KWWResult(
        tau=shaped(tau),
        beta=shaped(beta),
        A=shaped(A),
        sigma_tau=shaped(s_tau),
        sigma_beta=shaped(s_beta),
        sigma_A=shaped(s_A),
        flags=shaped(flags),
        chi2_reduced=shaped(chi2),
        n_points=shaped(n_points),
        n_iter=shaped(n_iter),
    )
