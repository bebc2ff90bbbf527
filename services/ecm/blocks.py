"""Correlation of one block of scan positions: per-(r, k_p) g2, KWW fits, ensemble sums.

5D-STEM ECM data, registered and cropped, are I(t, r, k): t the scan repeat, r the scan
position, k a camera pixel of the first-ring strip. A block holds every repeat of a few
scan rows, so blocks are independent and memory stays bounded by the block
(:func:`correlate_block`). For every strip pixel the multi-tau g2 over repeats is
accumulated exactly (:class:`~speckleflow.services.g2.MultiTauCorrelator`, integer
counts); the pixels of one (k_r, k_φ) bin are then averaged as an ensemble, the
labelled-ROI convention of XPCS (scikit-beam):

    g2_bin(Δ) = m·n_pix·Σ_p Σ_t I_p(t) I_p(t + Δ) / (Σ_p Σ_t I_p(t) · Σ_p Σ_t I_p(t + Δ)),

which keeps the single-speckle contrast A (summing the counts of a bin first would
divide it by the number of independent speckles in the bin). Each (position, bin) g2 is
fitted with the KWW form g2 = 1 + A·exp(−2(Δt/τ)^β) (:func:`..ecm.kww.fit_kww`).

The block also returns the sums of the ensemble g2 of every k_r bin (all positions and
k_φ) and of the two-time correlation G(t1, t2) per k_r bin, so blocks add up to the
ensemble results exactly (:class:`BlockResult`).

References
----------
Huang & Voyles, 5D-STEM k-resolved ECM (``ARCHITECTURE.md`` §3): per-pixel g2(r, k_p, Δt)
and KWW fits, k_φ binning, two-time correlation.
D. Lumma et al., Rev. Sci. Instrum. 71, 3274 (2000) — symmetric multi-tau normalisation;
A. Fluerasu et al., Phys. Rev. E 76, 010401 (2007) — two-time correlation.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
from speckleflow.services.g2.multitau import MultiTauCorrelator

from .finite_run import estimator_kernel
from .kww import KWWResult, fit_kww

__all__ = ["BlockResult", "StripLayout", "correlate_block", "flat_field_weights", "strip_layout"]


@dataclass(frozen=True)
class StripLayout:
    """The first-ring strip pixels, sorted by (k_r, k_φ) bin.

    Attributes
    ----------
    pixels : ndarray, shape (n_strip,), int64
        Flat camera indices of the strip pixels, sorted by bin label.
    bin_starts : ndarray, shape (n_nonempty,), int64
        Start of each non-empty bin in ``pixels``.
    bins : ndarray, shape (n_nonempty,), int64
        Label ``i_r·n_phi + i_phi`` of each non-empty bin.
    bin_pixels : ndarray, shape (n_nonempty,), int64
        Pixels per non-empty bin.
    kr_starts : ndarray, shape (n_r_nonempty,), int64
        Start of each non-empty k_r bin in ``pixels``.
    kr_bins : ndarray, shape (n_r_nonempty,), int64
        k_r index of each non-empty k_r segment.
    n_r, n_phi : int
        Bins of the polar grid.
    """

    pixels: np.ndarray
    bin_starts: np.ndarray
    bins: np.ndarray
    bin_pixels: np.ndarray
    kr_starts: np.ndarray
    kr_bins: np.ndarray
    n_r: int
    n_phi: int

    @property
    def n_strip(self) -> int:
        """Strip pixels."""
        return int(self.pixels.size)


def strip_layout(labels: np.ndarray, n_r: int, n_phi: int) -> StripLayout:
    """Sort the strip pixels of a polar label map by bin.

    Parameters
    ----------
    labels : ndarray, shape (det_ny, det_nx), int
        ``PolarBinning.labels``: ``i_r·n_phi + i_phi``, −1 outside the strip.
    n_r, n_phi : int
        Bins of the polar grid.

    Returns
    -------
    StripLayout

    Raises
    ------
    ValueError
        If no pixel lies in the strip, or a label is ≥ n_r·n_phi.
    """
    flat = np.asarray(labels).ravel().astype(np.int64)
    inside = np.flatnonzero(flat >= 0)
    if inside.size == 0:
        raise ValueError("the polar label map has no pixel in the strip")
    if flat.max() >= n_r * n_phi:
        raise ValueError(f"label {int(flat.max())} outside the {n_r}×{n_phi} polar grid")
    pixels = inside[np.argsort(flat[inside], kind="stable")]
    sorted_labels = flat[pixels]
    bins, starts = np.unique(sorted_labels, return_index=True)
    counts = np.diff(np.append(starts, pixels.size))
    kr, kr_starts = np.unique(sorted_labels // n_phi, return_index=True)
    return StripLayout(
        pixels=pixels,
        bin_starts=starts.astype(np.int64),
        bins=bins.astype(np.int64),
        bin_pixels=counts.astype(np.int64),
        kr_starts=kr_starts.astype(np.int64),
        kr_bins=kr.astype(np.int64),
        n_r=int(n_r),
        n_phi=int(n_phi),
    )


@dataclass(frozen=True)
class BlockResult:
    """What one block of scan positions contributes.

    Attributes
    ----------
    rows : tuple of int
        (first, stop) rows of the registered field this block covers.
    lags : ndarray, shape (n_lags,), int64
        Lags in scan repeats (0 first).
    n_pairs : ndarray, shape (n_lags,), int64
        Repeat pairs averaged at each lag (level-l pairs of the multi-tau scheme).
    level : ndarray, shape (n_lags,), int64
        Multi-tau level of each lag.
    fit : KWWResult
        KWW fit per (row, col, k_r, k_φ) of the block, arrays shape (b, nx, n_r, n_phi);
        τ in s; NaN and flag TOO_FEW_POINTS for empty bins.
    g2 : ndarray, shape (n_lags, b, nx, n_r, n_phi), float64
        The per-(position, bin) g2 that was fitted.
    kr_products, kr_past, kr_future : ndarray, shape (n_lags, n_r), float64
        Σ over positions, k_φ and pixels of the lag-product, past and future sums.
    kr_pixels : ndarray, shape (n_r,), int64
        (position, pixel) pairs in each k_r bin.
    tt_products : ndarray, shape (n_r, n_t, n_t), float64
        Σ_p I_p(t1)·I_p(t2) per k_r bin, I summed over ``tt_bin`` consecutive repeats.
    tt_sums : ndarray, shape (n_r, n_t), float64
        Σ_p I_p(t) per k_r bin.
    counts : float
        Electrons (camera counts) on the strip in the block, all repeats.
    values : int
        Strip pixel-frames in the block (counts / values = mean counts per pixel per frame).
    """

    rows: tuple[int, int]
    lags: np.ndarray
    n_pairs: np.ndarray
    level: np.ndarray
    fit: KWWResult
    g2: np.ndarray
    kr_products: np.ndarray
    kr_past: np.ndarray
    kr_future: np.ndarray
    kr_pixels: np.ndarray
    tt_products: np.ndarray
    tt_sums: np.ndarray
    counts: float
    values: int


def flat_field_weights(strip: np.ndarray, profile: np.ndarray | None = None) -> np.ndarray:
    """Inverse expected mean intensity of every (position, pixel): 1/(θ_r·P_k).

    The mean intensity of pixel k at position r factorises into the mean diffraction
    pattern P_k (the ring profile, the same sample everywhere) and the mass thickness θ_r
    of the position. Both are estimated from many values — P_k over every position and
    repeat of the block, θ_r over every repeat and pixel of the position — not from the
    pixel's own time series, whose mean carries the speckle fluctuation (the XPCS
    flat-field normalisation by the time-averaged, smoothed pattern).

    Parameters
    ----------
    strip : ndarray, shape (n_repeats, n_pos, n_strip), counts
    profile : ndarray, shape (n_strip,), optional
        Mean diffraction pattern on the strip pixels (any scale), e.g. over the whole run
        (then the weights of a position do not depend on which block it is in); None:
        estimated from ``strip``.

    Returns
    -------
    ndarray, shape (n_pos, n_strip), float64
        Weights, mean 1 per position over pixels with counts; 0 where P_k or θ_r is 0.
    """
    strip = np.asarray(strip)
    if strip.ndim != 3:
        raise ValueError(f"strip must be (n_repeats, n_pos, n_strip), got shape {strip.shape}")
    total = strip.sum(axis=0, dtype=np.float64)  # (n_pos, n_strip)
    if profile is None:
        profile = total.sum(axis=0)
    profile = np.asarray(profile, np.float64)
    if profile.shape != (strip.shape[2],):
        raise ValueError(f"profile must have shape ({strip.shape[2]},), got {profile.shape}")
    profile = profile / max(float(profile.mean()), 1e-300)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(profile > 0, total / profile, 0.0)
        theta = rel.sum(axis=1) / max(int((profile > 0).sum()), 1)
        w = 1.0 / (theta[:, None] * profile[None, :])
    w[~np.isfinite(w)] = 0.0
    return w


def two_time_binning(n_repeats: int, max_frames: int) -> int:
    """Repeats summed per two-time frame so that at most ``max_frames`` frames remain (≥ 1)."""
    if max_frames < 2:
        raise ValueError(f"max_frames must be >= 2, got {max_frames!r}")
    return max(1, math.ceil(n_repeats / max_frames))


def correlate_block(
    strip: np.ndarray,
    layout: StripLayout,
    *,
    repeat_period: float,
    rows: tuple[int, int] = (0, 0),
    n_buffers: int = 16,
    two_time_max: int = 512,
    finite_run: bool = True,
    flat_field: bool = True,
    shared_contrast: bool = True,
    profile: np.ndarray | None = None,
) -> BlockResult:
    """Per-(position, bin) g2 and KWW fits of one block, plus its ensemble sums.

    Parameters
    ----------
    strip : ndarray, shape (n_repeats, b, nx, n_strip), integer (counts)
        Registered strip pixels (in ``layout.pixels`` order) of ``b`` scan rows, every
        repeat. Float intensities ≥ 0 are accepted (then sums are float64, not exact).
    layout : StripLayout
        Bins of the strip pixels.
    repeat_period : float
        Time between two visits of a position, s (N_x·N_y/f plus flyback): the time per
        lag.
    rows : tuple of int
        Registered rows this block covers (recorded in the result).
    n_buffers : int
        Multi-tau buffers (even, ≥ 2).
    two_time_max : int
        At most this many frames in the two-time correlation; consecutive repeats are
        summed to stay below it.
    finite_run : bool
        Fit the expected value of the estimator over this run (:mod:`.finite_run`, with
        the bin's pixels as the pooled speckles) instead of the process g2: no bias
        toward short τ from the means estimated over a run of a few τ.
    flat_field : bool
        Weight every (position, pixel) by the inverse of its expected mean intensity
        (:func:`flat_field_weights`) before pooling, so that pixels of one bin (the ring
        profile across k_r) and positions (thickness) with different means do not
        raise the baseline of the pooled g2 by n·Σμ²/(Σμ)² − 1 (measured +0.05 for one
        k_r bin across the ring's FWHM: τ 40 % long, β low).
    shared_contrast : bool
        Fit twice: the second time with A of every (k_r, k_φ) bin held at the median of
        the block's first fits (A is set by the pixels, not by the position), so that
        only τ and β vary per position (less scatter of ln τ); the second fit starts
        from the first.
    profile : ndarray, shape (n_strip,), optional
        Mean pattern of the strip pixels over the run, for ``flat_field`` (None: from
        this block).

    Returns
    -------
    BlockResult

    Raises
    ------
    ValueError
        For a strip of the wrong shape, fewer than 5 repeats (a KWW fit needs ≥ 4 lags),
        or a non-positive ``repeat_period``.
    """
    strip = np.asarray(strip)
    if strip.ndim != 4 or strip.shape[3] != layout.n_strip:
        raise ValueError(
            f"strip must be (n_repeats, b, nx, {layout.n_strip}), got shape {strip.shape}"
        )
    T, b, nx, n_strip = strip.shape
    if T < 5:
        raise ValueError(f"need at least 5 repeats for a KWW fit, got {T}")
    if not (math.isfinite(repeat_period) and repeat_period > 0):
        raise ValueError(f"repeat_period must be > 0 s, got {repeat_period!r}")
    n_pos = b * nx
    corr = MultiTauCorrelator(n_pos * n_strip, n_buffers=n_buffers, min_block=T)
    corr.process(strip.reshape(T, n_pos * n_strip))
    sums = corr.sums()
    L = sums.lags.size
    G = sums.products.reshape(L, n_pos, n_strip)
    past = sums.past.reshape(L, n_pos, n_strip)
    future = sums.future.reshape(L, n_pos, n_strip)
    if flat_field:
        w = flat_field_weights(strip.reshape(T, n_pos, n_strip), profile)
        G = G * (w * w)[None]
        past = past * w[None]
        future = future * w[None]
    else:
        w = np.ones((n_pos, n_strip))

    # Ensemble over the pixels of each (k_r, k_φ) bin, per position.
    Gb = np.add.reduceat(G, layout.bin_starts, axis=2)
    Pb = np.add.reduceat(past, layout.bin_starts, axis=2)
    Fb = np.add.reduceat(future, layout.bin_starts, axis=2)
    n_bins = layout.n_r * layout.n_phi
    g2 = np.full((L, n_pos, n_bins), np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        g2[:, :, layout.bins] = (
            sums.n_pairs[:, None, None] * layout.bin_pixels[None, None, :] * Gb / (Pb * Fb)
        )
    g2[~np.isfinite(g2)] = np.nan
    g2 = g2.reshape(L, b, nx, layout.n_r, layout.n_phi)
    # Weights: the standard error of a g2 estimate falls as 1/√(pairs averaged); with
    # equal weights the few-pair long lags pull fits toward stretched, too short τ.
    with np.errstate(divide="ignore"):
        sigma = np.broadcast_to((1.0 / np.sqrt(np.maximum(sums.n_pairs, 1)))[:, None, None, None, None], g2.shape)
    pooled = np.ones(n_bins)
    pooled[layout.bins] = layout.bin_pixels
    pooled = np.broadcast_to(pooled.reshape(1, 1, layout.n_r, layout.n_phi), g2.shape[1:])
    kernel = estimator_kernel(sums.lags, sums.level, sums.n_pairs) if finite_run else None
    fit = fit_kww(sums.lags, g2, time_per_lag=repeat_period, sigma=sigma, kernel=kernel, pooled=pooled)
    if shared_contrast:
        # A depends on the pixels (speckle visibility over background), not on the
        # position: hold it at the bin's median over the block's good fits and refit τ, β.
        good_A = np.where(fit.flags == 0, fit.A, np.nan).reshape(n_pos, -1)
        n_good = np.isfinite(good_A).sum(axis=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN bins
            A_bin = np.where(n_good >= 3, np.nanmedian(good_A, axis=0), np.nan)
        fit = fit_kww(sums.lags, g2, time_per_lag=repeat_period, sigma=sigma, kernel=kernel, pooled=pooled,
                      contrast=np.broadcast_to(A_bin.reshape(fit.A.shape[2:]), fit.A.shape), start=fit)

    # Ensemble over everything in each k_r bin (all positions of the block, all k_φ).
    kr_products = np.zeros((L, layout.n_r))
    kr_past = np.zeros((L, layout.n_r))
    kr_future = np.zeros((L, layout.n_r))
    kr_products[:, layout.kr_bins] = np.add.reduceat(G.sum(axis=1), layout.kr_starts, axis=1)
    kr_past[:, layout.kr_bins] = np.add.reduceat(past.sum(axis=1), layout.kr_starts, axis=1)
    kr_future[:, layout.kr_bins] = np.add.reduceat(future.sum(axis=1), layout.kr_starts, axis=1)
    kr_pixels = np.zeros(layout.n_r, np.int64)
    seg = np.diff(np.append(layout.kr_starts, n_strip))
    kr_pixels[layout.kr_bins] = seg * n_pos

    # Two-time sums per k_r bin (BLAS products, float64: exact for counts below 2^53).
    f = two_time_binning(T, two_time_max)
    n_t = T // f
    tt_products = np.zeros((layout.n_r, n_t, n_t))
    tt_sums = np.zeros((layout.n_r, n_t))
    ends = np.append(layout.kr_starts[1:], n_strip)
    for kr, s0, s1 in zip(layout.kr_bins, layout.kr_starts, ends, strict=True):
        X = (strip[: n_t * f, :, :, s0:s1].reshape(n_t * f, n_pos, -1) * w[None, :, s0:s1]).reshape(n_t, f, -1)
        X = X.sum(axis=1)
        tt_products[kr] = X @ X.T
        tt_sums[kr] = X.sum(axis=1)
    return BlockResult(
        rows=(int(rows[0]), int(rows[1])),
        lags=sums.lags,
        n_pairs=sums.n_pairs,
        level=sums.level,
        fit=fit,
        g2=g2,
        kr_products=kr_products,
        kr_past=kr_past,
        kr_future=kr_future,
        kr_pixels=kr_pixels,
        tt_products=tt_products,
        tt_sums=tt_sums,
        counts=float(strip.sum(dtype=np.float64)),
        values=int(strip.size),
    )
