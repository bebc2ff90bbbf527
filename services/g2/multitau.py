"""Incremental multi-tau intensity autocorrelation g2(Δt), vectorised over pixels.

The lag scheme and normalisation are those of scikit-beam's ``multi_tau_auto_corr`` /
``lazy_one_time`` (after Schätzel et al. 1988 and Lumma et al. 2000):

* level 0 correlates the frames themselves at lags 0, 1, …, n_buffers − 1 (frames);
* level l ≥ 1 correlates bin-by-2 averages of the level below (frame k of level l
  averages frames 2k and 2k + 1 of level l − 1, i.e. 2^l consecutive frames) at the
  n_buffers/2 lags i·2^l, i = n_buffers/2 … n_buffers − 1;
* every lag Δ = i·2^l is averaged over all pairs of level-l frames (k − i, k) seen so
  far, m = n_l − i pairs (n_l frames at level l), and normalised symmetrically:

      g2(Δ) = ⟨I(t) I(t + Δ)⟩ / (⟨I(t)⟩_past ⟨I(t + Δ)⟩_future)
            = m · Σ_k x[k − i] x[k] / (Σ_k x[k − i] · Σ_k x[k]),

  the three sums over the same m pairs (the "past" and "future" intensities of
  scikit-beam). The ratio is the same whether level-l frames are averages or sums of
  2^l frames; this module keeps sums, so integer counts stay integers.

Nothing of the past is recomputed: the state per pixel and level is the lag-product sums,
the total, the first and the last n_buffers − 1 values (the past and future sums of
every lag follow from the total minus the first or last i values). Memory per pixel is
about 8·(n_lags + L·(2·n_buffers − 1)) bytes for L levels.

Use in 5D-STEM ECM: one correlator per (scan position, k-pixel). Each position is
visited once per scan repeat, so a pixel's "frame" stream is the repeat index and a
batch is one or more whole repeats, ``frames`` of shape (n_repeats, n_positions·n_k)
(or (n_repeats, ny, nx, n_k) with ``pixel_shape=(ny, nx, n_k)``); lags are then in
repeats, and the time per lag is the repeat period N_x·N_y/f.

References
----------
K. Schätzel, M. Drewel, S. Stimac, J. Mod. Opt. 35, 711 (1988) — multiple-tau lags.
D. Lumma, L. B. Lurio, S. G. J. Mochrie, M. Sutton, Rev. Sci. Instrum. 71, 3274 (2000)
— area-detector multi-tau, symmetric normalisation.
scikit-beam, ``skbeam.core.correlation.lazy_one_time``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from speckleflow.services.g2 import _kernels

__all__ = [
    "MultiTauCorrelator",
    "MultiTauSums",
    "bin_labels",
    "multi_tau_g2",
    "multi_tau_lags",
]

#: Pixels per tile of the compiled kernel: a tile's rows are contiguous runs of the frame
#: and its working set (≈ 40 rows of the series) stays in L1/L2 cache.
TILE_PIXELS = 256
#: Frames folded per kernel call at most: float frames (the general kernel's tile
#: buffers hold 256·(512 + 15) values) and uint16 frames (the streaming kernel's buffers
#: do not grow with the block; longer blocks amortise the per-tile state traffic).
MAX_BLOCK = 512
MAX_BLOCK_U16 = 1024
#: Rows of a level correlated together in the uint16 streaming kernel.
CHUNK_ROWS = 64
#: Spare levels allocated when the state grows (one re-allocation per 16× more frames).
LEVEL_HEADROOM = 4

_INT_KINDS = "iub"


def _check_n_buffers(n_buffers: object) -> int:
    if isinstance(n_buffers, bool) or not isinstance(n_buffers, int | np.integer):
        raise TypeError(f"n_buffers must be an int, got {n_buffers!r}")
    if n_buffers < 2 or n_buffers % 2:
        raise ValueError(f"n_buffers must be an even number >= 2, got {n_buffers!r}")
    return int(n_buffers)


def _check_n_levels(n_levels: object) -> int | None:
    if n_levels is None:
        return None
    if isinstance(n_levels, bool) or not isinstance(n_levels, int | np.integer):
        raise TypeError(f"n_levels must be an int or None, got {n_levels!r}")
    if n_levels < 1:
        raise ValueError(f"n_levels must be >= 1 (or None for no limit), got {n_levels!r}")
    return int(n_levels)


def _level_lag_range(level: int, n_buffers: int) -> range:
    """Lag indices i (in units of 2^level frames) of a level."""
    return range(0 if level == 0 else n_buffers // 2, n_buffers)


def _level_counts(n_frames: int, n_levels: int | None) -> list[int]:
    """Frames per level after ``n_frames`` frames (levels with at least one frame)."""
    counts = []
    n = n_frames
    while n >= 1 and (n_levels is None or len(counts) < n_levels):
        counts.append(n)
        n //= 2
    return counts


def _kernel_dtype(arr: np.ndarray) -> np.ndarray:
    """uint16 or float64: the two dtypes the kernel is compiled for.

    Integer counts that fit go to uint16 (the camera's dtype, no copy when already so),
    larger integers and floats to float64 (integers stay exact below 2^53).
    """
    if arr.dtype == np.uint16 or arr.dtype == np.float64:
        return arr
    if arr.dtype.kind in "iub" and (arr.size == 0 or int(arr.max()) <= 0xFFFF):
        return arr.astype(np.uint16)
    return arr.astype(np.float64)


def multi_tau_lags(
    n_frames: int, n_buffers: int = 16, n_levels: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The lags of the multi-tau scheme that have at least one pair after ``n_frames``.

    Parameters
    ----------
    n_frames : int — frames correlated (>= 0).
    n_buffers : int — even, >= 2; lags per level 0 (level l >= 1 adds n_buffers/2).
    n_levels : int or None — levels at most (None: as many as the frames allow).

    Returns
    -------
    lags : ndarray, shape (n_lags,), int64 — lag in frames, increasing.
    level : ndarray, shape (n_lags,), int64 — level of each lag.
    n_pairs : ndarray, shape (n_lags,), int64 — frame pairs averaged at each lag
        (pairs of level-l frames, each the average of 2^l frames).
    """
    n_buffers = _check_n_buffers(n_buffers)
    n_levels = _check_n_levels(n_levels)
    if isinstance(n_frames, bool) or not isinstance(n_frames, int | np.integer) or n_frames < 0:
        raise ValueError(f"n_frames must be an int >= 0, got {n_frames!r}")
    lags, levels, pairs = [], [], []
    for level, n in enumerate(_level_counts(int(n_frames), n_levels)):
        for i in _level_lag_range(level, n_buffers):
            if n - i >= 1:
                lags.append(i << level)
                levels.append(level)
                pairs.append(n - i)
    return (
        np.asarray(lags, dtype=np.int64),
        np.asarray(levels, dtype=np.int64),
        np.asarray(pairs, dtype=np.int64),
    )


@dataclass(frozen=True)
class MultiTauSums:
    """The raw sums behind g2, per lag and pixel (for ensembles, merging, error bars).

    Attributes
    ----------
    lags : ndarray, shape (n_lags,), int64 — lag in frames.
    n_pairs : ndarray, shape (n_lags,), int64 — pairs m averaged at each lag.
    level : ndarray, shape (n_lags,), int64 — multi-tau level of each lag.
    products : ndarray, shape (n_lags, n_pixels), float64 — Σ x[k − i]·x[k].
    past : ndarray, shape (n_lags, n_pixels), float64 — Σ x[k − i].
    future : ndarray, shape (n_lags, n_pixels), float64 — Σ x[k].

    Level-l values x are sums of 2^l frames (counts), so ``products`` scale as 4^l and
    ``past``/``future`` as 2^l; g2 = m·products/(past·future) does not depend on it.
    """

    lags: np.ndarray
    n_pairs: np.ndarray
    level: np.ndarray
    products: np.ndarray
    past: np.ndarray
    future: np.ndarray

    def g2(self) -> np.ndarray:
        """g2 per lag and pixel, shape (n_lags, n_pixels), NaN where a pixel saw nothing."""
        with np.errstate(divide="ignore", invalid="ignore"):
            g2 = self.n_pairs[:, None] * self.products / (self.past * self.future)
        g2[~np.isfinite(g2)] = np.nan
        return g2


def bin_labels(labels: np.ndarray, n_pixels: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validate a label array and group its pixels by label.

    Parameters
    ----------
    labels : ndarray, n_pixels integers (any shape) — bin of every pixel; 0 (or any
        negative value) leaves a pixel out, as scikit-beam's label arrays do.
    n_pixels : int — pixels expected.

    Returns
    -------
    bins : ndarray, shape (n_bins,), int64 — the distinct positive labels, increasing.
    order : ndarray, int64 — indices of the labelled pixels sorted by label.
    starts : ndarray, shape (n_bins,), int64 — where each bin starts in ``order``.
    """
    labels = np.asarray(labels)
    if labels.size != n_pixels:
        raise ValueError(
            f"labels must have one entry per pixel ({n_pixels}), got shape {labels.shape}"
        )
    if labels.dtype.kind not in "iu":
        raise TypeError(f"labels must be integers, got dtype {labels.dtype}")
    flat = labels.reshape(-1).astype(np.int64)
    inside = np.flatnonzero(flat > 0)
    if inside.size == 0:
        raise ValueError("labels select no pixel (all labels <= 0)")
    order = inside[np.argsort(flat[inside], kind="stable")]
    sorted_labels = flat[order]
    bins, starts = np.unique(sorted_labels, return_index=True)
    return bins, order, starts.astype(np.int64)


class MultiTauCorrelator:
    """Incremental multi-tau g2 of every pixel of a frame stream.

    Parameters
    ----------
    pixel_shape : int or tuple of int — pixels per frame (e.g. 32768, or (ny, nx, n_k)
        for (scan position, k-pixel) correlators); ``g2`` returns this shape per lag.
    n_buffers : int, default 16 — even, >= 2: lags 0 … n_buffers − 1 at level 0, then
        n_buffers/2 lags per level (scikit-beam's ``num_bufs``).
    n_levels : int or None — multi-tau levels at most, level 0 included (scikit-beam's
        ``num_levels``); None adds levels as frames arrive (longest lag < frames seen).
    min_block : int, default 128 — frames are buffered until this many are pending, then
        folded in together (a block amortises the per-pixel, per-level bookkeeping);
        ``g2``, ``sums`` and ``flush`` fold whatever is pending. 1 disables buffering
        (the pending frames cost min_block·n_pixels·itemsize bytes).

    Notes
    -----
    Frames of integer dtype (uint16 counts) are accumulated exactly (see ``is_exact``);
    float frames are accumulated in float64. Results do not depend on how the stream is
    split into batches (exactly so for integer frames).

    Examples
    --------
    >>> c = MultiTauCorrelator(256 * 128)
    >>> for batch in batches:            # batch: (n, 256·128) uint16
    ...     c.process(batch)
    >>> lags, g2 = c.g2()                # lags in frames, g2 (n_lags, 32768)
    """

    def __init__(
        self,
        pixel_shape: int | Sequence[int],
        *,
        n_buffers: int = 16,
        n_levels: int | None = None,
        min_block: int = 128,
    ) -> None:
        if isinstance(pixel_shape, int | np.integer) and not isinstance(pixel_shape, bool):
            shape: tuple[int, ...] = (int(pixel_shape),)
        else:
            try:
                shape = tuple(int(d) for d in pixel_shape)  # type: ignore[union-attr]
            except TypeError:
                raise TypeError(
                    f"pixel_shape must be an int or a tuple of ints, got {pixel_shape!r}"
                ) from None
        if not shape or any(d < 1 for d in shape):
            raise ValueError(f"pixel_shape must be positive, got {pixel_shape!r}")
        self.pixel_shape = shape
        self.n_pixels = int(math.prod(shape))
        self.n_buffers = _check_n_buffers(n_buffers)
        self.n_levels = _check_n_levels(n_levels)
        if isinstance(min_block, bool) or not isinstance(min_block, int) or min_block < 1:
            raise ValueError(f"min_block must be an int >= 1, got {min_block!r}")
        self.min_block = min_block
        h = self.n_buffers - 1
        self._counts: list[int] = []  # frames per level folded in
        # state, (time, pixel) row-major: last and first h values and the sum per level,
        # lag-product sums per lag column
        self._hist = np.zeros((0, h, self.n_pixels), dtype=np.float64)
        self._head = np.zeros((0, h, self.n_pixels), dtype=np.float64)
        self._sum = np.zeros((0, self.n_pixels), dtype=np.float64)
        self._G = np.zeros((0, self.n_pixels), dtype=np.float64)
        self._pending: list[tuple[np.ndarray, bool]] = []  # (frames, integer dtype)
        self._n_pending = 0
        self._integer = True  # every frame so far had an integer dtype
        self._max_value = 0.0  # largest value seen (exactness bound)

    # ------------------------------------------------------------------ properties

    @property
    def n_frames(self) -> int:
        """Frames received (folded in or pending)."""
        return (self._counts[0] if self._counts else 0) + self._n_pending

    @property
    def n_levels_used(self) -> int:
        """Levels holding at least one (binned) frame, pending frames included."""
        return len(_level_counts(self.n_frames, self.n_levels))

    @property
    def is_exact(self) -> bool:
        """True while every sum is an exactly represented integer (float64 < 2^53).

        Holds for integer frames as long as n·v² < 2^53 at every level, v = 2^l·(largest
        count): e.g. 10⁶ frames of counts <= 1000 with lags up to 10⁵ frames.
        """
        if not (self._integer and all(is_int for _, is_int in self._pending)):
            return False
        n = self.n_frames
        if n == 0:
            return True
        vmax = max([self._max_value] + [float(a.max()) for a, _ in self._pending if a.size])
        # level l: n/2^l products of values <= 2^l·vmax, i.e. n·2^l·vmax² in total
        n_lev = self.n_levels_used
        return n * 2.0 ** (n_lev - 1) * vmax**2 < 2.0**53

    @property
    def nbytes(self) -> int:
        """Bytes held by the accumulated state (pending frames included)."""
        state = self._hist.nbytes + self._head.nbytes + self._sum.nbytes + self._G.nbytes
        return state + sum(p.nbytes for p, _ in self._pending)

    # ------------------------------------------------------------------ input

    def _as_batch(self, frames: object) -> tuple[np.ndarray, bool]:
        """(n, n_pixels) uint16 or float64 frames, and whether they hold integers."""
        arr = np.asarray(frames)
        if arr.dtype.kind not in "iufb":
            raise TypeError(f"frames must be real numbers, got dtype {arr.dtype}")
        if arr.shape == self.pixel_shape or arr.shape == (self.n_pixels,):
            arr = arr.reshape(1, self.n_pixels)
        elif arr.ndim >= 2 and (
            arr.shape[1:] == self.pixel_shape or arr.shape[1:] == (self.n_pixels,)
        ):
            arr = arr.reshape(arr.shape[0], self.n_pixels)
        else:
            raise ValueError(
                f"frames must have shape (n_frames, {self.n_pixels}) or "
                f"(n_frames, *{self.pixel_shape}), got {arr.shape}"
            )
        if arr.dtype.kind == "f":
            finite = np.isfinite(arr)
            if not finite.all():
                t, p = np.argwhere(~finite)[0]
                raise ValueError(
                    f"frames contain {np.count_nonzero(~finite)} non-finite value(s), "
                    f"first {arr[t, p].item()!r} at frame {t}, pixel {p}"
                )
        if arr.dtype.kind in "if" and arr.size:
            low = arr.min()
            if low < 0:
                t, p = np.argwhere(arr < 0)[0]
                raise ValueError(
                    f"frames must be intensities >= 0, got {arr[t, p].item()!r} at frame {t}, "
                    f"pixel {p}"
                )
        return _kernel_dtype(arr), arr.dtype.kind in _INT_KINDS

    def process(self, frames: np.ndarray) -> None:
        """Fold a batch of frames into the correlation (incremental, nothing recomputed).

        Parameters
        ----------
        frames : ndarray, shape (n, n_pixels) or (n, *pixel_shape), or one frame of shape
            (n_pixels,) or pixel_shape; uint16 counts (any integer dtype) or float
            intensities >= 0 — consecutive frames of the stream, oldest first.

        Raises
        ------
        ValueError
            On a wrong shape, a negative or non-finite value (the message names it).
        TypeError
            On a non-real dtype.
        """
        batch, integer = self._as_batch(frames)
        if batch.shape[0] == 0:
            return
        self._pending.append((batch, integer))
        self._n_pending += batch.shape[0]
        if self._n_pending >= self.min_block:
            self.flush()

    def flush(self) -> None:
        """Fold the pending frames in now."""
        if not self._pending:
            return
        pending, self._pending, self._n_pending = self._pending, [], 0
        integer = all(is_int for _, is_int in pending)
        arrays = [a for a, _ in pending]
        if len(arrays) == 1:
            batch = arrays[0]
        else:
            dtype = np.result_type(*arrays)
            batch = np.concatenate([a.astype(dtype, copy=False) for a in arrays])
        step = MAX_BLOCK_U16 if batch.dtype == np.uint16 else MAX_BLOCK
        for start in range(0, batch.shape[0], step):
            self._fold(np.ascontiguousarray(batch[start : start + step]), integer)

    def _grow(self, n_levels: int) -> None:
        """Make room for ``n_levels`` levels in the state arrays (and a few more).

        The state is re-allocated with ``LEVEL_HEADROOM`` spare levels (or up to
        ``n_levels`` when the correlator has a level limit), so the copy happens once per
        16-fold growth of the stream instead of at every doubling; the spare levels are
        zero pages that cost no memory until the kernel writes them.
        """
        if n_levels <= self._sum.shape[0]:
            return
        cap = n_levels + LEVEL_HEADROOM
        if self.n_levels is not None:
            cap = max(n_levels, min(cap, self.n_levels))
        self._reserve(cap)

    def _reserve(self, cap: int) -> None:
        """Re-allocate the state for exactly ``cap`` levels (no-op if it has as many)."""
        have = self._sum.shape[0]
        if cap <= have:
            return
        h = self.n_buffers - 1
        P = self.n_pixels

        def grown(old: np.ndarray, rows: int) -> np.ndarray:
            new = np.zeros((rows, *old.shape[1:]), dtype=old.dtype)
            new[: old.shape[0]] = old
            return new

        self._hist = grown(self._hist.reshape(have, h, P), cap)
        self._head = grown(self._head.reshape(have, h, P), cap)
        self._sum = grown(self._sum.reshape(have, P), cap)
        self._G = grown(self._G.reshape(-1, P), self._n_cols(cap))

    def _n_cols(self, n_levels: int) -> int:
        return self.n_buffers + (n_levels - 1) * (self.n_buffers // 2) if n_levels else 0

    def _col0(self, n_levels: int) -> np.ndarray:
        half = self.n_buffers // 2
        return np.array(
            [0] + [self.n_buffers + (lev - 1) * half for lev in range(1, n_levels)],
            dtype=np.int64,
        )

    def _fold(self, X: np.ndarray, integer: bool) -> None:
        B = X.shape[0]
        self._integer = self._integer and integer
        c_seen = self._max_value
        before = self._counts
        after = _level_counts((before[0] if before else 0) + B, self.n_levels)
        L = len(after)
        self._grow(L)
        n_before = np.array(before + [0] * (L - len(before)), dtype=np.int64)
        n_new = np.array(after, dtype=np.int64) - n_before
        state = (self._hist, self._head, self._sum, self._G)
        if X.dtype == np.uint16:
            block_max = _kernels.process_block_u16(
                X, c_seen, n_before, n_new, self.n_buffers, self._col0(L), *state,
                TILE_PIXELS, CHUNK_ROWS,
            )  # fmt: skip
        else:
            _kernels.process_block(
                X, integer, c_seen, n_before, n_new, self.n_buffers, self._col0(L), *state,
                TILE_PIXELS,
            )  # fmt: skip
            block_max = float(X.max()) if X.size else 0.0
        self._counts = after
        self._max_value = max(self._max_value, float(block_max))

    # ------------------------------------------------------------------ results

    def sums(self) -> MultiTauSums:
        """The raw lag sums (pending frames are folded in first)."""
        self.flush()
        lags_l, pairs_l, level_l, rows = [], [], [], []
        past_l, future_l = [], []
        col0 = self._col0(len(self._counts))
        for level, n in enumerate(self._counts):
            S = self._sum[level]
            head_cum = np.cumsum(self._head[level], axis=0)  # Σ of the first k+1 values
            tail_cum = np.cumsum(self._hist[level][::-1], axis=0)  # Σ of the last k+1
            lag_range = _level_lag_range(level, self.n_buffers)
            for i in lag_range:
                m = n - i
                if m < 1:
                    break
                lags_l.append(i << level)
                pairs_l.append(m)
                level_l.append(level)
                rows.append(col0[level] + i - lag_range.start)
                if i == 0:
                    past_l.append(S)
                    future_l.append(S)
                else:
                    past_l.append(S - tail_cum[i - 1])
                    future_l.append(S - head_cum[i - 1])
        P = self.n_pixels
        if not rows:
            empty = np.zeros((0, P))
            return MultiTauSums(
                np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64),
                empty, empty.copy(), empty.copy(),
            )  # fmt: skip
        return MultiTauSums(
            lags=np.asarray(lags_l, dtype=np.int64),
            n_pairs=np.asarray(pairs_l, dtype=np.int64),
            level=np.asarray(level_l, dtype=np.int64),
            products=self._G[rows],
            past=np.stack(past_l),
            future=np.stack(future_l),
        )

    def g2(self) -> tuple[np.ndarray, np.ndarray]:
        """Normalised g2 of every pixel so far.

        Returns
        -------
        lags : ndarray, shape (n_lags,), int64 — lag in frames (0 first), every lag with
            at least one pair.
        g2 : ndarray, shape (n_lags, *pixel_shape), float64 — NaN where a pixel's past or
            future sum is 0 (no counts).
        """
        sums = self.sums()
        return sums.lags, sums.g2().reshape((sums.lags.size, *self.pixel_shape))

    def binned_g2(
        self,
        labels: np.ndarray,
        *,
        method: Literal["ensemble", "mean"] = "ensemble",
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """g2 per bin of pixels (k_r ring, k_φ sector, ...) for display.

        Parameters
        ----------
        labels : ndarray of int, pixel_shape or (n_pixels,) — bin of each pixel, 0 for
            pixels left out (scikit-beam's label-array convention).
        method : {"ensemble", "mean"}
            ``"ensemble"`` (default): sums over the bin's pixels first, as scikit-beam
            does for a labelled ROI: g2 = m·n_pix·ΣG / (Σpast·Σfuture) — well defined
            for sparse counts. ``"mean"``: mean over the bin's pixels of the per-pixel
            g2 (pixels without counts ignored).

        Returns
        -------
        lags : ndarray, shape (n_lags,), int64 — lag in frames.
        g2 : ndarray, shape (n_lags, n_bins), float64.
        bins : ndarray, shape (n_bins,), int64 — the label of each column.
        """
        if method not in ("ensemble", "mean"):
            raise ValueError(f"method must be 'ensemble' or 'mean', got {method!r}")
        bins, order, starts = bin_labels(labels, self.n_pixels)
        sums = self.sums()
        if method == "mean":
            g2 = sums.g2()[:, order]
            counts = np.add.reduceat(np.isfinite(g2), starts, axis=1)
            total = np.add.reduceat(np.nan_to_num(g2, nan=0.0), starts, axis=1)
            with np.errstate(divide="ignore", invalid="ignore"):
                return sums.lags, np.where(counts > 0, total / counts, np.nan), bins
        n_pix = np.diff(np.append(starts, order.size))
        G = np.add.reduceat(sums.products[:, order], starts, axis=1)
        past = np.add.reduceat(sums.past[:, order], starts, axis=1)
        future = np.add.reduceat(sums.future[:, order], starts, axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            g2 = sums.n_pairs[:, None] * n_pix[None, :] * G / (past * future)
        g2[~np.isfinite(g2)] = np.nan
        return sums.lags, g2, bins

    # ------------------------------------------------------------------ merging

    def merge(self, other: MultiTauCorrelator) -> MultiTauCorrelator:
        """A correlator over the pixels of ``self`` then ``other`` (disjoint pixel sets).

        Both must have seen the same number of frames with the same scheme; typical
        use: pixel chunks correlated in separate processes, joined for publishing.

        Raises
        ------
        ValueError
            If the schemes or frame counts differ (the message names both values).
        TypeError
            If ``other`` is not a MultiTauCorrelator.
        """
        if not isinstance(other, MultiTauCorrelator):
            raise TypeError(f"can only merge a MultiTauCorrelator, got {type(other).__name__}")
        for name in ("n_buffers", "n_levels", "n_frames"):
            a, b = getattr(self, name), getattr(other, name)
            if a != b:
                raise ValueError(f"cannot merge correlators with different {name}: {a} vs {b}")
        self.flush()
        other.flush()
        merged = MultiTauCorrelator(
            self.n_pixels + other.n_pixels,
            n_buffers=self.n_buffers,
            n_levels=self.n_levels,
            min_block=self.min_block,
        )
        merged._counts = list(self._counts)
        levels = max(self._sum.shape[0], other._sum.shape[0])  # capacities may differ
        self._reserve(levels)
        other._reserve(levels)
        merged._hist = np.concatenate([self._hist, other._hist], axis=-1)
        merged._head = np.concatenate([self._head, other._head], axis=-1)
        merged._sum = np.concatenate([self._sum, other._sum], axis=-1)
        merged._G = np.concatenate([self._G, other._G], axis=-1)
        merged._integer = self._integer and other._integer
        merged._max_value = max(self._max_value, other._max_value)
        return merged


def multi_tau_g2(
    frames: np.ndarray, *, n_buffers: int = 16, n_levels: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """One-shot multi-tau g2 of a frame stack.

    Parameters
    ----------
    frames : ndarray, shape (n_frames, *pixel_shape) — counts or intensities.
    n_buffers, n_levels : see :class:`MultiTauCorrelator`.

    Returns
    -------
    lags : ndarray, shape (n_lags,), int64 — lag in frames.
    g2 : ndarray, shape (n_lags, *pixel_shape), float64.
    """
    arr = np.asarray(frames)
    if arr.ndim < 2:
        raise ValueError(f"frames must have shape (n_frames, *pixel_shape), got {arr.shape}")
    corr = MultiTauCorrelator(arr.shape[1:], n_buffers=n_buffers, n_levels=n_levels)
    corr.process(arr)
    return corr.g2()
