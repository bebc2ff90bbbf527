"""Numerical refocusing of an exit wave: angular-spectrum propagation and focus search.

Angular spectrum (Goodman, Introduction to Fourier Optics, 3rd ed., §3.10):
φ(z) = F⁻¹[ F[φ](f) · exp(i·2π·z·(sqrt(1/λ² − |f|²) − 1/λ)) ], f the spatial frequency
of the sample grid (1 / pixel size), evanescent components dropped; the carrier
exp(i2πz/λ) is removed. The focus is where the integrated amplitude Σ|φ(z)| is
smallest — for an amplitude object (the FTH mask) defocus spreads the energy Σ|φ|²
into fringes and Σ|φ| grows (Dubois et al., Opt. Express 14, 5895 (2006)).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["angular_spectrum", "focus_search", "sharpness"]


def _check(wavelength_nm: float, pixel_size_nm: float) -> None:
    for name, v in (("wavelength_nm", wavelength_nm), ("pixel_size_nm", pixel_size_nm)):
        if not (math.isfinite(v) and v > 0):
            raise ValueError(f"{name} must be > 0, got {v!r}")


def angular_spectrum(
    exit_wave: np.ndarray, distance_nm: float, *, wavelength_nm: float, pixel_size_nm: float
) -> np.ndarray:
    """Propagate an exit wave by ``distance_nm`` (angular spectrum).

    Parameters
    ----------
    exit_wave : ndarray, shape (ny, nx), complex
        Sample-plane wave.
    distance_nm : float
        Propagation distance, nm (negative: backwards).
    wavelength_nm : float
        X-ray wavelength, nm, > 0 (e.g. 1.59 nm at the Co L3 edge).
    pixel_size_nm : float
        Sample-plane pixel, nm, > 0.

    Returns
    -------
    ndarray, shape (ny, nx), complex128

    Raises
    ------
    ValueError
        For a non-2-D wave or non-positive wavelength / pixel size.
    """
    _check(wavelength_nm, pixel_size_nm)
    w = np.asarray(exit_wave)
    if w.ndim != 2:
        raise ValueError(f"exit_wave must be 2-D, got shape {w.shape}")
    fy = np.fft.fftfreq(w.shape[0], d=pixel_size_nm)[:, None]
    fx = np.fft.fftfreq(w.shape[1], d=pixel_size_nm)[None, :]
    arg = 1.0 / wavelength_nm**2 - fy * fy - fx * fx
    prop = np.where(
        arg > 0,
        np.exp(2j * np.pi * distance_nm * (np.sqrt(np.maximum(arg, 0.0)) - 1.0 / wavelength_nm)),
        0.0,
    )
    return np.fft.ifft2(np.fft.fft2(w) * prop)


def sharpness(wave: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Focus metric: −Σ|φ| / sqrt(Σ|φ|²) over ``mask`` (larger is sharper)."""
    a = np.abs(np.asarray(wave))
    if mask is not None:
        a = a[np.asarray(mask, dtype=bool)]
    norm = float(np.sqrt(np.sum(a * a)))
    return -float(np.sum(a)) / norm if norm > 0 else 0.0


def focus_search(
    exit_wave: np.ndarray,
    *,
    wavelength_nm: float,
    pixel_size_nm: float,
    range_nm: tuple[float, float],
    n_steps: int = 41,
) -> tuple[float, np.ndarray, np.ndarray]:
    """Distance that brings the wave into focus (largest :func:`sharpness`).

    A grid search over ``n_steps`` distances in ``range_nm`` followed by a bounded
    scalar refinement (:func:`scipy.optimize.minimize_scalar`) around the best one.

    Returns
    -------
    best_nm : float
        Distance to propagate by, nm.
    distances_nm : ndarray, shape (n_steps,), float64
    metric : ndarray, shape (n_steps,), float64
        Sharpness at each grid distance.

    Raises
    ------
    ValueError
        For an empty range, ``n_steps`` < 3, or bad wavelength / pixel size.
    """
    from scipy.optimize import minimize_scalar

    _check(wavelength_nm, pixel_size_nm)
    lo, hi = (float(v) for v in range_nm)
    if not hi > lo:
        raise ValueError(f"range_nm must be (low, high) with high > low, got {range_nm!r}")
    if int(n_steps) != n_steps or n_steps < 3:
        raise ValueError(f"n_steps must be an int >= 3, got {n_steps!r}")
    zs = np.linspace(lo, hi, int(n_steps))

    def metric(z: float) -> float:
        return sharpness(
            angular_spectrum(exit_wave, z, wavelength_nm=wavelength_nm, pixel_size_nm=pixel_size_nm)
        )

    values = np.array([metric(z) for z in zs])
    k = int(np.argmax(values))
    step = zs[1] - zs[0]
    a, b = max(lo, zs[k] - step), min(hi, zs[k] + step)
    res = minimize_scalar(
        lambda z: -metric(z), bounds=(a, b), method="bounded", options={"xatol": step / 100}
    )
    best = float(res.x) if res.success and -res.fun >= values[k] else float(zs[k])
    return best, zs, values
