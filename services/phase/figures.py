"""Figures of a phase retrieval, rendered off-screen to RGBA arrays and PNG files.

Same conventions as :mod:`speckleflow.services.cci.figures`: a
:class:`matplotlib.figure.Figure` on a ``FigureCanvasAgg`` (no pyplot), 100 dpi, at most
900 × 600 px, returned as an RGBA ``uint8`` array (h, w, 4), optionally also written as
PNG. Figures follow Battistelli et al., Optica 11, 234 (2024): the mz image with the
support outline, the error curves, the FRC with its 1/2-bit threshold and resolution,
and the PRTF.
"""

from __future__ import annotations

import os

import numpy as np
from speckleflow.services.cci.figures import _new_figure, _render

from .quality import FRCResult
from .retrieval import IterationLog

__all__ = ["error_figure", "frc_figure", "mz_figure", "prtf_figure"]


def mz_figure(
    mz: np.ndarray,
    support: np.ndarray,
    *,
    pixel_size_nm: float | None = None,
    title: str | None = None,
    path: str | os.PathLike[str] | None = None,
) -> np.ndarray:
    """The mz image cropped to the support's bounding box, the support outlined.

    Parameters
    ----------
    mz : ndarray, shape (ny, nx), float
        Retrieved mz (log|φ_+/φ_−|, dimensionless).
    support : ndarray, shape (ny, nx), bool
        Where mz is defined (outlined; at least one pixel).
    pixel_size_nm : float, optional
        Axis in nm instead of px.
    title : str, optional
    path : str or path-like, optional
        Also write the figure there as PNG.

    Returns
    -------
    ndarray, shape (h, w, 4), uint8

    Raises
    ------
    ValueError
        If the shapes differ or the support is empty.
    """
    m = np.asarray(mz, dtype=np.float64)
    s = np.asarray(support, dtype=bool)
    if m.shape != s.shape or m.ndim != 2:
        raise ValueError(f"mz {m.shape} and support {s.shape} must be equal 2-D shapes")
    if not s.any():
        raise ValueError("support is empty")
    rows = np.flatnonzero(s.any(axis=1))
    cols = np.flatnonzero(s.any(axis=0))
    y0, y1 = max(rows[0] - 2, 0), min(rows[-1] + 3, m.shape[0])
    x0, x1 = max(cols[0] - 2, 0), min(cols[-1] + 3, m.shape[1])
    crop = np.where(s, m, np.nan)[y0:y1, x0:x1]
    lim = float(np.nanmax(np.abs(crop))) or 1.0
    scale = 1.0 if pixel_size_nm is None else float(pixel_size_nm)
    unit = "px" if pixel_size_nm is None else "nm"
    extent = (0, (x1 - x0) * scale, (y1 - y0) * scale, 0)
    fig = _new_figure((6.0, 5.0))
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(crop, cmap="RdBu_r", vmin=-lim, vmax=lim, extent=extent, interpolation="nearest")
    yy = (np.arange(y1 - y0) + 0.5) * scale
    xx = (np.arange(x1 - x0) + 0.5) * scale
    ax.contour(xx, yy, s[y0:y1, x0:x1].astype(float), levels=[0.5], colors="k", linewidths=0.8)
    fig.colorbar(im, ax=ax, label="log|φ+/φ−|")
    ax.set_xlabel(f"x ({unit})")
    ax.set_ylabel(f"y ({unit})")
    ax.set_title(title if title is not None else "phase-retrieved mz")
    fig.tight_layout()
    return _render(fig, path)


def error_figure(
    log_plus: IterationLog,
    log_minus: IterationLog | None = None,
    *,
    title: str | None = None,
    path: str | os.PathLike[str] | None = None,
) -> np.ndarray:
    """Fourier-modulus and support errors per iteration (log scale), both helicities.

    Returns
    -------
    ndarray, shape (h, w, 4), uint8
    """
    fig = _new_figure((8.0, 4.5))
    ax = fig.add_subplot(1, 1, 1)
    for log, sign, color in ((log_plus, "+", "C0"), (log_minus, "−", "C3")):
        if log is None or not log.fourier_error:
            continue
        it = np.arange(1, len(log.fourier_error) + 1)
        ax.semilogy(
            it, np.maximum(log.fourier_error, 1e-12), color=color, label=f"Fourier error {sign}"
        )
        ax.semilogy(
            it,
            np.maximum(log.support_error, 1e-12),
            color=color,
            ls="--",
            label=f"support error {sign}",
        )
        alg = np.asarray(log.algorithm)
        switch = np.flatnonzero(alg[1:] != alg[:-1])
        for k in switch:
            ax.axvline(k + 1.5, color=color, lw=0.5, alpha=0.5)
    ax.set_xlabel("iteration")
    ax.set_ylabel("error")
    ax.legend(fontsize=8, frameon=False)
    ax.set_title(title if title is not None else "RAAR → ER convergence")
    fig.tight_layout()
    return _render(fig, path)


def frc_figure(
    result: FRCResult,
    *,
    pixel_size_nm: float | None = None,
    title: str | None = None,
    path: str | os.PathLike[str] | None = None,
) -> np.ndarray:
    """FRC, its 1/2-bit threshold, the crossing and the resolution.

    Returns
    -------
    ndarray, shape (h, w, 4), uint8
    """
    fig = _new_figure((7.0, 4.5))
    ax = fig.add_subplot(1, 1, 1)
    f = result.frequency
    scale = 1.0 if pixel_size_nm is None else 1.0 / float(pixel_size_nm)
    unit = "1/px" if pixel_size_nm is None else "1/nm"
    ax.plot(f[1:] * scale, result.frc[1:], color="C0", label="FRC")
    ax.plot(f[1:] * scale, result.threshold[1:], color="C1", ls="--", label="1/2-bit threshold")
    ax.axvline(result.crossing_frequency * scale, color="k", lw=0.8)
    res = (
        f"{result.resolution_nm:.1f} nm"
        if result.resolution_nm is not None
        else f"{result.resolution_px:.2f} px"
    )
    ax.text(result.crossing_frequency * scale, 0.95, f" half-period {res}", va="top", fontsize=9)
    ax.set_xlabel(f"spatial frequency ({unit})")
    ax.set_ylabel("FRC")
    ax.set_ylim(-0.2, 1.05)
    ax.legend(fontsize=8, frameon=False, loc="lower left")
    ax.set_title(title if title is not None else "Fourier ring correlation of half-datasets")
    fig.tight_layout()
    return _render(fig, path)


def prtf_figure(
    frequency: np.ndarray,
    prtf: np.ndarray,
    *,
    title: str | None = None,
    path: str | os.PathLike[str] | None = None,
) -> np.ndarray:
    """PRTF versus spatial frequency with the 1/e level.

    Returns
    -------
    ndarray, shape (h, w, 4), uint8
    """
    fig = _new_figure((7.0, 4.5))
    ax = fig.add_subplot(1, 1, 1)
    f = np.asarray(frequency)
    ax.plot(f, np.asarray(prtf), color="C2", label="PRTF")
    ax.axhline(1 / np.e, color="k", ls=":", lw=0.8, label="1/e")
    ax.set_xlabel("spatial frequency (1/px)")
    ax.set_ylabel("PRTF")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=8, frameon=False)
    ax.set_title(title if title is not None else "phase-retrieval transfer function")
    fig.tight_layout()
    return _render(fig, path)
