"""State dynamics of a CCI run: timeline, transitions, dwell times, network, agglomerates.

After clustering, every helicity pair ``i`` (in time order) carries a state label
``state[i]`` (``-1`` = unassigned) and a time ``time[i]`` in s. This module turns the
label sequence into the dynamical picture of coherent correlation imaging (Klose et
al., Nature 614, 256 (2023)): run-length segments (the state timeline), the i → j
transition counts, dwell-time statistics, the transition network (nodes placed so that
their distances follow the Pearson distances between the states, edges weighted by
transition counts) and its *agglomerates* — groups of states that are both similar and
frequently connected.

Conventions
-----------
* Unassigned pairs (``-1``) never split a segment: a run of ``-1`` between two runs of
  the same state is part of that state's segment; between two different states it hides
  the transition, whose time is then taken as the midpoint of the gap (flagged by
  ``Timeline.gap_before``).
* Segment boundaries are the midpoints between the last pair of one segment and the
  first pair of the next, so the segments tile the run without holes: with evenly spaced
  pairs (period dt) an interior segment of n pairs lasts n·dt. The first segment starts
  at the time of the first assigned pair and the last ends at the time of the last one;
  their durations are lower bounds (*censored*) and kept apart in the dwell statistics.

Everything here is pure numpy/networkx on in-memory arrays (no transport, no Tiled).

References
----------
C. Klose et al., Nature 614, 256 (2023) — coherent correlation imaging, state timeline,
transition network and agglomerates of a fluctuating magnetic maze.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import networkx as nx
import numpy as np

__all__ = [
    "DwellTimes",
    "Timeline",
    "agglomerates",
    "classical_mds",
    "dwell_times",
    "network_summary",
    "state_occupancy",
    "state_timeline",
    "transition_counts",
    "transition_network",
    "transition_table",
]


# --------------------------------------------------------------------------- timeline


@dataclass(frozen=True)
class Timeline:
    """Run-length segments of the per-pair state labels, in time order.

    All attributes are arrays of shape (n_segments,).

    Attributes
    ----------
    state : ndarray, int64
        State label of the segment (>= 0).
    start_pair, end_pair : ndarray, int64
        Index of the first and of the last (inclusive) *assigned* pair of the segment.
        Unassigned pairs inside a segment (a ``-1`` run between two runs of the same
        state) lie between them.
    start_time, end_time : ndarray, float64
        Segment boundaries in s: the midpoint between the last pair of the previous
        segment and the first pair of this one (and likewise at the end); the first
        segment starts at its first pair's time, the last ends at its last pair's time.
    gap_before : ndarray, int64
        Number of unassigned pairs between the previous segment and this one (0 for the
        first segment and for adjacent segments). A transition with ``gap_before > 0``
        happened somewhere inside the gap; its time is the gap's midpoint, uncertain by
        ± half the gap's duration.
    n_pairs : ndarray, int64
        Number of *assigned* pairs in the segment.
    """

    state: np.ndarray
    start_pair: np.ndarray
    end_pair: np.ndarray
    start_time: np.ndarray
    end_time: np.ndarray
    gap_before: np.ndarray
    n_pairs: np.ndarray

    def __len__(self) -> int:
        return int(self.state.shape[0])

    @property
    def duration(self) -> np.ndarray:
        """Segment durations in s, shape (n_segments,), float64."""
        return self.end_time - self.start_time

    @property
    def censored(self) -> np.ndarray:
        """True for the first and the last segment, shape (n_segments,), bool.

        Their true dwell started before / ended after the observation window, so their
        durations are lower bounds.
        """
        flags = np.zeros(len(self), dtype=bool)
        if len(self):
            flags[0] = flags[-1] = True
        return flags

    def as_columns(self) -> dict[str, np.ndarray]:
        """The segments as a dict of equal-length 1-D arrays (a Tiled table's columns)."""
        return {
            "state": self.state.copy(),
            "start_pair": self.start_pair.copy(),
            "end_pair": self.end_pair.copy(),
            "start_time": self.start_time.copy(),
            "end_time": self.end_time.copy(),
            "duration": self.duration,
            "gap_before": self.gap_before.copy(),
            "n_pairs": self.n_pairs.copy(),
            "censored": self.censored,
        }


def _as_labels(state: Any) -> np.ndarray:
    arr = np.asarray(state)
    if arr.ndim != 1:
        raise ValueError(f"state must be 1-D (one label per pair), got shape {arr.shape}")
    if (
        arr.size
        and not np.issubdtype(arr.dtype, np.integer)
        and (not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)))
    ):
        raise TypeError(f"state must hold integer labels, got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    if arr.size and arr.min() < -1:
        raise ValueError(f"state labels must be >= -1 (-1 = unassigned), got {arr.min()}")
    return arr


def state_timeline(state: np.ndarray, time: np.ndarray) -> Timeline:
    """Cut the per-pair state labels into run-length segments.

    Parameters
    ----------
    state : ndarray, shape (n_pairs,), int
        State label per helicity pair in time order; ``-1`` for unassigned pairs.
    time : ndarray, shape (n_pairs,), float
        Time of each pair in s, non-decreasing.

    Returns
    -------
    Timeline
        The segments. A ``-1`` run between two runs of the same state does not split it;
        between two different states the transition is placed at the midpoint of the
        gap and the segment records ``gap_before`` > 0 (the exact time is unknown).
        Leading and trailing ``-1`` runs are dropped. No assigned pair → an empty
        timeline.

    Raises
    ------
    ValueError
        If the arrays are not 1-D of equal length, a label is < -1, or a time is not
        finite or decreases.
    TypeError
        If the labels are not integers.

    References
    ----------
    C. Klose et al., Nature 614, 256 (2023) — the state timeline of a CCI run.
    """
    labels = _as_labels(state)
    t = np.asarray(time, dtype=np.float64)
    if t.shape != labels.shape:
        raise ValueError(f"time has shape {t.shape}, state has shape {labels.shape}")
    if not np.all(np.isfinite(t)):
        raise ValueError(f"time must be finite, got {t[~np.isfinite(t)][:3]}")
    if t.size > 1 and np.any(np.diff(t) < 0):
        i = int(np.argmax(np.diff(t) < 0))
        raise ValueError(f"time must be non-decreasing, got time[{i}]={t[i]} > time[{i + 1}]")

    idx = np.flatnonzero(labels >= 0)
    if idx.size == 0:
        e_i = np.zeros(0, dtype=np.int64)
        e_f = np.zeros(0, dtype=np.float64)
        return Timeline(e_i, e_i, e_i, e_f, e_f, e_i, e_i)
    lab = labels[idx]
    # Segment starts among the assigned pairs: where the label changes.
    change = np.flatnonzero(lab[1:] != lab[:-1]) + 1
    seg_first = np.concatenate([[0], change])  # positions in idx
    seg_last = np.concatenate([change - 1, [lab.size - 1]])
    start_pair = idx[seg_first]
    end_pair = idx[seg_last]
    seg_state = lab[seg_first]
    n_pairs = seg_last - seg_first + 1
    # Unassigned pairs inside a segment do not count, between segments they are the gap.
    gap_before = np.zeros(seg_state.size, dtype=np.int64)
    gap_before[1:] = start_pair[1:] - end_pair[:-1] - 1
    boundary = 0.5 * (t[end_pair[:-1]] + t[start_pair[1:]])
    start_time = np.concatenate([[t[start_pair[0]]], boundary])
    end_time = np.concatenate([boundary, [t[end_pair[-1]]]])
    return Timeline(
        state=seg_state.astype(np.int64),
        start_pair=start_pair.astype(np.int64),
        end_pair=end_pair.astype(np.int64),
        start_time=start_time,
        end_time=end_time,
        gap_before=gap_before,
        n_pairs=n_pairs.astype(np.int64),
    )


def state_occupancy(state: np.ndarray, n_states: int) -> np.ndarray:
    """Number of assigned pairs per state.

    Parameters
    ----------
    state : ndarray, shape (n_pairs,), int
        State label per pair, ``-1`` = unassigned (not counted).
    n_states : int
        Number of states K; labels must be < K.

    Returns
    -------
    ndarray, shape (K,), int64
        Pairs per state.

    Raises
    ------
    ValueError
        If a label is >= ``n_states`` or < -1.
    """
    labels = _as_labels(state)
    k = _check_n_states(n_states)
    assigned = labels[labels >= 0]
    if assigned.size and assigned.max() >= k:
        raise ValueError(f"state label {assigned.max()} >= n_states={k}")
    return np.bincount(assigned, minlength=k).astype(np.int64)


def _check_n_states(n_states: Any) -> int:
    if isinstance(n_states, bool) or not isinstance(n_states, (int, np.integer)):
        raise TypeError(f"n_states must be an int, got {n_states!r}")
    if n_states < 1:
        raise ValueError(f"n_states must be >= 1, got {n_states}")
    return int(n_states)


# ------------------------------------------------------------------------ transitions


def transition_counts(
    segments: Timeline, n_states: int, *, max_gap_pairs: int | None = None
) -> np.ndarray:
    """Count the i → j transitions between consecutive segments.

    Parameters
    ----------
    segments : Timeline
        From :func:`state_timeline`.
    n_states : int
        Number of states K; every segment state must be < K.
    max_gap_pairs : int or None
        If given, a transition across more than this many unassigned pairs is not
        counted (a long gap may hide several transitions). None counts them all.

    Returns
    -------
    ndarray, shape (K, K), int64
        ``counts[i, j]`` = number of transitions from state i to state j; the diagonal is
        zero (consecutive segments always differ).

    Raises
    ------
    ValueError
        If a segment's state is >= ``n_states`` or ``max_gap_pairs`` < 0.
    """
    k = _check_n_states(n_states)
    if len(segments) and segments.state.max() >= k:
        raise ValueError(f"segment state {segments.state.max()} >= n_states={k}")
    if max_gap_pairs is not None and max_gap_pairs < 0:
        raise ValueError(f"max_gap_pairs must be >= 0 or None, got {max_gap_pairs}")
    counts = np.zeros((k, k), dtype=np.int64)
    if len(segments) < 2:
        return counts
    src, dst = segments.state[:-1], segments.state[1:]
    keep = np.ones(src.size, dtype=bool)
    if max_gap_pairs is not None:
        keep = segments.gap_before[1:] <= max_gap_pairs
    np.add.at(counts, (src[keep], dst[keep]), 1)
    return counts


@dataclass(frozen=True)
class DwellTimes:
    """Dwell times per state, with the censored first/last segments kept apart.

    Attributes
    ----------
    durations : tuple of ndarray, length K, each shape (n_k,), float64
        Durations in s of all segments of state k, in time order (censored included).
    censored : tuple of ndarray, length K, each shape (n_k,), bool
        True for the first and the last segment of the run (durations are lower bounds).
    n : ndarray, shape (K,), int64
        Number of uncensored segments per state.
    n_censored : ndarray, shape (K,), int64
        Number of censored segments per state (the run's first and last segment: at most
        2 in total).
    mean_s, median_s : ndarray, shape (K,), float64
        Mean and median of the uncensored durations in s; NaN when ``n == 0``.
    """

    durations: tuple[np.ndarray, ...]
    censored: tuple[np.ndarray, ...]
    n: np.ndarray
    n_censored: np.ndarray
    mean_s: np.ndarray
    median_s: np.ndarray

    @property
    def n_states(self) -> int:
        """Number of states K."""
        return len(self.durations)

    def uncensored(self, k: int) -> np.ndarray:
        """Uncensored durations of state ``k`` in s, shape (n_k,), float64."""
        return self.durations[k][~self.censored[k]]

    def summary(self) -> dict[str, list[Any]]:
        """JSON-able per-state summary: state, n, n_censored, mean_s, median_s (NaN→None)."""

        def f(x: float) -> float | None:
            return None if not math.isfinite(x) else float(x)

        return {
            "state": list(range(self.n_states)),
            "n": [int(v) for v in self.n],
            "n_censored": [int(v) for v in self.n_censored],
            "mean_s": [f(v) for v in self.mean_s],
            "median_s": [f(v) for v in self.median_s],
        }


def dwell_times(segments: Timeline, n_states: int | None = None) -> DwellTimes:
    """Dwell-time statistics per state.

    Parameters
    ----------
    segments : Timeline
        From :func:`state_timeline`.
    n_states : int or None
        Number of states K; None → 1 + the largest state in ``segments`` (0 if empty).

    Returns
    -------
    DwellTimes
        Per-state durations (s) with the first and last segment of the run flagged as
        censored; mean and median over the uncensored segments only (a censored
        duration is a lower bound and would bias both low).

    Raises
    ------
    ValueError
        If a segment's state is >= ``n_states``.
    """
    if n_states is None:
        k = int(segments.state.max()) + 1 if len(segments) else 0
    else:
        k = _check_n_states(n_states)
        if len(segments) and segments.state.max() >= k:
            raise ValueError(f"segment state {segments.state.max()} >= n_states={k}")
    dur = segments.duration
    cens = segments.censored
    durations = tuple(dur[segments.state == s] for s in range(k))
    censored = tuple(cens[segments.state == s] for s in range(k))
    n = np.array([int(np.count_nonzero(~c)) for c in censored], dtype=np.int64)
    n_cens = np.array([int(np.count_nonzero(c)) for c in censored], dtype=np.int64)
    mean = np.full(k, np.nan)
    median = np.full(k, np.nan)
    for s in range(k):
        u = durations[s][~censored[s]]
        if u.size:
            mean[s] = float(u.mean())
            median[s] = float(np.median(u))
    return DwellTimes(durations, censored, n, n_cens, mean, median)


# ---------------------------------------------------------------------------- network


def _check_distance(state_distance: Any, k: int | None = None) -> np.ndarray:
    d = np.asarray(state_distance, dtype=np.float64)
    if d.ndim != 2 or d.shape[0] != d.shape[1]:
        raise ValueError(f"state_distance must be a square (K, K) matrix, got shape {d.shape}")
    if k is not None and d.shape[0] != k:
        raise ValueError(f"state_distance has shape {d.shape}, counts has K={k}")
    if not np.all(np.isfinite(d)):
        raise ValueError("state_distance must be finite (no NaN/inf)")
    if np.any(d < -1e-12):
        raise ValueError(f"state_distance must be >= 0, got minimum {d.min()}")
    if not np.allclose(d, d.T, atol=1e-9):
        raise ValueError("state_distance must be symmetric")
    return d


def _check_counts(counts: Any) -> np.ndarray:
    c = np.asarray(counts)
    if c.ndim != 2 or c.shape[0] != c.shape[1]:
        raise ValueError(f"counts must be a square (K, K) matrix, got shape {c.shape}")
    if c.size and (np.any(c < 0) or not np.all(np.isfinite(c))):
        raise ValueError(f"counts must be finite and >= 0, got minimum {c.min()}")
    return c


def classical_mds(distance: np.ndarray, n_components: int = 2) -> np.ndarray:
    """Classical (Torgerson) multidimensional scaling of a distance matrix.

    Parameters
    ----------
    distance : ndarray, shape (K, K), float
        Symmetric, non-negative distances (here Pearson distances 1 − r).
    n_components : int
        Embedding dimension.

    Returns
    -------
    ndarray, shape (K, n_components), float64
        Coordinates whose Euclidean distances approximate ``distance`` (exact when the
        matrix is Euclidean of rank <= n_components); components with a negative
        eigenvalue are set to 0.
    """
    d = _check_distance(distance)
    k = d.shape[0]
    if k == 1:
        return np.zeros((1, n_components))
    j = np.eye(k) - 1.0 / k
    b = -0.5 * j @ (d**2) @ j
    w, v = np.linalg.eigh(b)
    order = np.argsort(w)[::-1][:n_components]
    w, v = w[order], v[:, order]
    coords = v * np.sqrt(np.clip(w, 0.0, None))
    if coords.shape[1] < n_components:
        coords = np.pad(coords, ((0, 0), (0, n_components - coords.shape[1])))
    # Deterministic orientation: the largest |coordinate| of each axis is positive.
    for a in range(coords.shape[1]):
        i = int(np.argmax(np.abs(coords[:, a])))
        if coords[i, a] < 0:
            coords[:, a] *= -1
    return coords


def _stress(coords: np.ndarray, d: np.ndarray) -> float:
    """Kruskal stress-1 of a layout: sqrt(Σ (|x_i−x_j| − d_ij)² / Σ d_ij²)."""
    e = np.hypot(*(coords[:, None, :] - coords[None, :, :]).transpose(2, 0, 1))
    iu = np.triu_indices(d.shape[0], 1)
    den = float(np.sum(d[iu] ** 2))
    return float(np.sqrt(np.sum((e[iu] - d[iu]) ** 2) / den)) if den > 0 else 0.0


def transition_network(
    counts: np.ndarray,
    state_distance: np.ndarray,
    occupancy: np.ndarray,
    *,
    dwell: DwellTimes | np.ndarray | None = None,
    layout: str = "mds",
) -> nx.DiGraph:
    """The transition network of the states.

    Parameters
    ----------
    counts : ndarray, shape (K, K), int
        Transition counts i → j (:func:`transition_counts`).
    state_distance : ndarray, shape (K, K), float
        Pearson distances 1 − r between the states' mean difference holograms
        (symmetric, zero diagonal, in [0, 2]).
    occupancy : ndarray, shape (K,), int
        Assigned pairs per state (:func:`state_occupancy`).
    dwell : DwellTimes or ndarray of shape (K,) or None
        Mean dwell time per state in s (NaN when unknown); None → NaN for all.
    layout : {"mds", "kamada_kawai"}
        "mds": classical MDS of ``state_distance`` (numpy ``eigh``; exact for a
        Euclidean 2-D metric, deterministic). "kamada_kawai": networkx's stress
        minimisation with ``dist=state_distance``, started from the MDS layout (closer
        distances for non-Euclidean matrices, slower).

    Returns
    -------
    networkx.DiGraph
        Nodes 0..K−1 with attributes ``occupancy`` (int, pairs), ``mean_dwell_s``
        (float, NaN if unknown) and ``pos`` (tuple of 2 floats, layout coordinates in
        units of Pearson distance). One edge i → j per non-zero ``counts[i, j]`` with
        attributes ``count`` and ``weight`` (both the count). Graph attributes
        ``layout`` (the method) and ``layout_stress`` (Kruskal stress-1 of the layout
        against ``state_distance``; 0 = distances reproduced exactly).

    Raises
    ------
    ValueError
        If shapes disagree, counts are negative, distances are not a symmetric
        non-negative finite matrix, or ``layout`` is unknown.

    References
    ----------
    C. Klose et al., Nature 614, 256 (2023) — transition network of the maze states,
    nodes placed by Pearson correlation, edges by transition frequency.
    """
    c = _check_counts(counts)
    k = c.shape[0]
    d = _check_distance(state_distance, k)
    occ = np.asarray(occupancy)
    if occ.shape != (k,):
        raise ValueError(f"occupancy must have shape ({k},), got {occ.shape}")
    if isinstance(dwell, DwellTimes):
        if dwell.n_states != k:
            raise ValueError(f"dwell has {dwell.n_states} states, counts has K={k}")
        mean_dwell = dwell.mean_s
    elif dwell is None:
        mean_dwell = np.full(k, np.nan)
    else:
        mean_dwell = np.asarray(dwell, dtype=np.float64)
        if mean_dwell.shape != (k,):
            raise ValueError(f"dwell must have shape ({k},), got {mean_dwell.shape}")
    if layout not in ("mds", "kamada_kawai"):
        raise ValueError(f"layout must be 'mds' or 'kamada_kawai', got {layout!r}")

    coords = classical_mds(d, 2)
    if layout == "kamada_kawai" and k > 2:
        und = nx.complete_graph(k)
        dist = {i: {j: float(d[i, j]) for j in range(k)} for i in range(k)}
        pos0 = {i: coords[i] for i in range(k)}
        pos = nx.kamada_kawai_layout(und, dist=dist, pos=pos0)
        coords = np.array([pos[i] for i in range(k)], dtype=np.float64)
        coords -= coords.mean(axis=0)
        # networkx rescales to a unit box: restore the units of the distances by the
        # least-squares scale factor between layout and given distances.
        e = np.hypot(*(coords[:, None, :] - coords[None, :, :]).transpose(2, 0, 1))
        ee = float(np.sum(e * e))
        if ee > 0:
            coords *= float(np.sum(e * d)) / ee

    g = nx.DiGraph(layout=layout, layout_stress=_stress(coords, d))
    for i in range(k):
        g.add_node(
            i,
            occupancy=int(occ[i]),
            mean_dwell_s=float(mean_dwell[i]),
            pos=(float(coords[i, 0]), float(coords[i, 1])),
        )
    for i, j in zip(*np.nonzero(c), strict=True):
        g.add_edge(int(i), int(j), count=int(c[i, j]), weight=int(c[i, j]))
    return g


def agglomerates(
    counts: np.ndarray,
    state_distance: np.ndarray,
    *,
    resolution: float = 1.0,
    alpha: float = 0.5,
    seed: int = 0,
) -> list[set[int]]:
    """Group the states into agglomerates: similar and frequently connected states.

    The choice: an undirected weighted graph on the K states with

        w_ij = alpha · T_ij + (1 − alpha) · S_ij,   i ≠ j,

    where T_ij = 2 (c_ij + c_ji) / (deg_i + deg_j) is the symmetric transition rate
    normalised by the states' transition degrees (deg_i = Σ_j c_ij + c_ji), in [0, 1]:
    1 for two states that only ever switch to each other, independent of how long the
    run is; and S_ij = max(0, 1 − d_ij) is the Pearson similarity of the states (negative
    correlations count as no similarity). Communities of this graph are found by Louvain
    modularity maximisation (``networkx.community.louvain_communities``), deterministic
    for a given ``seed``. States with no transitions and no positive correlation end as
    singletons.

    Parameters
    ----------
    counts : ndarray, shape (K, K), int
        Transition counts i → j.
    state_distance : ndarray, shape (K, K), float
        Pearson distances 1 − r between the states.
    resolution : float
        Louvain resolution (> 0); larger gives more, smaller agglomerates.
    alpha : float
        Weight of transitions against similarity, in [0, 1] (1 = transitions only,
        0 = similarity only).
    seed : int
        Seed of the Louvain node order.

    Returns
    -------
    list of set of int
        The agglomerates, each a set of state indices, sorted by their smallest member;
        together a partition of 0..K−1.

    Raises
    ------
    ValueError
        If shapes disagree, ``alpha`` is outside [0, 1] or ``resolution`` <= 0.

    References
    ----------
    C. Klose et al., Nature 614, 256 (2023) — agglomerates of states in the transition
    network. V. D. Blondel et al., J. Stat. Mech. P10008 (2008) — Louvain method.
    """
    c = _check_counts(counts).astype(np.float64)
    k = c.shape[0]
    d = _check_distance(state_distance, k)
    if not (0.0 <= alpha <= 1.0):
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if not (resolution > 0):
        raise ValueError(f"resolution must be > 0, got {resolution}")
    w = _agglomerate_weights(c, d, alpha)
    g = nx.Graph()
    g.add_nodes_from(range(k))
    iu = np.triu_indices(k, 1)
    for i, j, wij in zip(iu[0], iu[1], w[iu], strict=True):
        if wij > 0:
            g.add_edge(int(i), int(j), weight=float(wij))
    if g.number_of_edges() == 0:
        return [{i} for i in range(k)]
    comms = nx.community.louvain_communities(g, weight="weight", resolution=resolution, seed=seed)
    return sorted(({int(n) for n in s} for s in comms), key=min)


def _agglomerate_weights(c: np.ndarray, d: np.ndarray, alpha: float) -> np.ndarray:
    sym = c + c.T
    np.fill_diagonal(sym, 0.0)
    deg = sym.sum(axis=1)
    den = deg[:, None] + deg[None, :]
    t = np.divide(2.0 * sym, den, out=np.zeros_like(sym), where=den > 0)
    s = np.clip(1.0 - d, 0.0, None)
    np.fill_diagonal(s, 0.0)
    return alpha * t + (1.0 - alpha) * s


def _json_float(x: float) -> float | None:
    return float(x) if math.isfinite(float(x)) else None


def network_summary(g: nx.DiGraph, agglomerates: list[set[int]] | None = None) -> dict[str, Any]:
    """A JSON-able description of the transition network.

    Parameters
    ----------
    g : networkx.DiGraph
        From :func:`transition_network`.
    agglomerates : list of set of int or None
        From :func:`agglomerates`; None → no membership.

    Returns
    -------
    dict
        ``{"n_states", "layout", "layout_stress", "nodes": [{"state", "occupancy",
        "mean_dwell_s", "x", "y", "agglomerate"}], "edges": [{"source", "target",
        "count"}], "agglomerates": [[state, ...], ...]}`` with plain Python ints/floats;
        NaN becomes None and ``agglomerate`` is None for a state in no agglomerate.

    Raises
    ------
    ValueError
        If an agglomerate names a state that is not a node, or a state is in two.
    """
    member: dict[int, int] = {}
    groups = [sorted(int(s) for s in a) for a in (agglomerates or [])]
    for a, states in enumerate(groups):
        for s in states:
            if s not in g:
                raise ValueError(f"agglomerate {a} names state {s}, not a node of the network")
            if s in member:
                raise ValueError(f"state {s} is in agglomerates {member[s]} and {a}")
            member[s] = a
    nodes = []
    for n, attrs in sorted(g.nodes(data=True)):
        x, y = attrs.get("pos", (math.nan, math.nan))
        nodes.append(
            {
                "state": int(n),
                "occupancy": int(attrs.get("occupancy", 0)),
                "mean_dwell_s": _json_float(attrs.get("mean_dwell_s", math.nan)),
                "x": _json_float(x),
                "y": _json_float(y),
                "agglomerate": member.get(int(n)),
            }
        )
    edges = [
        {"source": int(u), "target": int(v), "count": int(a.get("count", a.get("weight", 0)))}
        for u, v, a in sorted(g.edges(data=True))
    ]
    return {
        "n_states": g.number_of_nodes(),
        "layout": g.graph.get("layout"),
        "layout_stress": _json_float(g.graph.get("layout_stress", math.nan)),
        "nodes": nodes,
        "edges": edges,
        "agglomerates": groups,
    }


def transition_table(counts: np.ndarray) -> dict[str, np.ndarray]:
    """The non-zero transition counts as table columns (e.g. for a Tiled table).

    Parameters
    ----------
    counts : ndarray, shape (K, K), int
        Transition counts i → j.

    Returns
    -------
    dict of str to ndarray
        ``from_state``, ``to_state``, ``count``: equal-length 1-D int64 arrays, one row
        per non-zero entry in row-major order (from_state, then to_state).
    """
    c = _check_counts(counts)
    i, j = np.nonzero(c)
    return {
        "from_state": i.astype(np.int64),
        "to_state": j.astype(np.int64),
        "count": c[i, j].astype(np.int64),
    }
