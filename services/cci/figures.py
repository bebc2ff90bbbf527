"""Summary figures of a CCI run, rendered off-screen to RGBA arrays and PNG files.

Every function builds a :class:`matplotlib.figure.Figure` attached to a
``FigureCanvasAgg`` (never pyplot: no global figure state, safe in worker threads),
renders it at 100 dpi (at most 900 × 600 px), and returns the image as an RGBA
``uint8`` array of shape (h, w, 4); with ``path`` it also writes the same figure as a PNG
file. Figures follow Klose et al., Nature 614, 256 (2023): the state timeline, the
dendrogram of the hierarchical clustering, the transition network, the state images and
the pinning landscape.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import networkx as nx
    from matplotlib.figure import Figure

__all__ = [
    "dendrogram_figure",
    "images_figure",
    "network_figure",
    "pinning_figure",
    "state_timeline_figure",
]

DPI = 100
MAX_SIZE_IN = (9.0, 6.0)  # 900 × 600 px at DPI
UNASSIGNED_COLOR = (0.75, 0.75, 0.75, 1.0)
MIXED_COLOR = "#808080"


def _new_figure(size_in: tuple[float, float]) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    w = min(float(size_in[0]), MAX_SIZE_IN[0])
    h = min(float(size_in[1]), MAX_SIZE_IN[1])
    fig = Figure(figsize=(w, h), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _render(fig: Figure, path: str | os.PathLike[str] | None) -> np.ndarray:
    """Draw ``fig``; write it to ``path`` as PNG if given; return RGBA uint8 (h, w, 4)."""
    canvas = fig.canvas
    canvas.draw()
    rgba = np.array(canvas.buffer_rgba(), dtype=np.uint8, copy=True)
    if path is not None:
        fig.savefig(os.fspath(path), format="png", dpi=DPI)
    return rgba


def _state_colors(n: int) -> list[tuple[float, float, float, float]]:
    from matplotlib import colormaps

    cmap = colormaps["tab20"] if n > 10 else colormaps["tab10"]
    m = cmap.N
    return [cmap(i % m) for i in range(max(n, 1))]


def state_timeline_figure(
    state: np.ndarray,
    time: np.ndarray,
    *,
    n_states: int | None = None,
    title: str | None = None,
    path: str | os.PathLike[str] | None = None,
) -> np.ndarray:
    """State versus time, one coloured mark per helicity pair, unassigned greyed.

    Parameters
    ----------
    state : ndarray, shape (n_pairs,), int
        State label per pair, -1 = unassigned (drawn in grey on a row below state 0).
    time : ndarray, shape (n_pairs,), float
        Time of each pair in s.
    n_states : int or None
        Number of states K for the y range; None → 1 + the largest label.
    title : str or None
        Figure title; None → a summary (pairs, fraction assigned).
    path : str or path-like or None
        Also write the figure there as PNG.

    Returns
    -------
    ndarray, shape (h, w, 4), uint8
        The rendered RGBA image (at most 900 × 600 px).

    Raises
    ------
    ValueError
        If the arrays are not 1-D of equal length or a label is < -1.
    """
    s = np.asarray(state).astype(np.int64)
    t = np.asarray(time, dtype=np.float64)
    if s.ndim != 1 or t.shape != s.shape:
        raise ValueError(f"state and time must be 1-D of equal length, got {s.shape}, {t.shape}")
    if s.size and s.min() < -1:
        raise ValueError(f"state labels must be >= -1, got {s.min()}")
    k = int(n_states) if n_states is not None else (int(s.max()) + 1 if s.size else 1)
    k = max(k, 1)
    fig = _new_figure((9.0, 4.0))
    ax = fig.add_subplot(1, 1, 1)
    assigned = s >= 0
    colors = np.array(_state_colors(k))
    if np.any(assigned):
        ax.step(t[assigned], s[assigned], where="post", color="0.3", lw=0.6, zorder=1)
        ax.scatter(
            t[assigned], s[assigned], c=colors[s[assigned] % len(colors)], s=6, lw=0, zorder=2
        )
    if np.any(~assigned):
        ax.scatter(
            t[~assigned],
            np.full(np.count_nonzero(~assigned), -1),
            color=UNASSIGNED_COLOR,
            marker="|",
            s=20,
            lw=0.8,
            zorder=2,
            label="unassigned",
        )
        ax.legend(loc="upper right", fontsize=8, frameon=False)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("state")
    ax.set_ylim(-1.5, k - 0.5)
    if k <= 20:
        ax.set_yticks(range(-1, k), ["–"] + [str(i) for i in range(k)])
    frac = float(np.mean(assigned)) if s.size else 0.0
    ax.set_title(title if title is not None else f"{s.size} pairs, {100 * frac:.1f} % assigned")
    fig.tight_layout()
    return _render(fig, path)


def _link_modes(z: np.ndarray, leaf_modes: np.ndarray) -> np.ndarray:
    """Mode of every cluster of the linkage (-2 if mixed), shape (2n − 1,)."""
    n = z.shape[0] + 1
    node_mode = np.empty(2 * n - 1, dtype=np.int64)
    node_mode[:n] = leaf_modes
    for i, (a, b) in enumerate(z[:, :2].astype(np.int64)):
        ma, mb = node_mode[a], node_mode[b]
        node_mode[n + i] = ma if ma == mb else -2
    return node_mode


def dendrogram_figure(
    z: np.ndarray,
    *,
    leaf_labels: Sequence[str] | None = None,
    leaf_modes: np.ndarray | None = None,
    max_leaves: int = 100,
    distance_label: str = "Pearson distance 1 − r",
    title: str | None = None,
    path: str | os.PathLike[str] | None = None,
) -> np.ndarray:
    """Dendrogram of the hierarchical clustering, truncated to at most ``max_leaves``.

    Parameters
    ----------
    z : ndarray, shape (n − 1, 4), float
        SciPy linkage matrix of n observations (helicity pairs or states).
    leaf_labels : sequence of str, length n, or None
        Label per observation (shown only when the tree is not truncated).
    leaf_modes : ndarray, shape (n,), int, or None
        Internal mode per observation: a link is coloured with its mode's colour when all
        observations below it belong to one mode, grey otherwise. None → SciPy's default
        colouring.
    max_leaves : int
        Largest number of leaves drawn (>= 2): larger trees are cut to their last
        ``max_leaves`` merged clusters (``truncate_mode="lastp"``), a leaf then showing
        the number of observations in parentheses.
    distance_label : str
        y-axis label (the linkage height; default Pearson distance, dimensionless).
    title : str or None
        Figure title.
    path : str or path-like or None
        Also write the figure there as PNG.

    Returns
    -------
    ndarray, shape (h, w, 4), uint8

    Raises
    ------
    ValueError
        If ``z`` is not a valid linkage, ``leaf_labels``/``leaf_modes`` have the wrong
        length or ``max_leaves`` < 2.
    """
    from scipy.cluster.hierarchy import dendrogram, is_valid_linkage

    zz = np.asarray(z, dtype=np.float64)
    if not is_valid_linkage(zz):
        raise ValueError(f"z is not a valid SciPy linkage matrix (shape {zz.shape})")
    if max_leaves < 2:
        raise ValueError(f"max_leaves must be >= 2, got {max_leaves}")
    n = zz.shape[0] + 1
    if leaf_labels is not None and len(leaf_labels) != n:
        raise ValueError(f"leaf_labels has length {len(leaf_labels)}, the tree has {n} leaves")
    kwargs: dict[str, Any] = {}
    truncated = n > max_leaves
    if truncated:
        kwargs.update(truncate_mode="lastp", p=int(max_leaves), show_leaf_counts=True)
    if leaf_labels is not None and not truncated:
        kwargs["labels"] = list(leaf_labels)
    elif not truncated and n > 60:
        kwargs["no_labels"] = True
    legend_modes: list[int] = []
    if leaf_modes is not None:
        lm = np.asarray(leaf_modes).astype(np.int64)
        if lm.shape != (n,):
            raise ValueError(f"leaf_modes must have shape ({n},), got {lm.shape}")
        node_mode = _link_modes(zz, lm)
        modes = np.unique(lm[lm >= 0])
        palette = _state_colors(len(modes))
        from matplotlib.colors import to_hex

        color_of = {int(m): to_hex(palette[i]) for i, m in enumerate(modes)}

        def link_color(node: int) -> str:
            return color_of.get(int(node_mode[node]), MIXED_COLOR)

        kwargs["link_color_func"] = link_color
        legend_modes = [int(m) for m in modes][:20]
    fig = _new_figure((9.0, 5.0))
    ax = fig.add_subplot(1, 1, 1)
    dendrogram(zz, ax=ax, leaf_font_size=7, **kwargs)
    ax.set_ylabel(distance_label)
    ax.set_xlabel(
        f"{max_leaves} clusters of {n} observations (sizes in parentheses)"
        if truncated
        else "observation"
    )
    if legend_modes:
        from matplotlib.lines import Line2D

        handles = [Line2D([], [], color=color_of[m], lw=2) for m in legend_modes]
        ax.legend(
            handles,
            [f"mode {m}" for m in legend_modes],
            fontsize=7,
            ncol=2,
            frameon=False,
            loc="upper right",
        )
    ax.set_title(title if title is not None else f"hierarchical clustering, {n} observations")
    fig.tight_layout()
    return _render(fig, path)


def network_figure(
    g: nx.DiGraph,
    agglomerates: Sequence[set[int]] | None = None,
    *,
    title: str | None = None,
    path: str | os.PathLike[str] | None = None,
) -> np.ndarray:
    """The transition network: nodes at their layout, sized by occupancy.

    Parameters
    ----------
    g : networkx.DiGraph
        From ``dynamics.transition_network``: node attributes ``pos`` (x, y) and
        ``occupancy`` (pairs); edge attribute ``count``.
    agglomerates : sequence of set of int or None
        Node colour by agglomerate (nodes in none are grey); None → all one colour.
    title : str or None
        Figure title.
    path : str or path-like or None
        Also write the figure there as PNG.

    Returns
    -------
    ndarray, shape (h, w, 4), uint8
        Node area ∝ occupancy, edge width and opacity ∝ √count, arrows i → j.

    Raises
    ------
    ValueError
        If a node has no ``pos`` attribute.
    """
    from matplotlib.collections import LineCollection
    from matplotlib.patches import FancyArrowPatch

    nodes = sorted(g.nodes)
    missing = [n for n in nodes if "pos" not in g.nodes[n]]
    if missing:
        raise ValueError(f"nodes {missing[:5]} have no 'pos' attribute (use transition_network)")
    pos = {n: np.asarray(g.nodes[n]["pos"], dtype=np.float64) for n in nodes}
    occ = np.array([float(g.nodes[n].get("occupancy", 1)) for n in nodes])
    size = (
        40 + 600 * np.sqrt(occ / occ.max())
        if occ.size and occ.max() > 0
        else np.full(len(nodes), 80.0)
    )
    colors = [UNASSIGNED_COLOR] * len(nodes)
    if agglomerates:
        palette = _state_colors(len(agglomerates))
        index = {n: i for i, n in enumerate(nodes)}
        for a, members in enumerate(agglomerates):
            for n in members:
                if n in index:
                    colors[index[n]] = palette[a]
    else:
        colors = [_state_colors(1)[0]] * len(nodes)

    fig = _new_figure((7.0, 6.0))
    ax = fig.add_subplot(1, 1, 1)
    edges = [(u, v, float(d.get("count", d.get("weight", 1)))) for u, v, d in g.edges(data=True)]
    if edges:
        cmax = max(c for _, _, c in edges) or 1.0
        undirected_pairs = {(min(u, v), max(u, v)) for u, v, _ in edges}
        segs = [np.array([pos[u], pos[v]]) for u, v in undirected_pairs]
        ax.add_collection(LineCollection(segs, colors="0.85", linewidths=0.5, zorder=1))
        for u, v, c in edges:
            frac = math.sqrt(c / cmax)
            ax.add_patch(
                FancyArrowPatch(
                    tuple(pos[u]),
                    tuple(pos[v]),
                    arrowstyle="-|>",
                    mutation_scale=6 + 8 * frac,
                    lw=0.4 + 3.0 * frac,
                    color=(0.2, 0.2, 0.2, 0.25 + 0.6 * frac),
                    connectionstyle="arc3,rad=0.15",
                    shrinkA=6,
                    shrinkB=6,
                    zorder=2,
                )
            )
    xy = np.array([pos[n] for n in nodes]).reshape(-1, 2)
    ax.scatter(xy[:, 0], xy[:, 1], s=size, c=colors, edgecolors="k", linewidths=0.5, zorder=3)
    if len(nodes) <= 60:
        for n, (x, y) in zip(nodes, xy, strict=True):
            ax.annotate(str(n), (x, y), fontsize=7, ha="center", va="center", zorder=4)
    if xy.size:
        span = np.ptp(xy, axis=0).max() if len(nodes) > 1 else 1.0
        pad = 0.1 * (span or 1.0)
        ax.set_xlim(xy[:, 0].min() - pad, xy[:, 0].max() + pad)
        ax.set_ylim(xy[:, 1].min() - pad, xy[:, 1].max() + pad)
    ax.set_aspect("equal", adjustable="box")
    ax.set_xlabel("layout x (Pearson distance 1 − r)")
    ax.set_ylabel("layout y (Pearson distance 1 − r)")
    n_agg = len(agglomerates) if agglomerates else 0
    ax.set_title(
        title
        if title is not None
        else f"{len(nodes)} states, {g.number_of_edges()} edges i → j, {n_agg} agglomerates"
    )
    fig.tight_layout()
    return _render(fig, path)


def _extent(shape: tuple[int, int], pixel_size_nm: float | None) -> tuple[list[float] | None, str]:
    if pixel_size_nm is None:
        return None, "px"
    if not (pixel_size_nm > 0):
        raise ValueError(f"pixel_size_nm must be > 0, got {pixel_size_nm}")
    h, w = shape
    return [
        -0.5 * pixel_size_nm,
        (w - 0.5) * pixel_size_nm,
        (h - 0.5) * pixel_size_nm,
        -0.5 * pixel_size_nm,
    ], "nm"


def images_figure(
    images: np.ndarray,
    titles: Sequence[str] | None = None,
    *,
    ncols: int | None = None,
    pixel_size_nm: float | None = None,
    path: str | os.PathLike[str] | None = None,
) -> np.ndarray:
    """A grid of state (or mode) images with a symmetric red–blue colour map.

    Parameters
    ----------
    images : ndarray, shape (k, h, w), float
        Magnetic images ∝ mz; NaN (outside the aperture) drawn white. Each image is
        scaled to its own ±99.5th percentile of |mz| (the reconstruction scale is
        arbitrary), colour map "RdBu" symmetric about 0.
    titles : sequence of str, length k, or None
        Panel titles; None → "0", "1", ...
    ncols : int or None
        Columns of the grid; None → about √(1.5 k).
    pixel_size_nm : float or None
        Pixel size for the axis scale in nm; None → axes in px.
    path : str or path-like or None
        Also write the figure there as PNG.

    Returns
    -------
    ndarray, shape (h, w, 4), uint8

    Raises
    ------
    ValueError
        If ``images`` is not 3-D with k >= 1, ``titles`` has the wrong length or
        ``ncols`` < 1.
    """
    imgs = np.asarray(images, dtype=np.float64)
    if imgs.ndim == 2:
        imgs = imgs[None]
    if imgs.ndim != 3 or imgs.shape[0] < 1:
        raise ValueError(f"images must have shape (k, h, w), got {np.shape(images)}")
    k = imgs.shape[0]
    if titles is not None and len(titles) != k:
        raise ValueError(f"titles has length {len(titles)}, there are {k} images")
    if ncols is None:
        ncols = max(1, min(k, math.ceil(math.sqrt(1.5 * k))))
    if ncols < 1:
        raise ValueError(f"ncols must be >= 1, got {ncols}")
    nrows = math.ceil(k / ncols)
    extent, unit = _extent(imgs.shape[1:], pixel_size_nm)
    panel = min(MAX_SIZE_IN[0] / ncols, MAX_SIZE_IN[1] / nrows, 3.0)
    fig = _new_figure((panel * ncols, panel * nrows))
    small = panel < 1.6
    for i in range(k):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        img = imgs[i]
        finite = img[np.isfinite(img)]
        vmax = float(np.percentile(np.abs(finite), 99.5)) if finite.size else 1.0
        vmax = vmax if vmax > 0 else 1.0
        ax.imshow(img, cmap="RdBu", vmin=-vmax, vmax=vmax, extent=extent, interpolation="nearest")
        ax.set_title(titles[i] if titles is not None else str(i), fontsize=7 if small else 9)
        if small:
            ax.set_xticks([])
            ax.set_yticks([])
        else:
            ax.tick_params(labelsize=7)
        if i // ncols == nrows - 1 and not small:
            ax.set_xlabel(f"x ({unit})", fontsize=8)
        if i % ncols == 0 and not small:
            ax.set_ylabel(f"y ({unit})", fontsize=8)
    if small:
        h_img, w_img = imgs.shape[1:]
        f = 1.0 if pixel_size_nm is None else float(pixel_size_nm)
        fig.supxlabel(
            f"each panel {w_img * f:g} × {h_img * f:g} {unit}; mz in arbitrary units "
            "(RdBu: red < 0 < blue)",
            fontsize=8,
        )
    fig.tight_layout()
    return _render(fig, path)


def pinning_figure(
    occupancy: np.ndarray,
    attractive: np.ndarray,
    repulsive: np.ndarray,
    true_sites: np.ndarray | None = None,
    *,
    pixel_size_nm: float | None = None,
    title: str | None = None,
    path: str | os.PathLike[str] | None = None,
) -> np.ndarray:
    """The pinning landscape: wall occupancy, attractive sites, repulsive regions.

    Parameters
    ----------
    occupancy : ndarray, shape (h, w), float
        Wall occupancy in [0, 1] (fraction of time); NaN outside the analysed region.
    attractive : ndarray, shape (n, 2), float
        Attractive sites, (row, col) in px (crosses).
    repulsive : ndarray, shape (h, w), bool or int
        Repulsive regions (mask or label image, > 0 inside), outlined in cyan.
    true_sites : ndarray, shape (m, 2), float, or None
        Known pinning sites (row, col) in px, drawn as open circles (simulations).
    pixel_size_nm : float or None
        Pixel size for the axis scale in nm; None → px.
    title : str or None
        Figure title.
    path : str or path-like or None
        Also write the figure there as PNG.

    Returns
    -------
    ndarray, shape (h, w, 4), uint8

    Raises
    ------
    ValueError
        If shapes disagree or a site array is not (n, 2).
    """
    occ = np.asarray(occupancy, dtype=np.float64)
    if occ.ndim != 2:
        raise ValueError(f"occupancy must be 2-D (h, w), got shape {occ.shape}")
    rep = np.asarray(repulsive)
    if rep.shape != occ.shape:
        raise ValueError(f"repulsive has shape {rep.shape}, occupancy has {occ.shape}")
    att = np.asarray(attractive, dtype=np.float64)
    att = att.reshape(0, 2) if att.size == 0 else att
    if att.ndim != 2 or att.shape[1] != 2:
        raise ValueError(f"attractive must have shape (n, 2), got {att.shape}")
    tru = None
    if true_sites is not None:
        tru = np.asarray(true_sites, dtype=np.float64)
        tru = tru.reshape(0, 2) if tru.size == 0 else tru
        if tru.ndim != 2 or tru.shape[1] != 2:
            raise ValueError(f"true_sites must have shape (m, 2), got {tru.shape}")
    extent, unit = _extent(occ.shape, pixel_size_nm)
    scale = 1.0 if pixel_size_nm is None else float(pixel_size_nm)

    fig = _new_figure((7.0, 6.0))
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(
        occ,
        cmap="magma",
        vmin=0.0,
        vmax=max(float(np.nanmax(occ)), 1e-9) if np.any(np.isfinite(occ)) else 1.0,
        extent=extent,
        interpolation="nearest",
    )
    cb = fig.colorbar(im, ax=ax, shrink=0.85)
    cb.set_label("wall occupancy (fraction of time)")
    if np.any(rep > 0):
        yy = (np.arange(occ.shape[0])) * scale
        xx = (np.arange(occ.shape[1])) * scale
        ax.contour(xx, yy, (rep > 0).astype(float), levels=[0.5], colors=["cyan"], linewidths=1.0)
    handles = []
    from matplotlib.lines import Line2D

    if att.shape[0]:
        ax.scatter(att[:, 1] * scale, att[:, 0] * scale, marker="+", s=40, c="lime", lw=1.2)
    handles.append(Line2D([], [], ls="", marker="+", color="lime", label="attractive"))
    handles.append(Line2D([], [], color="cyan", label="repulsive"))
    if tru is not None:
        ax.scatter(
            tru[:, 1] * scale,
            tru[:, 0] * scale,
            marker="o",
            s=60,
            facecolors="none",
            edgecolors="deepskyblue",
            lw=1.0,
        )
        handles.append(
            Line2D([], [], ls="", marker="o", mfc="none", color="deepskyblue", label="true sites")
        )
    ax.set_xlim(-0.5 * scale, (occ.shape[1] - 0.5) * scale)
    ax.set_ylim((occ.shape[0] - 0.5) * scale, -0.5 * scale)
    ax.legend(handles=handles, loc="lower right", fontsize=7, framealpha=0.7)
    ax.set_xlabel(f"x ({unit})")
    ax.set_ylabel(f"y ({unit})")
    ax.set_title(
        title
        if title is not None
        else f"pinning landscape: {att.shape[0]} attractive sites, "
        f"{int(np.unique(rep[rep > 0]).size)} repulsive regions"
    )
    fig.tight_layout()
    return _render(fig, path)
