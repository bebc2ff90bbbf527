"""Where the object grid sits: scan positions (Å) → object pixels, and the Fresnel propagator.

The model window is ``Q' ≥ D`` pixels for a ``D × D`` detector of pixel ``Δα``
(:func:`model_window`); one object pixel is ``λ / (Q'·Δα)``
(:func:`~speckleflow.services.ptycho.probe.real_space_pixel_A`), so the window's far field
has the detector's angular pixel and spans ``Q'/D`` times its field. Below, the probe
window is ``Q × Q`` with ``Q = Q'``; the object is just large enough to hold every
probe window of the scan plus ``margin_px`` on each side. A scan position ``r`` (Å, (y, x))
puts the probe centre (window pixel ``(Q//2, Q//2)``) at object pixel
``c = (r − origin_A) / pixel``: the window's top-left corner is ``floor(c) − Q//2`` and the
remaining fraction ``c − floor(c)`` shifts the probe by a Fourier phase ramp.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ObjectGrid:
    """The object grid of a scan.

    Attributes
    ----------
    origin_A : ndarray, shape (2,), float64
        Position (y, x), Å, of object pixel (0, 0) in the scan frame.
    shape : (int, int)
        Object (H, W), pixels.
    pixel_A : float
        Pixel size, Å.
    window : int
        Probe window Q, pixels.
    """

    origin_A: np.ndarray
    shape: tuple[int, int]
    pixel_A: float
    window: int

    def centres_px(self, positions_A: np.ndarray) -> np.ndarray:
        """Probe centres (n, 2) in object pixels (float64) of scan positions (n, 2) Å."""
        return (np.asarray(positions_A, dtype=np.float64) - self.origin_A) / self.pixel_A

    def split(self, positions_A: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(top_left (n, 2) int64, fraction (n, 2) float64 px)`` of every window.

        Raises
        ------
        ValueError
            If a window leaves the object grid.
        """
        c = self.centres_px(positions_A)
        base = np.floor(c)
        top_left = base.astype(np.int64) - self.window // 2
        if top_left.min() < 0 or (top_left + self.window > np.array(self.shape)).any():
            raise ValueError("a scan position's probe window leaves the object grid")
        return top_left, c - base

    def scanned_mask(self, positions_A: np.ndarray, *, inset_px: float = 0.0) -> np.ndarray:
        """Object pixels (H, W) bool inside the bounding box of the probe centres."""
        c = self.centres_px(positions_A)
        lo, hi = c.min(axis=0) + inset_px, c.max(axis=0) - inset_px
        y, x = np.meshgrid(np.arange(self.shape[0]), np.arange(self.shape[1]), indexing="ij")
        return (y >= lo[0]) & (y <= hi[0]) & (x >= lo[1]) & (x <= hi[1])


def object_grid(positions_A: np.ndarray, pixel_A: float, window: int, *, margin_px: int = 4) -> ObjectGrid:
    """The smallest object grid holding every probe window, ``margin_px`` to spare.

    Parameters
    ----------
    positions_A : ndarray, shape (n, 2), float
        Scan positions (y, x), Å.
    pixel_A : float
        Real-space pixel, Å.
    window : int
        Probe window Q, pixels.
    margin_px : int
        Spare pixels on every side (room for position refinement).

    Raises
    ------
    ValueError
        For an empty or non-(n, 2) ``positions_A`` or non-positive sizes.
    """
    pos = np.asarray(positions_A, dtype=np.float64)
    if pos.ndim != 2 or pos.shape[1] != 2 or pos.shape[0] < 1:
        raise ValueError(f"positions_A must have shape (n, 2), got {pos.shape}")
    if not np.all(np.isfinite(pos)):
        raise ValueError("positions_A holds non-finite values")
    if pixel_A <= 0 or window < 2 or margin_px < 0:
        raise ValueError(f"bad grid: pixel_A={pixel_A!r}, window={window!r}, margin_px={margin_px!r}")
    origin = pos.min(axis=0) - pixel_A * (window // 2 + margin_px)
    extent = (pos.max(axis=0) - pos.min(axis=0)) / pixel_A
    shape = tuple(int(np.ceil(e)) + window + 2 * margin_px + 1 for e in extent)
    return ObjectGrid(origin_A=origin, shape=(shape[0], shape[1]), pixel_A=float(pixel_A), window=int(window))


def _check_positive(**values: float) -> None:
    """Raise ValueError naming the first argument that is not a positive finite number."""
    for name, value in values.items():
        if not (np.isfinite(float(value)) and float(value) > 0):
            raise ValueError(f"{name} must be a positive number, got {value!r}")


def model_window(detector: int, semiangle_mrad: float, angular_sampling_mrad: float,
                 oversampling: float | None = None) -> int:
    """The model window Q' (pixels) of a ``detector``-wide camera.

    The exit wave's spectrum is the probe's aperture (radius α) convolved with the object's
    spectrum. In a window of Q' pixels the far field spans Q'·Δα and an FFT wraps what
    leaves it back in from the other side. Everything that lands on the D-pixel detector
    after wrapping is scattering the camera never saw unless ``Q' ≥ D + 2α/Δα``; the
    object's band limit, ``Q'Δα/2``, then also covers every object frequency that scatters
    the probe onto the detector (up to ``DΔα/2 + α``). The default is the smallest such even
    Q'.

    Parameters
    ----------
    detector : int
        Detector width D, pixels.
    semiangle_mrad : float
        Convergence semi-angle α, mrad.
    angular_sampling_mrad : float
        Detector pixel Δα, mrad.
    oversampling : float or None
        ``Q' = round(oversampling · D)`` instead (≥ 1; 1: the detector grid itself, where
        scattering beyond the detector's edge wraps onto it).

    Returns
    -------
    int
        Q' ≥ D.

    Raises
    ------
    ValueError
        For a detector below 2 pixels, non-positive angles or ``oversampling`` < 1.
    """
    d = int(detector)
    if d < 2:
        raise ValueError(f"detector must be >= 2 pixels, got {detector!r}")
    _check_positive(semiangle_mrad=semiangle_mrad, angular_sampling_mrad=angular_sampling_mrad)
    if oversampling is None:
        q = d + 2 * int(np.ceil(float(semiangle_mrad) / float(angular_sampling_mrad) - 1e-9))
        return q + q % 2
    if not (np.isfinite(oversampling) and oversampling >= 1):
        raise ValueError(f"oversampling must be >= 1, got {oversampling!r}")
    return max(int(round(float(oversampling) * d)), d)


def information_limit_per_A(detector: int, angular_sampling_mrad: float, semiangle_mrad: float,
                            wavelength_A: float) -> float:
    """Highest object spatial frequency the patterns constrain, 1/Å.

    An object frequency k scatters the probe (aperture radius α) onto detector pixels only
    if ``λ|k| ≤ θ_det + α``, with ``θ_det = DΔα/2`` the detector's half-field (its edge
    along the axes; the circle is the conservative choice for a square detector). Finer
    object grids (:func:`model_window`) hold frequencies beyond this that no pattern sees.

    Parameters
    ----------
    detector : int — detector width D, pixels.
    angular_sampling_mrad : float — detector pixel Δα, mrad.
    semiangle_mrad : float — probe semi-angle α, mrad.
    wavelength_A : float — electron wavelength λ, Å.

    Returns
    -------
    float
        ``(DΔα/2 + α) / λ`` in 1/Å (3.0 for 64 × 1.5625 mrad, 25 mrad, 200 kV).

    Raises
    ------
    ValueError
        For non-positive arguments.
    """
    _check_positive(detector=detector, angular_sampling_mrad=angular_sampling_mrad,
                    semiangle_mrad=semiangle_mrad, wavelength_A=wavelength_A)
    return (int(detector) * float(angular_sampling_mrad) / 2 + float(semiangle_mrad)) * 1e-3 / float(wavelength_A)


def fresnel_propagator(window: int, pixel_A: float, wavelength_A: float, dz_A: float) -> np.ndarray:
    """Fresnel propagator over ``dz_A`` in Fourier space (unshifted FFT order).

    ``p(k) = exp(−i π λ Δz |k|²)`` (Kirkland (2020) eq. 6.65; abTEM's ``FresnelPropagator``
    without its anti-aliasing aperture).

    Returns
    -------
    ndarray, shape (window, window), complex64
    """
    k = np.fft.fftfreq(int(window), d=float(pixel_A))
    k2 = k[:, None] ** 2 + k[None, :] ** 2
    return np.exp(-1j * np.pi * wavelength_A * dz_A * k2).astype(np.complex64)
