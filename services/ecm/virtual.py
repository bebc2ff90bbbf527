"""Virtual detectors of 4D/5D-STEM: bright field, annular dark field, centre of mass.

A virtual detector integrates each diffraction pattern against a mask (or a weight) on
the camera: the bright-field (BF) image sums the disc |k| ≤ α/λ, the annular-dark-field
(ADF) image the annulus of the first diffraction ring k₁ ± w/2, and the centre of mass
(COM) is ⟨k⟩ = Σ I·k / Σ I relative to k = 0. One image per scan repeat is what
LiberTEM-live users watch during an acquisition, and the ADF images of successive
repeats are what drift registration (:mod:`.registration`) cross-correlates.

All five detector signals of a batch of frames are one matrix product
``frames (B, P) @ W (P, 5)`` in float64 (exact for integer counts below 2⁵³), so the same
code serves a whole repeat (:meth:`VirtualDetectors.images`) and the incremental,
batch-by-batch path of a live worker (:class:`VirtualImageAccumulator`, with the scan
position and repeat index each frame carries).

References
----------
Huang & Voyles, 5D-STEM k-resolved ECM (``ARCHITECTURE.md`` §3): drift registration by
cross-correlation of virtual dark-field images. LiberTEM / LiberTEM-live virtual
detectors (``libertem.udf.masks``, ``libertem.udf.com``): BF/ADF masks and COM.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from .geometry import DetectorGeometry

__all__ = ["VirtualDetectors", "VirtualImageAccumulator", "VirtualImages"]

ComUnit = Literal["px", "1/angstrom"]

#: Frames per matrix product (bounds the float64 temporary to ~256 MB at 256×128).
_CHUNK = 1024


@dataclass(frozen=True)
class VirtualImages:
    """Virtual-detector images of one scan repeat.

    Attributes
    ----------
    bf : ndarray, shape (ny, nx), float64
        Electrons (or camera counts) inside the bright-field disc per scan position.
    adf : ndarray, shape (ny, nx), float64
        Electrons inside the first-ring annulus per scan position.
    com_y, com_x : ndarray, shape (ny, nx), float64
        Centre of mass of the pattern relative to k = 0, in ``com_unit``; NaN where the
        pattern is empty or no frame arrived.
    total : ndarray, shape (ny, nx), float64
        Electrons on the whole camera.
    frames : ndarray, shape (ny, nx), int64
        Frames accumulated per position (0: not yet visited; > 1: revisited).
    com_unit : str
        ``"px"`` or ``"1/angstrom"``.
    """

    bf: np.ndarray
    adf: np.ndarray
    com_y: np.ndarray
    com_x: np.ndarray
    total: np.ndarray
    frames: np.ndarray
    com_unit: str


class VirtualDetectors:
    """BF disc, ADF annulus on the first ring and COM weights built from the geometry.

    Parameters
    ----------
    geometry : DetectorGeometry
        Camera geometry (centre, k-calibration, ring radius and width, BF radius).
    bf_radius : float, optional
        BF disc radius, Å⁻¹; default ``geometry.bf_radius``.
    adf_inner, adf_outer : float, optional
        ADF annulus radii, Å⁻¹; default k₁ ∓ ring_width/2.
    com_unit : {"px", "1/angstrom"}
        Unit of the COM images.

    Raises
    ------
    ValueError
        For non-positive radii, ``adf_inner >= adf_outer``, an unknown ``com_unit``,
        or a mask with no pixel on the camera.
    """

    def __init__(
        self,
        geometry: DetectorGeometry,
        *,
        bf_radius: float | None = None,
        adf_inner: float | None = None,
        adf_outer: float | None = None,
        com_unit: ComUnit = "px",
    ) -> None:
        if not isinstance(geometry, DetectorGeometry):
            raise TypeError(f"geometry must be a DetectorGeometry, got {type(geometry).__name__}")
        if com_unit not in ("px", "1/angstrom"):
            raise ValueError(f"com_unit must be 'px' or '1/angstrom', got {com_unit!r}")
        self.geometry = geometry
        self.com_unit: ComUnit = com_unit
        self.bf_radius = float(geometry.bf_radius if bf_radius is None else bf_radius)
        half = geometry.ring_width / 2
        self.adf_inner = float(geometry.ring_radius - half if adf_inner is None else adf_inner)
        self.adf_outer = float(geometry.ring_radius + half if adf_outer is None else adf_outer)
        if not self.bf_radius > 0:
            raise ValueError(f"bf_radius must be > 0 Å⁻¹, got {self.bf_radius!r}")
        if not 0 <= self.adf_inner < self.adf_outer:
            raise ValueError(
                f"need 0 <= adf_inner < adf_outer (Å⁻¹), got {self.adf_inner!r}, {self.adf_outer!r}"
            )
        k_r = geometry.k_r()
        self.bf_mask = k_r <= self.bf_radius
        self.adf_mask = (k_r >= self.adf_inner) & (k_r <= self.adf_outer)
        for name, mask in (("bright-field disc", self.bf_mask), ("ADF annulus", self.adf_mask)):
            if not mask.any():
                raise ValueError(f"the {name} has no pixel on the {geometry.shape} camera")
        rows, cols = np.mgrid[0 : geometry.shape[0], 0 : geometry.shape[1]]
        scale = 1.0 if com_unit == "px" else geometry.k_per_pixel
        # Columns: bf, adf, total, Σ I·k_y, Σ I·k_x.
        self._weights = np.stack(
            [
                self.bf_mask.ravel().astype(np.float64),
                self.adf_mask.ravel().astype(np.float64),
                np.ones(rows.size),
                ((rows - geometry.center[0]) * scale).ravel().astype(np.float64),
                ((cols - geometry.center[1]) * scale).ravel().astype(np.float64),
            ],
            axis=1,
        )

    def signals(self, frames: np.ndarray) -> np.ndarray:
        """The five detector signals of each frame.

        Parameters
        ----------
        frames : array_like, shape (..., det_ny, det_nx), any real dtype
            Diffraction patterns (electrons or camera counts).

        Returns
        -------
        ndarray, shape (..., 5), float64
            bf, adf, total, Σ I·k_y, Σ I·k_x per frame (k in ``com_unit``).

        Raises
        ------
        ValueError
            If the last two axes are not the camera shape.
        """
        frames = np.asarray(frames)
        if frames.ndim < 2 or frames.shape[-2:] != self.geometry.shape:
            raise ValueError(
                f"frames must end with the camera shape {self.geometry.shape}, got {frames.shape}"
            )
        lead = frames.shape[:-2]
        flat = frames.reshape(-1, frames.shape[-2] * frames.shape[-1])
        out = np.empty((flat.shape[0], 5))
        for start in range(0, flat.shape[0], _CHUNK):
            block = flat[start : start + _CHUNK].astype(np.float64, copy=False)
            out[start : start + _CHUNK] = block @ self._weights
        return out.reshape(*lead, 5)

    def images(self, frames: np.ndarray) -> VirtualImages:
        """Virtual images of one repeat.

        Parameters
        ----------
        frames : array_like, shape (ny, nx, det_ny, det_nx)
            One raster (a repeat) of diffraction patterns.

        Returns
        -------
        VirtualImages
            Images of shape (ny, nx).

        Raises
        ------
        ValueError
            If ``frames`` is not 4-D with the camera shape last.
        """
        frames = np.asarray(frames)
        if frames.ndim != 4:
            raise ValueError(f"frames must be (ny, nx, det_ny, det_nx), got shape {frames.shape}")
        sig = self.signals(frames)
        return _to_images(sig, np.ones(frames.shape[:2], np.int64), self.com_unit)

    def accumulator(self, scan_shape: tuple[int, int]) -> VirtualImageAccumulator:
        """A :class:`VirtualImageAccumulator` for a raster of ``scan_shape`` (ny, nx)."""
        return VirtualImageAccumulator(self, scan_shape)


def _to_images(sig: np.ndarray, frames: np.ndarray, com_unit: str) -> VirtualImages:
    total = sig[..., 2]
    with np.errstate(invalid="ignore", divide="ignore"):
        com_y = np.where(total > 0, sig[..., 3] / total, np.nan)
        com_x = np.where(total > 0, sig[..., 4] / total, np.nan)
    return VirtualImages(
        bf=sig[..., 0].copy(),
        adf=sig[..., 1].copy(),
        com_y=com_y,
        com_x=com_x,
        total=total.copy(),
        frames=frames,
        com_unit=com_unit,
    )


class VirtualImageAccumulator:
    """Incremental virtual images per scan repeat, fed batch by batch (live path).

    ``process`` adds a batch of frames at their scan positions and repeat indices
    (the header of every frame on the camera's data socket); ``images(repeat)`` gives the
    images so far; ``merge`` adds another accumulator (partial results of parallel
    workers). Nothing already processed is recomputed.

    Parameters
    ----------
    detectors : VirtualDetectors
        Masks and weights.
    scan_shape : tuple of int
        (ny, nx) of the raster.

    Raises
    ------
    ValueError
        For a non-positive scan shape.
    """

    def __init__(self, detectors: VirtualDetectors, scan_shape: tuple[int, int]) -> None:
        ny, nx = (int(v) for v in scan_shape)
        if ny < 1 or nx < 1:
            raise ValueError(f"scan_shape must be two positive integers, got {scan_shape!r}")
        self.detectors = detectors
        self.scan_shape = (ny, nx)
        self._sums: dict[int, np.ndarray] = {}
        self._counts: dict[int, np.ndarray] = {}

    @property
    def repeats(self) -> list[int]:
        """Repeat indices seen so far, sorted."""
        return sorted(self._sums)

    def process(self, frames: np.ndarray, ix: np.ndarray, iy: np.ndarray, repeat: np.ndarray) -> None:
        """Add a batch of frames.

        Parameters
        ----------
        frames : array_like, shape (B, det_ny, det_nx)
            Diffraction patterns.
        ix, iy : array_like of int, shape (B,)
            Scan position (column, row) of each frame.
        repeat : array_like of int, shape (B,)
            Raster repeat of each frame (≥ 0).

        Raises
        ------
        ValueError
            For mismatched lengths, positions outside the raster or negative repeats.
        """
        frames = np.asarray(frames)
        ix = np.atleast_1d(np.asarray(ix, np.int64))
        iy = np.atleast_1d(np.asarray(iy, np.int64))
        repeat = np.atleast_1d(np.asarray(repeat, np.int64))
        if frames.ndim != 3 or not (frames.shape[0] == ix.size == iy.size == repeat.size):
            raise ValueError(
                f"need frames (B, det_ny, det_nx) and ix, iy, repeat of length B; got {frames.shape}, "
                f"{ix.shape}, {iy.shape}, {repeat.shape}"
            )
        ny, nx = self.scan_shape
        if ix.size and (ix.min() < 0 or ix.max() >= nx or iy.min() < 0 or iy.max() >= ny):
            raise ValueError(f"scan positions outside the {ny}×{nx} raster: ix {ix.min()}…{ix.max()}, "
                             f"iy {iy.min()}…{iy.max()}")
        if repeat.size and repeat.min() < 0:
            raise ValueError(f"repeat must be >= 0, got {repeat.min()}")
        sig = self.detectors.signals(frames)
        flat = iy * nx + ix
        for r in np.unique(repeat):
            sel = repeat == r
            sums = self._sums.setdefault(int(r), np.zeros((ny * nx, 5)))
            counts = self._counts.setdefault(int(r), np.zeros(ny * nx, np.int64))
            np.add.at(sums, flat[sel], sig[sel])
            np.add.at(counts, flat[sel], 1)

    def merge(self, other: VirtualImageAccumulator) -> None:
        """Add the partial sums of another accumulator of the same raster and detectors.

        Raises
        ------
        ValueError
            If the scan shapes differ.
        """
        if other.scan_shape != self.scan_shape:
            raise ValueError(f"cannot merge scan shape {other.scan_shape} into {self.scan_shape}")
        for r, sums in other._sums.items():
            self._sums.setdefault(r, np.zeros_like(sums))[:] += sums
            self._counts.setdefault(r, np.zeros_like(other._counts[r]))[:] += other._counts[r]

    def images(self, repeat: int) -> VirtualImages:
        """Images of one repeat so far (shape (ny, nx)); sums of revisited positions add.

        Raises
        ------
        KeyError
            If no frame of that repeat has been processed.
        """
        if repeat not in self._sums:
            raise KeyError(f"no frame of repeat {repeat!r} yet; seen {self.repeats}")
        ny, nx = self.scan_shape
        sig = self._sums[repeat].reshape(ny, nx, 5)
        return _to_images(sig, self._counts[repeat].reshape(ny, nx).copy(), self.detectors.com_unit)

    def stack(self, kind: Literal["bf", "adf", "com_y", "com_x", "total"] = "adf") -> np.ndarray:
        """One image kind for every repeat seen, shape (n_repeats, ny, nx), float64.

        Raises
        ------
        ValueError
            For an unknown ``kind``.
        """
        if kind not in ("bf", "adf", "com_y", "com_x", "total"):
            raise ValueError(f"kind must be bf, adf, com_y, com_x or total, got {kind!r}")
        return np.stack([getattr(self.images(r), kind) for r in self.repeats]) if self._sums else (
            np.zeros((0, *self.scan_shape))
        )
