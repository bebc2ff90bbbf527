"""Rolling k-resolved ECM during the acquisition: the pure core of the live g2 worker.

A 5D-STEM ECM acquisition (Huang & Voyles) streams one camera frame per scan position,
raster after raster. :class:`OnlineECM` turns that stream, batch by batch, into what an
operator (or an adaptive plan) needs while it runs:

* every frame is reduced to exact electron-count sums over the (k_r, k_φ) bins of the
  first-ring strip (:func:`~.polar.polar_binning`; each bin the sum of whole pixels, so
  Poisson statistics are kept) — a few hundred numbers instead of 32 768 pixels, which
  bounds the correlator's memory to (scan positions × bins) columns;
* one scan repeat is one "frame" of an incremental multi-tau correlator
  (:class:`~speckleflow.services.g2.MultiTauCorrelator`): row = repeat, columns =
  positions × bins, so lags are in repeats and Δt = lag · repeat period (the time
  sampling N_x·N_y/f); nothing of the past is recomputed;
* the ensemble g2(k_r, Δt): the mean over scan positions and k_φ bins of the
  per-column normalised g2 (``binned_g2(method="mean")``: each column is normalised by
  its own mean intensity, so static thickness/intensity differences between positions
  do not enter the baseline);
* a two-time correlation G(t1, t2) per k_r over a rolling window of repeats
  (:class:`~speckleflow.services.g2.twotime.TwoTimeCorrelator`);
* virtual BF/ADF/COM images per repeat (:class:`~.virtual.VirtualImageAccumulator`);
* the count rate on the first ring, mean electrons per pixel per frame over the ADF
  annulus k₁ ± FWHM/2 — the paper's I_s/(f·N_d) that the plan's counts constraint
  needs.

Frames of a repeat are collected until every scan position has arrived, then the repeat
is folded in (repeats strictly in order). If frames are lost, a repeat can stay
incomplete: as soon as a repeat two later has started, the incomplete one is folded in
with its missing positions set to their mean over the repeats so far (counted in
``filled_positions``; their g2 is pulled towards 1, i.e. τ of those positions is biased
low) so the correlator never stalls.

References
----------
Huang & Voyles, 5D-STEM k-resolved ECM (``ARCHITECTURE.md`` §3): g2 per (r, k_p), KWW
fit, time sampling N_x·N_y/f < 0.05 τ, counts I_s/(f·N_d) > 1.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
from speckleflow.services.g2.multitau import MultiTauCorrelator
from speckleflow.services.g2.twotime import TwoTimeCorrelator

from .finite_run import estimator_kernel
from .geometry import DetectorGeometry
from .kww import KWWResult, fit_kww
from .polar import PolarBinning, polar_binning
from .virtual import VirtualDetectors, VirtualImageAccumulator

__all__ = ["EnsembleG2", "OnlineECM"]


@dataclass(frozen=True)
class EnsembleG2:
    """Ensemble g2 per k_r bin so far.

    Attributes
    ----------
    lags : ndarray, shape (n_lags,), int64 — lag in scan repeats (0 first).
    g2 : ndarray, shape (n_k_r, n_lags), float64 — mean over scan positions and k_φ bins
        of the normalised g2 of each (position, k_φ) bin sum; NaN where none is defined.
    k_r : ndarray, shape (n_k_r,), float64 — k_r bin centres, Å⁻¹ (bins holding pixels).
    ring : ndarray, shape (n_lags,), float64 — the same over the whole first-ring strip.
    level : ndarray, shape (n_lags,), int64 — multi-tau level of each lag.
    n_pairs : ndarray, shape (n_lags,), int64 — repeat pairs averaged at each lag.
    """

    lags: np.ndarray
    g2: np.ndarray
    k_r: np.ndarray
    ring: np.ndarray
    level: np.ndarray
    n_pairs: np.ndarray


class OnlineECM:
    """Incremental ECM state of one run: polar bin sums → repeat-wise multi-tau g2.

    Parameters
    ----------
    geometry : DetectorGeometry
        Camera geometry (from the camera's ``geometry`` configuration).
    scan_shape : tuple of int
        (ny, nx) scan positions per repeat.
    n_r, n_phi : int, optional
        (k_r, k_φ) bins of the first-ring strip; defaults of :func:`polar_binning` (one
        k_r bin per pixel of strip width; the fewest k_φ bins no wider than the probe
        convergence).
    n_buffers : int
        Multi-tau buffers (lags 0 … n_buffers − 1 repeats at level 0).
    two_time_window : int
        Repeats in the rolling two-time window.

    Raises
    ------
    ValueError, TypeError
        For an invalid geometry, scan shape or binning (the message names the value).
    """

    def __init__(
        self,
        geometry: DetectorGeometry,
        scan_shape: tuple[int, int],
        *,
        n_r: int | None = None,
        n_phi: int | None = None,
        n_buffers: int = 16,
        two_time_window: int = 64,
    ) -> None:
        ny, nx = (int(v) for v in scan_shape)
        if ny < 1 or nx < 1:
            raise ValueError(f"scan_shape must be two positive integers, got {scan_shape!r}")
        if isinstance(two_time_window, bool) or not isinstance(two_time_window, int) or two_time_window < 2:
            raise ValueError(f"two_time_window must be an int >= 2, got {two_time_window!r}")
        self.geometry = geometry
        self.scan_shape = (ny, nx)
        self.n_positions = ny * nx
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            self.polar: PolarBinning = polar_binning(geometry, n_r=n_r, n_phi=n_phi)
        #: Warnings of the binning (empty bins, bins wider than the convergence).
        self.warnings = [str(w.message) for w in caught]
        self.n_bins = self.polar.n_r * self.polar.n_phi
        # column c = position · n_bins + bin; label = k_r index + 1, 0 for empty bins
        bin_kr = np.where(self.polar.pixels.ravel() > 0, np.arange(self.n_bins) // self.polar.n_phi + 1, 0)
        self.labels = np.tile(bin_kr, self.n_positions).astype(np.int64)
        self.ring_labels = (self.labels > 0).astype(np.int64)
        self.correlator = MultiTauCorrelator(self.n_positions * self.n_bins, n_buffers=n_buffers, min_block=16)
        self.two_time = TwoTimeCorrelator(self.n_positions * self.n_bins, two_time_window, labels=self.labels)
        self.detectors = VirtualDetectors(geometry)
        self.virtual = VirtualImageAccumulator(self.detectors, self.scan_shape)
        self.n_adf_pixels = int(self.detectors.adf_mask.sum())
        self._open: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._column_sum = np.zeros(self.n_positions * self.n_bins)
        self._repeat_t0: dict[int, float] = {}
        self.next_repeat = 0
        self.frames = 0
        self.late_frames = 0
        self.filled_positions = 0

    # -- input -------------------------------------------------------------------------
    def process(
        self,
        frames: np.ndarray,
        ix: np.ndarray,
        iy: np.ndarray,
        repeat: np.ndarray,
        times: np.ndarray | None = None,
    ) -> int:
        """Add a batch of frames (any split of the stream; repeats in raster order).

        Parameters
        ----------
        frames : ndarray, shape (B, det_ny, det_nx), integer counts (uint16)
            Diffraction patterns.
        ix, iy : array_like of int, shape (B,)
            Scan position (column, row) of each frame.
        repeat : array_like of int, shape (B,)
            Raster repeat of each frame (≥ 0).
        times : array_like of float, shape (B,), optional
            Acquisition time of each frame, s (measures the repeat period).

        Returns
        -------
        int
            Frames used; frames of a repeat already folded in (arriving late) are not.

        Raises
        ------
        ValueError
            For mismatched lengths, positions outside the raster or negative repeats.
        """
        frames = np.asarray(frames)
        ix = np.atleast_1d(np.asarray(ix, np.int64))
        iy = np.atleast_1d(np.asarray(iy, np.int64))
        repeat = np.atleast_1d(np.asarray(repeat, np.int64))
        keep = repeat >= self.next_repeat
        if not keep.all():
            self.late_frames += int((~keep).sum())
            frames, ix, iy, repeat = frames[keep], ix[keep], iy[keep], repeat[keep]
            times = None if times is None else np.asarray(times)[keep]
        if repeat.size == 0:
            return 0
        self.virtual.process(frames, ix, iy, repeat)  # validates shapes and positions
        sums = self.polar.bin(frames).reshape(len(repeat), self.n_bins)
        flat = iy * self.scan_shape[1] + ix
        for r in np.unique(repeat):
            sel = repeat == r
            buf, seen = self._open.setdefault(
                int(r), (np.zeros((self.n_positions, self.n_bins), np.int64), np.zeros(self.n_positions, bool))
            )
            buf[flat[sel]] = sums[sel]
            seen[flat[sel]] = True
            if times is not None and int(r) not in self._repeat_t0:
                self._repeat_t0[int(r)] = float(np.asarray(times)[sel][0])
        self.frames += int(repeat.size)
        self._fold_ready()
        return int(repeat.size)

    def _fold_ready(self, final: bool = False) -> None:
        while self._open:
            r = self.next_repeat
            later = max(self._open)
            if r in self._open:
                buf, seen = self._open[r]
            else:  # every frame of this repeat was lost
                buf = np.zeros((self.n_positions, self.n_bins), np.int64)
                seen = np.zeros(self.n_positions, bool)
            if not seen.all():
                if later < r + (1 if final else 2):
                    return  # may still arrive (or, at the end, the trailing repeat is incomplete)
                n = self.correlator.n_frames
                fill = np.rint(self._column_sum / n) if n else np.zeros_like(self._column_sum)
                missing = ~seen
                buf[missing] = fill.reshape(self.n_positions, self.n_bins)[missing].astype(np.int64)
                self.filled_positions += int(missing.sum())
            self._open.pop(r, None)
            row = buf.reshape(1, -1)
            self.correlator.process(row.astype(np.uint16) if row.max(initial=0) <= 0xFFFF else row)
            self.two_time.process(row)
            self._column_sum += row[0]
            self.next_repeat = r + 1

    def finish(self) -> None:
        """Fold in every repeat that can be (call at the end of the run)."""
        self._fold_ready(final=True)
        self.correlator.flush()

    # -- results -----------------------------------------------------------------------
    @property
    def repeats_done(self) -> int:
        """Repeats folded into the correlator."""
        return self.correlator.n_frames

    @property
    def repeat_period(self) -> float | None:
        """Measured time between repeats (the time sampling), s; None before two repeats."""
        if len(self._repeat_t0) < 2:
            return None
        rs = sorted(self._repeat_t0)
        return (self._repeat_t0[rs[-1]] - self._repeat_t0[rs[0]]) / (rs[-1] - rs[0])

    def count_rate(self) -> float:
        """Mean electrons (counts) per pixel per frame on the first ring (ADF annulus), or NaN."""
        if not self.virtual.repeats:
            return math.nan
        adf = float(self.virtual.stack("adf").sum())
        frames = sum(int(self.virtual.images(r).frames.sum()) for r in self.virtual.repeats)
        return adf / (self.n_adf_pixels * frames) if frames else math.nan

    def ensemble(self) -> EnsembleG2:
        """Ensemble g2 per k_r bin and over the whole strip (see :class:`EnsembleG2`)."""
        lags, g2, bins = self.correlator.binned_g2(self.labels, method="mean")
        _, ring, _ = self.correlator.binned_g2(self.ring_labels, method="mean")
        k_r = self.polar.k_r_centers[bins - 1]
        sums = self.correlator.sums()
        return EnsembleG2(lags=lags, g2=g2.T.copy(), k_r=k_r, ring=ring[:, 0].copy(), level=sums.level,
                          n_pairs=sums.n_pairs)

    def fit(
        self, ensemble: EnsembleG2, time_per_lag: float, *, finite_run: bool = True
    ) -> tuple[KWWResult, KWWResult]:
        """KWW fits g2 = 1 + A·exp(−2(Δt/τ)^β) of each k_r bin and of the whole strip.

        The ensemble is a mean of per-column normalised g2, each biased toward short τ
        by the means estimated over the run so far; with ``finite_run`` the fit models
        that bias (:mod:`.finite_run`, one pooled speckle sum per column), so the live τ
        is right after a few τ already. Lags are weighted by 1/σ² ∝ the pairs averaged.

        Parameters
        ----------
        ensemble : EnsembleG2
            From :meth:`ensemble`.
        time_per_lag : float
            Seconds per repeat (the time sampling), > 0.

        Returns
        -------
        per_k_r : KWWResult — arrays of shape (n_k_r,).
        ring : KWWResult — 0-d arrays.
        """
        kernel = estimator_kernel(ensemble.lags, ensemble.level, ensemble.n_pairs) if finite_run else None
        sigma = 1.0 / np.sqrt(np.maximum(ensemble.n_pairs, 1))
        per_k_r = fit_kww(ensemble.lags, ensemble.g2.T, time_per_lag=time_per_lag, kernel=kernel,
                          sigma=np.broadcast_to(sigma[:, None], ensemble.g2.T.shape))
        ring = fit_kww(ensemble.lags, ensemble.ring, time_per_lag=time_per_lag, kernel=kernel, sigma=sigma)
        return per_k_r, ring

    def two_time_result(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Rolling two-time correlation: repeat indices (n,), G (n_k_r, n, n), k_r centres (n_k_r,)."""
        index, G, bins = self.two_time.result()
        return index, G, self.polar.k_r_centers[bins - 1]
