"""The pinning landscape of a fluctuating maze, from the images of its internal modes.

Klose et al., Nature 614, 256 (2023) overlay the domain walls of all reconstructed
internal modes: walls *converge* on attractive pinning sites (point-like places that
walls pass through in many modes) and *avoid* repulsive regions (areas no wall ever
enters, which the magnetisation crosses only by a wall jumping over them). This module
computes that landscape from FTH-reconstructed images ``mz_mode`` (∝ mz up to a global
sign and scale, NaN or 0 outside the object aperture):

1. :func:`domain_wall_map` — the walls of one image: zero crossings of the lightly
   smoothed mz, 1 px thin, inside the aperture minus a rim.
2. :func:`wall_occupancy` — the time-weighted fraction of modes with a wall at (within
   ``wall_radius_px`` of) each pixel.
3. :func:`pinning_landscape` — attractive sites (point-like occupancy maxima) and
   repulsive regions (connected areas never occupied), and per mode transition whether
   the swept area jumped a repulsive region (:func:`transition_crossings`).
4. :func:`compare_with_true_sites` — precision/recall against known sites (simulation).

Coordinates are array indices (row, col) in pixels throughout, like
``MazeStates.pinning_sites``.

Measured on the simulated maze (``generate_maze_states`` seeds 0–7, 16 states each, mz
blurred with σ = 1.5 px, circular aperture inscribed in 128², equal weights, defaults):
≈ 50 attractive sites per landscape; of the model's pinning discs that lie on a wall in
some state, 33 % on average (0.20–0.47 by seed) have a detected site within 3 px, where
randomly placed points would be hit 11 % of the time (the fraction of the region within
3 px of a detected site) — 3× chance. Only ≈ 12 % of the detected sites are model
pinning discs: the model's random anisotropy (as deep as the discs at its 5 % tail) pins
walls too, and those places are attractive sites all the same. On noise-free FTH
previews of the same states (``preview_image``, default 256² mask, 65-px aperture,
``smooth_px=0.5, wall_radius_px=1`` for the occupancy, ``smooth_px=1,
min_distance_px=3`` for the landscape) the recall within 1.5–2 px is 0.16–0.33 for
seeds 0–2, ≈ 2× chance. The point-likeness limit (``max_site_area_px``) rejects almost
nothing on these mazes; repulsive regions are rare there (0–3 per landscape with the
defaults), since 8 independent maze families leave few areas without a wall.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage
from scipy.optimize import linear_sum_assignment

__all__ = [
    "PinningLandscape",
    "compare_with_true_sites",
    "domain_wall_map",
    "pinning_landscape",
    "transition_crossings",
    "wall_occupancy",
]

#: Default width in px of the aperture rim excluded from wall maps.
DEFAULT_RIM_PX = 2


def _check_aperture(aperture: Any, shape: tuple[int, ...]) -> np.ndarray:
    ap = np.asarray(aperture)
    if ap.dtype != bool:
        raise TypeError(f"aperture must be a boolean mask, got dtype {ap.dtype}")
    if ap.shape != shape:
        raise ValueError(f"aperture has shape {ap.shape}, image has shape {shape}")
    if not ap.any():
        raise ValueError("aperture is empty (no True pixel)")
    return ap


def _check_image(image: Any, name: str = "mz_image") -> np.ndarray:
    img = np.asarray(image, dtype=np.float64)
    if img.ndim != 2:
        raise ValueError(f"{name} must be 2-D (h, w), got shape {img.shape}")
    return img


def _inner(aperture: np.ndarray, rim_px: int) -> np.ndarray:
    """The aperture minus a rim of ``rim_px`` pixels (also at the array border)."""
    if rim_px < 0:
        raise ValueError(f"rim_px must be >= 0, got {rim_px}")
    if rim_px == 0:
        return aperture.copy()
    return ndimage.binary_erosion(aperture, iterations=int(rim_px), border_value=0)


def _masked_smooth(values: np.ndarray, mask: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing normalised to the mask (no leakage of the outside), 0 outside."""
    v = np.where(mask, np.nan_to_num(values), 0.0)
    if sigma <= 0:
        return v
    num = ndimage.gaussian_filter(v, sigma, mode="constant")
    den = ndimage.gaussian_filter(mask.astype(np.float64), sigma, mode="constant")
    out = np.divide(num, den, out=np.zeros_like(num), where=den > 1e-9)
    out[~mask] = 0.0
    return out


def _smoothed_mz(mz: np.ndarray, aperture: np.ndarray, smooth_px: float) -> np.ndarray:
    ok = aperture & np.isfinite(mz)
    return _masked_smooth(mz, ok, smooth_px)


def domain_wall_map(
    mz_image: np.ndarray,
    aperture: np.ndarray,
    *,
    smooth_px: float = 1.0,
    rim_px: int = DEFAULT_RIM_PX,
) -> np.ndarray:
    """Domain walls of one magnetic image: zero crossings of mz inside the aperture.

    The image is smoothed by a Gaussian of ``smooth_px`` normalised to the aperture
    (pixels outside do not leak in). For every pair of 4-neighbours whose mz signs
    differ, the pixel of the pair closer to zero (smaller |mz|) is marked, which gives
    1-px thin walls at the zero crossing. Only pixels at least ``rim_px`` inside the
    aperture are kept (the edge of the aperture is not a wall). Global sign and scale of
    the image do not matter.

    Parameters
    ----------
    mz_image : ndarray, shape (h, w), float
        Magnetic image ∝ mz (any sign/scale); NaN or anything outside the aperture.
    aperture : ndarray, shape (h, w), bool
        True inside the object aperture.
    smooth_px : float
        Gaussian σ in px (>= 0; 0 = no smoothing).
    rim_px : int
        Rim of the aperture excluded, in px (>= 0).

    Returns
    -------
    ndarray, shape (h, w), bool
        True on a domain wall.

    Raises
    ------
    ValueError
        If shapes disagree, the aperture is empty, ``smooth_px`` < 0 or ``rim_px`` < 0.
    TypeError
        If ``aperture`` is not boolean.

    References
    ----------
    C. Klose et al., Nature 614, 256 (2023) — domain walls of the internal modes.
    """
    img = _check_image(mz_image)
    ap = _check_aperture(aperture, img.shape)
    if not (smooth_px >= 0):
        raise ValueError(f"smooth_px must be >= 0, got {smooth_px}")
    inner = _inner(ap & np.isfinite(img), rim_px)
    mz = _smoothed_mz(img, ap, float(smooth_px))
    pos = mz > 0
    mag = np.abs(mz)
    wall = np.zeros(img.shape, dtype=bool)
    for axis in (0, 1):
        lo = [slice(None), slice(None)]
        hi = [slice(None), slice(None)]
        lo[axis] = slice(None, -1)
        hi[axis] = slice(1, None)
        lo_t, hi_t = tuple(lo), tuple(hi)
        both = inner[lo_t] & inner[hi_t]
        flip = (pos[lo_t] != pos[hi_t]) & both
        wall[lo_t] |= flip & (mag[lo_t] <= mag[hi_t])
        wall[hi_t] |= flip & (mag[hi_t] < mag[lo_t])
    return wall & inner


def _disc(radius: float) -> np.ndarray:
    r = int(np.floor(radius))
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    return (yy**2 + xx**2) <= radius**2 + 1e-9


def wall_occupancy(
    mode_images: np.ndarray,
    weights: np.ndarray | None,
    aperture: np.ndarray,
    *,
    smooth_px: float = 1.0,
    wall_radius_px: float = 2.0,
    rim_px: int = DEFAULT_RIM_PX,
) -> np.ndarray:
    """Time-weighted fraction of the modes with a domain wall at each pixel.

    Parameters
    ----------
    mode_images : ndarray, shape (n_modes, h, w), float
        Magnetic image per internal mode (∝ mz, common sign convention not needed).
    weights : ndarray, shape (n_modes,), or None
        Time weight per mode, e.g. the number of pairs assigned to it (>= 0, not all 0);
        None = equal weights.
    aperture : ndarray, shape (h, w), bool
        Object aperture.
    smooth_px : float
        Gaussian σ in px applied to each image before finding walls.
    wall_radius_px : float
        A pixel counts as on a wall when it lies within this distance (px) of a zero
        crossing — the wall's half width plus the imaging resolution (>= 0; 0 = the 1-px
        zero-crossing line only). Measured on the simulated maze (16-px period, walls 2–3
        px, images blurred by σ = 1 px, seeds 0–7): with 2 px the attractive sites hit
        the model's pinning discs ≈ 3.5× as often as chance, with the bare line ≈ 2.7×.
    rim_px : int
        Rim of the aperture excluded, in px.

    Returns
    -------
    ndarray, shape (h, w), float64
        Occupancy in [0, 1] (fraction of time a wall is there); NaN outside the
        analysed region (the aperture minus the rim).

    Raises
    ------
    ValueError
        If shapes disagree, a weight is negative or not finite, or all are 0.
    """
    imgs = np.asarray(mode_images, dtype=np.float64)
    if imgs.ndim != 3 or imgs.shape[0] < 1:
        raise ValueError(f"mode_images must have shape (n_modes, h, w), got {imgs.shape}")
    ap = _check_aperture(aperture, imgs.shape[1:])
    n = imgs.shape[0]
    if weights is None:
        w = np.ones(n)
    else:
        w = np.asarray(weights, dtype=np.float64)
        if w.shape != (n,):
            raise ValueError(f"weights must have shape ({n},), got {w.shape}")
        if not np.all(np.isfinite(w)) or np.any(w < 0):
            raise ValueError(f"weights must be finite and >= 0, got {w}")
        if w.sum() <= 0:
            raise ValueError("weights are all 0")
    if not (wall_radius_px >= 0):
        raise ValueError(f"wall_radius_px must be >= 0, got {wall_radius_px}")
    w = w / w.sum()
    inner = _inner(ap, rim_px)
    footprint = _disc(float(wall_radius_px)) if wall_radius_px >= 1 else None
    occ = np.zeros(imgs.shape[1:])
    for img, wi in zip(imgs, w, strict=True):
        if wi == 0:
            continue
        wall = domain_wall_map(img, ap, smooth_px=smooth_px, rim_px=rim_px)
        if footprint is not None:
            wall = ndimage.binary_dilation(wall, structure=footprint) & inner
        occ += wi * wall
    occ[~inner] = np.nan
    return occ


@dataclass(frozen=True)
class PinningLandscape:
    """Attractive sites and repulsive regions of the domain walls.

    Attributes
    ----------
    attractive_xy : ndarray, shape (n_sites, 2), float64
        Attractive pinning sites, array coordinates (row, col) in px, strongest first.
    attractive_occupancy : ndarray, shape (n_sites,), float64
        Smoothed wall occupancy at each site (fraction of time).
    attractive_area_px : ndarray, shape (n_sites,), int64
        Area of the above-threshold connected region around each site, px.
    repulsive_labels : ndarray, shape (h, w), int32
        Label image of the repulsive regions, 1..n_regions, 0 elsewhere.
    repulsive_area_px : ndarray, shape (n_regions,), int64
        Area per repulsive region in px (index r−1 for label r).
    threshold : float
        Occupancy threshold used for the attractive sites.
    crossings : dict of str to ndarray or None
        Per mode transition, from :func:`transition_crossings`, when images and
        transitions were given.
    parameters : dict
        The parameters used (JSON-able).
    """

    attractive_xy: np.ndarray
    attractive_occupancy: np.ndarray
    attractive_area_px: np.ndarray
    repulsive_labels: np.ndarray
    repulsive_area_px: np.ndarray
    threshold: float
    crossings: dict[str, np.ndarray] | None
    parameters: dict[str, Any]

    @property
    def repulsive_mask(self) -> np.ndarray:
        """Union of the repulsive regions, shape (h, w), bool."""
        return self.repulsive_labels > 0

    @property
    def n_attractive(self) -> int:
        """Number of attractive sites."""
        return int(self.attractive_xy.shape[0])

    @property
    def n_repulsive(self) -> int:
        """Number of repulsive regions."""
        return int(self.repulsive_area_px.shape[0])


def pinning_landscape(
    occupancy: np.ndarray,
    aperture: np.ndarray,
    *,
    smooth_px: float = 2.0,
    min_distance_px: int = 5,
    percentile: float = 97.0,
    max_site_area_px: int = 120,
    repulsive_max_occupancy: float = 0.01,
    min_repulsive_area_px: int = 20,
    repulsive_rim_px: int = 4,
    mode_images: np.ndarray | None = None,
    transitions: np.ndarray | None = None,
    image_smooth_px: float = 1.0,
) -> PinningLandscape:
    """Attractive pinning sites and repulsive regions from the wall occupancy.

    * Attractive sites: local maxima of the occupancy smoothed by ``smooth_px``
      (``skimage.feature.peak_local_max`` with ``min_distance_px``), above the
      ``percentile``-th percentile of the smoothed occupancy inside the analysed region,
      and point-like: the connected region of pixels above that threshold around the
      peak is at most ``max_site_area_px`` (a long wall that sits still in every mode is
      a line, not a site).
    * Repulsive regions: connected areas of at least ``min_repulsive_area_px`` px where
      the (unsmoothed) occupancy is <= ``repulsive_max_occupancy``, inside the aperture
      and at least ``repulsive_rim_px`` from its edge.
    * If ``mode_images`` and ``transitions`` are given, :func:`transition_crossings`
      tells per transition which repulsive regions the wall jumped over.

    Parameters
    ----------
    occupancy : ndarray, shape (h, w), float
        Wall occupancy in [0, 1] from :func:`wall_occupancy`; NaN outside the analysed
        region.
    aperture : ndarray, shape (h, w), bool
        Object aperture.
    smooth_px : float
        Gaussian σ (px) of the occupancy for the peak search (>= 0).
    min_distance_px : int
        Minimum distance between two attractive sites, px (>= 1).
    percentile : float
        Percentile (0–100) of the smoothed occupancy a site must exceed.
    max_site_area_px : int
        Largest above-threshold connected area (px) of a point-like site.
    repulsive_max_occupancy : float
        Largest occupancy (fraction of time) of a repulsive pixel; 0.01 = 1 %.
    min_repulsive_area_px : int
        Smallest repulsive region, px.
    repulsive_rim_px : int
        Repulsive regions keep this distance (px) from the aperture edge.
    mode_images : ndarray, shape (n_modes, h, w), float, optional
        Mode images (one common sign convention) for the transition crossings.
    transitions : ndarray, shape (n_transitions, 2), int, optional
        Mode transitions a → b (for a count matrix: ``np.argwhere(counts > 0)``).
    image_smooth_px : float
        Gaussian σ (px) of the mode images for the crossings.

    Returns
    -------
    PinningLandscape

    Raises
    ------
    ValueError
        If shapes disagree or a parameter is out of range; if only one of
        ``mode_images`` and ``transitions`` is given.

    References
    ----------
    C. Klose et al., Nature 614, 256 (2023) — attractive (point-like) and repulsive
    (area-like) pinning of the domain walls, seen in the overlay of the internal modes.
    """
    from skimage.feature import peak_local_max

    occ = _check_image(occupancy, "occupancy")
    ap = _check_aperture(aperture, occ.shape)
    if not (0.0 <= percentile <= 100.0):
        raise ValueError(f"percentile must be in [0, 100], got {percentile}")
    if min_distance_px < 1:
        raise ValueError(f"min_distance_px must be >= 1, got {min_distance_px}")
    if not (smooth_px >= 0):
        raise ValueError(f"smooth_px must be >= 0, got {smooth_px}")
    if max_site_area_px < 1 or min_repulsive_area_px < 1:
        raise ValueError(
            f"max_site_area_px and min_repulsive_area_px must be >= 1, got "
            f"{max_site_area_px} and {min_repulsive_area_px}"
        )
    if not (0.0 <= repulsive_max_occupancy < 1.0):
        raise ValueError(
            f"repulsive_max_occupancy must be in [0, 1), got {repulsive_max_occupancy}"
        )
    if (mode_images is None) != (transitions is None):
        raise ValueError("give both mode_images and transitions, or neither")

    region = ap & np.isfinite(occ)
    if not region.any():
        raise ValueError("occupancy has no finite value inside the aperture")
    if np.any(occ[region] < 0) or np.any(occ[region] > 1 + 1e-9):
        raise ValueError(
            f"occupancy must be in [0, 1], got range [{occ[region].min()}, {occ[region].max()}]"
        )

    # Attractive sites.
    smooth = _masked_smooth(occ, region, float(smooth_px))
    thr = float(np.percentile(smooth[region], percentile))
    peaks = peak_local_max(
        smooth,
        min_distance=int(min_distance_px),
        threshold_abs=thr,
        labels=region.astype(np.int32),
        exclude_border=False,
    )
    above, _ = ndimage.label(region & (smooth >= thr))
    areas = np.bincount(above.ravel())
    if peaks.size:
        peak_area = areas[above[peaks[:, 0], peaks[:, 1]]]
        keep = peak_area <= max_site_area_px
        peaks, peak_area = peaks[keep], peak_area[keep]
        values = smooth[peaks[:, 0], peaks[:, 1]]
        order = np.argsort(-values, kind="stable")
        peaks, peak_area, values = peaks[order], peak_area[order], values[order]
    else:
        peak_area = np.zeros(0, dtype=np.int64)
        values = np.zeros(0)

    # Repulsive regions.
    far = _inner(ap, int(repulsive_rim_px)) & region
    empty = far & (np.nan_to_num(occ, nan=1.0) <= repulsive_max_occupancy)
    lab, n_lab = ndimage.label(empty)
    rep_area = np.bincount(lab.ravel(), minlength=n_lab + 1)[1:]
    big = np.flatnonzero(rep_area >= min_repulsive_area_px) + 1
    relabel = np.zeros(n_lab + 1, dtype=np.int32)
    relabel[big] = np.arange(1, big.size + 1, dtype=np.int32)
    rep_labels = relabel[lab]
    rep_area = rep_area[big - 1].astype(np.int64)

    crossings = None
    if mode_images is not None and transitions is not None:
        crossings = transition_crossings(
            mode_images, transitions, rep_labels, ap, smooth_px=image_smooth_px
        )
    params = {
        "smooth_px": float(smooth_px),
        "min_distance_px": int(min_distance_px),
        "percentile": float(percentile),
        "max_site_area_px": int(max_site_area_px),
        "repulsive_max_occupancy": float(repulsive_max_occupancy),
        "min_repulsive_area_px": int(min_repulsive_area_px),
        "repulsive_rim_px": int(repulsive_rim_px),
        "image_smooth_px": float(image_smooth_px),
    }
    return PinningLandscape(
        attractive_xy=peaks.astype(np.float64).reshape(-1, 2),
        attractive_occupancy=np.asarray(values, dtype=np.float64),
        attractive_area_px=np.asarray(peak_area, dtype=np.int64),
        repulsive_labels=rep_labels,
        repulsive_area_px=rep_area,
        threshold=thr,
        crossings=crossings,
        parameters=params,
    )


def _as_transition_pairs(transitions: Any, n_modes: int) -> np.ndarray:
    t = np.asarray(transitions)
    if t.size == 0:
        return np.zeros((0, 2), dtype=np.int64)
    if t.ndim != 2 or t.shape[1] != 2:
        raise ValueError(
            f"transitions must be (n, 2) mode pairs (for a count matrix pass "
            f"np.argwhere(counts > 0)), got shape {t.shape}"
        )
    if not np.issubdtype(t.dtype, np.integer):
        raise TypeError(f"transitions must hold integer mode indices, got dtype {t.dtype}")
    t = t.astype(np.int64)
    if t.min() < 0 or t.max() >= n_modes:
        raise ValueError(f"transition mode index out of range [0, {n_modes}): {t.min()}..{t.max()}")
    return t


def transition_crossings(
    mode_images: np.ndarray,
    transitions: np.ndarray,
    repulsive_labels: np.ndarray,
    aperture: np.ndarray,
    *,
    smooth_px: float = 1.0,
    min_flipped_fraction: float = 0.5,
) -> dict[str, np.ndarray]:
    """Which repulsive regions each mode transition's wall motion jumped over.

    The area swept by the walls in a transition a → b is where the smoothed images
    differ in sign, sign(mz_a) ≠ sign(mz_b), inside the aperture. A repulsive region
    holds no wall in any mode, so a transition that reverses the magnetisation there
    reverses (most of) the region at once: the wall jumped across it. A region counts as
    crossed when at least ``min_flipped_fraction`` of its pixels flip.

    The images must share one sign convention (as reconstructions with one reference
    do); the global scale does not matter.

    Parameters
    ----------
    mode_images : ndarray, shape (n_modes, h, w), float
        Magnetic image per mode.
    transitions : ndarray, shape (n, 2), int
        Transitions a → b as mode-index pairs (for a count matrix:
        ``np.argwhere(counts > 0)``).
    repulsive_labels : ndarray, shape (h, w), int
        Repulsive regions 1..R (0 = none), e.g. ``PinningLandscape.repulsive_labels``.
    aperture : ndarray, shape (h, w), bool
        Object aperture.
    smooth_px : float
        Gaussian σ (px) applied to the images.
    min_flipped_fraction : float
        Fraction of a region's pixels that must flip for it to count as crossed, (0, 1].

    Returns
    -------
    dict of str to ndarray
        Columns of equal length n: ``from_mode``, ``to_mode`` (int64), ``swept_px``
        (int64, pixels that flipped), ``n_crossed`` (int64, repulsive regions crossed),
        ``crosses_repulsive`` (bool), and ``crossed_regions`` (object array of tuples of
        region labels).

    Raises
    ------
    ValueError
        If shapes disagree, a mode index is out of range or ``min_flipped_fraction`` is
        outside (0, 1].
    TypeError
        If ``transitions`` does not hold integers.
    """
    imgs = np.asarray(mode_images, dtype=np.float64)
    if imgs.ndim != 3:
        raise ValueError(f"mode_images must have shape (n_modes, h, w), got {imgs.shape}")
    ap = _check_aperture(aperture, imgs.shape[1:])
    labels = np.asarray(repulsive_labels)
    if labels.shape != imgs.shape[1:]:
        raise ValueError(f"repulsive_labels has shape {labels.shape}, images {imgs.shape[1:]}")
    if not (0.0 < min_flipped_fraction <= 1.0):
        raise ValueError(f"min_flipped_fraction must be in (0, 1], got {min_flipped_fraction}")
    pairs = _as_transition_pairs(transitions, imgs.shape[0])
    needed = np.unique(pairs)
    signs = {int(m): _smoothed_mz(imgs[m], ap, smooth_px) > 0 for m in needed}
    ok = {int(m): ap & np.isfinite(imgs[m]) for m in needed}
    n_regions = int(labels.max()) if labels.size else 0
    region_area = np.bincount(labels.ravel(), minlength=n_regions + 1)
    swept = np.zeros(len(pairs), dtype=np.int64)
    n_crossed = np.zeros(len(pairs), dtype=np.int64)
    crossed: list[tuple[int, ...]] = []
    for t, (a, b) in enumerate(pairs):
        flip = (signs[int(a)] != signs[int(b)]) & ok[int(a)] & ok[int(b)]
        swept[t] = int(np.count_nonzero(flip))
        if n_regions:
            hit = np.bincount(labels[flip].ravel(), minlength=n_regions + 1)
            frac = np.divide(hit, region_area, out=np.zeros(n_regions + 1), where=region_area > 0)
            frac[0] = 0.0
            regs = tuple(int(r) for r in np.flatnonzero(frac >= min_flipped_fraction))
        else:
            regs = ()
        crossed.append(regs)
        n_crossed[t] = len(regs)
    crossed_arr = np.empty(len(pairs), dtype=object)
    for t, regs in enumerate(crossed):
        crossed_arr[t] = regs
    return {
        "from_mode": pairs[:, 0].copy(),
        "to_mode": pairs[:, 1].copy(),
        "swept_px": swept,
        "n_crossed": n_crossed,
        "crosses_repulsive": n_crossed > 0,
        "crossed_regions": crossed_arr,
    }


def compare_with_true_sites(
    attractive_xy: np.ndarray, true_sites_xy: np.ndarray, tol_px: float
) -> dict[str, Any]:
    """Match detected attractive sites with known pinning sites (simulations).

    One-to-one matching by the Hungarian algorithm
    (``scipy.optimize.linear_sum_assignment``) on the Euclidean distances, pairs farther
    than ``tol_px`` forbidden: the largest number of matches within the tolerance, with
    the smallest total distance among those.

    Parameters
    ----------
    attractive_xy : ndarray, shape (n_found, 2), float
        Detected sites, (row, col) in px (any convention shared with the true sites).
    true_sites_xy : ndarray, shape (n_true, 2), float
        Known sites in the same coordinates, e.g. ``MazeStates.pinning_sites``.
    tol_px : float
        Largest matching distance in px (> 0).

    Returns
    -------
    dict
        JSON-able: ``n_found``, ``n_true``, ``n_matched``, ``precision`` (matched /
        found), ``recall`` (matched / true), ``f1``, ``mean_distance_px`` of the matches
        (None if none), ``tol_px``, ``matches`` (list of [found index, true index,
        distance px]). precision/recall/f1 are 0.0 when their denominator is 0.

    Raises
    ------
    ValueError
        If an array is not (n, 2) or ``tol_px`` <= 0.
    """
    found = np.asarray(attractive_xy, dtype=np.float64)
    true = np.asarray(true_sites_xy, dtype=np.float64)
    found = found.reshape(0, 2) if found.size == 0 else found
    true = true.reshape(0, 2) if true.size == 0 else true
    for name, arr in (("attractive_xy", found), ("true_sites_xy", true)):
        if arr.ndim != 2 or arr.shape[1] != 2:
            raise ValueError(f"{name} must have shape (n, 2), got {arr.shape}")
    if not (tol_px > 0):
        raise ValueError(f"tol_px must be > 0, got {tol_px}")
    matches: list[list[float]] = []
    if found.shape[0] and true.shape[0]:
        d = np.hypot(*(found[:, None, :] - true[None, :, :]).transpose(2, 0, 1))
        big = 1e6 * (1.0 + float(tol_px)) * max(d.shape)
        cost = np.where(d <= tol_px, d, big)
        rows, cols = linear_sum_assignment(cost)
        for r, c in zip(rows, cols, strict=True):
            if d[r, c] <= tol_px:
                matches.append([int(r), int(c), float(d[r, c])])
    k = len(matches)
    precision = k / found.shape[0] if found.shape[0] else 0.0
    recall = k / true.shape[0] if true.shape[0] else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {
        "n_found": int(found.shape[0]),
        "n_true": int(true.shape[0]),
        "n_matched": k,
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
        "mean_distance_px": float(np.mean([m[2] for m in matches])) if matches else None,
        "tol_px": float(tol_px),
        "matches": matches,
    }
