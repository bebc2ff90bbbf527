"""Polar binning of the first-ring strip to (k_r, k_φ) that keeps counting statistics.

k-resolved ECM correlates intensities per (scan position, k_p) where k_p is a pixel or
a (k_r, k_φ) bin of the first diffraction ring. For electron counts, interpolating
onto a polar grid (e.g. :func:`skimage.transform.warp_polar`) mixes neighbouring pixels
with fractional weights and breaks Poisson statistics (g2's shot-noise term). Here each
camera pixel belongs wholly to one bin, decided by the k_r and k_φ of its centre; a bin
is the exact sum of its pixels' counts. The pixel → bin assignment is precomputed once
as a label map (−1 outside the strip; also as a sparse pixels × bins 0/1 matrix for
consumers); a batch is binned by gathering the strip pixels sorted by bin and one
segmented sum (``np.add.reduceat``), so counts are conserved exactly.

Averaging many pixels of a bin in k_φ improves the g2 statistics but only while the
pixels see the same speckle dynamics: a bin should not be wider in k_φ than the probe
convergence (the speckle size), Δk_φ·k₁ ≤ α/λ. :func:`polar_binning` warns
(``UserWarning``) when it is.

References
----------
Huang & Voyles, 5D-STEM k-resolved ECM (``ARCHITECTURE.md`` §3): polar transform to
(k_r, k_φ), optional k_φ binning with bins no wider than the probe convergence.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from scipy import sparse

from .geometry import DetectorGeometry

__all__ = ["PolarBinning", "polar_binning"]


@dataclass(frozen=True)
class PolarBinning:
    """Assignment of camera pixels to (k_r, k_φ) bins of the first-ring strip.

    Attributes
    ----------
    labels : ndarray, shape (det_ny, det_nx), int32
        Bin of each pixel, ``i_r·n_phi + i_phi``, or −1 outside the strip. This is the
        label map a g2 correlator averages over.
    n_r, n_phi : int
        Number of k_r and k_φ bins.
    k_r_edges : ndarray, shape (n_r + 1,), float64
        Bin edges in k_r, Å⁻¹.
    k_phi_edges : ndarray, shape (n_phi + 1,), float64
        Bin edges in k_φ, rad (from ``phi_offset`` to ``phi_offset`` + 2π).
    pixels : ndarray, shape (n_r, n_phi), int64
        Camera pixels per bin (0: an empty bin, e.g. the ring runs off the camera).
    arc_k : float
        Δk_φ as an arc at the ring radius, k₁·2π/n_phi, Å⁻¹.
    matrix : scipy.sparse.csr_array, shape (det_ny·det_nx, n_r·n_phi), int64
        0/1 pixel → bin matrix.
    """

    labels: np.ndarray
    n_r: int
    n_phi: int
    k_r_edges: np.ndarray
    k_phi_edges: np.ndarray
    pixels: np.ndarray
    arc_k: float
    matrix: sparse.csr_array

    @property
    def k_r_centers(self) -> np.ndarray:
        """Bin centres in k_r, shape (n_r,), Å⁻¹."""
        return 0.5 * (self.k_r_edges[1:] + self.k_r_edges[:-1])

    @property
    def k_phi_centers(self) -> np.ndarray:
        """Bin centres in k_φ, shape (n_phi,), rad."""
        return 0.5 * (self.k_phi_edges[1:] + self.k_phi_edges[:-1])

    def k_r_labels(self) -> np.ndarray:
        """Label map of the k_r bins only (k_φ merged), shape (det_ny, det_nx), int32, −1 outside."""
        return np.where(self.labels >= 0, self.labels // self.n_phi, -1).astype(np.int32)

    @cached_property
    def _segments(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Strip pixels sorted by bin, start of each non-empty bin, the non-empty bins."""
        flat = self.labels.ravel()
        order = np.argsort(flat, kind="stable")
        order = order[flat[order] >= 0]
        nonempty, starts = np.unique(flat[order], return_index=True)
        return order, starts, nonempty

    def bin(self, frames: np.ndarray) -> np.ndarray:
        """Sum the counts of each bin.

        Parameters
        ----------
        frames : array_like, shape (..., det_ny, det_nx), int or float
            Diffraction patterns (electrons or camera counts).

        Returns
        -------
        ndarray, shape (..., n_r, n_phi)
            Exact bin sums: int64 for integer input, float64 for float input.

        Raises
        ------
        ValueError
            If the last two axes are not the camera shape.
        """
        frames = np.asarray(frames)
        if frames.ndim < 2 or frames.shape[-2:] != self.labels.shape:
            raise ValueError(f"frames must end with the camera shape {self.labels.shape}, got {frames.shape}")
        lead = frames.shape[:-2]
        flat = frames.reshape(-1, self.labels.size)
        dtype = np.int64 if np.issubdtype(flat.dtype, np.integer) or flat.dtype == np.bool_ else np.float64
        # Gather the strip pixels sorted by bin, then one segmented sum per bin: touches
        # only the strip (a sparse product over the whole camera is ~15× slower).
        order, starts, nonempty = self._segments
        out = np.zeros((flat.shape[0], self.n_r * self.n_phi), dtype)
        if order.size:
            out[:, nonempty] = np.add.reduceat(flat[:, order].astype(dtype, copy=False), starts, axis=1)
        return out.reshape(*lead, self.n_r, self.n_phi)

    def mean(self, frames: np.ndarray) -> np.ndarray:
        """Mean counts per pixel of each bin (``bin`` / ``pixels``; NaN for empty bins), float64."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.bin(frames) / np.where(self.pixels > 0, self.pixels, np.nan)


def polar_binning(
    geometry: DetectorGeometry,
    *,
    n_r: int | None = None,
    n_phi: int | None = None,
    k_r_range: tuple[float, float] | None = None,
    phi_offset: float = 0.0,
) -> PolarBinning:
    """Pixel → (k_r, k_φ) bin map of the first-ring strip.

    Parameters
    ----------
    geometry : DetectorGeometry
        Camera geometry.
    n_r : int, optional
        k_r bins across the strip; default one per camera pixel of strip width.
    n_phi : int, optional
        k_φ bins over 2π; default the fewest whose arc at k₁ does not exceed the probe
        convergence α/λ (needs ``geometry.convergence_mrad`` and ``wavelength``).
    k_r_range : tuple of float, optional
        (k_min, k_max) of the strip, Å⁻¹; default k₁ ∓ ring_width/2.
    phi_offset : float
        k_φ of the first bin edge, rad.

    Returns
    -------
    PolarBinning

    Raises
    ------
    ValueError
        For non-positive bin counts, an empty or negative k_r range, or ``n_phi``
        missing when the geometry has no probe convergence.

    Warns
    -----
    UserWarning
        When the k_φ bin arc k₁·2π/n_phi exceeds the probe convergence α/λ (the
        message gives both in Å⁻¹ and mrad and the n_phi that would satisfy it), and
        when some bins hold no camera pixel.
    """
    if not isinstance(geometry, DetectorGeometry):
        raise TypeError(f"geometry must be a DetectorGeometry, got {type(geometry).__name__}")
    if k_r_range is None:
        k_r_range = (geometry.ring_radius - geometry.ring_width / 2, geometry.ring_radius + geometry.ring_width / 2)
    k_min, k_max = (float(v) for v in k_r_range)
    if not 0 <= k_min < k_max:
        raise ValueError(f"k_r_range must satisfy 0 <= k_min < k_max (Å⁻¹), got {k_r_range!r}")
    if n_r is None:
        n_r = max(1, round((k_max - k_min) / geometry.k_per_pixel))
    if int(n_r) != n_r or n_r < 1:
        raise ValueError(f"n_r must be a positive integer, got {n_r!r}")
    conv = geometry.convergence_k()
    k_ring = 0.5 * (k_min + k_max)
    if n_phi is None:
        if conv is None:
            raise ValueError("n_phi is None and the geometry has no convergence_mrad/wavelength to choose it")
        n_phi = math.ceil(2 * math.pi * k_ring / conv)
    if int(n_phi) != n_phi or n_phi < 1:
        raise ValueError(f"n_phi must be a positive integer, got {n_phi!r}")
    n_r, n_phi = int(n_r), int(n_phi)
    arc = k_ring * 2 * math.pi / n_phi
    if conv is not None and arc > conv:
        warnings.warn(
            f"k_φ bins of {2 * math.pi / n_phi:.4g} rad span an arc of {arc:.4g} Å⁻¹ "
            f"({geometry.k_to_mrad(arc):.3g} mrad) at k = {k_ring:.4g} Å⁻¹, wider than the probe "
            f"convergence α/λ = {conv:.4g} Å⁻¹ ({geometry.convergence_mrad:.3g} mrad): bins average "
            f"independent speckles; use n_phi >= {math.ceil(2 * math.pi * k_ring / conv)}",
            UserWarning,
            stacklevel=2,
        )
    k_r = geometry.k_r().ravel()
    phi = np.mod(geometry.k_phi().ravel() - phi_offset, 2 * np.pi)
    r_edges = np.linspace(k_min, k_max, n_r + 1)
    phi_edges = np.linspace(0.0, 2 * np.pi, n_phi + 1)
    i_r = np.searchsorted(r_edges, k_r, side="right") - 1
    i_r[k_r == k_max] = n_r - 1  # the outer edge belongs to the last bin
    i_phi = np.clip(np.searchsorted(phi_edges, phi, side="right") - 1, 0, n_phi - 1)
    inside = (i_r >= 0) & (i_r < n_r)
    labels = np.where(inside, i_r * n_phi + i_phi, -1).astype(np.int32)
    n_bins = n_r * n_phi
    pix = np.flatnonzero(inside)
    matrix = sparse.csr_array(
        (np.ones(pix.size, np.int64), (pix, labels[pix])), shape=(labels.size, n_bins)
    )
    pixels = np.bincount(labels[pix], minlength=n_bins).reshape(n_r, n_phi).astype(np.int64)
    if (pixels == 0).any():
        warnings.warn(
            f"{int((pixels == 0).sum())} of {n_bins} (k_r, k_φ) bins hold no camera pixel "
            f"(bins finer than the pixels, or the strip runs off the camera)",
            UserWarning,
            stacklevel=2,
        )
    return PolarBinning(
        labels=labels.reshape(geometry.shape),
        n_r=n_r,
        n_phi=n_phi,
        k_r_edges=r_edges,
        k_phi_edges=phi_edges + phi_offset,
        pixels=pixels,
        arc_k=arc,
        matrix=matrix,
    )
