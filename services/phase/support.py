"""Support of the exit wave from the FTH reconstruction, and shrink-wrap.

Holography-aided phase retrieval (Battistelli et al., Optica 11, 234 (2024)) takes the
support from the hologram itself: the object ⊗ reference cross terms of the Patterson
map of the sum hologram I_+ + I_− image the object aperture (blurred by the reference
hole). Behind a beamstop that image is the aperture's rim; a ridge filter, a threshold
and morphology (scikit-image) turn it into the object part of the support
(:func:`support_from_hologram`); the reference holes, whose positions and radii the
geometry gives, are added as discs.

Shrink-wrap (Marchesini et al., Phys. Rev. B 68, 140101 (2003)) refines the object part
during the iterations: the modulus of the current exit wave, smoothed by a Gaussian, is
thresholded at a fraction of its maximum, and kept inside the initial support dilated
by a margin.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage
from speckleflow.services.fth.preview import (
    _parse_geometry,
    beamstop_apodisation,
    cross_term_crops,
    reconstruct,
)

__all__ = ["Support", "shrink_wrap", "support_from_hologram"]


@dataclass(frozen=True)
class Support:
    """Support of the exit wave on the sample grid.

    Attributes
    ----------
    mask : ndarray, shape (ny, nx), bool
        Object part ∪ reference holes: where the exit wave may be non-zero.
    object_mask : ndarray, shape (ny, nx), bool
        The object aperture only (where mz is imaged).
    fth_image : ndarray, shape (h, w), float32
        |cross term| averaged over the references, normalised to its maximum (the map
        the object part was thresholded from), in crop coordinates of
        :func:`speckleflow.services.fth.preview.cross_term_crops`.
    """

    mask: np.ndarray
    object_mask: np.ndarray
    fth_image: np.ndarray


def _disc(shape: tuple[int, int], center: np.ndarray, radius: float) -> np.ndarray:
    yy = np.arange(shape[0])[:, None] - float(center[0])
    xx = np.arange(shape[1])[None, :] - float(center[1])
    return yy * yy + xx * xx <= radius * radius


def support_from_hologram(
    sum_hologram: np.ndarray,
    geometry_config: Mapping[str, Any],
    *,
    ridge_sigma_px: float = 1.0,
    min_size_px: int = 20,
    limit_margin_px: float = 2.0,
    dilate_px: int | None = None,
    reference_margin_px: float = 0.5,
) -> Support:
    """Support mask from the FTH reconstruction of the sum hologram.

    The beamstop hides the central Airy lobe of the object aperture, so the FTH image of
    the (uniformly transmitting) aperture is its rim: a thin bright ring, not a filled
    disc. The object part is therefore found as the rim: |cross term| averaged over the
    references → ridge filter (:func:`skimage.filters.sato`, bright ridges) → Otsu
    threshold inside the crop disc of radius R + ``limit_margin_px`` (R from the
    geometry, which also sizes the crop window) → small pieces removed → convex hull
    (:func:`skimage.morphology.convex_hull_image`; apertures are convex) → dilation.

    Parameters
    ----------
    sum_hologram : ndarray, shape (ny, nx), real
        I_+ + I_− (any units), q = 0 at (ny // 2, nx // 2), 0 where unmeasured.
    geometry_config : dict
        Mask geometry (:meth:`FTHGeometry.to_config`).
    ridge_sigma_px : float
        Scale σ (px) of the ridge filter, > 0. It picks the sharp inner edge of the rim,
        which is pixel-limited: σ = r/1.5 (the reference blur) was measured to leave
        6–9 aperture px outside the dilated support at 512² (r = 3 px), σ = 1 px none
        from 128² to 1024² (1 px at 256²) on the default geometries.
    min_size_px : int
        Connected rim pieces smaller than this (px) are dropped (>= 0).
    limit_margin_px : float
        The object part stays within R + this margin (px) of the aperture centre (>= 0).
    dilate_px : int, optional
        Final dilation (px) of the object part (>= 0): a support slightly larger than
        the object costs little (the retrieval tightens it), a smaller one cuts
        the image; the convex hull cuts chords where the rim is missed over short arcs
        (measured: up to 3 px deep for R = 32 px), and a chord's depth scales with R.
        Default round(R/8) (4 px for R = 32), so that the support is the same fraction
        looser than the aperture on every grid (the oversampling does not change).
    reference_margin_px : float
        Added to the reference radius for the reference discs (>= 0).

    Returns
    -------
    Support

    Raises
    ------
    ValueError
        For out-of-range parameters (named), a hologram of the wrong shape, or no rim
        found.

    References
    ----------
    R. Battistelli et al., Optica 11, 234 (2024); S. Eisebitt et al., Nature 432, 885
    (2004); Y. Sato et al., Med. Image Anal. 2, 143 (1998) — ridge filter.
    """
    from skimage.filters import sato, threshold_otsu
    from skimage.morphology import convex_hull_image, disk, remove_small_objects

    geo = _parse_geometry(geometry_config)
    if dilate_px is None:
        dilate_px = round(geo.object_radius / 8.0)
    if not ridge_sigma_px > 0:
        raise ValueError(f"ridge_sigma_px must be > 0, got {ridge_sigma_px!r}")
    for name, v in (
        ("min_size_px", min_size_px),
        ("limit_margin_px", limit_margin_px),
        ("dilate_px", dilate_px),
        ("reference_margin_px", reference_margin_px),
    ):
        if not v >= 0:
            raise ValueError(f"{name} must be >= 0, got {v!r}")
    h = np.asarray(sum_hologram, dtype=np.float64)
    if h.shape != geo.shape:
        raise ValueError(f"sum_hologram has shape {h.shape}, geometry expects {geo.shape}")
    if geo.beamstop_radius > 0:
        h = h * beamstop_apodisation(geo.shape, geo.beamstop_radius)
    crops = cross_term_crops(reconstruct(h), geometry_config)
    amp = np.abs(crops).mean(axis=0)
    peak = float(amp.max())
    if not peak > 0:
        raise ValueError("the sum hologram has no object ⊗ reference cross term (all zero)")
    amp /= peak
    half = amp.shape[0] // 2
    frac = geo.object_center - np.round(geo.object_center)
    yy = np.arange(-half, half + 1)[:, None] - frac[0]
    xx = np.arange(-half, half + 1)[None, :] - frac[1]
    limit = np.hypot(yy, xx) <= geo.object_radius + limit_margin_px
    ridge = sato(amp, sigmas=[float(ridge_sigma_px)], black_ridges=False)
    rim = (ridge > threshold_otsu(ridge[limit])) & limit
    rim = remove_small_objects(rim, max_size=max(int(min_size_px) - 1, 0))
    if not rim.any():
        raise ValueError("no aperture rim found in the FTH reconstruction")
    obj = convex_hull_image(rim)
    if dilate_px > 0:
        obj = ndimage.binary_dilation(obj, structure=disk(int(dilate_px)))
    ny, nx = geo.shape
    cy, cx = (round(v) for v in geo.object_center)
    offs = np.arange(-half, half + 1)
    object_mask = np.zeros(geo.shape, dtype=bool)
    object_mask[np.ix_((cy + offs) % ny, (cx + offs) % nx)] = obj
    mask = object_mask.copy()
    for ref in geo.reference_centers:
        mask |= _disc(geo.shape, ref, geo.reference_radius + reference_margin_px)
    return Support(mask=mask, object_mask=object_mask, fth_image=amp.astype(np.float32))


def shrink_wrap(
    exit_wave: np.ndarray,
    limit: np.ndarray,
    *,
    sigma_px: float = 1.0,
    threshold: float = 0.1,
) -> np.ndarray:
    """New object support from the current exit wave (Marchesini et al. 2003).

    Parameters
    ----------
    exit_wave : ndarray, shape (ny, nx), complex
        Current estimate.
    limit : ndarray, shape (ny, nx), bool
        The new support stays inside this mask (e.g. the initial object part dilated).
    sigma_px : float
        σ (px) of the Gaussian applied to |exit_wave|, > 0.
    threshold : float
        Fraction (0, 1) of the maximum of the smoothed modulus inside ``limit``.

    Returns
    -------
    ndarray, shape (ny, nx), bool

    Raises
    ------
    ValueError
        For out-of-range parameters or mismatched shapes.
    """
    if not sigma_px > 0:
        raise ValueError(f"sigma_px must be > 0, got {sigma_px!r}")
    if not 0 < threshold < 1:
        raise ValueError(f"threshold must be in (0, 1), got {threshold!r}")
    w = np.asarray(exit_wave)
    lim = np.asarray(limit, dtype=bool)
    if w.shape != lim.shape:
        raise ValueError(f"exit_wave shape {w.shape} != limit shape {lim.shape}")
    smooth = ndimage.gaussian_filter(np.abs(w).astype(np.float64), sigma_px, mode="wrap")
    peak = float(smooth[lim].max()) if lim.any() else 0.0
    if not peak > 0:
        return lim.copy()
    return lim & (smooth > threshold * peak)
