"""Diffraction-plane geometry of a pixelated STEM camera: k of every detector pixel.

Pixel (row, col) of the camera sits at k = ((col − c_x)·Δk, (row − c_y)·Δk), with
(c_y, c_x) the pixel of k = 0 (the undiffracted beam) and Δk the k-calibration in Å⁻¹
per pixel; k_r = |k| and k_φ = atan2(k_y, k_x) ∈ [0, 2π). This is the convention of the
simulated camera's ``geometry`` configuration (``LiquidSample.geometry()``), so a
geometry can be built straight from a run's configuration with
:meth:`DetectorGeometry.from_mapping`.

References
----------
Huang & Voyles, k-resolved electron correlation microscopy by 5D-STEM (``ARCHITECTURE.md``
§3): first diffraction ring at k₁ ≈ 0.3–0.6 Å⁻¹, k_φ bins no wider than the probe
convergence.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["DetectorGeometry"]


def _positive(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class DetectorGeometry:
    """Where k = 0 is, how many Å⁻¹ a pixel spans, and where the first ring lies.

    Parameters
    ----------
    shape : tuple of int
        (det_ny, det_nx) camera pixels, each ≥ 2.
    center : tuple of float
        (row, col) of k = 0, pixels.
    k_per_pixel : float
        k-calibration Δk, Å⁻¹ per pixel (> 0).
    ring_radius : float
        First-ring position k₁, Å⁻¹ (> 0).
    ring_width : float
        Full width of the first-ring annulus, Å⁻¹ (> 0); the ADF detector and the
        polar strip default to k₁ ± ring_width/2 (the FWHM of the ring).
    bf_radius : float
        Bright-field disc radius α/λ, Å⁻¹ (> 0).
    wavelength : float or None
        Electron wavelength λ, Å; needed only to express k in mrad (θ = λ·k).
    convergence_mrad : float or None
        Probe convergence semi-angle α, mrad.

    Raises
    ------
    ValueError, TypeError
        For non-positive, non-finite or non-numeric values (the message names them).
    """

    shape: tuple[int, int]
    center: tuple[float, float]
    k_per_pixel: float
    ring_radius: float
    ring_width: float
    bf_radius: float
    wavelength: float | None = None
    convergence_mrad: float | None = None

    def __post_init__(self) -> None:
        if len(self.shape) != 2 or any(int(s) != s or s < 2 for s in self.shape):
            raise ValueError(f"shape must be two integers >= 2, got {self.shape!r}")
        object.__setattr__(self, "shape", (int(self.shape[0]), int(self.shape[1])))
        if len(self.center) != 2 or not all(math.isfinite(float(c)) for c in self.center):
            raise ValueError(f"center must be two finite pixel coordinates, got {self.center!r}")
        object.__setattr__(self, "center", (float(self.center[0]), float(self.center[1])))
        for name in ("k_per_pixel", "ring_radius", "ring_width", "bf_radius"):
            object.__setattr__(self, name, _positive(name, getattr(self, name)))
        for name in ("wavelength", "convergence_mrad"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, _positive(name, getattr(self, name)))

    @classmethod
    def from_mapping(cls, geometry: Mapping[str, Any]) -> DetectorGeometry:
        """Build from the camera's ``geometry`` configuration (JSON-decoded dict).

        Parameters
        ----------
        geometry : mapping
            Keys ``detector_shape``, ``center``, ``k_per_pixel``, ``ring_radius``
            (Å⁻¹), ``ring_fwhm`` (Å⁻¹), ``bf_radius`` (Å⁻¹) and optionally
            ``wavelength_A`` and ``convergence_mrad`` — what ``LiquidSample.geometry()``
            and the Celeritas ``geometry`` signal carry.

        Raises
        ------
        ValueError
            If a required key is missing (the message names it).
        """
        required = ("detector_shape", "center", "k_per_pixel", "ring_radius", "ring_fwhm", "bf_radius")
        missing = [k for k in required if k not in geometry]
        if missing:
            raise ValueError(f"geometry lacks {missing}; it has {sorted(geometry)}")
        return cls(
            shape=tuple(geometry["detector_shape"]),  # type: ignore[arg-type]
            center=tuple(geometry["center"]),  # type: ignore[arg-type]
            k_per_pixel=geometry["k_per_pixel"],
            ring_radius=geometry["ring_radius"],
            ring_width=geometry["ring_fwhm"],
            bf_radius=geometry["bf_radius"],
            wavelength=geometry.get("wavelength_A"),
            convergence_mrad=geometry.get("convergence_mrad"),
        )

    def k_components(self) -> tuple[np.ndarray, np.ndarray]:
        """(k_y, k_x) of every pixel, each shape ``shape``, float64, Å⁻¹."""
        rows, cols = np.mgrid[0 : self.shape[0], 0 : self.shape[1]]
        return (rows - self.center[0]) * self.k_per_pixel, (cols - self.center[1]) * self.k_per_pixel

    def k_r(self) -> np.ndarray:
        """|k| of every pixel, shape ``shape``, float64, Å⁻¹."""
        ky, kx = self.k_components()
        return np.hypot(kx, ky)

    def k_phi(self) -> np.ndarray:
        """k_φ = atan2(k_y, k_x) of every pixel in [0, 2π), shape ``shape``, float64, rad."""
        ky, kx = self.k_components()
        return np.mod(np.arctan2(ky, kx), 2 * np.pi)

    def k_to_mrad(self, k: float) -> float:
        """Scattering angle θ = λ·k of a k (Å⁻¹), mrad.

        Raises
        ------
        ValueError
            If the geometry has no ``wavelength``.
        """
        if self.wavelength is None:
            raise ValueError("wavelength is None: give the geometry a wavelength (Å) to use mrad")
        return 1e3 * self.wavelength * float(k)

    def convergence_k(self) -> float | None:
        """Probe convergence α as a k (α/λ, Å⁻¹), or None without α and λ."""
        if self.convergence_mrad is None or self.wavelength is None:
            return None
        return self.convergence_mrad * 1e-3 / self.wavelength
