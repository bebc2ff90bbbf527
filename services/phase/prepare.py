"""Hologram preparation for phase retrieval: masks, centring, crop-then-bin, noise floor.

Input holograms are (ny, nx) intensities with q = 0 at (ny // 2, nx // 2) (the
``fftshift`` order the FTH simulator and the detector use), both helicities, and the
mask geometry as the plain dict of :meth:`speckleflow.devices.fth.FTHGeometry.to_config`
(parsed by :mod:`speckleflow.services.fth.preview`).

Steps, in order (Battistelli et al., Optica 11, 234 (2024), Methods):

1. invalid pixels — the beamstop disc of the geometry, pixels flagged bad by the
   caller, non-finite pixels and pixels at or above a saturation level — are set to 0
   and excluded from the modulus constraint;
2. centring (optional) — the centre of point symmetry of I_+ + I_− is estimated by the
   masked cross-correlation of the hologram with its point reflection
   (:func:`skimage.registration.phase_cross_correlation`) and both holograms and the
   mask are rolled by the whole-pixel offset that puts it at (ny // 2, nx // 2);
3. noise floor — a constant background (counts) is subtracted and negative values
   clipped to 0;
4. crop-then-bin (optional) — a centred ``crop`` × ``crop`` window, then ``bin`` × ``bin``
   sums. The real-space pixel grows by ny / crop; the field of view shrinks by ``bin``;
   the geometry is rescaled accordingly and must still be oversampled ≥ 2 per axis.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from speckleflow.services.fth.preview import _parse_geometry

__all__ = ["PreparedHolograms", "prepare_holograms", "rescale_geometry"]


@dataclass(frozen=True)
class PreparedHolograms:
    """Both helicities, ready for the retrieval.

    Attributes
    ----------
    plus, minus : ndarray, shape (my, mx), float32
        I_+ and I_− (input units, e.g. photon counts), q = 0 at (my // 2, mx // 2); 0
        where not valid.
    valid : ndarray, shape (my, mx), bool
        Pixels whose intensity constrains the modulus.
    geometry_config : dict
        The mask geometry on the (possibly rescaled) grid.
    center_shift : tuple of int
        Whole-pixel roll (dy, dx) applied to centre the holograms.
    crop : int or None
        Side of the centred crop window (input px), None for none.
    bin : int
        Binning factor applied after the crop.
    """

    plus: np.ndarray
    minus: np.ndarray
    valid: np.ndarray
    geometry_config: dict[str, Any]
    center_shift: tuple[int, int]
    crop: int | None
    bin: int

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.plus.shape[0]), int(self.plus.shape[1]))


def _beamstop(shape: tuple[int, int], radius: float) -> np.ndarray:
    if radius <= 0:
        return np.zeros(shape, dtype=bool)
    yy = np.arange(shape[0])[:, None] - shape[0] // 2
    xx = np.arange(shape[1])[None, :] - shape[1] // 2
    return yy * yy + xx * xx <= radius * radius


def rescale_geometry(
    geometry_config: Mapping[str, Any], crop: int | None, bin: int = 1
) -> dict[str, Any]:
    """Mask geometry on the grid of a cropped and binned hologram.

    Parameters
    ----------
    geometry_config : dict
        Geometry of the full hologram (grid n × n required when ``crop`` is set).
    crop : int or None
        Side (px) of the centred crop window; None keeps the full grid.
    bin : int
        Binning factor (>= 1) after the crop.

    Returns
    -------
    dict
        Same keys; positions relative to the mask centre and radii scaled by crop / n
        (the real-space pixel grows by n / crop), the mask centred on the new grid of
        crop / bin px, the beamstop radius divided by ``bin``.

    Raises
    ------
    ValueError
        If ``crop`` / ``bin`` do not divide, exceed the grid, or leave the mask
        oversampled less than 2 per axis (mask extent > half the new grid).
    """
    geo = _parse_geometry(geometry_config)
    ny, nx = geo.shape
    b = int(bin)
    if b != bin or b < 1:
        raise ValueError(f"bin must be an int >= 1, got {bin!r}")
    c = ny if crop is None else int(crop)
    if crop is not None and (c != crop or c < 2 or c > min(ny, nx) or ny != nx):
        raise ValueError(
            f"crop must be an int in [2, {min(ny, nx)}] on a square grid, got crop={crop!r} "
            f"for shape {geo.shape}"
        )
    if c % b:
        raise ValueError(f"bin={b} must divide the crop side {c}")
    scale = c / ny
    n_new = c // b
    pts = np.vstack([geo.object_center[None, :], geo.reference_centers])
    radii = np.array([geo.object_radius] + [geo.reference_radius] * len(geo.reference_centers))
    lo = (pts - radii[:, None]).min(axis=0)
    hi = (pts + radii[:, None]).max(axis=0)
    mid = (lo + hi) / 2
    extent = (hi - lo) * scale
    if np.any(extent > n_new / 2 + 1e-9):
        raise ValueError(
            f"crop={crop!r}, bin={b} leave the mask (extent {extent.round(1).tolist()} px) "
            f"less than 2× oversampled on the {n_new}-px grid"
        )
    center = np.round(np.array([(n_new - 1) / 2, (n_new - 1) / 2]) - (mid - pts[0]) * scale)
    # keep the relative layout: shift every point by the same amount
    new_pts = (pts - pts[0]) * scale + center
    return {
        "shape": [n_new, n_new] if crop is not None else [ny // b, nx // b],
        "object_center": [float(v) for v in new_pts[0]],
        "object_radius": float(geo.object_radius * scale),
        "reference_centers": [[float(y), float(x)] for y, x in new_pts[1:]],
        "reference_radius": float(geo.reference_radius * scale),
        "beamstop_radius": float(geo.beamstop_radius / b),
    }


def _find_center_shift(total: np.ndarray, valid: np.ndarray) -> tuple[int, int]:
    from skimage.registration import phase_cross_correlation

    flipped = total[::-1, ::-1]
    vflip = valid[::-1, ::-1]
    shift = phase_cross_correlation(
        total, flipped, reference_mask=valid, moving_mask=vflip, overlap_ratio=0.5
    )
    shift = np.asarray(shift[0] if isinstance(shift, tuple) else shift, dtype=np.float64)
    n = np.array(total.shape, dtype=np.float64)
    # flipped(i) = total(i + d) with d = 2c - n + 1; the registration returns -d or d
    # depending on convention: pick the one that gives a centre inside the grid nearest n//2.
    candidates = [(s + n - 1) / 2 for s in (shift, -shift)]
    target = n // 2
    c = min(candidates, key=lambda v: float(np.sum(np.abs(v - target))))
    dy, dx = np.round(target - c).astype(int)
    return int(dy), int(dx)


def prepare_holograms(
    hologram_plus: np.ndarray,
    hologram_minus: np.ndarray,
    geometry_config: Mapping[str, Any],
    *,
    bad_pixels: np.ndarray | None = None,
    saturation: float | None = None,
    noise_floor: float = 0.0,
    find_center: bool = False,
    crop: int | None = None,
    bin: int = 1,
) -> PreparedHolograms:
    """Mask, centre, subtract the noise floor, crop and bin both helicities.

    Parameters
    ----------
    hologram_plus, hologram_minus : ndarray, shape (ny, nx), real
        I_+ and I_− (counts or normalised intensity), q = 0 at (ny // 2, nx // 2).
    geometry_config : dict
        Mask geometry (:meth:`FTHGeometry.to_config`); its ``beamstop_radius`` (px) marks
        the unmeasured disc.
    bad_pixels : ndarray, shape (ny, nx), bool, optional
        True where a pixel is dead, hot or otherwise unusable.
    saturation : float, optional
        Pixels at or above this value (input units) are invalid.
    noise_floor : float
        Background subtracted from every pixel before clipping at 0 (input units), >= 0.
    find_center : bool
        Re-centre on the hologram's centre of point symmetry (whole pixels).
    crop : int, optional
        Side of a centred crop window (px), even; None for none.
    bin : int
        Binning factor after the crop (sums), >= 1.

    Returns
    -------
    PreparedHolograms

    Raises
    ------
    TypeError
        For complex or non-numeric holograms.
    ValueError
        For shapes that disagree (named), a negative or non-finite ``noise_floor``, a
        bad ``crop`` / ``bin`` (see :func:`rescale_geometry`), or no valid pixel left.
    """
    geo = _parse_geometry(geometry_config)
    p = np.asarray(hologram_plus)
    m = np.asarray(hologram_minus)
    for name, a in (("hologram_plus", p), ("hologram_minus", m)):
        if a.dtype.kind == "c":
            raise TypeError(f"{name} must be real, got dtype {a.dtype}")
        if a.dtype.kind not in "fiub":
            raise TypeError(f"{name} must be numeric, got dtype {a.dtype}")
        if a.shape != geo.shape:
            raise ValueError(f"{name} has shape {a.shape}, geometry expects {geo.shape}")
    floor = float(noise_floor)
    if not (math.isfinite(floor) and floor >= 0):
        raise ValueError(f"noise_floor must be finite and >= 0, got {noise_floor!r}")
    p = p.astype(np.float64)
    m = m.astype(np.float64)
    valid = ~_beamstop(geo.shape, geo.beamstop_radius)
    valid &= np.isfinite(p) & np.isfinite(m)
    if bad_pixels is not None:
        bad = np.asarray(bad_pixels)
        if bad.shape != geo.shape or bad.dtype != bool:
            raise ValueError(
                f"bad_pixels must be a bool array of shape {geo.shape}, got {bad.dtype} {bad.shape}"
            )
        valid &= ~bad
    if saturation is not None:
        sat = float(saturation)
        if not sat > 0:
            raise ValueError(f"saturation must be > 0, got {saturation!r}")
        valid &= (p < sat) & (m < sat)
    p[~valid] = 0.0
    m[~valid] = 0.0
    # Negative intensities (after a dark subtraction upstream) carry no modulus: clip.
    p = np.maximum(p - floor, 0.0)
    m = np.maximum(m - floor, 0.0)
    shift = (0, 0)
    if find_center:
        shift = _find_center_shift(p + m, valid)
        p = np.roll(p, shift, axis=(0, 1))
        m = np.roll(m, shift, axis=(0, 1))
        valid = np.roll(valid, shift, axis=(0, 1))
    config = dict(geometry_config)
    b = int(bin) if isinstance(bin, (int, np.integer)) else bin
    if crop is not None or b != 1:
        config = rescale_geometry(geometry_config, crop, b)
        ny, nx = geo.shape
        if crop is None:
            win = (slice(0, ny), slice(0, nx))
        else:
            c = int(crop)
            win = (
                slice(ny // 2 - c // 2, ny // 2 - c // 2 + c),
                slice(nx // 2 - c // 2, nx // 2 - c // 2 + c),
            )

        def binned(a: np.ndarray) -> np.ndarray:
            a = a[win]
            return a.reshape(a.shape[0] // b, b, a.shape[1] // b, b).sum(axis=(1, 3))

        p, m = binned(p), binned(m)
        valid = binned(valid.astype(np.int64)) == b * b
    if not np.any(valid):
        raise ValueError("no valid pixel left after masking (beamstop, bad pixels, saturation)")
    return PreparedHolograms(
        plus=p.astype(np.float32),
        minus=m.astype(np.float32),
        valid=valid,
        geometry_config=config,
        center_shift=shift,
        crop=crop,
        bin=b,
    )
