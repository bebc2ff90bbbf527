"""Resolution and quality measures of phase-retrieved images.

* Fourier ring correlation between two images from independent half-datasets, with the
  1/2-bit threshold (van Heel & Schatz, J. Struct. Biol. 151, 250 (2005), eq. (17)):
  the resolution is the half period 1 / (2 f) of the first ring frequency f where the
  FRC drops below the threshold.
* Phase-retrieval transfer function over repeated random starts (Chapman et al., J. Opt.
  Soc. Am. A 23, 1179 (2006)): PRTF(q) = |⟨Ψ_j(q)·e^{iθ_j}⟩_j| / sqrt(I_meas(q)), ring
  averaged, the global phases θ_j aligned to the first start.
* Kittel domain-wall profile mz(x) = a·tanh((x − x0)/δ) + b fitted across a wall
  (:func:`scipy.optimize.curve_fit`; Kittel, Rev. Mod. Phys. 21, 541 (1949)), δ with its
  1σ uncertainty from the covariance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = [
    "FRCResult",
    "KittelFit",
    "frc",
    "half_bit_threshold",
    "kittel_fit",
    "prtf",
    "ring_average",
    "wall_profile",
]


def _ring_index(shape: tuple[int, int]) -> tuple[np.ndarray, int]:
    ny, nx = shape
    fy = np.fft.fftfreq(ny)[:, None]
    fx = np.fft.fftfreq(nx)[None, :]
    n = min(ny, nx)
    r = np.rint(np.hypot(fy, fx) * n).astype(np.int64)
    return r, n // 2


def ring_average(values: np.ndarray, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Mean of a Fourier-space array (FFT order) over rings of width 1/n cycles/px.

    Parameters
    ----------
    values : ndarray, shape (ny, nx)
        FFT order (q = 0 at index (0, 0)).

    Returns
    -------
    ndarray, shape (n // 2 + 1,)
        Ring k covers |f| ∈ [(k − ½)/n, (k + ½)/n), n = min(ny, nx).
    """
    v = np.asarray(values)
    r, kmax = _ring_index(v.shape)
    keep = r <= kmax
    counts = np.bincount(r[keep], minlength=kmax + 1)
    sums = np.bincount(r[keep], weights=v[keep].real, minlength=kmax + 1)
    return sums / np.maximum(counts, 1)


def half_bit_threshold(n_pixels: np.ndarray) -> np.ndarray:
    """1/2-bit FRC threshold for rings of ``n_pixels`` pixels (van Heel & Schatz 2005).

    T = (0.2071 + 1.9102/√n) / (1.2071 + 0.9102/√n).
    """
    s = np.sqrt(np.maximum(np.asarray(n_pixels, dtype=np.float64), 1.0))
    return (0.2071 + 1.9102 / s) / (1.2071 + 0.9102 / s)


@dataclass(frozen=True)
class FRCResult:
    """Fourier ring correlation and the resolution it gives.

    Attributes
    ----------
    frequency : ndarray, shape (k,), float64
        Ring centre, cycles per pixel (0 … 0.5).
    frc : ndarray, shape (k,), float64
        Correlation per ring, in [−1, 1].
    threshold : ndarray, shape (k,), float64
        1/2-bit threshold per ring.
    crossing_frequency : float
        First frequency (cycles/px, linear interpolation) where FRC drops below the
        threshold after having been above it (rings k >= 1); 0.5 (Nyquist) if it never
        drops below; half the first ring's frequency if it is never above.
    resolution_px : float
        Half-period resolution 1 / (2·crossing_frequency), px.
    resolution_nm : float or None
        resolution_px × pixel size, nm (None without a pixel size).
    """

    frequency: np.ndarray
    frc: np.ndarray
    threshold: np.ndarray
    crossing_frequency: float
    resolution_px: float
    resolution_nm: float | None


def _check_image(name: str, a: np.ndarray) -> np.ndarray:
    arr = np.asarray(a)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D, got shape {arr.shape}")
    if arr.dtype.kind not in "fiuc":
        raise TypeError(f"{name} must be numeric, got dtype {arr.dtype}")
    n_bad = int(np.count_nonzero(~np.isfinite(arr)))
    if n_bad:
        raise ValueError(f"{name} has {n_bad} non-finite values")
    return arr


def frc(
    image_a: np.ndarray,
    image_b: np.ndarray,
    *,
    mask: np.ndarray | None = None,
    apodise_px: float = 2.0,
    pixel_size_nm: float | None = None,
    min_ring: int = 1,
) -> FRCResult:
    """Fourier ring correlation of two images from independent half-datasets.

    Parameters
    ----------
    image_a, image_b : ndarray, shape (ny, nx), real or complex
        The two reconstructions (e.g. mz of the odd and of the even frames).
    mask : ndarray, shape (ny, nx), bool, optional
        Region to compare (e.g. the object support); outside it the images are set to
        their mean inside, then the region's edge is softened by a Gaussian of
        ``apodise_px`` so that it adds no common edge to both images.
    apodise_px : float
        σ (px) of the edge softening, >= 0.
    min_ring : int
        First ring (in units of 1/n cycles per pixel) where the crossing is searched:
        rings below it are computed and returned but do not set the resolution (e.g.
        frequencies a beamstop hid, which phase retrieval fills without data).
    pixel_size_nm : float, optional
        Sample-plane pixel, nm, > 0.

    Returns
    -------
    FRCResult

    Raises
    ------
    ValueError
        For mismatched shapes, non-finite values, an empty mask or a non-positive
        pixel size (each named).

    References
    ----------
    M. van Heel and M. Schatz, J. Struct. Biol. 151, 250 (2005).
    """
    from scipy import ndimage

    a = _check_image("image_a", image_a)
    b = _check_image("image_b", image_b)
    if a.shape != b.shape:
        raise ValueError(f"image_a shape {a.shape} != image_b shape {b.shape}")
    if pixel_size_nm is not None and not (math.isfinite(pixel_size_nm) and pixel_size_nm > 0):
        raise ValueError(f"pixel_size_nm must be > 0, got {pixel_size_nm!r}")
    if not apodise_px >= 0:
        raise ValueError(f"apodise_px must be >= 0, got {apodise_px!r}")
    a = a.astype(np.complex128)
    b = b.astype(np.complex128)
    if mask is not None:
        m = np.asarray(mask, dtype=bool)
        if m.shape != a.shape:
            raise ValueError(f"mask shape {m.shape} != image shape {a.shape}")
        if not m.any():
            raise ValueError("mask is empty")
        w = ndimage.gaussian_filter(m.astype(np.float64), apodise_px) if apodise_px > 0 else m
        w = np.where(m, w, 0.0) if apodise_px > 0 else w.astype(np.float64)
        a = (a - a[m].mean()) * w
        b = (b - b[m].mean()) * w
    fa = np.fft.fft2(a)
    fb = np.fft.fft2(b)
    r, kmax = _ring_index(a.shape)
    keep = r <= kmax
    idx = r[keep]
    num = np.bincount(idx, weights=(fa * np.conj(fb)).real[keep], minlength=kmax + 1)
    pa = np.bincount(idx, weights=(np.abs(fa) ** 2)[keep], minlength=kmax + 1)
    pb = np.bincount(idx, weights=(np.abs(fb) ** 2)[keep], minlength=kmax + 1)
    counts = np.bincount(idx, minlength=kmax + 1)
    curve = num / np.sqrt(np.maximum(pa * pb, 1e-300))
    thr = half_bit_threshold(counts)
    n = min(a.shape)
    freq = np.arange(kmax + 1) / n
    # The lowest rings carry the aperture's edge and what the beamstop hid; the crossing
    # that sets the resolution is the first drop below the threshold *after* the FRC
    # has risen above it (none: no correlation at all, resolution = the field of view).
    if int(min_ring) != min_ring or not 1 <= min_ring < kmax:
        raise ValueError(f"min_ring must be an int in [1, {kmax}), got {min_ring!r}")
    lo = int(min_ring)
    crossing = 0.5
    above = np.nonzero(curve[lo:] >= thr[lo:])[0]
    first_above = int(above[0]) + lo if above.size else None
    below = (
        np.nonzero(curve[first_above:] < thr[first_above:])[0] + first_above
        if first_above is not None
        else np.array([lo])
    )
    if below.size:
        k = int(below[0])
        d0 = curve[k - 1] - thr[k - 1]
        d1 = curve[k] - thr[k]
        t = d0 / (d0 - d1) if d0 > 0 and d0 != d1 else 0.0
        crossing = float(freq[k - 1] + t * (freq[k] - freq[k - 1]))
        crossing = max(crossing, freq[lo] / 2)
    res_px = 1.0 / (2.0 * crossing)
    return FRCResult(
        frequency=freq,
        frc=curve,
        threshold=thr,
        crossing_frequency=crossing,
        resolution_px=res_px,
        resolution_nm=None if pixel_size_nm is None else res_px * float(pixel_size_nm),
    )


def prtf(
    exit_waves: np.ndarray, intensity: np.ndarray, valid: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Phase-retrieval transfer function over independent random starts.

    Parameters
    ----------
    exit_waves : ndarray, shape (n_starts, ny, nx), complex
        Final exit waves of the starts (sample grid), n_starts >= 2.
    intensity : ndarray, shape (ny, nx), float
        Measured intensity, q = 0 at (ny // 2, nx // 2), same scale as the waves
        (|fft2(wave)|² ≈ intensity).
    valid : ndarray, shape (ny, nx), bool, optional
        Measured pixels (same order as ``intensity``); others are left out of the rings.

    Returns
    -------
    frequency : ndarray, shape (k,), float64 — cycles per pixel;
    prtf : ndarray, shape (k,), float64 — ring-averaged PRTF (1: perfectly reproducible).

    Raises
    ------
    ValueError
        For fewer than 2 starts or mismatched shapes.

    References
    ----------
    H. N. Chapman et al., J. Opt. Soc. Am. A 23, 1179 (2006).
    """
    w = np.asarray(exit_waves)
    if w.ndim != 3 or w.shape[0] < 2:
        raise ValueError(f"exit_waves must be (n_starts >= 2, ny, nx), got shape {w.shape}")
    i = np.asarray(intensity, dtype=np.float64)
    if i.shape != w.shape[1:]:
        raise ValueError(f"intensity shape {i.shape} != exit wave shape {w.shape[1:]}")
    v = np.ones(i.shape, dtype=bool) if valid is None else np.asarray(valid, dtype=bool)
    first = w[0]
    acc = np.zeros(i.shape, dtype=np.complex128)
    for wave in w:
        overlap = np.vdot(wave, first)
        phase = overlap / abs(overlap) if overlap != 0 else 1.0
        acc += np.fft.fft2(wave * phase)
    acc /= w.shape[0]
    meas = np.fft.ifftshift(i)
    vv = np.fft.ifftshift(v) & (meas > 0)
    ratio = np.zeros(i.shape)
    ratio[vv] = np.abs(acc[vv]) / np.sqrt(meas[vv])
    r, kmax = _ring_index(i.shape)
    keep = (r <= kmax) & vv
    num = np.bincount(r[keep], weights=ratio[keep], minlength=kmax + 1)
    cnt = np.bincount(r[keep], minlength=kmax + 1)
    with np.errstate(invalid="ignore"):
        curve = np.where(cnt > 0, num / np.maximum(cnt, 1), np.nan)
    return np.arange(kmax + 1) / min(i.shape), curve


@dataclass(frozen=True)
class KittelFit:
    """Fit of mz(x) = amplitude·tanh((x − x0)/δ) + offset.

    Attributes
    ----------
    delta, delta_sigma : float
        Wall-width parameter δ and its 1σ uncertainty, in the units of x (px or nm).
    x0, amplitude, offset : float
        Wall centre (units of x), saturation value and offset (units of mz).
    residual_rms : float
        RMS of the fit residuals (units of mz).
    """

    delta: float
    delta_sigma: float
    x0: float
    amplitude: float
    offset: float
    residual_rms: float


#: A profile holds a wall when its step exceeds this many times its point-to-point noise.
WALL_SNR: float = 4.0


def _tanh_model(
    x: np.ndarray, amplitude: float, x0: float, delta: float, offset: float
) -> np.ndarray:
    return amplitude * np.tanh((x - x0) / delta) + offset


def kittel_fit(x: np.ndarray, mz: np.ndarray) -> KittelFit:
    """Fit a Kittel (tanh) domain-wall profile across one wall.

    Parameters
    ----------
    x : ndarray, shape (n,), float
        Position along the profile (px or nm), increasing, n >= 5.
    mz : ndarray, shape (n,), float
        Magnetisation (any scale) at ``x``, crossing one wall.

    Returns
    -------
    KittelFit
        δ in the units of ``x``; δ < 0 never (the sign goes into the amplitude).

    Raises
    ------
    ValueError
        For mismatched or too short arrays, non-finite values, a fit that fails (the
        message carries scipy's), or a profile without a wall: its step (90th − 10th
        percentile) is not above ``WALL_SNR`` × the point-to-point noise (flat or pure
        noise), mz − offset does not change sign between the first and the last fifth
        of the profile, or the fit ends on a bound of x0 (an end of the profile) or δ
        (the span, i.e. wider than the profile, or 10⁻⁶ span) — a bound is no measurement.

    Notes
    -----
    Noise: σ = 1.4826·MAD(Δmz)/√2 over the point-to-point differences Δmz, which a smooth
    wall hardly changes.

    References
    ----------
    C. Kittel, Rev. Mod. Phys. 21, 541 (1949); R. Battistelli et al., Optica 11, 234
    (2024).
    """
    from scipy.optimize import curve_fit

    xx = np.asarray(x, dtype=np.float64)
    yy = np.asarray(mz, dtype=np.float64)
    if xx.ndim != 1 or xx.shape != yy.shape or xx.size < 5:
        raise ValueError(f"x and mz must be 1-D of equal length >= 5, got {xx.shape}, {yy.shape}")
    n_bad = int(np.count_nonzero(~np.isfinite(xx)) + np.count_nonzero(~np.isfinite(yy)))
    if n_bad:
        raise ValueError(f"x and mz have {n_bad} non-finite values")
    lo, hi = np.percentile(yy, [10, 90])
    d = np.diff(yy)
    noise = 1.4826 * float(np.median(np.abs(d - np.median(d)))) / math.sqrt(2.0)
    if not hi - lo > WALL_SNR * noise:
        raise ValueError(
            f"no domain wall in the profile: its step {hi - lo:.3g} (90th − 10th percentile) "
            f"is not above {WALL_SNR:g} × the noise {noise:.3g}"
        )
    amp0 = (hi - lo) / 2 * (1 if yy[-1] >= yy[0] else -1)
    mid = (hi + lo) / 2
    x0 = float(xx[np.argmin(np.abs(yy - mid))])
    span = float(xx[-1] - xx[0])
    p0 = [amp0, x0, span / 10, mid]
    lower = [-np.inf, xx[0], 1e-6 * span, -np.inf]
    upper = [np.inf, xx[-1], span, np.inf]
    try:
        popt, pcov = curve_fit(_tanh_model, xx, yy, p0=p0, bounds=(lower, upper), maxfev=20000)
    except (RuntimeError, ValueError) as exc:
        raise ValueError(f"Kittel fit failed: {exc}") from exc
    q = max(2, xx.size // 5)
    left, right = float(yy[:q].mean() - popt[3]), float(yy[-q:].mean() - popt[3])
    if not left * right < 0:
        raise ValueError(
            "no domain wall in the profile: mz − offset does not change sign "
            f"(first fifth {left:.3g}, last fifth {right:.3g}, offset {popt[3]:.3g})"
        )
    for i, name in ((1, "x0"), (2, "delta")):
        tol = 1e-3 * (upper[i] - lower[i])
        if popt[i] - lower[i] <= tol or upper[i] - popt[i] <= tol:
            raise ValueError(
                f"Kittel fit hit the bound {name} = {popt[i]:.4g} (allowed "
                f"[{lower[i]:.4g}, {upper[i]:.4g}]): no wall of measurable width in the "
                "profile (wider than the profile, sharper than its sampling, or at its end)"
            )
    resid = yy - _tanh_model(xx, *popt)
    sig = float(np.sqrt(pcov[2, 2])) if np.isfinite(pcov[2, 2]) else float("inf")
    return KittelFit(
        delta=float(popt[2]),
        delta_sigma=sig,
        x0=float(popt[1]),
        amplitude=float(popt[0]),
        offset=float(popt[3]),
        residual_rms=float(np.sqrt(np.mean(resid**2))),
    )


def wall_profile(
    image: np.ndarray, start: tuple[float, float], end: tuple[float, float], width_px: int = 5
) -> tuple[np.ndarray, np.ndarray]:
    """Line profile across a wall, averaged over a band (:func:`skimage.measure.profile_line`).

    Parameters
    ----------
    image : ndarray, shape (ny, nx), float
        E.g. the retrieved mz.
    start, end : tuple of float
        (y, x) end points in px; the wall should cross the segment once.
    width_px : int
        Band width (px, >= 1) averaged perpendicular to the line.

    Returns
    -------
    x : ndarray, shape (n,), float64 — distance from ``start`` along the line, px;
    profile : ndarray, shape (n,), float64.
    """
    from skimage.measure import profile_line

    if int(width_px) != width_px or width_px < 1:
        raise ValueError(f"width_px must be an int >= 1, got {width_px!r}")
    prof = profile_line(
        np.asarray(image, dtype=np.float64),
        start,
        end,
        linewidth=int(width_px),
        order=1,
        mode="reflect",
        reduce_func=np.mean,
    )
    length = float(np.hypot(end[0] - start[0], end[1] - start[1]))
    x = np.linspace(0.0, length, prof.size)
    return x, np.asarray(prof, dtype=np.float64)
