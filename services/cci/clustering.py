"""Average-linkage clustering of CCI pairs and its cut into natural "internal modes".

Klose et al., Nature 614, 256 (2023), Methods "Clustering": the helicity pairs are
clustered agglomeratively with the Pearson distance d = 1 − r and average linkage, and
the tree is cut where a division is *natural* — the clustering is repeated inside each
cluster until no cluster divides naturally any more. The clusters found so are the
"internal modes"; :mod:`.states` then groups modes that single frames cannot tell apart
into states.

:func:`natural_modes` does that repeated clustering on the one average-linkage tree
(average linkage restricted to a subset reproduces the subtree of that subset: the
merge distance of two clusters depends on their members only): it tests every division
with a z statistic computed from sums of feature vectors — so it needs X and not the
condensed distances, which :func:`average_linkage` destroys — and cuts the tree into
the largest clusters without a natural division inside.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "DEFAULT_MIN_MODE_SIZE",
    "DEFAULT_Z_THRESHOLD",
    "ModeResult",
    "SplitStatistics",
    "average_linkage",
    "natural_modes",
]

#: Smallest cluster kept as a mode; smaller children of a split are set aside as outliers.
DEFAULT_MIN_MODE_SIZE = 5
#: z above which a division of the tree is natural (see :func:`natural_modes`).
DEFAULT_Z_THRESHOLD = 3.3

#: Method index of "average" in fastcluster's C core (``fastcluster.mthidx``).
_FASTCLUSTER_AVERAGE = 2

#: Frames whose δ lies farther than this many robust sigmas from their side's median are
#: left out of the spread (misplaced frames would otherwise inflate it).
_TRIM_SIGMAS = 4.0
#: Smaller sides are not trimmed (their median absolute deviation is itself too noisy).
_MIN_TRIM_SIZE = 20
#: Largest number of frames per side whose δ_i enter a test (a fixed random subset of a
#: larger side): bounds the cost of a test to O(500·M).
_MAX_TEST_FRAMES = 250


def average_linkage(condensed: np.ndarray) -> np.ndarray:
    """Average-linkage (UPGMA) tree of condensed Pearson distances, computed in place.

    Uses fastcluster's average linkage with ``preserve_input=False`` semantics
    (Müllner's nearest-neighbour chain algorithm, O(n²) time, O(n) extra memory):
    **the input vector is used as scratch space and must not be used afterwards.**
    (fastcluster 1.3.0's ``linkage(..., preserve_input=False)`` copies the input
    anyway, so its C core is called directly.) Without fastcluster, falls back to
    :func:`scipy.cluster.hierarchy.linkage`, which copies the input (another
    8·n·(n − 1)/2 bytes) and leaves it intact.

    Parameters
    ----------
    condensed : ndarray, shape (n·(n − 1)/2,), float64, C-contiguous
        Condensed Pearson distances (from
        :func:`~speckleflow.services.cci.correlation.pearson_distance_condensed`),
        n ≥ 2. Another dtype or a non-contiguous array is copied first (then the caller's
        array survives).

    Returns
    -------
    Z : ndarray, shape (n − 1, 4), float64
        Scipy linkage matrix: row k merges clusters ``Z[k, 0]`` and ``Z[k, 1]`` at
        average distance ``Z[k, 2]`` into cluster n + k of ``Z[k, 3]`` pairs.

    Raises
    ------
    ValueError
        If the length is not n·(n − 1)/2 with n ≥ 2 or the distances are not finite.

    References
    ----------
    Klose et al. 2023, Methods; D. Müllner, J. Stat. Softw. 53(9), 1 (2013).
    """
    from .correlation import n_from_condensed

    arr = np.asarray(condensed)
    if arr.ndim != 1:
        raise ValueError(f"condensed distances must be 1-D, got shape {arr.shape}")
    n = n_from_condensed(arr.shape[0])
    step = 1 << 24
    bad = sum(
        int(np.count_nonzero(~np.isfinite(arr[c : c + step]))) for c in range(0, arr.size, step)
    )
    if bad:
        raise ValueError(f"condensed distances hold {bad} NaN or infinite values")
    arr = np.require(arr, dtype=np.float64, requirements=["C", "W"])
    try:
        import fastcluster
    except ImportError:  # pragma: no cover — fastcluster is a dependency
        from scipy.cluster.hierarchy import linkage

        return linkage(arr, method="average")
    wrap = getattr(fastcluster, "linkage_wrap", None)
    if wrap is None:  # pragma: no cover — other fastcluster versions
        return fastcluster.linkage(arr, method="average", preserve_input=False)
    # fastcluster 1.3.0's linkage() starts with np.array(X), which copies the input
    # whatever preserve_input says (3.3 GB more at n = 28 800): call its C core directly.
    Z = np.empty((n - 1, 4), dtype=np.float64)
    wrap(n, arr, Z, _FASTCLUSTER_AVERAGE)
    return Z


@dataclass(frozen=True)
class SplitStatistics:
    """Statistics of one tested division of the tree (provenance of the cut).

    Attributes
    ----------
    node : int
        Linkage cluster id (n + row of Z) of the divided cluster.
    n_a, n_b : int
        Sizes of its two children (left and right in Z).
    d_aa, d_bb, d_ab : float
        Mean Pearson distance within A, within B (pairs of distinct members) and
        between A and B.
    step : float
        d_ab − (d_aa + d_bb)/2: the height of the linkage step above the lower levels.
    gap : float
        Its robust estimate, the mean over the two sides of the median δ_i (see
        :func:`natural_modes`): the numerator of z.
    se : float
        Noise spread of a single frame's δ_i (pooled standard deviation of
        δ_i(even pixels) − δ_i(odd pixels)), ≈ s_within·√(1/(n_a − 1) + 1/n_b).
    s_within : float
        The implied spread of within-cluster pairwise distances, se divided by the
        mean over both sides of √(1/(n_own − 1) + 1/n_other).
    z : float
        gap / se.
    z_eff : float
        z converted to the normal scale through Student's t with min(n_a, n_b) − 1
        degrees of freedom (se is itself estimated): the value tested.
    natural : bool
        Whether z_eff > z_threshold.
    """

    node: int
    n_a: int
    n_b: int
    d_aa: float
    d_bb: float
    d_ab: float
    step: float
    gap: float
    se: float
    s_within: float
    z: float
    z_eff: float
    natural: bool

    def as_dict(self) -> dict[str, Any]:
        """JSON-able dict."""
        return {k: (v.item() if isinstance(v, np.generic) else v) for k, v in vars(self).items()}


@dataclass
class ModeResult:
    """The internal modes found by :func:`natural_modes`.

    Attributes
    ----------
    labels : ndarray, shape (n,), int32
        Mode of every pair, 0 … K − 1, modes numbered by decreasing size; −1 for
        outliers (pairs set aside in children smaller than ``min_mode_size``).
    modes : list of ndarray of int64
        Member indices of each mode (sorted), ``modes[k]`` for label k.
    splits : list of SplitStatistics
        Every tested division (natural or not), parents before children.
    outliers : ndarray of int64
        Indices labelled −1.
    parameters : dict
        ``min_mode_size``, ``z_threshold``, criterion description.
    """

    labels: np.ndarray
    modes: list[np.ndarray]
    splits: list[SplitStatistics] = field(default_factory=list)
    outliers: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    parameters: dict[str, Any] = field(default_factory=dict)

    @property
    def n_modes(self) -> int:
        """Number of modes K."""
        return len(self.modes)


def _check_linkage(Z: Any) -> np.ndarray:
    Z = np.asarray(Z, dtype=np.float64)
    if Z.ndim != 2 or Z.shape[1] != 4 or Z.shape[0] < 1:
        raise ValueError(f"Z must be a linkage matrix of shape (n - 1, 4), got {Z.shape}")
    return Z


def _leaf_ranges(Z: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Leaf order and, per cluster id, its start in that order, size and children.

    Returns
    -------
    order : (n,) int64 — pairs in dendrogram order (left child first);
    start, size : (2n − 1,) int64 — cluster c holds ``order[start[c]:start[c] + size[c]]``;
    children : (n − 1, 2) int64 — children of cluster n + k.
    """
    n = Z.shape[0] + 1
    children = Z[:, :2].astype(np.int64)
    size = np.ones(2 * n - 1, dtype=np.int64)
    size[n:] = Z[:, 3].astype(np.int64)
    if np.any(children < 0) or np.any(children >= np.arange(n, 2 * n - 1)[:, None]):
        raise ValueError("Z is not a valid linkage matrix (children must precede parents)")
    start = np.zeros(2 * n - 1, dtype=np.int64)
    for k in range(n - 2, -1, -1):  # parents before children
        left, right = children[k]
        s = start[n + k]
        start[left] = s
        start[right] = s + size[left]
    order = np.empty(n, dtype=np.int64)
    order[start[:n]] = np.arange(n)
    return order, start, size, children


class _FeatureSums:
    """Sums of feature rows and products with them, chunked (no large gathers).

    The pixels (feature columns) are also taken as two interleaved halves, even and odd
    columns: their photon noise is independent while their signal is almost the same
    (neighbouring pixels of one speckle), so the difference of a statistic computed on
    the two halves is noise only.
    """

    def __init__(self, X: np.ndarray) -> None:
        from .correlation import _chunk_rows

        self.X = X
        self.step = _chunk_rows(X.shape[1])
        self.sq_halves = np.stack(
            [
                np.einsum("ij,ij->i", X[:, 0::2], X[:, 0::2], dtype=np.float64),
                np.einsum("ij,ij->i", X[:, 1::2], X[:, 1::2], dtype=np.float64),
            ],
            axis=1,
        )
        self.sq = self.sq_halves.sum(axis=1)

    def row_sum(self, idx: np.ndarray) -> np.ndarray:
        total = np.zeros(self.X.shape[1], dtype=np.float64)
        for c in range(0, len(idx), self.step):
            total += self.X[idx[c : c + self.step]].sum(axis=0, dtype=np.float64)
        return total

    def dots(self, idx: np.ndarray, vectors: np.ndarray) -> np.ndarray:
        """x_i·v for i in idx and every column v of ``vectors`` (M, k) → (len(idx), k)."""
        v32 = np.ascontiguousarray(vectors, dtype=np.float32)
        out = np.empty((len(idx), vectors.shape[1]), dtype=np.float64)
        for c in range(0, len(idx), self.step):
            out[c : c + self.step] = self.X[idx[c : c + self.step]] @ v32
        return out

    def split_terms(
        self, a_idx: np.ndarray, b_idx: np.ndarray, s_a: np.ndarray, s_b: np.ndarray, seed: int
    ) -> tuple[float, float, float, np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
        n_a, n_b = len(a_idx), len(b_idx)
        sq_a, sq_b = float(self.sq[a_idx].sum()), float(self.sq[b_idx].sum())
        r_aa = (float(s_a @ s_a) - sq_a) / (n_a * (n_a - 1))
        r_bb = (float(s_b @ s_b) - sq_b) / (n_b * (n_b - 1))
        r_ab = float(s_a @ s_b) / (n_a * n_b)
        # the frame statistics δ_i of a large side from a fixed random subset of it
        rng = np.random.default_rng(seed)
        a_eval = _subsample(a_idx, rng)
        b_eval = _subsample(b_idx, rng)
        V = np.zeros((self.X.shape[1], 4), dtype=np.float64)
        V[0::2, 0], V[1::2, 1] = s_a[0::2], s_a[1::2]
        V[0::2, 2], V[1::2, 3] = s_b[0::2], s_b[1::2]
        qa = self.dots(a_eval, V)  # x_i^h·S_A^h, x_i^h·S_B^h for i in A, halves h = 0, 1
        qb = self.dots(b_eval, V)
        hq_a, hq_b = self.sq_halves[a_eval], self.sq_halves[b_eval]
        # per half: δ_i^h = (x_i^h·S_A^h − |x_i^h|²)/(n_A − 1) − x_i^h·S_B^h/n_B  (i in A)
        half_a = (qa[:, 0:2] - hq_a) / (n_a - 1) - qa[:, 2:4] / n_b
        half_b = (qb[:, 2:4] - hq_b) / (n_b - 1) - qb[:, 0:2] / n_a
        return (
            r_aa,
            r_bb,
            r_ab,
            half_a.sum(axis=1),
            half_b.sum(axis=1),
            half_a[:, 0] - half_a[:, 1],
            half_b[:, 0] - half_b[:, 1],
        )


def _subsample(idx: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """At most :data:`_MAX_TEST_FRAMES` of ``idx`` (all of them if fewer), sorted."""
    if len(idx) <= _MAX_TEST_FRAMES:
        return idx
    return np.sort(rng.choice(idx, _MAX_TEST_FRAMES, replace=False))


class _MatrixSums:
    """The same from a dense correlation matrix (when only distances are at hand)."""

    def __init__(self, R: np.ndarray) -> None:
        self.R = R
        self.sq = np.diagonal(R).astype(np.float64).copy()

    def row_sum(self, idx: np.ndarray) -> np.ndarray:
        # a set is represented by its indicator vector: "x_i·S_A" = Σ_{j∈A} r_ij
        v = np.zeros(self.R.shape[0], dtype=np.float64)
        v[idx] = 1.0
        return v

    def split_terms(
        self, a_idx: np.ndarray, b_idx: np.ndarray, s_a: np.ndarray, s_b: np.ndarray, seed: int
    ) -> tuple[float, float, float, np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
        del seed  # all frames are used
        n_a, n_b = len(a_idx), len(b_idx)
        both = np.stack([s_a, s_b], axis=1)
        qa = self.R[a_idx] @ both  # Σ_{j∈A} r_ij, Σ_{j∈B} r_ij for i in A
        qb = self.R[b_idx] @ both
        sq_a, sq_b = self.sq[a_idx], self.sq[b_idx]
        r_aa = (float(qa[:, 0].sum()) - float(sq_a.sum())) / (n_a * (n_a - 1))
        r_bb = (float(qb[:, 1].sum()) - float(sq_b.sum())) / (n_b * (n_b - 1))
        r_ab = 0.5 * float(qa[:, 1].sum() + qb[:, 0].sum()) / (n_a * n_b)
        delta_a = (qa[:, 0] - sq_a) / (n_a - 1) - qa[:, 1] / n_b
        delta_b = (qb[:, 1] - sq_b) / (n_b - 1) - qb[:, 0] / n_a
        return r_aa, r_bb, r_ab, delta_a, delta_b, None, None


def _sums_provider(condensed_or_X: np.ndarray, n: int) -> _FeatureSums | _MatrixSums:
    from .correlation import _check_features, n_from_condensed

    arr = np.asarray(condensed_or_X)
    if arr.ndim == 2:
        X = _check_features(arr)
        if X.shape[0] != n:
            raise ValueError(f"features have {X.shape[0]} rows, the linkage has {n} leaves")
        if X.shape[1] < 2:
            raise ValueError(f"features need at least 2 pixels, got shape {X.shape}")
        return _FeatureSums(X)
    if arr.ndim == 1:
        m = n_from_condensed(arr.shape[0])
        if m != n:
            raise ValueError(f"condensed distances are for {m} pairs, the linkage has {n}")
        from scipy.spatial.distance import squareform

        R = 1.0 - squareform(np.asarray(arr, dtype=np.float64))  # diagonal: r = 1
        return _MatrixSums(R)
    raise ValueError(f"expected features (2-D) or condensed distances (1-D), got {arr.shape}")


def _pooled_spread(*groups: np.ndarray, trim: bool) -> float:
    """Pooled standard deviation of the groups about their own centres.

    With ``trim``, values farther than :data:`_TRIM_SIGMAS` robust sigmas
    (1.4826·MAD) from their group's median — frames the tree put on the wrong side,
    hop pairs — are left out of groups of at least :data:`_MIN_TRIM_SIZE`; for normal
    data nothing is trimmed and this is the ordinary pooled standard deviation.
    """
    ss = 0.0
    dof = 0
    for g in groups:
        kept = g
        if trim and len(g) >= _MIN_TRIM_SIZE:
            med = np.median(g)
            mad = 1.4826 * np.median(np.abs(g - med))
            if mad > 0:
                kept = g[np.abs(g - med) <= _TRIM_SIGMAS * mad]
        if len(kept) < 2:
            continue
        ss += float(((kept - kept.mean()) ** 2).sum())
        dof += len(kept) - 1
    return float(np.sqrt(ss / dof)) if dof > 0 else 0.0


def _calibrated_z(z: float, dof: int) -> float:
    """Normal-equivalent of a Student-t statistic with ``dof`` degrees of freedom."""
    from scipy.special import ndtri, stdtr

    if not np.isfinite(z):
        return float(z)
    return float(-ndtri(stdtr(max(dof, 1), -z)))


def _test_split(
    sums: _FeatureSums | _MatrixSums,
    node: int,
    a_idx: np.ndarray,
    b_idx: np.ndarray,
    s_a: np.ndarray,
    s_b: np.ndarray,
    z_threshold: float,
) -> SplitStatistics:
    """The z test of one division (see :func:`natural_modes`)."""
    n_a, n_b = len(a_idx), len(b_idx)
    r_aa, r_bb, r_ab, delta_a, delta_b, noise_a, noise_b = sums.split_terms(
        a_idx, b_idx, s_a, s_b, seed=node
    )
    d_aa, d_bb, d_ab = 1.0 - r_aa, 1.0 - r_bb, 1.0 - r_ab
    step = d_ab - 0.5 * (d_aa + d_bb)
    # robust step height: a few frames the tree put on the wrong side dilute the mean
    gap = 0.5 * float(np.median(delta_a) + np.median(delta_b))
    if noise_a is not None and noise_b is not None:
        se = _pooled_spread(noise_a, noise_b, trim=False)
    else:
        se = _pooled_spread(delta_a, delta_b, trim=True)
    factor = np.sqrt(0.5 * (1.0 / (n_a - 1) + 1.0 / n_b + 1.0 / (n_b - 1) + 1.0 / n_a))
    s_within = se / factor
    z = gap / se if se > 0 else (np.inf if gap > 0 else 0.0)
    z_eff = _calibrated_z(z, min(n_a, n_b) - 1)
    return SplitStatistics(
        node=int(node),
        n_a=n_a,
        n_b=n_b,
        d_aa=d_aa,
        d_bb=d_bb,
        d_ab=d_ab,
        step=step,
        gap=gap,
        se=se,
        s_within=float(s_within),
        z=float(z),
        z_eff=z_eff,
        natural=bool(z_eff > z_threshold),
    )


def natural_modes(
    Z: np.ndarray,
    condensed_or_X: np.ndarray,
    *,
    min_mode_size: int = DEFAULT_MIN_MODE_SIZE,
    z_threshold: float = DEFAULT_Z_THRESHOLD,
) -> ModeResult:
    """Cut the average-linkage tree into internal modes at its natural divisions.

    **Test.** Every division of the tree into children A and B that both hold at least
    ``min_mode_size`` pairs is tested. It is *natural* when the linkage step is
    inconsistent with the variability of the distances below it:

        z = (d̄_AB − (d̄_AA + d̄_BB)/2) / SE  >  z_threshold,

    d̄ being mean Pearson distances between and within the children (distinct pairs).
    Per frame, δ_i = (mean r of i to the other members of its side) − (mean r of i to
    the other side); averaged over A it is d̄_AB − d̄_AA, over B d̄_AB − d̄_BB, so the
    step is the mean of the two sides' mean δ. The numerator uses the sides' *median*
    δ instead (a few frames that the tree merged early onto the wrong side would dilute
    the mean; without them both agree). SE is the spread of δ_i over frames. As δ_i
    averages n_A − 1 and n_B pairwise distances that all share frame i,
    SE ≈ s_within·√(1/(n_A − 1) + 1/n_B), s_within being the spread of the
    within-cluster pairwise distances: a deliberately conservative effective sample
    size (one frame per side, not n_A·n_B independent pairs), which makes z the
    separation of the children in units of one frame's noise — a natural division is
    one that single frames can see, and the tree's own selection of the split cannot
    fake it. Only the *noise* of δ_i enters SE: δ_i is computed on the even and on the
    odd pixel columns, whose photon noise is independent while their signal is nearly
    the same, and SE is the pooled standard deviation of δ_i(even) − δ_i(odd) (same
    noise variance as δ_i, no signal) — so a child that still holds several states
    does not inflate it. Since SE is itself estimated, z is converted to the normal
    scale through Student's t with min(n_A, n_B) − 1 degrees of freedom (``z_eff``,
    the value compared with ``z_threshold``).

    **Cut.** The modes are the largest clusters that contain no natural division
    anywhere below them, as :func:`scipy.cluster.hierarchy.fcluster` does with its
    "inconsistent" criterion: a non-natural division is passed through when a natural
    one lies deeper (a small fragment can be the first to split off a cluster that
    holds two states). This is the paper's iterative re-clustering of each cluster:
    average linkage restricted to a subset is the subtree of that subset. Children
    smaller than ``min_mode_size`` are set aside as outliers (label −1) and the cut
    goes on in the other child.

    This generalises scipy's :func:`~scipy.cluster.hierarchy.inconsistent` coefficient
    (a link height compared with the mean and spread of the link heights at most
    ``depth`` levels below it): at its default depth 2 that coefficient can never
    exceed 2/√3 ≈ 1.155 (three heights of which the tested one is the largest), so no
    fixed cut on it separates natural divisions from noise. Here the step height is
    compared with the distribution of all lower-level (within-cluster) distances.

    **Cost.** Everything comes from sums of feature vectors: with S_A = Σ_{i∈A} x_i,
    Σ_{i∈A, j∈B} r_ij = S_A·S_B and Σ_{j∈A} r_ij = x_i·S_A. S of the smaller child is
    summed, the larger one's is the parent's minus it (O(n·M·log n) overall), and δ_i
    is evaluated on at most 250 frames per side (a fixed random subset of a larger
    side), so a test costs O(500·M): a few seconds at n = 28 800, and no distance
    matrix is needed — the condensed distances are gone after :func:`average_linkage`.

    Parameters
    ----------
    Z : ndarray, shape (n − 1, 4), float64
        Average-linkage tree (:func:`average_linkage`) of the n pairs.
    condensed_or_X : ndarray
        The features X, shape (n, M ≥ 2), float32, centred unit-norm rows
        (preferred); or, for small n, the condensed Pearson distances
        (n·(n − 1)/2,) float64 if they were preserved. The distances are densified
        (8·n² bytes), and as they have no pixel halves, SE is then the plain pooled
        spread of δ_i with values beyond 4 robust sigmas trimmed (sides ≥ 20 frames).
    min_mode_size : int
        Smallest mode, ≥ 3.
    z_threshold : float
        Criterion on z_eff, > 0. The default 3.3 was chosen on the simulator (seed 0
        sample, 280 K, 0.5 s, default flux; M = 32 824): over every tested division of
        nine single-state sets of 2 000 pure pairs the largest z_eff was 2.90; the
        smallest z_eff of a base/sibling division in 3 000-pair series (three seeds)
        was 3.73 (67 vs 58 pairs), the next 4.5.

    Returns
    -------
    ModeResult

    Raises
    ------
    ValueError
        If Z is not a linkage matrix, its leaf count does not match the features, or a
        parameter is out of range.

    References
    ----------
    Klose et al. 2023, Methods ("Clustering"); R. R. Sokal & F. J. Rohlf, Taxon 11, 33
    (1962) for the inconsistency of a dendrogram's links.
    """
    Z = _check_linkage(Z)
    if int(min_mode_size) != min_mode_size or min_mode_size < 3:
        raise ValueError(f"min_mode_size must be an integer >= 3, got {min_mode_size!r}")
    if not (np.isfinite(z_threshold) and z_threshold > 0):
        raise ValueError(f"z_threshold must be a finite number > 0, got {z_threshold!r}")
    n = Z.shape[0] + 1
    sums = _sums_provider(condensed_or_X, n)
    order, start, size, children = _leaf_ranges(Z)

    def members(c: int) -> np.ndarray:
        return order[start[c] : start[c] + size[c]]

    root = 2 * n - 2
    splits: list[SplitStatistics] = []
    natural = np.zeros(2 * n - 1, dtype=bool)
    # 1. test every division whose two children both hold >= min_mode_size pairs
    stack: list[tuple[int, np.ndarray | None]] = [(root, None)]
    while stack:
        node, s_node = stack.pop()
        if node < n:
            continue
        a, b = (int(c) for c in children[node - n])
        n_a, n_b = int(size[a]), int(size[b])
        if n_a < min_mode_size and n_b < min_mode_size:
            continue
        small, big = (a, b) if n_a <= n_b else (b, a)
        if s_node is None:
            s_node = sums.row_sum(members(node))
        s_small = sums.row_sum(members(small))
        s_big = s_node - s_small
        if size[small] < min_mode_size:  # set aside below; go on in the big child
            stack.append((big, s_big))
            continue
        s_a, s_b = (s_small, s_big) if small == a else (s_big, s_small)
        stat = _test_split(sums, node, members(a), members(b), s_a, s_b, z_threshold)
        splits.append(stat)
        natural[node] = stat.natural
        stack.append((b, s_b))
        stack.append((a, s_a))
    # 2. does a cluster hold a natural division anywhere below it?
    below = natural.copy()
    for k in range(n - 1):  # children precede parents
        below[n + k] |= below[children[k, 0]] | below[children[k, 1]]
    # 3. cut: the largest clusters without a natural division inside are the modes
    modes: list[np.ndarray] = []
    outliers: list[np.ndarray] = []
    cut = [root]
    while cut:
        node = cut.pop()
        if size[node] < min_mode_size:
            outliers.append(members(node))
            continue
        a, b = (int(c) for c in children[node - n])
        if below[node] or (size[a] < min_mode_size) != (size[b] < min_mode_size):
            cut.extend((a, b))  # a natural division below, or a small child to set aside
        else:
            modes.append(members(node))

    modes = [np.sort(m) for m in modes]
    modes.sort(key=lambda m: (-len(m), int(m[0])))
    labels = np.full(n, -1, dtype=np.int32)
    for k, m in enumerate(modes):
        labels[m] = k
    out = np.sort(np.concatenate(outliers)) if outliers else np.empty(0, np.int64)
    return ModeResult(
        labels=labels,
        modes=modes,
        splits=splits,
        outliers=out,
        parameters={
            "min_mode_size": int(min_mode_size),
            "z_threshold": float(z_threshold),
            "criterion": (
                "z = mean over sides of median(delta_i) / pooled sd(delta_i(even) - "
                "delta_i(odd)); natural if t(min(n_A, n_B) - 1)-calibrated z > z_threshold"
            ),
            "max_test_frames_per_side": _MAX_TEST_FRAMES,
        },
    )
