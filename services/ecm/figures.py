"""Summary figures of a k-resolved ECM run, rendered off-screen to RGBA arrays.

Every function builds a :class:`matplotlib.figure.Figure` on a ``FigureCanvasAgg`` (no
pyplot: no global state, safe in worker threads), renders it at 100 dpi and returns an
RGBA ``uint8`` array of shape (h, w, 4). The figures are those of ECM papers (Zhang et
al. 2018; Huang & Voyles): τ maps per k_φ, g2 curves with their KWW fits, and τ
histograms with log-normal fits.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from .domains import LognormalFit
from .kww import KWWResult, kww_g2

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["g2_figure", "tau_histogram_figure", "tau_maps_figure"]

DPI = 100


def _new_figure(w: float, h: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # constrained layout: panel titles, tick labels and the colour bar never overlap
    fig = Figure(figsize=(min(w, 9.0), min(h, 9.0)), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _render(fig: Figure) -> np.ndarray:
    fig.canvas.draw()
    return np.array(fig.canvas.buffer_rgba(), dtype=np.uint8, copy=True)


def tau_maps_figure(tau: np.ndarray, k_phi_centers: np.ndarray, *, scan_step_nm: float | None = None) -> np.ndarray:
    """τ maps, one panel per k_φ bin (geometric mean over k_r), shared log colour scale.

    Parameters
    ----------
    tau : ndarray, shape (ny, nx, n_r, n_phi), float
        τ per position and bin, s (NaN: no good fit).
    k_phi_centers : ndarray, shape (n_phi,), float
        k_φ of each bin, rad (panel titles).
    scan_step_nm : float, optional
        Scan step, nm (axis extent).

    Returns
    -------
    ndarray, shape (h, w, 4), uint8

    Raises
    ------
    ValueError
        If ``tau`` is not 4-D or ``k_phi_centers`` does not match its last axis.
    """
    from matplotlib.colors import LogNorm

    tau = np.asarray(tau, float)
    if tau.ndim != 4 or len(k_phi_centers) != tau.shape[3]:
        raise ValueError(f"tau must be (ny, nx, n_r, n_phi) with n_phi = {len(k_phi_centers)}, got {tau.shape}")
    with np.errstate(invalid="ignore", divide="ignore"):
        logt = np.log(np.where(tau > 0, tau, np.nan))
    counts = np.isfinite(logt).sum(axis=2)
    with np.errstate(invalid="ignore"):
        maps = np.exp(np.where(counts > 0, np.nansum(logt, axis=2) / np.maximum(counts, 1), np.nan))
    n_phi = maps.shape[2]
    shown = list(range(n_phi)) if n_phi <= 16 else list(np.linspace(0, n_phi - 1, 16).round().astype(int))
    cols = min(4, len(shown))
    rows = math.ceil(len(shown) / cols)
    fig = _new_figure(2.3 * cols + 1.0, 2.2 * rows + 0.6)
    finite = maps[np.isfinite(maps)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (1e-3, 1.0)
    if hi <= lo:
        hi = lo * 1.01
    norm = LogNorm(lo, hi)
    ny, nx = maps.shape[:2]
    step = scan_step_nm or 1.0
    extent = (0, nx * step, ny * step, 0)
    im = None
    for i, j in enumerate(shown):
        ax = fig.add_subplot(rows, cols, i + 1)
        im = ax.imshow(maps[:, :, j], norm=norm, cmap="viridis", extent=extent, interpolation="nearest")
        ax.set_title(f"k_φ = {np.degrees(k_phi_centers[j]):.0f}°", fontsize=8)
        ax.tick_params(labelsize=6)
    if im is not None:
        fig.colorbar(im, ax=fig.axes, shrink=0.8, label="τ (s)")
    fig.suptitle(f"τ maps per k_φ ({'nm' if scan_step_nm else 'scan steps'})", fontsize=9)
    return _render(fig)


def g2_figure(
    lags: np.ndarray, g2: np.ndarray, fit: KWWResult, k_r_centers: np.ndarray
) -> np.ndarray:
    """Ensemble g2 per k_r bin (points) with the KWW fits (lines), log lag axis.

    Parameters
    ----------
    lags : ndarray, shape (n_lags,), float — lag, s (lag 0 is not drawn).
    g2 : ndarray, shape (n_r, n_lags), float — g2 per k_r bin.
    fit : KWWResult — fits of ``g2``, arrays shape (n_r,), τ in s.
    k_r_centers : ndarray, shape (n_r,), float — k_r of each bin, Å⁻¹ (legend).

    Returns
    -------
    ndarray, shape (h, w, 4), uint8

    Raises
    ------
    ValueError
        On mismatched shapes.
    """
    g2 = np.asarray(g2, float)
    lags = np.asarray(lags, float)
    if g2.ndim != 2 or g2.shape[1] != lags.size or g2.shape[0] != len(k_r_centers):
        raise ValueError(f"g2 must be (n_r={len(k_r_centers)}, n_lags={lags.size}), got {g2.shape}")
    fig = _new_figure(6.0, 4.0)
    ax = fig.add_subplot(1, 1, 1)
    pos = lags > 0
    fine = np.geomspace(lags[pos].min(), lags[pos].max(), 200) if pos.any() else np.array([])
    tau, beta, A = (np.atleast_1d(fit.tau), np.atleast_1d(fit.beta), np.atleast_1d(fit.A))
    for i, k in enumerate(k_r_centers):
        line = ax.semilogx(lags[pos], g2[i, pos], "o", ms=3, label=f"k_r = {k:.3f} Å⁻¹")[0]
        if np.isfinite(tau[i]) and fine.size:
            ax.semilogx(fine, kww_g2(fine, tau[i], beta[i], A[i]), "-", color=line.get_color(), lw=1,
                        label=f"τ = {tau[i]:.3g} s, β = {beta[i]:.2f}")
    ax.set_xlabel("Δt (s)")
    ax.set_ylabel("g2")
    ax.legend(fontsize=7)
    ax.set_title("ensemble g2 per k_r with KWW fits", fontsize=9)
    return _render(fig)


def tau_histogram_figure(
    counts: np.ndarray, edges: np.ndarray, fits: Sequence[LognormalFit | None], k_phi_centers: np.ndarray
) -> np.ndarray:
    """τ histogram summed over k_φ with the log-normal fits: their sum, and each k_φ's shape.

    The bold line is the sum of the per-k_φ fits (it follows the histogram when every
    k_φ bin is log-normal); the thin lines are the fits one by one, each scaled to the
    total count so that their medians and widths can be compared with the histogram.

    Parameters
    ----------
    counts : ndarray, shape (n_phi, bins), int — histogram per k_φ bin.
    edges : ndarray, shape (bins + 1,), float — log-spaced edges, s.
    fits : sequence of LognormalFit or None, length n_phi — fit per k_φ bin.
    k_phi_centers : ndarray, shape (n_phi,) — k_φ of each bin, rad.

    Returns
    -------
    ndarray, shape (h, w, 4), uint8
    """
    counts = np.asarray(counts)
    edges = np.asarray(edges, float)
    fig = _new_figure(6.0, 4.0)
    ax = fig.add_subplot(1, 1, 1)
    if counts.size and np.isfinite(edges).all():
        total = counts.sum(axis=0)
        ax.stairs(total, edges, fill=True, alpha=0.4, label="all k_φ")
        centers = np.sqrt(edges[1:] * edges[:-1])
        dln = np.log(edges[1:] / edges[:-1])
        fitted = np.zeros_like(centers)
        for j, f in enumerate(fits):
            if f is None:
                continue
            pdf = np.exp(-0.5 * (np.log(centers / f.median) / f.sigma) ** 2) / (f.sigma * math.sqrt(2 * math.pi))
            fitted += counts[j].sum() * pdf * dln
            ax.plot(centers, total.sum() * pdf * dln, lw=0.5, alpha=0.6,
                    label=f"{np.degrees(k_phi_centers[j]):.0f}°: τ̃ = {f.median:.3g} s, σ = {f.sigma:.2f}"
                    if len(fits) <= 8 else None)  # fmt: skip
        if any(f is not None for f in fits):
            ax.plot(centers, fitted, color="k", lw=1.5, label="Σ of the fits per k_φ")
            if len(fits) > 8:
                ax.plot([], [], lw=0.5, color="C1", label="each k_φ's fit (scaled to the total)")
        ax.set_xscale("log")
    ax.set_xlabel("τ (s)")
    ax.set_ylabel("(position, k) bins")
    ax.set_title("τ distribution with log-normal fits per k_φ", fontsize=9)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=6)
    return _render(fig)
