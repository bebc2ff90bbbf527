"""Statistics of τ(r, k) maps: dynamic domain size, log-normal τ distributions, τ vs k_r.

* **Dynamic domain size ξ_τ.** Regions of a supercooled liquid that relax together
  share a τ. The spatial autocorrelation of a τ map (of ln τ, mean removed) falls off
  over the size of those regions; a 2D Gaussian fitted to its central peak gives ξ_τ as
  its FWHM (Zhang et al. 2018; Huang & Voyles). The autocorrelation is computed by FFT
  with zero padding (no wrap-around) and NaN-aware: missing pixels (failed fits) are
  masked and every lag is normalised by the number of pixel pairs that overlap there.
* **τ distributions.** τ of the domains is log-normally distributed; the fit per k_φ
  uses :meth:`scipy.stats.lognorm.fit` with ``floc=0`` (then scale = median τ and
  shape = σ of ln τ).
* **τ vs k_r.** The median τ per k_r bin of a τ(r, k_r, k_φ) hypercube.

References
----------
Huang & Voyles, 5D-STEM k-resolved ECM (``ARCHITECTURE.md`` §3): histograms with
log-normal fits per k_φ, median τ vs k_r, dynamic domain size from the spatial
autocorrelation of τ maps (2D Gaussian FWHM).
P. Zhang, J. J. Maldonis, Z. Liu, J. Schroers, P. M. Voyles, Nat. Commun. 9, 1129 (2018)
— spatially heterogeneous dynamics in a metallic glass forming liquid imaged by ECM.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import fft, optimize, stats

__all__ = [
    "DomainSize",
    "LognormalFit",
    "TauVsKr",
    "domain_size",
    "lognormal_fit",
    "lognormal_fits_per_phi",
    "median_tau_vs_k_r",
    "spatial_autocorrelation",
    "tau_histograms",
]

#: FWHM of a Gaussian in units of its σ, 2·√(2·ln 2).
FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))


def _as_maps(tau: np.ndarray) -> np.ndarray:
    tau = np.asarray(tau, dtype=np.float64)
    if tau.ndim == 2:
        tau = tau[..., None]
    if tau.ndim != 3 or tau.shape[0] < 3 or tau.shape[1] < 3:
        raise ValueError(f"tau must be (ny, nx) or (ny, nx, n_maps) with ny, nx >= 3, got {tau.shape}")
    return tau


def spatial_autocorrelation(
    tau: np.ndarray, *, log: bool = True, min_overlap: int = 10
) -> np.ndarray:
    """Normalised spatial autocorrelation of τ maps, averaged over maps, NaN-aware.

    C(Δ) = Σ_p x(p)·x(p + Δ) / N(Δ) / [Σ_p x(p)² / N(0)], with x = ln τ − ⟨ln τ⟩ over
    the finite pixels of each map, and N(Δ) the number of finite pixel pairs at lag Δ.

    Parameters
    ----------
    tau : array_like, shape (ny, nx) or (ny, nx, n_maps), float
        τ maps (s); NaN, ±inf and (with ``log``) τ ≤ 0 are treated as missing. Several
        maps (e.g. one per k_φ bin) are averaged lag by lag.
    log : bool
        Correlate ln τ (default) or τ itself.
    min_overlap : int
        Lags with fewer finite pixel pairs (summed over maps) are NaN.

    Returns
    -------
    ndarray, shape (2·ny − 1, 2·nx − 1), float64
        C at lags (Δy, Δx) = (i − ny + 1, j − nx + 1); C = 1 at the centre.

    Raises
    ------
    ValueError
        For a map smaller than 3×3, or maps with fewer than two finite, varying pixels.
    """
    maps = _as_maps(tau)
    ny, nx, n = maps.shape
    shape = (2 * ny - 1, 2 * nx - 1)
    num = np.zeros(shape)
    den = np.zeros(shape)
    used = 0
    for b in range(n):
        x = maps[..., b]
        with np.errstate(invalid="ignore", divide="ignore"):
            x = np.log(x) if log else x.copy()
        good = np.isfinite(x)
        if good.sum() < 2:
            continue
        x = np.where(good, x - x[good].mean(), 0.0)
        var = float((x * x).sum() / good.sum())
        if var <= 0:
            continue
        fx = fft.rfft2(x, s=shape)
        fm = fft.rfft2(good.astype(np.float64), s=shape)
        num += fft.irfft2(fx * fx.conj(), s=shape) / var
        den += fft.irfft2(fm * fm.conj(), s=shape)
        used += 1
    if used == 0:
        raise ValueError("no τ map has two or more finite, varying pixels")
    den = np.rint(den)  # pair counts are integers; removes FFT round-off
    with np.errstate(invalid="ignore", divide="ignore"):
        c = np.where(den >= min_overlap, num / den, np.nan)
    return fft.fftshift(c)


def _gauss2d(xy: tuple[np.ndarray, np.ndarray], amp: float, sy: float, sx: float, base: float) -> np.ndarray:
    y, x = xy
    return amp * np.exp(-0.5 * ((y / sy) ** 2 + (x / sx) ** 2)) + base


@dataclass(frozen=True)
class DomainSize:
    """Dynamic domain size from a 2D Gaussian fit to the τ-map autocorrelation.

    Attributes
    ----------
    fwhm : float
        ξ_τ = √(FWHM_y·FWHM_x), scan steps.
    fwhm_err : float
        1σ uncertainty of ``fwhm`` from the fit covariance, scan steps (an underestimate:
        neighbouring lags are correlated).
    fwhm_yx : tuple of float
        (FWHM_y, FWHM_x), scan steps.
    fwhm_nm, fwhm_err_nm : float or None
        The same in nm (None without ``scan_step_nm``).
    amplitude, baseline : float
        Fitted peak height and constant offset of C.
    fit_radius : int
        Half-size of the fitted window, scan steps.
    autocorrelation : ndarray, shape (2·ny − 1, 2·nx − 1), float64
        The autocorrelation that was fitted.
    """

    fwhm: float
    fwhm_err: float
    fwhm_yx: tuple[float, float]
    fwhm_nm: float | None
    fwhm_err_nm: float | None
    amplitude: float
    baseline: float
    fit_radius: int
    autocorrelation: np.ndarray


def domain_size(
    tau: np.ndarray,
    *,
    scan_step_nm: float | None = None,
    fit_radius: int | None = None,
    log: bool = True,
) -> DomainSize:
    """Dynamic domain size ξ_τ: FWHM of a 2D Gaussian fitted to the τ autocorrelation.

    Parameters
    ----------
    tau : array_like, shape (ny, nx) or (ny, nx, n_maps), float
        τ maps, s (NaN for failed fits); several maps are averaged in the
        autocorrelation (:func:`spatial_autocorrelation`).
    scan_step_nm : float, optional
        Scan step, nm, to give ξ_τ in nm.
    fit_radius : int, optional
        Half-size of the square window of lags fitted, scan steps; default three times
        the lag where the radially averaged C first drops below 1/2, at least 2, at
        most a quarter of the map.
    log : bool
        Correlate ln τ (default) or τ.

    Returns
    -------
    DomainSize

    Raises
    ------
    ValueError
        For bad maps (see :func:`spatial_autocorrelation`), a non-positive
        ``scan_step_nm`` or ``fit_radius``.
    RuntimeError
        If the Gaussian fit does not converge.
    """
    if scan_step_nm is not None and not scan_step_nm > 0:
        raise ValueError(f"scan_step_nm must be > 0 nm, got {scan_step_nm!r}")
    c = spatial_autocorrelation(tau, log=log)
    cy, cx = (s // 2 for s in c.shape)
    lag_y, lag_x = np.mgrid[-cy : cy + 1, -cx : cx + 1]
    if fit_radius is None:
        r = np.rint(np.hypot(lag_y, lag_x)).astype(int)
        ok = np.isfinite(c)
        prof = np.bincount(r[ok], c[ok]) / np.maximum(np.bincount(r[ok]), 1)
        below = np.flatnonzero(prof < 0.5)
        half = int(below[0]) if below.size else len(prof)
        fit_radius = int(np.clip(3 * half, 2, max(2, min(cy, cx) // 2)))
    if int(fit_radius) != fit_radius or fit_radius < 1:
        raise ValueError(f"fit_radius must be a positive integer, got {fit_radius!r}")
    win = (np.abs(lag_y) <= fit_radius) & (np.abs(lag_x) <= fit_radius) & np.isfinite(c)
    y, x, z = lag_y[win].astype(float), lag_x[win].astype(float), c[win]
    try:
        popt, pcov = optimize.curve_fit(
            _gauss2d, (y, x), z, p0=(1.0, max(fit_radius / 3, 0.5), max(fit_radius / 3, 0.5), 0.0),
            bounds=((0.0, 1e-3, 1e-3, -1.0), (2.0, 10.0 * fit_radius, 10.0 * fit_radius, 1.0)),
        )
    except (RuntimeError, optimize.OptimizeWarning) as err:
        raise RuntimeError(f"2D Gaussian fit of the τ autocorrelation failed: {err}") from err
    amp, sy, sx, base = (float(v) for v in popt)
    perr = np.sqrt(np.clip(np.diag(pcov), 0, None))
    fy, fx = FWHM_PER_SIGMA * sy, FWHM_PER_SIGMA * sx
    fwhm = math.sqrt(fy * fx)
    # ξ = k·√(σy·σx): relative error ½·√((δσy/σy)² + (δσx/σx)²) (independent errors).
    rel = 0.5 * math.hypot(perr[1] / sy, perr[2] / sx)
    step = None if scan_step_nm is None else float(scan_step_nm)
    return DomainSize(
        fwhm=fwhm,
        fwhm_err=fwhm * rel,
        fwhm_yx=(fy, fx),
        fwhm_nm=None if step is None else fwhm * step,
        fwhm_err_nm=None if step is None else fwhm * rel * step,
        amplitude=amp,
        baseline=base,
        fit_radius=int(fit_radius),
        autocorrelation=c,
    )


@dataclass(frozen=True)
class LognormalFit:
    """Log-normal fit of a τ distribution (scipy.stats.lognorm with loc = 0).

    Attributes
    ----------
    median : float
        exp(μ), the median τ, s (lognorm ``scale``).
    sigma : float
        σ of ln τ (lognorm shape ``s``).
    median_err, sigma_err : float
        Asymptotic 1σ errors of the maximum-likelihood estimates: median·σ/√n and σ/√(2n).
    n : int
        Number of finite, positive τ values fitted.
    """

    median: float
    sigma: float
    median_err: float
    sigma_err: float
    n: int


def lognormal_fit(tau: np.ndarray) -> LognormalFit:
    """Maximum-likelihood log-normal fit of τ values (any shape; NaN and τ ≤ 0 ignored).

    Raises
    ------
    ValueError
        With fewer than two finite, positive, distinct values.
    """
    v = np.asarray(tau, dtype=np.float64).ravel()
    v = v[np.isfinite(v) & (v > 0)]
    if v.size < 2 or np.ptp(v) == 0:
        raise ValueError(f"need at least two finite, positive, distinct τ values, got {v.size}")
    s, _, scale = stats.lognorm.fit(v, floc=0)
    n = int(v.size)
    return LognormalFit(
        median=float(scale),
        sigma=float(s),
        median_err=float(scale * s / math.sqrt(n)),
        sigma_err=float(s / math.sqrt(2 * n)),
        n=n,
    )


def lognormal_fits_per_phi(tau: np.ndarray) -> list[LognormalFit]:
    """One :func:`lognormal_fit` per k_φ bin of ``tau`` (shape (..., n_phi)), in bin order."""
    tau = np.asarray(tau, dtype=np.float64)
    if tau.ndim < 1:
        raise ValueError(f"tau must have a trailing k_φ axis, got shape {tau.shape}")
    return [lognormal_fit(tau[..., b]) for b in range(tau.shape[-1])]


def tau_histograms(
    tau: np.ndarray, *, bins: int = 30, tau_range: tuple[float, float] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Histograms of τ per k_φ bin on log-spaced bins.

    Parameters
    ----------
    tau : array_like, shape (..., n_phi), float
        τ values, s; NaN and τ ≤ 0 are skipped.
    bins : int
        Number of histogram bins (≥ 1).
    tau_range : tuple of float, optional
        (τ_min, τ_max), s (> 0); default the finite positive range of ``tau``.

    Returns
    -------
    counts : ndarray, shape (n_phi, bins), int64
    edges : ndarray, shape (bins + 1,), float64
        Log-spaced bin edges, s.

    Raises
    ------
    ValueError
        For ``bins`` < 1, a bad ``tau_range`` or no finite positive τ.
    """
    tau = np.asarray(tau, dtype=np.float64)
    if int(bins) != bins or bins < 1:
        raise ValueError(f"bins must be a positive integer, got {bins!r}")
    good = np.isfinite(tau) & (tau > 0)
    if tau_range is None:
        if not good.any():
            raise ValueError("tau has no finite positive value")
        tau_range = (float(tau[good].min()), float(tau[good].max()))
    lo, hi = tau_range
    if not 0 < lo < hi:
        if lo == hi and lo > 0:
            lo, hi = lo / 1.01, hi * 1.01
        else:
            raise ValueError(f"tau_range must satisfy 0 < τ_min < τ_max, got {tau_range!r}")
    edges = np.geomspace(lo, hi, int(bins) + 1)
    flat = tau.reshape(-1, tau.shape[-1])
    counts = np.stack([np.histogram(col[np.isfinite(col) & (col > 0)], edges)[0] for col in flat.T])
    return counts.astype(np.int64), edges


@dataclass(frozen=True)
class TauVsKr:
    """Median τ per k_r bin with its quartiles.

    Attributes
    ----------
    median, q25, q75 : ndarray, shape (n_r,), float64
        Median and quartiles of τ over scan positions and k_φ, s (NaN for a bin with
        no finite τ).
    n : ndarray, shape (n_r,), int64
        Finite τ values per k_r bin.
    """

    median: np.ndarray
    q25: np.ndarray
    q75: np.ndarray
    n: np.ndarray


def median_tau_vs_k_r(tau: np.ndarray, *, k_r_axis: int = -2) -> TauVsKr:
    """Median τ vs k_r of a τ hypercube.

    Parameters
    ----------
    tau : array_like, float
        τ(r, k) hypercube, e.g. shape (ny, nx, n_r, n_phi), s; NaN for failed fits.
    k_r_axis : int
        The k_r axis (default −2, i.e. (…, k_r, k_φ)).

    Returns
    -------
    TauVsKr

    Raises
    ------
    ValueError
        If ``k_r_axis`` is not an axis of ``tau``.
    """
    tau = np.asarray(tau, dtype=np.float64)
    if not -tau.ndim <= k_r_axis < tau.ndim:
        raise ValueError(f"k_r_axis {k_r_axis!r} is not an axis of tau with shape {tau.shape}")
    per_kr = np.moveaxis(tau, k_r_axis, 0).reshape(tau.shape[k_r_axis], -1)
    n = np.isfinite(per_kr).sum(axis=1).astype(np.int64)
    q25, med, q75 = _percentiles_rowwise(per_kr)
    return TauVsKr(median=med, q25=q25, q75=q75, n=n)


def _percentiles_rowwise(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    out = np.full((3, rows.shape[0]), np.nan)
    for i, row in enumerate(rows):
        row = row[np.isfinite(row)]
        if row.size:
            out[:, i] = np.percentile(row, [25, 50, 75])
    return out[0], out[1], out[2]
