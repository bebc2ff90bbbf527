"""Two-time intensity correlation G(t1, t2) of an ensemble of pixels.

For the pixels p of one bin (a k_r ring, a k_φ sector, all the scan positions of a k
bin, ...) and two frames t1, t2:

    G(t1, t2) = ⟨I_p(t1) I_p(t2)⟩_p / (⟨I_p(t1)⟩_p ⟨I_p(t2)⟩_p),

the averages over the bin's pixels — the definition of scikit-beam's ``two_time_corr``
(after Fluerasu et al. 2007) and of the XPCS literature. In an equilibrium (stationary)
sample G depends only on |t1 − t2| and its diagonal averages are g2(|t1 − t2|); ageing
or intermittent dynamics show up as contours that are not parallel to the diagonal.
The diagonal G(t, t) carries the shot noise of counting data (1/⟨I⟩ on top of g2(0)).

Every product sum is one matrix product per bin (BLAS), float64: exact for integer
counts while the sums stay below 2^53.

* :func:`two_time_correlation` — the full matrix at run end, over pixel chunks (frames
  may be a dask array or an h5py dataset: only one chunk of columns is read at a time).
* :class:`TwoTimeCorrelator` — the matrix over a rolling window of the last ``window``
  frames, updated incrementally for live display.

References
----------
A. Fluerasu, A. Moussaïd, A. Madsen, A. Schofield, Phys. Rev. E 76, 010401 (2007).
scikit-beam, ``skbeam.core.correlation.two_time_corr``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from speckleflow.services.g2.multitau import bin_labels

__all__ = ["TwoTimeCorrelator", "g2_from_two_time", "two_time_correlation"]

#: Pixels per matrix product in :func:`two_time_correlation`.
DEFAULT_PIXEL_CHUNK = 8192


def _normalise(products: np.ndarray, sums: np.ndarray, n_pix: np.ndarray) -> np.ndarray:
    """G = n·Σ I1 I2 / (Σ I1 · Σ I2); products (n_bins, T, T), sums (n_bins, T)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        G = products * n_pix[:, None, None] / (sums[:, :, None] * sums[:, None, :])
    G[~np.isfinite(G)] = np.nan
    return G


def _check_frames_shape(shape: tuple[int, ...]) -> tuple[int, int]:
    if len(shape) < 2:
        raise ValueError(f"frames must have shape (n_frames, *pixel_shape), got {shape}")
    n_frames = shape[0]
    n_pixels = math.prod(shape[1:])
    if n_frames < 1 or n_pixels < 1:
        raise ValueError(f"frames must hold at least one frame and one pixel, got {shape}")
    return n_frames, n_pixels


def two_time_correlation(
    frames: np.ndarray,
    labels: np.ndarray | None = None,
    *,
    pixel_chunk: int = DEFAULT_PIXEL_CHUNK,
) -> tuple[np.ndarray, np.ndarray]:
    """Two-time correlation of every bin over all frames.

    Parameters
    ----------
    frames : array-like, shape (n_frames, *pixel_shape) — counts or intensities >= 0
        (numpy, dask or h5py: columns are read ``pixel_chunk`` at a time).
    labels : ndarray of int, pixel_shape or (n_pixels,), optional — bin of every pixel,
        0 to leave a pixel out; None: one bin of all pixels.
    pixel_chunk : int — pixels per matrix product (memory: n_frames·pixel_chunk·8 B).

    Returns
    -------
    G : ndarray, shape (n_bins, n_frames, n_frames), float64 — symmetric; NaN where a
        frame has no counts in the bin.
    bins : ndarray, shape (n_bins,), int64 — label of each bin (``[1]`` without labels).

    Raises
    ------
    ValueError
        On a frame stack that is not (n_frames, *pixel_shape), labels that do not match
        it, negative or non-finite values (the message names the value).
    """
    shape = tuple(int(d) for d in np.shape(frames))
    n_frames, n_pixels = _check_frames_shape(shape)
    if not isinstance(pixel_chunk, int) or pixel_chunk < 1:
        raise ValueError(f"pixel_chunk must be an int >= 1, got {pixel_chunk!r}")
    if labels is None:
        bins = np.array([1], dtype=np.int64)
        order = np.arange(n_pixels)
        starts = np.array([0], dtype=np.int64)
    else:
        bins, order, starts = bin_labels(labels, n_pixels)
    stops = np.append(starts[1:], order.size)
    flat = frames.reshape(n_frames, n_pixels) if hasattr(frames, "reshape") else frames
    products = np.zeros((bins.size, n_frames, n_frames))
    sums = np.zeros((bins.size, n_frames))
    n_pix = (stops - starts).astype(np.float64)
    for b in range(bins.size):
        cols = order[starts[b] : stops[b]]
        for c0 in range(0, cols.size, pixel_chunk):
            idx = np.sort(cols[c0 : c0 + pixel_chunk])
            block = _checked(np.asarray(flat[:, idx], dtype=np.float64))
            products[b] += block @ block.T
            sums[b] += block.sum(axis=1)
    return _normalise(products, sums, n_pix), bins


def _checked(block: np.ndarray) -> np.ndarray:
    if not np.isfinite(block).all():
        bad = block[~np.isfinite(block)][0]
        raise ValueError(f"frames contain a non-finite value: {float(bad)!r}")
    if block.size and block.min() < 0:
        raise ValueError(f"frames must be intensities >= 0, got {float(block.min())!r}")
    return np.ascontiguousarray(block)


def g2_from_two_time(G: np.ndarray) -> np.ndarray:
    """Mean of every diagonal of G: g2 at lags 0 … T−1 (the equilibrium average).

    Parameters
    ----------
    G : ndarray, shape (..., T, T) — two-time correlation(s).

    Returns
    -------
    g2 : ndarray, shape (..., T), float64 — g2[..., k] = mean over t of G[..., t, t + k]
        (NaN entries ignored; NaN where a diagonal holds none).
    """
    G = np.asarray(G, dtype=np.float64)
    if G.ndim < 2 or G.shape[-1] != G.shape[-2]:
        raise ValueError(f"G must have shape (..., T, T), got {G.shape}")
    T = G.shape[-1]
    out = np.full((*G.shape[:-2], T), np.nan)
    for k in range(T):
        d = np.diagonal(G, offset=k, axis1=-2, axis2=-1)
        with np.errstate(invalid="ignore"):
            valid = np.isfinite(d)
            n = valid.sum(axis=-1)
            total = np.where(valid, d, 0.0).sum(axis=-1)
            out[..., k] = np.where(n > 0, total / np.maximum(n, 1), np.nan)
    return out


class TwoTimeCorrelator:
    """Two-time correlation over a rolling window of the latest frames, per bin.

    Each new frame costs one row of products with the frames in the window
    (window·n_pixels multiply-adds); the window's matrix is never recomputed.

    Parameters
    ----------
    pixel_shape : int or tuple of int — pixels per frame.
    window : int — frames kept (the matrix is window × window).
    labels : ndarray of int, pixel_shape or (n_pixels,), optional — bins (0 leaves a
        pixel out); None: one bin of all pixels.
    """

    def __init__(
        self,
        pixel_shape: int | Sequence[int],
        window: int,
        labels: np.ndarray | None = None,
    ) -> None:
        if isinstance(pixel_shape, int | np.integer) and not isinstance(pixel_shape, bool):
            shape: tuple[int, ...] = (int(pixel_shape),)
        else:
            shape = tuple(int(d) for d in pixel_shape)  # type: ignore[union-attr]
        if not shape or any(d < 1 for d in shape):
            raise ValueError(f"pixel_shape must be positive, got {pixel_shape!r}")
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ValueError(f"window must be an int >= 1, got {window!r}")
        self.pixel_shape = shape
        self.n_pixels = math.prod(shape)
        self.window = window
        if labels is None:
            self.bins = np.array([1], dtype=np.int64)
            self._order = np.arange(self.n_pixels)
            starts = np.array([0], dtype=np.int64)
        else:
            self.bins, self._order, starts = bin_labels(labels, self.n_pixels)
        stops = np.append(starts[1:], self._order.size)
        self._slices = [slice(int(a), int(b)) for a, b in zip(starts, stops, strict=True)]
        self._n_pix = (stops - starts).astype(np.float64)
        n_bins = self.bins.size
        # ring of the last `window` frames, pixels in bin order
        self._ring = np.zeros((window, self._order.size))
        self._products = np.zeros((n_bins, window, window))
        self._sums = np.zeros((n_bins, window))
        self.n_frames = 0

    def process(self, frames: np.ndarray) -> None:
        """Append frames (shape (n, *pixel_shape), (n, n_pixels) or one frame).

        Raises
        ------
        ValueError
            On a wrong shape, a negative or non-finite value (the message names it).
        """
        arr = np.asarray(frames)
        if arr.dtype.kind not in "iufb":
            raise TypeError(f"frames must be real numbers, got dtype {arr.dtype}")
        if arr.shape in (self.pixel_shape, (self.n_pixels,)):
            arr = arr.reshape(1, self.n_pixels)
        elif arr.ndim >= 2 and arr.shape[1:] in (self.pixel_shape, (self.n_pixels,)):
            arr = arr.reshape(arr.shape[0], self.n_pixels)
        else:
            raise ValueError(
                f"frames must have shape (n_frames, {self.n_pixels}) or "
                f"(n_frames, *{self.pixel_shape}), got {arr.shape}"
            )
        if arr.shape[0] == 0:
            return
        new = _checked(arr[-self.window :, self._order].astype(np.float64))
        skipped = arr.shape[0] - new.shape[0]
        self.n_frames += skipped
        k = new.shape[0]
        slots = (self.n_frames + np.arange(k)) % self.window
        self._ring[slots] = new
        for b, sl in enumerate(self._slices):
            block = self._ring[:, sl]
            rows = new[:, sl] @ block.T  # (k, window)
            self._products[b][slots, :] = rows
            self._products[b][:, slots] = rows.T
            self._sums[b][slots] = new[:, sl].sum(axis=1)
        self.n_frames += k

    def result(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The window's two-time correlation, oldest frame first.

        Returns
        -------
        frame_index : ndarray, shape (n,), int64 — index of each frame in the stream
            (n = min(frames seen, window)).
        G : ndarray, shape (n_bins, n, n), float64.
        bins : ndarray, shape (n_bins,), int64.
        """
        n = min(self.n_frames, self.window)
        frame_index = np.arange(self.n_frames - n, self.n_frames, dtype=np.int64)
        slots = frame_index % self.window
        products = self._products[:, slots][:, :, slots]
        sums = self._sums[:, slots]
        return frame_index, _normalise(products, sums, self._n_pix), self.bins
