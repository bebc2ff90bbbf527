"""From internal modes to states: single-frame misassignment, grouping, frame assignment.

Klose et al., Nature 614, 256 (2023), Methods: the internal modes found by the
clustering can differ by less than a single frame resolves. For every two modes the
expected rate at which a single frame of one would be assigned to the other is
estimated; modes confused more often than a threshold (1 %) are grouped into one
*state*, and finally every frame is assigned to the state it correlates best with.

Templates and the attenuation-corrected score
---------------------------------------------
A mode's mean feature vector is noisy: averaging n frames of signal amplitude c (the
mean pairwise correlation within the mode is c²) leaves a noise of norm ≈ √(1/n). The
plain Pearson correlation of a frame with that mean is therefore attenuated by
√(c² + (1 − c²)/n)/c, more for small modes — a frame of a 20-frame mode can correlate
better with the 100-frame mean of its sibling than with its own mode's mean. All
comparisons here use the *corrected* score (Spearman's correction for attenuation)

    s_k(x) = x·S_k / (n_k·ĉ_k),   ĉ_k² = (|S_k|² − Σ_{i∈k} |x_i|²) / (n_k (n_k − 1)),

with S_k the sum of the mode's feature vectors and ĉ_k² its mean pairwise correlation
(an unbiased estimate of the squared signal norm). In expectation s_k(x) = |μ_x|·ρ(μ_x,
μ_k) whatever the mode sizes, so a frame scores highest on its own state. For a frame
that is itself a member of mode k, the score uses the mode without it (leave-one-out:
S_k − x, n_k − 1), otherwise the frame's own noise (x·x = 1) would inflate it by
1/(n_k ĉ_k).

Modes and states
----------------
The natural-division test of :func:`.clustering.natural_modes` measures the separation
of two clusters in units of a single frame's noise, with noisy cluster means — the same
quantity this module's misassignment estimate turns into a rate, P ≈ Φ(−z). Divisions
passing it (z > 3.3) are therefore rarely confused above 1 %: grouping mostly merges
modes whose division was not clean (small fragments, modes of one state split around
frames the tree merged early). In the simulator internal modes and states coincide;
a 72-modes-in-32-states structure as in the paper appears only where modes that split
naturally still share more than 1 % of single frames (e.g. frame-to-frame intensity
variations that the noise-only z ignores but the misassignment spread includes).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Self

import numpy as np

if TYPE_CHECKING:
    from .clustering import ModeResult

__all__ = [
    "DEFAULT_MIN_SCORE_FRACTION",
    "DEFAULT_THRESHOLD",
    "PIPELINE_STEPS",
    "CCIResult",
    "Misassignment",
    "Templates",
    "assign_frames",
    "group_states",
    "misassignment_matrix",
    "mode_templates",
    "refine_modes",
    "run_cci_clustering",
]

#: Misassignment rate above which two modes are one state (Klose et al. 2023: 1 %).
DEFAULT_THRESHOLD = 0.01
#: A frame is left unassigned when its score is below this fraction of its state's
#: median score (see :func:`assign_frames`).
DEFAULT_MIN_SCORE_FRACTION = 0.5
#: Floor of the estimated signal amplitude ĉ (modes without common signal).
_MIN_SIGNAL = 1e-3


@dataclass
class Templates:
    """Sums of the feature vectors of K modes: what the corrected score needs.

    Attributes
    ----------
    sums : ndarray, shape (K, M), float64
        S_k = Σ_{i∈k} x_i.
    counts : ndarray, shape (K,), int64
        n_k, members per mode.
    sq_sums : ndarray, shape (K,), float64
        Σ_{i∈k} |x_i|² (= n_k for unit rows).
    signal : ndarray, shape (K,), float64
        ĉ_k, the estimated signal amplitude (√ of the mean pairwise correlation within
        the mode, floored at 1e-3); dimensionless, a correlation.
    """

    sums: np.ndarray
    counts: np.ndarray
    sq_sums: np.ndarray
    signal: np.ndarray

    @property
    def n_modes(self) -> int:
        """K."""
        return int(self.counts.shape[0])

    def scores(
        self,
        X: np.ndarray,
        member_of: np.ndarray | None = None,
        rows: np.ndarray | None = None,
    ) -> np.ndarray:
        """Corrected scores s_k(x) of frames against every template.

        Parameters
        ----------
        X : ndarray, shape (n, M), float32
            Centred unit-norm feature rows.
        member_of : ndarray, shape (n,), int, optional
            Template each frame is a member of (−1 for none): those scores are taken
            leave-one-out.
        rows : ndarray of int, optional
            Score only these frames (gathered chunk by chunk, X is never copied whole).

        Returns
        -------
        ndarray, shape (len(rows) or n, K), float64
            Dimensionless; ≈ the frame's signal amplitude (≈ 0.5 in the default
            simulation) on its own state, lower on others.

        Raises
        ------
        ValueError
            If X does not have the templates' number of pixels, or ``member_of`` is
            out of range.
        """
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[1] != self.sums.shape[1]:
            raise ValueError(
                f"features have shape {X.shape}, the templates have {self.sums.shape[1]} pixels"
            )
        idx = np.arange(X.shape[0]) if rows is None else np.asarray(rows, dtype=np.int64)
        member = None
        if member_of is not None:
            member = _check_labels(member_of, X.shape[0], self.n_modes)
        s32 = np.ascontiguousarray(self.sums.T, dtype=np.float32)
        norm2 = np.einsum("ij,ij->i", self.sums, self.sums)
        out = np.empty((idx.size, self.n_modes), dtype=np.float64)
        step = _chunk_rows(X.shape[1])
        for c in range(0, idx.size, step):
            chunk = np.asarray(X[idx[c : c + step]], dtype=np.float32)
            dots = (chunk @ s32).astype(np.float64)  # x_i·S_k
            block = out[c : c + step]
            np.divide(dots, self.counts * self.signal, out=block)
            if member is None:
                continue
            k = member[idx[c : c + step]]
            own = np.flatnonzero(k >= 0)
            if own.size:
                sq = np.einsum("ij,ij->i", chunk[own], chunk[own], dtype=np.float64)
                block[own, k[own]] = self._loo(dots[own, k[own]], sq, k[own], norm2)
        return out

    def _loo(self, dot: np.ndarray, sq: np.ndarray, k: np.ndarray, norm2: np.ndarray) -> np.ndarray:
        """Leave-one-out score of member frames (x·S_k = dot, |x|² = sq) on their mode k."""
        n = self.counts[k].astype(np.float64)
        s_norm2 = norm2[k] - 2.0 * dot + sq  # |S_k − x|²
        rest_sq = self.sq_sums[k] - sq
        with np.errstate(invalid="ignore", divide="ignore"):
            c2 = (s_norm2 - rest_sq) / ((n - 1.0) * (n - 2.0))
            c = np.sqrt(np.maximum(c2, _MIN_SIGNAL**2))
            score = (dot - sq) / ((n - 1.0) * c)
        return np.where(n >= 3, score, -np.inf)


def _check_features(X: Any) -> np.ndarray:
    from .correlation import _check_features as check

    return check(X)


def _chunk_rows(n_pixels: int) -> int:
    from .correlation import _chunk_rows as rows

    return rows(n_pixels)


def _sum_rows_by_label(
    X: np.ndarray, labels: np.ndarray, n_labels: int, order: np.ndarray | None = None
) -> np.ndarray:
    """Σ of the rows of X per label (−1 ignored), float64 (n_labels, M), chunked.

    With ``order``, row ``order[p]`` carries ``labels[p]``.
    """
    sums = np.zeros((n_labels, X.shape[1]), dtype=np.float64)
    step = _chunk_rows(X.shape[1])
    n = labels.shape[0]
    for c in range(0, n, step):
        lab = labels[c : c + step]
        rows = np.arange(c, min(c + step, n)) if order is None else order[c : c + step]
        keep = np.flatnonzero(lab >= 0)
        if keep.size == 0:
            continue
        srt = keep[np.argsort(lab[keep], kind="stable")]
        lab_sorted = lab[srt]
        starts = np.flatnonzero(np.r_[True, lab_sorted[1:] != lab_sorted[:-1]])
        part = np.add.reduceat(X[rows[srt]], starts, axis=0, dtype=np.float64)
        sums[lab_sorted[starts]] += part
    return sums


def _check_labels(labels: Any, n: int, n_modes: int | None = None) -> np.ndarray:
    lab = np.asarray(labels)
    if lab.shape != (n,):
        raise ValueError(f"labels must have shape ({n},), got {lab.shape}")
    if not np.issubdtype(lab.dtype, np.integer):
        raise TypeError(f"labels must be integers, got dtype {lab.dtype}")
    if lab.size and lab.min() < -1:
        raise ValueError(f"labels must be >= -1 (−1: none), got minimum {lab.min()}")
    if n_modes is not None and lab.size and lab.max() >= n_modes:
        raise ValueError(f"labels reach {lab.max()}, but there are only {n_modes} modes")
    return lab.astype(np.int64)


def mode_templates(X: np.ndarray, labels: np.ndarray, n_modes: int | None = None) -> Templates:
    """Sum the feature vectors of each mode (frames labelled −1 are ignored).

    Parameters
    ----------
    X : ndarray, shape (n, M), float32
        Centred unit-norm feature rows.
    labels : ndarray, shape (n,), int
        Mode of every frame, 0 … K − 1, or −1.
    n_modes : int, optional
        K; default ``labels.max() + 1``.

    Returns
    -------
    Templates

    Raises
    ------
    ValueError
        If a mode 0 … K − 1 has fewer than 2 members (no signal estimate), or the shapes
        disagree.
    """
    X = _check_features(X)
    lab = _check_labels(labels, X.shape[0])
    K = int(lab.max()) + 1 if n_modes is None else int(n_modes)
    if K < 1:
        raise ValueError("no modes: every label is -1")
    counts = np.bincount(lab[lab >= 0], minlength=K).astype(np.int64)
    if np.any(counts < 2):
        raise ValueError(f"modes need >= 2 members, mode sizes are {counts.tolist()}")
    sums = _sum_rows_by_label(X, lab, K)
    sq = np.einsum("ij,ij->i", X, X, dtype=np.float64)
    sq_sums = np.bincount(lab[lab >= 0], weights=sq[lab >= 0], minlength=K)
    norm2 = np.einsum("ij,ij->i", sums, sums)
    c2 = (norm2 - sq_sums) / (counts * (counts - 1.0))
    signal = np.sqrt(np.maximum(c2, _MIN_SIGNAL**2))
    return Templates(sums=sums, counts=counts, sq_sums=sq_sums, signal=signal)


def refine_modes(
    X: np.ndarray,
    labels: np.ndarray,
    *,
    groups: np.ndarray | None = None,
    max_iterations: int = 10,
    min_mode_size: int = 3,
) -> tuple[np.ndarray, int]:
    """Move frames to the mode they score best on (leave-one-out), between groups.

    The average-linkage tree never undoes an early merge, so a mode found by
    :func:`~speckleflow.services.cci.clustering.natural_modes` can hold a few frames
    that correlate better with another mode. Each iteration scores every labelled
    frame against every mode template (its own leave-one-out) and moves it to its best
    mode if that mode is in another *group* (typically the preliminary states of
    :func:`group_states`): modes of one group are interchangeable for single frames,
    and moving frames among them would only trade noise — two templates of one state
    would drift towards an arbitrary halving of it. It stops when no frame moves.
    Frames labelled −1 stay −1. A mode that shrinks below ``min_mode_size`` is
    dissolved (its frames go to their best remaining mode, whatever its group).

    Parameters
    ----------
    X : ndarray, shape (n, M), float32
        Centred unit-norm feature rows.
    labels : ndarray, shape (n,), int
        Initial modes 0 … K − 1, −1 for outliers.
    groups : ndarray, shape (K,), int, optional
        Group of every mode; default: every mode its own group.
    max_iterations : int
        ≥ 0.
    min_mode_size : int
        ≥ 3 (the leave-one-out signal estimate needs two other members).

    Returns
    -------
    labels : ndarray, shape (n,), int32
        Refined modes, renumbered 0 … K′ − 1 by decreasing size (dissolved modes
        removed), −1 unchanged.
    iterations : int
        Iterations run.

    Raises
    ------
    ValueError
        For out-of-range parameters, labels or groups.
    """
    X = _check_features(X)
    lab = _check_labels(labels, X.shape[0]).copy()
    if int(max_iterations) != max_iterations or max_iterations < 0:
        raise ValueError(f"max_iterations must be an integer >= 0, got {max_iterations!r}")
    if int(min_mode_size) != min_mode_size or min_mode_size < 3:
        raise ValueError(f"min_mode_size must be an integer >= 3, got {min_mode_size!r}")
    rows = np.flatnonzero(lab >= 0)
    K = int(lab.max()) + 1 if rows.size else 0
    if groups is None:
        group = np.arange(K)
    else:
        group = np.asarray(groups)
        if group.shape != (K,):
            raise ValueError(f"groups must have shape ({K},) (one per mode), got {group.shape}")
    alive = np.ones(K, dtype=bool)
    it = 0
    for it in range(1, int(max_iterations) + 2):
        cur = lab[rows]
        alive &= np.bincount(cur, minlength=K) >= min_mode_size
        keep = np.flatnonzero(alive)
        if keep.size == 0:
            break
        last = it > max_iterations  # only dissolve what became too small
        dissolved = ~alive[cur]
        if last and not dissolved.any():
            break
        sub = np.full(K, -1, dtype=np.int64)
        sub[keep] = np.arange(keep.size)
        member = np.where(lab >= 0, sub[np.maximum(lab, 0)], -1)
        templates = mode_templates(X, member, keep.size)
        best = keep[np.argmax(templates.scores(X, member, rows=rows), axis=1)]
        move = (best != cur) & (dissolved | (group[best] != group[cur]))
        if last:
            move &= dissolved
        lab[rows[move]] = best[move]
        if not move.any() or last:
            break
    return _renumber(lab).astype(np.int32), min(it, int(max_iterations))


def _renumber(labels: np.ndarray) -> np.ndarray:
    """Labels 0 … K − 1 by decreasing count (ties: first occurrence), −1 kept."""
    lab = np.asarray(labels, dtype=np.int64)
    valid = lab >= 0
    if not valid.any():
        return lab.copy()
    uniq, first, counts = np.unique(lab[valid], return_index=True, return_counts=True)
    order = np.lexsort((first, -counts))
    new = np.empty(int(uniq.max()) + 1, dtype=np.int64)
    new[uniq[order]] = np.arange(len(uniq))
    out = lab.copy()
    out[valid] = new[lab[valid]]
    return out


@dataclass
class Misassignment:
    """Estimated single-frame misassignment rates between modes.

    Attributes
    ----------
    P : ndarray, shape (K, K), float64
        P[i, j] = Φ(−m_ij / s_ij): normal fit of Δ = s_i^(loo)(x) − s_j(x) over the
        frames x of mode i (m: location, s: scale); the rate at which a frame of mode i
        scores higher on mode j than on its own. Diagonal 0.
    empirical : ndarray, shape (K, K), float64
        Fraction of the frames of mode i with Δ < 0 (resolution 1/n_i).
    location, scale : ndarray, shape (K, K), float64
        m_ij and s_ij.
    counts : ndarray, shape (K,), int64
        Frames per mode.
    method : str
        "leave-one-out" or "split-half".
    """

    P: np.ndarray
    empirical: np.ndarray
    location: np.ndarray
    scale: np.ndarray
    counts: np.ndarray
    method: str


def misassignment_matrix(
    X: np.ndarray,
    mode_labels: np.ndarray,
    *,
    method: str = "leave-one-out",
    robust: bool = True,
    rng: np.random.Generator | int | None = None,
) -> Misassignment:
    """Expected single-frame misassignment rate for every ordered pair of modes.

    A frame is assigned to the mode it scores best on (attenuation-corrected
    correlation with the mode mean, module docstring). For the frames x of mode i and
    another mode j, Δ = s_i(x) − s_j(x) with s_i computed *without x*: leave-one-out
    (the mode mean of the other n_i − 1 frames) or split-half (the frames of every mode
    are split at random into two halves and each frame is scored against the templates
    built from the other half). A normal fitted to the
    Δ of mode i gives P_ij = Φ(−mean/std) (Klose et al. 2023, Methods). Without the
    exclusion, a frame's own noise would raise s_i by 1/(n_i ĉ_i) and bias P low.

    Leave-one-out estimates the rate for a new frame classified against the means of
    all the mode's frames (n_i − 1 ≈ n_i); split-half the rate against means of half
    the frames (higher when the template noise matters, i.e. for small modes).

    Parameters
    ----------
    X : ndarray, shape (n, M), float32
        Centred unit-norm feature rows.
    mode_labels : ndarray, shape (n,), int
        Mode 0 … K − 1 of every frame, −1 for frames to ignore. Every mode needs ≥ 3
        frames (≥ 6 for split-half).
    method : {"leave-one-out", "split-half"}
        How the frame is kept out of its own mode's mean.
    robust : bool
        Fit the normal by median and 1.4826·MAD instead of mean and standard deviation,
        so a few hop pairs or frames the tree misplaced do not widen it.
    rng : numpy.random.Generator or int, optional
        For the split-half draw.

    Returns
    -------
    Misassignment

    Raises
    ------
    ValueError
        For an unknown method, a mode with too few frames, or mismatched shapes.
    """
    from scipy.special import ndtr

    X = _check_features(X)
    lab = _check_labels(mode_labels, X.shape[0])
    if method not in ("leave-one-out", "split-half"):
        raise ValueError(f"method must be 'leave-one-out' or 'split-half', got {method!r}")
    K = int(lab.max()) + 1
    if K < 1:
        raise ValueError("no modes: every label is -1")
    counts = np.bincount(lab[lab >= 0], minlength=K).astype(np.int64)
    need = 3 if method == "leave-one-out" else 6
    if np.any(counts < need):
        raise ValueError(
            f"{method} needs >= {need} frames per mode, mode sizes are {counts.tolist()}"
        )
    rows = np.flatnonzero(lab >= 0)
    own = lab[rows]
    if method == "leave-one-out":
        templates = mode_templates(X, lab, K)
        s = templates.scores(X, lab, rows=rows)
    else:
        gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        half = np.zeros(X.shape[0], dtype=bool)
        for k in range(K):
            members = np.flatnonzero(lab == k)
            half[gen.permutation(members)[: len(members) // 2]] = True
        s = np.empty((rows.size, K), dtype=np.float64)
        for h in (True, False):
            t = mode_templates(X, np.where(half == h, lab, -1), K)  # templates of half h
            sel = half[rows] != h  # frames of the other half
            s[sel] = t.scores(X, rows=rows[sel])
    delta = s[np.arange(rows.size), own][:, None] - s  # (n_rows, K)
    P = np.zeros((K, K))
    empirical = np.zeros((K, K))
    loc = np.zeros((K, K))
    scale = np.zeros((K, K))
    for i in range(K):
        d = delta[own == i]
        if robust:
            m = np.median(d, axis=0)
            sd = 1.4826 * np.median(np.abs(d - m), axis=0)
        else:
            m = d.mean(axis=0)
            sd = d.std(axis=0, ddof=1)
        loc[i], scale[i] = m, sd
        with np.errstate(divide="ignore", invalid="ignore"):
            P[i] = np.where(sd > 0, ndtr(-m / sd), (m <= 0).astype(float))
        empirical[i] = np.mean(d < 0, axis=0)
    np.fill_diagonal(P, 0.0)
    np.fill_diagonal(empirical, 0.0)
    return Misassignment(
        P=P, empirical=empirical, location=loc, scale=scale, counts=counts, method=method
    )


def group_states(
    P: np.ndarray,
    threshold: float = DEFAULT_THRESHOLD,
    *,
    mode_sizes: np.ndarray | None = None,
) -> np.ndarray:
    """Group modes that single frames confuse into states.

    Modes i and j are linked when max(P_ij, P_ji) > ``threshold``; the connected
    components of that graph are the states (Klose et al. 2023, Methods: 1 %).

    Parameters
    ----------
    P : ndarray, shape (K, K), float
        Misassignment rates (:func:`misassignment_matrix`), in [0, 1].
    threshold : float
        In [0, 1).
    mode_sizes : ndarray, shape (K,), optional
        Frames per mode: states are numbered by decreasing number of frames (default:
        by decreasing number of modes), ties by their lowest mode.

    Returns
    -------
    ndarray, shape (K,), int32
        State of every mode, 0 … S − 1.

    Raises
    ------
    ValueError
        If P is not square, holds values outside [0, 1], or the threshold or
        ``mode_sizes`` is invalid.
    """
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import connected_components

    P = np.asarray(P, dtype=np.float64)
    if P.ndim != 2 or P.shape[0] != P.shape[1]:
        raise ValueError(f"P must be square (K, K), got shape {P.shape}")
    if not np.all(np.isfinite(P)) or P.min(initial=0) < 0 or P.max(initial=0) > 1:
        raise ValueError("P must hold rates in [0, 1]")
    if not (0 <= threshold < 1):
        raise ValueError(f"threshold must be in [0, 1), got {threshold!r}")
    K = P.shape[0]
    sizes = np.ones(K) if mode_sizes is None else np.asarray(mode_sizes, dtype=np.float64)
    if sizes.shape != (K,):
        raise ValueError(f"mode_sizes must have shape ({K},), got {sizes.shape}")
    linked = np.maximum(P, P.T) > threshold
    np.fill_diagonal(linked, False)
    _, comp = connected_components(csr_matrix(linked), directed=False)
    n_states = int(comp.max()) + 1 if K else 0
    totals = np.bincount(comp, weights=sizes, minlength=n_states)
    first = np.full(n_states, K)
    np.minimum.at(first, comp, np.arange(K))
    order = np.lexsort((first, -totals))
    new = np.empty(n_states, dtype=np.int64)
    new[order] = np.arange(n_states)
    return new[comp].astype(np.int32)


def assign_frames(
    X: np.ndarray,
    templates: Templates,
    state_of_mode: np.ndarray,
    *,
    member_of: np.ndarray | None = None,
    min_score_fraction: float = DEFAULT_MIN_SCORE_FRACTION,
    mad_factor: float | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Assign every frame to the internal mode — hence the state — it scores best on.

    Every frame, outliers of the clustering included, is scored against every mode
    template (attenuation-corrected correlation, module docstring; leave-one-out for
    the frames the template was built from) and takes the best mode and that mode's
    state. A frame is then left unassigned (−1) when it does not fit its state: its
    score is below ``min_score_fraction`` × the median score of the state's frames —
    its difference hologram shares less than that fraction of the state's signal (a
    pair that spent less than about half its time in the state, a blank or unknown
    frame) — or, with ``mad_factor``, below median − mad_factor·1.4826·MAD of those
    scores, a stricter cut that also rejects pairs with a large part of another state.
    Measured on 3 000 simulated pairs (seed 0, 280 K, 0.5 s; 129 pairs contain a hop,
    scores 0.488 ± 0.010): the default leaves 2 pairs unassigned (99.93 % assigned),
    ``min_score_fraction=0.75`` 10 (99.67 %), ``mad_factor=5`` 19 (99.37 %); never a
    hop-free pair.

    Parameters
    ----------
    X : ndarray, shape (n, M), float32
        Centred unit-norm feature rows.
    templates : Templates
        Of the K internal modes (:func:`mode_templates`).
    state_of_mode : ndarray, shape (K,), int
        From :func:`group_states`.
    member_of : ndarray, shape (n,), int, optional
        Mode each frame's features were summed into for ``templates`` (−1 for none).
    min_score_fraction : float
        In [0, 1).
    mad_factor : float, optional
        > 0 to enable the robust-spread cut.

    Returns
    -------
    state : ndarray, shape (n,), int32
        State 0 … S − 1, or −1.
    internal_mode : ndarray, shape (n,), int32
        Best mode (also for unassigned frames: which mode they came closest to).
    score : ndarray, shape (n,), float32
        The best score (dimensionless).

    Raises
    ------
    ValueError
        For inconsistent shapes or parameters out of range.
    """
    X = _check_features(X)
    states = np.asarray(state_of_mode, dtype=np.int64)
    if states.shape != (templates.n_modes,):
        raise ValueError(
            f"state_of_mode must have shape ({templates.n_modes},), got {states.shape}"
        )
    if not (0 <= min_score_fraction < 1):
        raise ValueError(f"min_score_fraction must be in [0, 1), got {min_score_fraction!r}")
    if mad_factor is not None and not mad_factor > 0:
        raise ValueError(f"mad_factor must be > 0 or None, got {mad_factor!r}")
    n = X.shape[0]
    mode = np.empty(n, dtype=np.int64)
    score = np.empty(n, dtype=np.float64)
    member = None if member_of is None else _check_labels(member_of, n, templates.n_modes)
    step = _chunk_rows(X.shape[1])
    for c in range(0, n, step):
        s = templates.scores(X, member, rows=np.arange(c, min(c + step, n)))
        best = np.argmax(s, axis=1)
        mode[c : c + step] = best
        score[c : c + step] = s[np.arange(len(best)), best]
    state = states[mode].copy()
    for st in np.unique(state):
        sel = state == st
        med = float(np.median(score[sel]))
        cut = min_score_fraction * med
        if mad_factor is not None:
            mad = 1.4826 * float(np.median(np.abs(score[sel] - med)))
            cut = max(cut, med - mad_factor * mad)
        state[sel & (score < cut)] = -1
    return state.astype(np.int32), mode.astype(np.int32), score.astype(np.float32)


ProgressCallback = Callable[[str, int, int], None]

#: Pipeline steps in order, as reported to ``progress``.
PIPELINE_STEPS = (
    "correlation",
    "linkage",
    "modes",
    "refine",
    "misassignment",
    "states",
    "assignment",
    "view",
)


@dataclass
class CCIResult:
    """Everything the CCI clustering of one series produces.

    Attributes
    ----------
    state : ndarray, shape (n,), int32
        State of every pair, 0 … S − 1 by decreasing number of pairs; −1 unassigned.
    internal_mode : ndarray, shape (n,), int32
        Internal mode of every pair (best-scoring mode, also for unassigned pairs),
        0 … K − 1, numbered state by state (the modes of state 0 first, each state's
        modes by decreasing size).
    score : ndarray, shape (n,), float32
        Attenuation-corrected correlation with the mode mean (≈ signal amplitude).
    state_of_mode : ndarray, shape (K,), int32
        State of every mode.
    mode_counts : ndarray, shape (K,), int64
        Assigned pairs per mode.
    state_counts : ndarray, shape (S,), int64
        Assigned pairs per state.
    misassignment : Misassignment
        Between the K modes (``misassignment.P`` is the K × K matrix).
    linkage : ndarray, shape (n − 1, 4), float64
        Average-linkage tree (scipy format).
    modes : ModeResult
        The natural cut of the tree (before refinement), with its split statistics.
    correlation_view : ndarray, shape (B, B), float32
        Block-mean Pearson correlation, B = min(n, view_size), pairs in recording order.
    correlation_view_sorted : ndarray, shape (B, B), float32
        The same with the pairs sorted by state, then mode (unassigned last).
    parameters : dict
        Every parameter, JSON-able.
    timings : dict
        Seconds per step.
    """

    state: np.ndarray
    internal_mode: np.ndarray
    score: np.ndarray
    state_of_mode: np.ndarray
    mode_counts: np.ndarray
    state_counts: np.ndarray
    misassignment: Misassignment
    linkage: np.ndarray
    modes: ModeResult
    correlation_view: np.ndarray
    correlation_view_sorted: np.ndarray
    parameters: dict[str, Any]
    timings: dict[str, float]

    @property
    def n_states(self) -> int:
        """S."""
        return int(self.state_counts.shape[0])

    @property
    def n_modes(self) -> int:
        """K."""
        return int(self.state_of_mode.shape[0])

    @property
    def assigned_fraction(self) -> float:
        """Fraction of pairs with a state."""
        return float(np.mean(self.state >= 0)) if self.state.size else 0.0


def run_cci_clustering(
    X: np.ndarray,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    min_mode_size: int | None = None,
    z_threshold: float | None = None,
    refine_iterations: int = 10,
    min_score_fraction: float = DEFAULT_MIN_SCORE_FRACTION,
    block_rows: int | None = None,
    view_size: int = 1024,
    client: Any | None = None,
    progress: ProgressCallback | None = None,
) -> CCIResult:
    """The CCI clustering of Klose et al. 2023 (Methods) on feature vectors, end to end.

    1. Pearson distances of all pairs (:func:`.correlation.pearson_distance_condensed`);
    2. average-linkage tree, in place (:func:`.clustering.average_linkage`);
    3. its natural divisions → internal modes (:func:`.clustering.natural_modes`);
    4. mode membership refined by leave-one-out reassignment between preliminary
       states (:func:`misassignment_matrix`, :func:`group_states`, :func:`refine_modes`);
    5. single-frame misassignment between modes (:func:`misassignment_matrix`);
    6. modes confused above ``threshold`` → states (:func:`group_states`);
    7. every pair, outliers included, assigned to its best mode and state
       (:func:`assign_frames`);
    8. block-averaged correlation matrices for display
       (:func:`.correlation.downsampled_matrix`).

    Parameters
    ----------
    X : ndarray, shape (n, M), float32
        Feature vectors (:func:`.features.pair_features`), centred unit-norm rows,
        n ≥ 2·min_mode_size.
    threshold : float
        Misassignment rate above which modes are one state, in [0, 1).
    min_mode_size : int, optional
        Smallest internal mode (default :data:`.clustering.DEFAULT_MIN_MODE_SIZE`).
    z_threshold : float, optional
        Natural-division criterion (default :data:`.clustering.DEFAULT_Z_THRESHOLD`).
    refine_iterations : int
        Maximum reassignment iterations of step 4 (0: keep the tree's modes).
    min_score_fraction : float
        Unassigned-pair criterion of :func:`assign_frames`.
    block_rows : int, optional
        Rows per correlation block product.
    view_size : int
        Side of the correlation views.
    client : dask.distributed.Client, optional
        Runs the correlation blocks on the cluster (step 1).
    progress : callable, optional
        ``progress(step, done, total)``; ``step`` is one of :data:`PIPELINE_STEPS`.

    Returns
    -------
    CCIResult

    Raises
    ------
    ValueError
        For invalid features or parameters (naming the value), or when the tree holds
        no mode at all (every pair an outlier).
    """
    from .clustering import (
        DEFAULT_MIN_MODE_SIZE,
        DEFAULT_Z_THRESHOLD,
        average_linkage,
        natural_modes,
    )
    from .correlation import DEFAULT_BLOCK_ROWS, downsampled_matrix, pearson_distance_condensed

    X = _check_features(X)
    n = X.shape[0]
    min_mode_size = DEFAULT_MIN_MODE_SIZE if min_mode_size is None else int(min_mode_size)
    z_threshold = DEFAULT_Z_THRESHOLD if z_threshold is None else float(z_threshold)
    block_rows = DEFAULT_BLOCK_ROWS if block_rows is None else int(block_rows)
    if not (0 <= threshold < 1):
        raise ValueError(f"threshold must be in [0, 1), got {threshold!r}")
    if min_mode_size < 3:
        raise ValueError(f"min_mode_size must be >= 3, got {min_mode_size!r}")
    if n < 2 * min_mode_size:
        raise ValueError(f"need at least 2*min_mode_size = {2 * min_mode_size} pairs, got {n}")
    timings: dict[str, float] = {}

    def report(step: str, done: int = 1, total: int = 1) -> None:
        if progress is not None:
            progress(step, done, total)

    def timed(step: str) -> _Timer:
        return _Timer(step, timings)

    with timed("correlation"):
        condensed = pearson_distance_condensed(
            X,
            block_rows=block_rows,
            client=client,
            progress=lambda d, t: report("correlation", d, t),
        )
    with timed("linkage"):
        Z = average_linkage(condensed)  # destroys the condensed distances
        del condensed
    report("linkage")
    with timed("modes"):
        modes = natural_modes(Z, X, min_mode_size=min_mode_size, z_threshold=z_threshold)
    report("modes")
    if modes.n_modes == 0:
        raise ValueError(f"no internal mode of >= {min_mode_size} pairs in {n} pairs")
    with timed("refine"):
        labels = modes.labels
        iterations = 0
        if refine_iterations > 0 and modes.n_modes > 1:
            prelim = misassignment_matrix(X, labels)
            groups = group_states(prelim.P, threshold)
            labels, iterations = refine_modes(
                X,
                labels,
                groups=groups,
                max_iterations=refine_iterations,
                min_mode_size=max(3, min_mode_size),
            )
    report("refine")
    with timed("misassignment"):
        mis = misassignment_matrix(X, labels)
    report("misassignment")
    with timed("states"):
        state_of_mode = group_states(mis.P, threshold)
    report("states")
    with timed("assignment"):
        templates = mode_templates(X, labels, state_of_mode.size)
        state, mode, score = assign_frames(
            X,
            templates,
            state_of_mode,
            member_of=labels,
            min_score_fraction=min_score_fraction,
        )
        # number states by assigned pairs, modes state by state, each by size
        n_states = int(state_of_mode.max()) + 1
        state_counts = np.bincount(state[state >= 0], minlength=n_states)
        first_mode = np.full(n_states, state_of_mode.size)
        np.minimum.at(first_mode, state_of_mode, np.arange(state_of_mode.size))
        state_order = np.lexsort((first_mode, -state_counts))
        new_state = np.empty(n_states, dtype=np.int64)
        new_state[state_order] = np.arange(n_states)
        state_of_mode = new_state[state_of_mode]
        state = np.where(state >= 0, new_state[np.maximum(state, 0)], -1).astype(np.int32)
        mode_counts = np.bincount(mode[state >= 0], minlength=state_of_mode.size)
        mode_order = np.lexsort((np.arange(mode_counts.size), -mode_counts, state_of_mode))
        new_mode = np.empty(mode_order.size, dtype=np.int64)
        new_mode[mode_order] = np.arange(mode_order.size)
        mode = new_mode[mode].astype(np.int32)
        state_of_mode = state_of_mode[mode_order]
        mode_counts = mode_counts[mode_order].astype(np.int64)
        state_counts = state_counts[state_order].astype(np.int64)
        mis = _permute_misassignment(mis, mode_order)
    report("assignment")
    with timed("view"):
        view = downsampled_matrix(X, view_size)
        key = np.where(state >= 0, state, n_states)
        sort = np.lexsort((mode, key))
        view_sorted = _sorted_view(X, sort, view_size)
    report("view")
    parameters = {
        "threshold": float(threshold),
        "min_mode_size": int(min_mode_size),
        "z_threshold": float(z_threshold),
        "refine_iterations": int(refine_iterations),
        "refine_iterations_run": int(iterations),
        "min_score_fraction": float(min_score_fraction),
        "block_rows": int(block_rows),
        "view_size": int(view_size),
        "score": "attenuation-corrected correlation x.S_k / (n_k c_k), leave-one-out",
        "misassignment": "leave-one-out, robust normal fit",
        "n_pairs": int(n),
        "n_pixels": int(X.shape[1]),
        "n_modes_tree": int(modes.n_modes),
        "n_outliers_tree": int(modes.outliers.size),
    }
    return CCIResult(
        state=state,
        internal_mode=mode,
        score=score,
        state_of_mode=state_of_mode.astype(np.int32),
        mode_counts=mode_counts,
        state_counts=state_counts,
        misassignment=mis,
        linkage=Z,
        modes=modes,
        correlation_view=view,
        correlation_view_sorted=view_sorted,
        parameters=parameters,
        timings=timings,
    )


def _sorted_view(X: np.ndarray, order: np.ndarray, view_size: int) -> np.ndarray:
    """Block-mean correlation of the rows of X taken in ``order`` (no copy of X)."""
    from .correlation import _block_edges, _block_mean_correlation

    return _block_mean_correlation(X, _block_edges(X.shape[0], view_size), order)


def _permute_misassignment(mis: Misassignment, order: np.ndarray) -> Misassignment:
    """The misassignment estimate with modes renumbered: new mode m is old ``order[m]``."""
    ix = np.ix_(order, order)
    return Misassignment(
        P=mis.P[ix],
        empirical=mis.empirical[ix],
        location=mis.location[ix],
        scale=mis.scale[ix],
        counts=mis.counts[order],
        method=mis.method,
    )


class _Timer:
    """Context manager adding the elapsed time of a step to ``timings``."""

    def __init__(self, step: str, timings: dict[str, float]) -> None:
        self.step = step
        self.timings = timings

    def __enter__(self) -> Self:
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.timings[self.step] = time.perf_counter() - self.start
