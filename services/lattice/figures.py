"""Figures of the lattice analysis, rendered off-screen (Agg) to RGBA arrays and PNG files.

- :func:`correlation_figure` — the paper's arrow plot (Gladyshev et al. 2025, CAVIAR):
  the correlation vectors of the atoms around one central atom, one panel per direction
  of the central atom's displacement, reconstruction in colour over the reference in grey;
- :func:`greens_figure` — the Green's tensor as an image (Å²);
- :func:`dispersion_figure` — phonon frequencies along the high-symmetry path (THz).

Like :mod:`speckleflow.services.cci.figures`: a ``Figure`` on a ``FigureCanvasAgg``
(no pyplot state), 100 dpi, returned as ``uint8`` RGBA (h, w, 4), optionally saved.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import ArrayLike

from .correlations import correlation_vectors, neighbour_pairs

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from .dynamics import DispersionResult

__all__ = ["correlation_figure", "dispersion_figure", "greens_figure"]

DPI = 100


def _new_figure(w: float, h: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(min(w, 9.0), min(h, 6.0)), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _render(fig: Figure, path: str | os.PathLike[str] | None) -> np.ndarray:
    from matplotlib.image import imsave

    fig.canvas.draw()
    rgba = np.array(fig.canvas.buffer_rgba(), dtype=np.uint8, copy=True)
    if path is not None:  # the pixels just drawn, without a second rendering pass
        imsave(os.fspath(path), rgba, format="png")
    return rgba


def correlation_figure(
    sites_A: ArrayLike,
    g_A2: ArrayLike,
    *,
    cutoff_A: float,
    centre: int | None = None,
    g_ref_A2: ArrayLike | None = None,
    title: str | None = None,
    note: str | None = None,
    path: str | os.PathLike[str] | None = None,
) -> np.ndarray:
    """Arrow plot of the correlation vectors ``G_cj[a, :]`` around a central atom c.

    Parameters
    ----------
    sites_A : array_like, shape (n_atoms, 2) — equilibrium (y, x), Å.
    g_A2 : array_like, shape (2 n_atoms, 2 n_atoms) — reconstructed G, Å².
    cutoff_A : float — atoms within this distance of the centre get arrows, Å.
    centre : int, optional — central atom (default: the site nearest the centroid).
    g_ref_A2 : array_like, optional — reference G (ground truth) drawn in grey.
    title : str, optional
    note : str, optional — a second title line, e.g. the Einstein check
        (:meth:`.correlations.NeighbourCorrelationTest.label`).
    path : path-like, optional — also write a PNG.

    Returns
    -------
    ndarray, shape (h, w, 4), uint8 — RGBA.
    """
    s = np.asarray(sites_A, dtype=np.float64)
    g = np.asarray(g_A2, dtype=np.float64)
    if s.ndim != 2 or s.shape[1] != 2 or g.shape != (2 * len(s), 2 * len(s)):
        raise ValueError(f"sites_A (n, 2) and G (2n, 2n) expected, got {s.shape} and {g.shape}")
    if centre is None:
        centre = int(np.argmin(np.linalg.norm(s - s.mean(axis=0), axis=1)))
    if not 0 <= centre < len(s):
        raise ValueError(f"centre must index a site in [0, {len(s)}), got {centre}")
    pairs = neighbour_pairs(s, cutoff_A)
    pairs = pairs[pairs[:, 0] == centre]
    pairs = np.concatenate([[[centre, centre]], pairs])
    ends = s[pairs[:, 1]]
    vec = correlation_vectors(g, pairs, 2)  # (n_pairs, a, 2) Å²
    ref = None if g_ref_A2 is None else correlation_vectors(np.asarray(g_ref_A2), pairs, 2)
    nn = float(np.median(np.sort(np.linalg.norm(s[pairs[1:, 1]] - s[centre], axis=1))[:6])) \
        if len(pairs) > 1 else 1.0
    longest = max(np.nanmax(np.linalg.norm(vec, axis=-1)),
                  0.0 if ref is None else np.nanmax(np.linalg.norm(ref, axis=-1)))
    scale = 0.45 * nn / longest if longest > 0 else 1.0  # Å of arrow per Å² of correlation
    fig = _new_figure(9.0, 4.6)
    names = ("y", "x")
    for a in range(2):
        ax = fig.add_subplot(1, 2, a + 1)
        ax.scatter(s[:, 1], s[:, 0], s=8, c="0.6", zorder=1)
        ax.scatter([s[centre, 1]], [s[centre, 0]], s=40, c="k", zorder=3)
        for v, color, lw in ((ref, "0.55", 3.0), (vec, "C3", 1.2)):
            if v is None:
                continue
            ax.quiver(ends[:, 1], ends[:, 0], v[:, a, 1] * scale, v[:, a, 0] * scale,
                      angles="xy", scale_units="xy", scale=1.0, color=color,
                      width=0.004 * lw, zorder=2)
        lim = cutoff_A + 0.6 * nn
        ax.set_xlim(s[centre, 1] - lim, s[centre, 1] + lim)
        ax.set_ylim(s[centre, 0] + lim, s[centre, 0] - lim)  # image orientation: y down
        ax.set_aspect("equal")
        ax.set_xlabel("x (Å)")
        ax.set_ylabel("y (Å)")
        ax.set_title(f"centre atom moves along {names[a]}")
    head = title or f"correlation vectors ⟨u_c,a u_j⟩ (arrow 1 Å = {1 / scale:.3g} Å²)"
    fig.suptitle(head if note is None else f"{head}\n{note}", fontsize=10 if note else None)
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.11, top=0.82 if note else 0.86, wspace=0.25)
    return _render(fig, path)


def greens_figure(
    g_A2: ArrayLike,
    *,
    title: str | None = None,
    path: str | os.PathLike[str] | None = None,
) -> np.ndarray:
    """Green's tensor as an image (diverging colour map, symmetric limits), Å².

    Parameters
    ----------
    g_A2 : array_like, shape (n d, n d) — G, Å²; rows and columns site-major.
    title : str, optional
    path : path-like, optional — also write a PNG.

    Returns
    -------
    ndarray, shape (h, w, 4), uint8 — RGBA.
    """
    g = np.asarray(g_A2, dtype=np.float64)
    if g.ndim != 2 or g.shape[0] != g.shape[1]:
        raise ValueError(f"G must be square, got {g.shape}")
    vmax = float(np.nanmax(np.abs(g))) or 1.0
    fig = _new_figure(5.6, 4.6)
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(g, cmap="RdBu_r", vmin=-vmax, vmax=vmax, interpolation="nearest")
    fig.colorbar(im, ax=ax, label="G (Å²)")
    ax.set_xlabel("site · component")
    ax.set_ylabel("site · component")
    ax.set_title(title or "Green's tensor ⟨u ⊗ u⟩")
    fig.subplots_adjust(left=0.14, right=0.95, bottom=0.12, top=0.92)
    return _render(fig, path)


def dispersion_figure(
    result: DispersionResult,
    *,
    reference_THz: ArrayLike | None = None,
    title: str | None = None,
    path: str | os.PathLike[str] | None = None,
) -> np.ndarray:
    """Phonon frequencies on the path's q points, with an optional reference.

    Parameters
    ----------
    result : DispersionResult — from :func:`speckleflow.services.lattice.dynamics.dispersion`.
    reference_THz : array_like, shape (n_path, n_branches), optional — e.g. the analytic
        model's frequencies at ``result.q[result.path_index]``, drawn as lines.
    title : str, optional — one or two lines.
    path : path-like, optional — also write a PNG.

    Returns
    -------
    ndarray, shape (h, w, 4), uint8 — RGBA.
    """
    x = result.path_distance
    f = result.frequencies_THz[result.path_index]
    fig = _new_figure(6.0, 4.2)
    ax = fig.add_subplot(1, 1, 1)
    if reference_THz is not None:
        ref = np.asarray(reference_THz, dtype=np.float64)
        ax.plot(x, ref, color="0.6", lw=1.0)
    for b in range(f.shape[1]):
        ax.plot(x, f[:, b], "o", ms=3, color=f"C{b % 10}")
    for d in result.label_distance:
        ax.axvline(d, color="0.8", lw=0.8)
    ax.set_xticks(result.label_distance, result.labels)
    ax.set_ylabel("ν (THz)")
    ax.set_xlim(result.label_distance[0], result.label_distance[-1])
    ax.set_ylim(bottom=0)
    head = title or "mean branches " + ", ".join(f"{v:.1f}" for v in result.mean_branch_THz) + " THz"
    ax.set_title(head, fontsize=10 if "\n" in head else None)
    fig.subplots_adjust(left=0.12, right=0.97, bottom=0.1, top=0.87 if "\n" in head else 0.91)
    return _render(fig, path)
