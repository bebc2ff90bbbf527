"""Pearson distances between CCI feature vectors, blocked, straight into condensed form.

The CCI clustering (Klose et al., Nature 614, 256 (2023), Methods "Pearson correlation"
and "Clustering") works on the Pearson distance d = 1 − r between every two helicity
pairs. With the features of :func:`speckleflow.services.cci.features.pair_features`
(rows centred and of unit norm) r is a plain dot product, so the whole distance set is
one matrix product X·Xᵀ. At the paper's scale (n = 28 800 pairs) the dense n × n
float64 matrix would take 6.6 GB and the condensed upper triangle 3.3 GB; this module
writes the distances block by block into one preallocated condensed vector, which is
what :func:`scipy.cluster.hierarchy.linkage` and ``fastcluster.linkage`` take.

Condensed order (the one of :func:`scipy.spatial.distance.squareform` and ``pdist``):
for 0 ≤ i < j < n the distance d(i, j) sits at

    k(i, j) = n·i − i·(i + 1)/2 + (j − i − 1),

so the entries of row i (j = i+1 … n−1) are contiguous, starting at
k(i, i+1) = n·i − i·(i + 1)/2, and a block of consecutive rows [i0, i1) is one
contiguous run of the vector.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = [
    "condensed_index",
    "condensed_size",
    "downsampled_matrix",
    "n_from_condensed",
    "pearson_distance_condensed",
    "pearson_matrix_float32",
]

#: Default number of feature rows per block product.
DEFAULT_BLOCK_ROWS = 2048

ProgressCallback = Callable[[int, int], None]


def condensed_size(n: int) -> int:
    """Length n·(n − 1)/2 of the condensed distance vector of n observations."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n!r}")
    return n * (n - 1) // 2


def n_from_condensed(length: int) -> int:
    """Number of observations n of a condensed vector of ``length`` = n·(n − 1)/2.

    Raises
    ------
    ValueError
        If ``length`` is not a triangular number n·(n − 1)/2 with n ≥ 2.
    """
    if length < 0:
        raise ValueError(f"a condensed distance vector cannot have length {length}")
    n = (1 + math.isqrt(1 + 8 * int(length))) // 2
    if n < 2 or condensed_size(n) != length:
        raise ValueError(
            f"a condensed distance vector has length n*(n-1)/2 with n >= 2, got {length}"
        )
    return n


def condensed_index(n: int, i: np.ndarray | int, j: np.ndarray | int) -> np.ndarray | int:
    """Position of d(i, j) in the condensed vector (scipy ``squareform`` order).

    k = n·i − i·(i + 1)/2 + (j − i − 1) for i < j; the arguments are swapped when i > j.

    Parameters
    ----------
    n : int
        Number of observations.
    i, j : int or ndarray of int
        Observation indices, i ≠ j, both in [0, n).

    Returns
    -------
    int or ndarray of int64

    Raises
    ------
    ValueError
        If an index is out of range or i == j.
    """
    i_arr = np.asarray(i, dtype=np.int64)
    j_arr = np.asarray(j, dtype=np.int64)
    if np.any((i_arr < 0) | (i_arr >= n) | (j_arr < 0) | (j_arr >= n)):
        raise ValueError(f"indices must lie in [0, {n}), got i={i!r}, j={j!r}")
    if np.any(i_arr == j_arr):
        raise ValueError(f"the condensed vector holds no diagonal, got i == j ({i!r})")
    lo = np.minimum(i_arr, j_arr)
    hi = np.maximum(i_arr, j_arr)
    k = n * lo - lo * (lo + 1) // 2 + (hi - lo - 1)
    return int(k) if k.ndim == 0 else k


def _check_features(X: Any) -> np.ndarray:
    """Return the features as a 2-D C-contiguous float32 array (copying only if needed)."""
    arr = np.asarray(X)
    if arr.ndim != 2:
        raise ValueError(f"features must be 2-D (n_pairs, n_pixels), got shape {arr.shape}")
    if arr.shape[0] < 2:
        raise ValueError(f"need at least 2 feature rows, got {arr.shape[0]}")
    if arr.shape[1] < 1:
        raise ValueError(f"feature rows are empty (shape {arr.shape})")
    if not np.issubdtype(arr.dtype, np.floating):
        raise TypeError(f"features must be a float array, got dtype {arr.dtype}")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    step = max(1, (1 << 22) // max(arr.shape[1], 1))  # ~4 M values per check
    bad = 0
    for c in range(0, arr.shape[0], step):
        bad += int(np.count_nonzero(~np.isfinite(arr[c : c + step])))
    if bad:
        raise ValueError(f"features hold {bad} NaN or infinite values")
    return arr


def _chunk_rows(n_pixels: int, budget_bytes: int = 64 << 20) -> int:
    """Rows of float32 features per chunk of about ``budget_bytes`` (≥ 16)."""
    return max(16, budget_bytes // (4 * max(int(n_pixels), 1)))


def _check_block_rows(block_rows: int) -> int:
    if int(block_rows) != block_rows or block_rows < 1:
        raise ValueError(f"block_rows must be a positive integer, got {block_rows!r}")
    return int(block_rows)


def _block_products(X: np.ndarray, i0: int, i1: int) -> tuple[np.ndarray, np.ndarray]:
    """Correlations of rows [i0, i1) with themselves and with every later row.

    Returns
    -------
    diag : ndarray, shape (i1 − i0, i1 − i0), float32
        X[i0:i1]·X[i0:i1]ᵀ — numpy computes A·Aᵀ with the symmetric rank-k update
        (BLAS ``syrk``), half the work of a general product.
    off : ndarray, shape (i1 − i0, n − i1), float32
        X[i0:i1]·X[i1:]ᵀ.
    """
    block = X[i0:i1]
    diag = block @ block.T
    off = block @ X[i1:].T
    return diag, off


def _write_block(out: np.ndarray, n: int, i0: int, diag: np.ndarray, off: np.ndarray) -> None:
    """Write d = clip(1 − r, 0, 2) of the block rows [i0, i0 + len(diag)) into ``out``."""
    i1 = i0 + diag.shape[0]
    for r in range(diag.shape[0]):
        i = i0 + r
        start = n * i - i * (i + 1) // 2
        n_diag = i1 - i - 1
        seg = out[start : start + n_diag]
        np.subtract(1.0, diag[r, r + 1 :], out=seg, dtype=np.float64)
        seg2 = out[start + n_diag : start + (n - i - 1)]
        np.subtract(1.0, off[r], out=seg2, dtype=np.float64)
    # clip the block's contiguous run in one pass (rounding can give r slightly > 1)
    run = out[n * i0 - i0 * (i0 + 1) // 2 : n * i1 - i1 * (i1 + 1) // 2]
    np.clip(run, 0.0, 2.0, out=run)


def pearson_distance_condensed(
    X: np.ndarray,
    *,
    block_rows: int = DEFAULT_BLOCK_ROWS,
    progress: ProgressCallback | None = None,
    client: Any | None = None,
) -> np.ndarray:
    """Condensed Pearson distances d = 1 − r between all feature rows.

    The rows are multiplied block by block in float32 — X[i0:i1]·X[i0:i1]ᵀ (symmetric
    rank-k update) for the diagonal block and X[i0:i1]·X[i1:]ᵀ for the rest of the block
    row — and each block is converted to float64 distances directly in its place of one
    preallocated condensed vector (Klose et al. 2023, Methods). No dense n × n float64
    matrix and no copy of the condensed vector is ever made: peak memory is the
    condensed vector (8·n·(n − 1)/2 bytes: 3.3 GB at n = 28 800) plus one block row
    (4·block_rows·n bytes, 236 MB at the defaults) plus X.

    Parameters
    ----------
    X : ndarray, shape (n, M), float32 (other float dtypes are converted)
        Feature vectors, each row centred and of unit norm (as from
        :func:`~speckleflow.services.cci.features.pair_features`), so that X·Xᵀ is the
        Pearson correlation matrix. n ≥ 2.
    block_rows : int
        Rows per block product, ≥ 1.
    progress : callable, optional
        ``progress(done_blocks, total_blocks)`` after each block row is written.
    client : dask.distributed.Client, optional
        When given, the block products run as tasks on the cluster (X is scattered to
        every worker once; at most two blocks per worker thread are in flight, so
        finished products do not pile up in memory) and are written into the condensed
        vector as they complete. When None, plain numpy (whose BLAS already uses all
        cores).

    Returns
    -------
    ndarray, shape (n·(n − 1)/2,), float64
        d(i, j) = 1 − r(i, j), clipped to [0, 2], at k = n·i − i·(i + 1)/2 + (j − i − 1)
        for i < j (scipy ``squareform`` order; see :func:`condensed_index`).

    Raises
    ------
    ValueError
        If X is not 2-D, has fewer than 2 rows, holds NaN or inf, or ``block_rows`` < 1.
    TypeError
        If X is not a float array.

    Notes
    -----
    Float32 products of unit vectors with M ≈ 32 000 terms are accurate to ~1e-6 in r,
    far below the single-pair noise of r (≈ 0.009 for the CCI features).
    """
    X = _check_features(X)
    b = _check_block_rows(block_rows)
    n = X.shape[0]
    out = np.empty(condensed_size(n), dtype=np.float64)
    starts = list(range(0, n, b))
    total = len(starts)
    if client is None:
        for done, i0 in enumerate(starts, start=1):
            i1 = min(i0 + b, n)
            diag, off = _block_products(X, i0, i1)
            _write_block(out, n, i0, diag, off)
            del diag, off
            if progress is not None:
                progress(done, total)
        return out
    _condensed_with_dask(client, X, out, starts, b, progress)
    return out


def _condensed_with_dask(
    client: Any,
    X: np.ndarray,
    out: np.ndarray,
    starts: list[int],
    b: int,
    progress: ProgressCallback | None,
) -> None:
    """Fill ``out`` from block products computed as dask tasks (bounded in flight)."""
    from distributed import as_completed

    n = X.shape[0]
    total = len(starts)
    try:
        n_threads = max(1, sum(client.nthreads().values()))
    except Exception:  # noqa: BLE001 — any client-like object: fall back to 2 in flight
        n_threads = 1
    window = 2 * n_threads
    x_remote = client.scatter(X, broadcast=True)
    pending = iter(starts)

    def submit(i0: int) -> Any:
        return client.submit(
            _block_products,
            x_remote,
            i0,
            min(i0 + b, n),
            key=f"cci-corr-{id(out)}-{i0}",
            pure=False,
        )

    first = [submit(i0) for _, i0 in zip(range(window), pending, strict=False)]
    futures = {f.key: i0 for f, i0 in zip(first, starts, strict=False)}
    completed = as_completed(first)
    done = 0
    for fut in completed:
        i0 = futures.pop(fut.key)
        diag, off = fut.result()
        fut.release()
        _write_block(out, n, i0, diag, off)
        del diag, off
        done += 1
        if progress is not None:
            progress(done, total)
        nxt = next(pending, None)
        if nxt is not None:
            new = submit(nxt)
            futures[new.key] = nxt
            completed.add(new)
    if done != total:  # pragma: no cover — as_completed yields every future
        raise RuntimeError(f"only {done} of {total} correlation blocks completed")


def pearson_matrix_float32(X: np.ndarray, block_rows: int = DEFAULT_BLOCK_ROWS) -> np.ndarray:
    """Dense Pearson correlation matrix r = X·Xᵀ in float32 (for small n only).

    Parameters
    ----------
    X : ndarray, shape (n, M), float32
        Centred unit-norm feature rows.
    block_rows : int
        Rows per block product (limits the temporary memory to one block row).

    Returns
    -------
    ndarray, shape (n, n), float32
        Symmetric, r(i, i) = |x_i|² (1 for unit rows). 4·n² bytes.

    Raises
    ------
    ValueError, TypeError
        As :func:`pearson_distance_condensed`.
    """
    X = _check_features(X)
    b = _check_block_rows(block_rows)
    n = X.shape[0]
    R = np.empty((n, n), dtype=np.float32)
    for i0 in range(0, n, b):
        i1 = min(i0 + b, n)
        diag, off = _block_products(X, i0, i1)
        R[i0:i1, i0:i1] = diag
        R[i0:i1, i1:] = off
        R[i1:, i0:i1] = off.T
    return R


def _block_edges(n: int, max_size: int) -> np.ndarray:
    """Edges of ≤ max_size near-equal consecutive blocks of n items (length B + 1)."""
    if int(max_size) != max_size or max_size < 1:
        raise ValueError(f"max_size must be a positive integer, got {max_size!r}")
    n_blocks = min(n, int(max_size))
    return (np.arange(n_blocks + 1, dtype=np.int64) * n) // n_blocks


def _block_sums(X: np.ndarray, edges: np.ndarray, order: np.ndarray | None = None) -> np.ndarray:
    """Σ of the rows in each block [edges[b], edges[b+1]) (of ``X[order]``), float32 (B, M).

    Small dense indicator products over groups of 64 blocks (BLAS), no copy of X.
    """
    n_blocks = len(edges) - 1
    sums = np.empty((n_blocks, X.shape[1]), dtype=np.float32)
    group = 64
    for b0 in range(0, n_blocks, group):
        b1 = min(b0 + group, n_blocks)
        lo, hi = int(edges[b0]), int(edges[b1])
        rows = slice(lo, hi) if order is None else order[lo:hi]
        W = np.zeros((b1 - b0, hi - lo), dtype=np.float32)
        for b in range(b0, b1):
            W[b - b0, edges[b] - lo : edges[b + 1] - lo] = 1.0
        sums[b0:b1] = W @ X[rows]
    return sums


def _block_mean_correlation(
    X: np.ndarray, edges: np.ndarray, order: np.ndarray | None = None
) -> np.ndarray:
    """Mean of X·Xᵀ over each pair of blocks, float32 (B, B), via block sums."""
    sums = _block_sums(X, edges, order)
    counts = np.diff(edges).astype(np.float32)
    view = sums @ sums.T
    view /= np.outer(counts, counts)
    return view


def downsampled_matrix(condensed_or_X: np.ndarray, max_size: int = 1024) -> np.ndarray:
    """Block-averaged Pearson correlation matrix, at most ``max_size`` × ``max_size``.

    The n pairs are cut, in their given order, into B = min(n, max_size) consecutive
    blocks of near-equal size (block b holds pairs ⌊b·n/B⌋ … ⌊(b+1)·n/B⌋ − 1) and each
    cell is the mean correlation over its block of the full matrix, diagonal (r = 1)
    included. Pass the features in another order (e.g. sorted by state) for another
    view.

    Parameters
    ----------
    condensed_or_X : ndarray
        Either the condensed Pearson distances, shape (n·(n − 1)/2,), float64 (from
        :func:`pearson_distance_condensed`, before an in-place linkage destroys them), or
        the features X, shape (n, M), float32, centred unit-norm rows (cheaper: block
        sums of X, then a B × B product).
    max_size : int
        Largest side of the result, ≥ 1.

    Returns
    -------
    ndarray, shape (B, B), float32
        Mean Pearson r per block pair. Both inputs give the same view for unit-norm
        rows (up to the [0, 2] clipping of the distances).

    Raises
    ------
    ValueError
        If the input is neither 1-D condensed (triangular length) nor 2-D, or
        ``max_size`` < 1.
    """
    arr = np.asarray(condensed_or_X)
    if arr.ndim == 2:
        X = _check_features(arr)
        edges = _block_edges(X.shape[0], max_size)
        return _block_mean_correlation(X, edges)
    if arr.ndim != 1:
        raise ValueError(
            f"expected condensed distances (1-D) or features (2-D), got shape {arr.shape}"
        )
    n = n_from_condensed(arr.shape[0])
    edges = _block_edges(n, max_size)
    n_blocks = len(edges) - 1
    upper = np.zeros((n_blocks, n_blocks), dtype=np.float64)
    block_of = np.repeat(np.arange(n_blocks), np.diff(edges))
    for i in range(n - 1):
        start = n * i - i * (i + 1) // 2
        seg = arr[start : start + n - i - 1]  # j = i+1 … n−1
        first_block = block_of[i + 1]
        rel = edges[first_block + 1 : n_blocks] - (i + 1)
        idx = np.concatenate(([0], rel))
        upper[block_of[i], first_block:] += np.add.reduceat(seg, idx)
    counts = np.diff(edges).astype(np.float64)
    pair_counts = np.outer(counts, counts)
    dist_sum = upper + upper.T  # the diagonal d(i, i) = 0 adds nothing
    view = 1.0 - dist_sum / pair_counts
    return view.astype(np.float32)
