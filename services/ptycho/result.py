"""Input and output of a ptychographic reconstruction (plain numpy; no torch)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .probe import electron_wavelength_A, real_space_pixel_A


@dataclass
class PtychoData:
    """A 4D-STEM dataset and its probe and detector parameters.

    Attributes
    ----------
    patterns : ndarray, shape (P, Q, Q), float or int
        Diffraction patterns, counts (electrons) per pixel, zero frequency at pixel
        (Q//2, Q//2).
    positions_A : ndarray, shape (P, 2), float
        Scan positions (y, x), Å.
    energy_eV : float
        Electron energy, eV.
    semiangle_mrad : float
        Probe convergence semi-angle, mrad.
    angular_sampling_mrad : float
        Detector pixel, mrad (the same along y and x).
    defocus_A : float
        Defocus, Å, positive = underfocus (abTEM convention).
    Cs_A : float
        Spherical aberration, Å.
    """

    patterns: np.ndarray
    positions_A: np.ndarray
    energy_eV: float
    semiangle_mrad: float
    angular_sampling_mrad: float
    defocus_A: float = 0.0
    Cs_A: float = 0.0

    def validate(self) -> None:
        """Raise ValueError naming the first inconsistent field."""
        p = np.asarray(self.patterns)
        if p.ndim != 3 or p.shape[1] != p.shape[2]:
            raise ValueError(f"patterns must have shape (P, Q, Q), got {p.shape}")
        if p.shape[0] < 1 or p.shape[1] < 4:
            raise ValueError(f"patterns shape {p.shape} is too small")
        if not np.all(np.isfinite(p)) or np.any(p < 0):
            raise ValueError("patterns must be finite and non-negative counts")
        pos = np.asarray(self.positions_A)
        if pos.shape != (p.shape[0], 2):
            raise ValueError(f"positions_A must have shape ({p.shape[0]}, 2), got {pos.shape}")
        for name in ("energy_eV", "semiangle_mrad", "angular_sampling_mrad"):
            v = getattr(self, name)
            if not (isinstance(v, int | float | np.floating | np.integer) and np.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a positive number, got {v!r}")
        for name in ("defocus_A", "Cs_A"):
            v = getattr(self, name)
            if not np.isfinite(float(v)):
                raise ValueError(f"{name} must be finite, got {v!r}")

    @property
    def window(self) -> int:
        return int(np.asarray(self.patterns).shape[-1])

    @property
    def wavelength_A(self) -> float:
        return electron_wavelength_A(self.energy_eV)

    @property
    def pixel_A(self) -> float:
        """Real-space pixel λ / (Q Δα), Å."""
        return real_space_pixel_A(self.energy_eV, self.window, self.angular_sampling_mrad)


@dataclass
class ReconstructionResult:
    """What :func:`~speckleflow.services.ptycho.fit.reconstruct` returns (services/ptycho/CAVIAR_CONTRACT.md).

    Attributes
    ----------
    object : ndarray, shape (n_states, n_slices, H, W), complex64
        Transmission functions.
    object_phase : ndarray, shape (n_states, n_slices, H, W), float32
        ``np.angle(object)``, rad.
    pixel_size_A, slice_thickness_A : float
        Object pixel and slice thickness, Å.
    object_origin_A : ndarray, shape (2,), float64
        Position (y, x), Å, of object pixel (0, 0) in the frame of the scan positions.
    probe : ndarray, shape (n_modes, Q, Q), complex64
        Orthogonal probe modes, strongest first, centred at (Q//2, Q//2).
    loss : ndarray, shape (n_iterations,), float64
        Mean loss per pass over all positions (both stages).
    positions_A : ndarray, shape (P, 2), float64
        Refined scan positions (the given ones without position correction).
    state_weights : ndarray, shape (n_states,), float64
        Weights of the object states, Σ = 1.
    params : dict
        Every parameter of the fit, the stage boundaries, timings and versions.
    """

    object: np.ndarray
    object_phase: np.ndarray
    pixel_size_A: float
    slice_thickness_A: float
    object_origin_A: np.ndarray
    probe: np.ndarray
    loss: np.ndarray
    positions_A: np.ndarray
    state_weights: np.ndarray
    params: dict[str, Any] = field(default_factory=dict)

    def scanned_mask(self, *, inset_px: float = 0.0) -> np.ndarray:
        """Object pixels (H, W) bool inside the bounding box of the probe centres."""
        from .geometry import ObjectGrid

        grid = ObjectGrid(np.asarray(self.object_origin_A), tuple(self.object.shape[-2:]),
                          self.pixel_size_A, self.probe.shape[-1])
        return grid.scanned_mask(self.positions_A, inset_px=inset_px)
