"""Atom positions from reconstructed phase images: detection, centre of mass, site matching.

The CAVIAR analysis (Gladyshev et al. 2025, "Electron ptychography reveals correlated
lattice vibrations at atomic resolution", arXiv:2309.12017) finds the atoms of every
reconstructed object state as maxima of the phase and refines each one by the centre
of mass of the phase inside a small disc. Detections of every state are then assigned to
the same lattice sites (Hungarian assignment), so that displacements can be formed site
by site (:mod:`.correlations`).

Coordinates: an image pixel (row, col) has its centre at
``origin_A + (row, col) * pixel_size_A`` (y, x) in Å — the reconstruction's
``object_origin_A`` and ``pixel_size_A``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "AtomTable",
    "atom_table",
    "detect_atoms",
    "match_sites",
    "refine_centre_of_mass",
    "register_sites",
]


def _check_image(image: np.ndarray, name: str = "phase") -> np.ndarray:
    arr = np.asarray(image)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D (H, W), got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.floating) and not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"{name} must be real, got dtype {arr.dtype}")
    return arr.astype(np.float64, copy=False)


def _check_pixel(pixel_size_A: float) -> float:
    p = float(pixel_size_A)
    if not np.isfinite(p) or p <= 0:
        raise ValueError(f"pixel_size_A must be a positive number of Å, got {pixel_size_A!r}")
    return p


def _check_points(points: ArrayLike, name: str) -> np.ndarray:
    arr = np.asarray(points, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(f"{name} must have shape (n, 2) (y, x in Å), got {arr.shape}")
    return arr


def detect_atoms(
    phase: ArrayLike,
    pixel_size_A: float,
    origin_A: ArrayLike = (0.0, 0.0),
    *,
    min_distance_A: float,
    threshold_rel: float = 0.25,
    smooth_A: float = 0.0,
    min_contrast: float = 0.0,
) -> np.ndarray:
    """Atom candidates: local maxima of the phase.

    Parameters
    ----------
    phase : ndarray, shape (H, W), float — phase of one object state (one slice or summed
        over slices), rad.
    pixel_size_A : float — real-space pixel size, Å.
    origin_A : array_like, shape (2,) — (y, x) in Å of pixel (0, 0).
    min_distance_A : float — smallest separation of two atoms, Å (e.g. half the nearest-
        neighbour distance of the lattice); converted to pixels for
        ``skimage.feature.peak_local_max``.
    threshold_rel : float — peaks below ``min + threshold_rel * (max - min)`` of the
        (smoothed) image are ignored.
    smooth_A : float — standard deviation of a Gaussian smoothing applied before peak
        finding (0: none), Å. Smoothing only steers the search; positions are refined
        afterwards by :func:`refine_centre_of_mass` on the unsmoothed phase.
    min_contrast : float — peaks must also rise this much above the image minimum, rad
        (an image holding noise only then yields no peaks).

    Returns
    -------
    ndarray, shape (n_peaks, 2), float64 — (y, x) of the peak pixels, Å.

    Raises
    ------
    ValueError
        If ``phase`` is not 2-D, ``pixel_size_A`` or ``min_distance_A`` not positive,
        ``threshold_rel`` outside [0, 1).
    """
    from scipy.ndimage import gaussian_filter
    from skimage.feature import peak_local_max

    img = _check_image(np.asarray(phase))
    p = _check_pixel(pixel_size_A)
    if not min_distance_A > 0:
        raise ValueError(f"min_distance_A must be > 0 Å, got {min_distance_A!r}")
    if not 0.0 <= threshold_rel < 1.0:
        raise ValueError(f"threshold_rel must lie in [0, 1), got {threshold_rel!r}")
    if smooth_A < 0:
        raise ValueError(f"smooth_A must be >= 0 Å, got {smooth_A!r}")
    if smooth_A > 0:
        img = gaussian_filter(img, smooth_A / p, mode="nearest")
    lo, hi = float(img.min()), float(img.max())
    min_px = max(1, int(np.floor(min_distance_A / p)))
    peaks = peak_local_max(
        img,
        min_distance=min_px,
        threshold_abs=lo + max(threshold_rel * (hi - lo), float(min_contrast)),
        exclude_border=False,
    )
    origin = np.asarray(origin_A, dtype=np.float64).reshape(2)
    return origin + peaks.astype(np.float64) * p


def refine_centre_of_mass(
    phase: ArrayLike,
    guesses_A: ArrayLike,
    pixel_size_A: float,
    origin_A: ArrayLike = (0.0, 0.0),
    *,
    radius_A: float,
    n_iter: int = 4,
) -> np.ndarray:
    """Phase-weighted centre of mass of every atom inside a disc of radius ``radius_A``.

    Weights are the phase minus its minimum inside the disc (so a constant phase offset
    of the reconstruction does not pull the centre towards the disc centre); the disc is
    re-centred on the result ``n_iter`` times. Pixels outside the image do not count.

    Parameters
    ----------
    phase : ndarray, shape (H, W), float — phase, rad.
    guesses_A : array_like, shape (n, 2) — starting (y, x) positions, Å.
    pixel_size_A : float — Å per pixel.
    origin_A : array_like, shape (2,) — (y, x) of pixel (0, 0), Å.
    radius_A : float — disc radius, Å (about the atom's phase-peak half width; well
        below half the nearest-neighbour distance).
    n_iter : int — re-centring iterations (>= 1).

    Returns
    -------
    ndarray, shape (n, 2), float64 — refined (y, x), Å; NaN for an atom whose disc holds
    no weight or whose guess lies outside the image.

    Raises
    ------
    ValueError
        If ``radius_A`` is smaller than one pixel, ``n_iter < 1`` or shapes are wrong.

    References
    ----------
    Gladyshev et al. (2025), arXiv:2309.12017, Methods: atom positions by centre of mass
    of the phase in a small disc, per state and slice.
    """
    img = _check_image(np.asarray(phase))
    p = _check_pixel(pixel_size_A)
    guesses = _check_points(guesses_A, "guesses_A")
    if not radius_A >= p:
        raise ValueError(f"radius_A must be at least one pixel ({p} Å), got {radius_A!r}")
    if n_iter < 1:
        raise ValueError(f"n_iter must be >= 1, got {n_iter!r}")
    origin = np.asarray(origin_A, dtype=np.float64).reshape(2)
    h, w = img.shape
    r_px = radius_A / p
    k = int(np.ceil(r_px)) + 1
    off = np.arange(-k, k + 1)
    oy, ox = np.meshgrid(off, off, indexing="ij")  # (m, m)

    c = (guesses - origin) / p  # (n, 2) in pixels
    inside = (c[:, 0] >= -0.5) & (c[:, 0] <= h - 0.5) & (c[:, 1] >= -0.5) & (c[:, 1] <= w - 0.5)
    c = np.where(inside[:, None], c, np.nan)
    for _ in range(n_iter):
        ok = np.isfinite(c).all(axis=1)
        cc = np.where(ok[:, None], c, 0.0)
        base = np.rint(cc).astype(np.int64)
        rows = base[:, 0, None, None] + oy  # (n, m, m)
        cols = base[:, 1, None, None] + ox
        valid = (rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)
        d2 = (rows - cc[:, 0, None, None]) ** 2 + (cols - cc[:, 1, None, None]) ** 2
        disc = valid & (d2 <= r_px**2)
        vals = img[np.clip(rows, 0, h - 1), np.clip(cols, 0, w - 1)]
        floor = np.where(disc, vals, np.inf).min(axis=(1, 2))  # phase minimum in the disc
        wgt = np.where(disc, vals - floor[:, None, None], 0.0)
        total = wgt.sum(axis=(1, 2))
        good = ok & (total > 0)
        with np.errstate(invalid="ignore", divide="ignore"):
            ny = (wgt * rows).sum(axis=(1, 2)) / total
            nx = (wgt * cols).sum(axis=(1, 2)) / total
        c = np.where(good[:, None], np.stack([ny, nx], axis=1), np.nan)
    return origin + c * p


def match_sites(
    detected_A: ArrayLike, expected_A: ArrayLike, max_distance_A: float
) -> np.ndarray:
    """Assign detections to expected lattice sites (Hungarian, minimum total distance).

    Parameters
    ----------
    detected_A : array_like, shape (m, 2) — detected (y, x), Å.
    expected_A : array_like, shape (n, 2) — expected sites (y, x), Å.
    max_distance_A : float — a detection farther than this from its site is not a match.

    Returns
    -------
    ndarray, shape (n,), int64 — index into ``detected_A`` for every site, −1 if none.

    Raises
    ------
    ValueError
        If ``max_distance_A`` is not positive or shapes are wrong.
    """
    from scipy.optimize import linear_sum_assignment
    from scipy.spatial.distance import cdist

    det = _check_points(detected_A, "detected_A")
    exp = _check_points(expected_A, "expected_A")
    if not max_distance_A > 0:
        raise ValueError(f"max_distance_A must be > 0 Å, got {max_distance_A!r}")
    out = np.full(len(exp), -1, dtype=np.int64)
    finite = np.flatnonzero(np.isfinite(det).all(axis=1))
    if len(finite) == 0 or len(exp) == 0:
        return out
    cost = cdist(exp, det[finite])
    penalty = 1e6 * (1.0 + float(max_distance_A))
    cost = np.where(cost <= max_distance_A, cost, penalty)
    rows, cols = linear_sum_assignment(cost)
    keep = cost[rows, cols] <= max_distance_A
    out[rows[keep]] = finite[cols[keep]]
    return out


@dataclass(frozen=True)
class AtomTable:
    """Atom positions per object state, matched to the expected lattice sites.

    Attributes
    ----------
    positions_A : ndarray, shape (n_states, n_atoms, 2), float64 — projected (y, x)
        positions, Å, from the phase summed over slices; NaN where no atom was found.
    slice_positions_A : ndarray, shape (n_states, n_slices, n_atoms, 2), float64 —
        positions found in every slice, Å; NaN where the slice shows no atom at the site.
    sites_A : ndarray, shape (n_atoms, 2), float64 — the expected sites (y, x), Å.
    radius_A : float — centre-of-mass disc radius used, Å.
    """

    positions_A: np.ndarray
    slice_positions_A: np.ndarray
    sites_A: np.ndarray
    radius_A: float

    @property
    def found_fraction(self) -> float:
        """Fraction of (state, site) entries of the projected table with an atom."""
        return float(np.isfinite(self.positions_A).all(axis=-1).mean())


def _nearest_neighbour_distance(sites: np.ndarray) -> float:
    from scipy.spatial import cKDTree

    if len(sites) < 2:
        raise ValueError("at least two expected sites are needed to infer distances")
    d, _ = cKDTree(sites).query(sites, k=2)
    return float(np.median(d[:, 1]))


def _positions_in_image(
    img: np.ndarray,
    sites: np.ndarray,
    p: float,
    origin: np.ndarray,
    radius_A: float,
    min_distance_A: float,
    max_shift_A: float,
    threshold_rel: float,
    smooth_A: float,
    min_contrast: float = 0.0,
) -> np.ndarray:
    peaks = detect_atoms(
        img, p, origin, min_distance_A=min_distance_A, threshold_rel=threshold_rel,
        smooth_A=smooth_A, min_contrast=min_contrast,
    )
    idx = match_sites(peaks, sites, max_shift_A)
    found = idx >= 0
    pos = np.full_like(sites, np.nan)
    if found.any():
        pos[found] = refine_centre_of_mass(img, peaks[idx[found]], p, origin, radius_A=radius_A)
    far = np.linalg.norm(pos - sites, axis=1) > max_shift_A
    pos[far] = np.nan
    return pos


def atom_table(
    phase: ArrayLike,
    pixel_size_A: float,
    origin_A: ArrayLike,
    sites_A: ArrayLike,
    *,
    radius_A: float,
    min_distance_A: float | None = None,
    max_shift_A: float | None = None,
    threshold_rel: float = 0.25,
    smooth_A: float = 0.0,
    per_slice: bool = True,
) -> AtomTable:
    """Atom positions of every object state (and slice), matched to the expected sites.

    For each state the phase is summed over slices (projected potential), its maxima are
    found (:func:`detect_atoms`), assigned to the expected sites (:func:`match_sites`)
    and refined by the phase-weighted centre of mass in a disc of ``radius_A``
    (:func:`refine_centre_of_mass`). The same is done slice by slice.

    Parameters
    ----------
    phase : array_like, shape (n_states, n_slices, H, W), float — reconstructed object
        phase, rad (``ReconstructionResult.object_phase``).
    pixel_size_A : float — real-space pixel size, Å.
    origin_A : array_like, shape (2,) — (y, x) of pixel (0, 0) in the sample frame, Å.
    sites_A : array_like, shape (n_atoms, 2) — expected (equilibrium) projected sites
        (y, x), Å, e.g. the truth equilibrium columns or a lattice model.
    radius_A : float — centre-of-mass disc radius, Å.
    min_distance_A : float, optional — minimum peak separation, Å; default half the
        nearest-neighbour distance of ``sites_A``.
    max_shift_A : float, optional — largest accepted distance of an atom from its site,
        Å; default half the nearest-neighbour distance.
    threshold_rel, smooth_A : see :func:`detect_atoms`.
    per_slice : bool — also locate atoms slice by slice; a slice's peaks must rise
        ``threshold_rel`` times the largest slice contrast of that state above its
        minimum (slices without atoms give NaN).

    Returns
    -------
    AtomTable

    Raises
    ------
    ValueError
        If ``phase`` is not 4-D, or for bad sizes (see the helpers).
    """
    ph = np.asarray(phase)
    if ph.ndim != 4:
        raise ValueError(f"phase must have shape (n_states, n_slices, H, W), got {ph.shape}")
    if np.iscomplexobj(ph):
        raise TypeError("phase must be real (np.angle of the object), got a complex array")
    p = _check_pixel(pixel_size_A)
    sites = _check_points(sites_A, "sites_A")
    origin = np.asarray(origin_A, dtype=np.float64).reshape(2)
    nn = _nearest_neighbour_distance(sites)
    min_d = 0.5 * nn if min_distance_A is None else float(min_distance_A)
    shift = 0.5 * nn if max_shift_A is None else float(max_shift_A)
    if not shift > 0:
        raise ValueError(f"max_shift_A must be > 0 Å, got {max_shift_A!r}")
    n_states, n_slices = ph.shape[:2]
    proj = np.full((n_states, len(sites), 2), np.nan)
    per = np.full((n_states, n_slices, len(sites), 2), np.nan)
    args = (sites, p, origin, radius_A, min_d, shift, threshold_rel, smooth_A)
    for s in range(n_states):
        proj[s] = _positions_in_image(ph[s].sum(axis=0, dtype=np.float64), *args)
        if per_slice:
            # a slice's peaks must reach threshold_rel of the strongest slice's contrast,
            # so that a slice without atoms (vacuum, noise) gives NaN, not noise peaks
            ranges = [float(np.ptp(ph[s, z])) for z in range(n_slices)]
            for z in range(n_slices):
                per[s, z] = _positions_in_image(ph[s, z].astype(np.float64), *args,
                                                min_contrast=threshold_rel * max(ranges))
    return AtomTable(positions_A=proj, slice_positions_A=per, sites_A=sites,
                     radius_A=float(radius_A))


def register_sites(
    phase: ArrayLike,
    pixel_size_A: float,
    origin_A: ArrayLike,
    sites_A: ArrayLike,
    *,
    max_shift_A: float | None = None,
    threshold_rel: float = 0.25,
    n_iter: int = 3,
) -> np.ndarray:
    """Global translation of the expected sites onto the atoms of a phase image.

    A reconstruction is free to drift by a constant offset (scan-position refinement,
    the object origin it chooses). The median offset of matched peaks from their sites is
    applied and the matching repeated ``n_iter`` times. Offsets beyond half the
    nearest-neighbour distance are ambiguous (lattice periodicity) and not recovered.

    Parameters
    ----------
    phase : array_like, shape (H, W) — e.g. the phase summed over slices and averaged
        over states, rad.
    pixel_size_A, origin_A : as in :func:`refine_centre_of_mass`.
    sites_A : array_like, shape (n_atoms, 2) — expected sites (y, x), Å.
    max_shift_A : float, optional — matching radius, Å; default half the nearest-
        neighbour distance.
    threshold_rel : float — see :func:`detect_atoms`.
    n_iter : int — match-and-shift iterations.

    Returns
    -------
    ndarray, shape (2,), float64 — (dy, dx) to add to ``sites_A``, Å.

    Raises
    ------
    ValueError
        If fewer than three sites can be matched.
    """
    sites = _check_points(sites_A, "sites_A")
    nn = _nearest_neighbour_distance(sites)
    shift_max = 0.5 * nn if max_shift_A is None else float(max_shift_A)
    peaks = detect_atoms(phase, pixel_size_A, origin_A, min_distance_A=0.5 * nn,
                         threshold_rel=threshold_rel)
    shift = np.zeros(2)
    for _ in range(max(1, n_iter)):
        idx = match_sites(peaks, sites + shift, shift_max)
        ok = idx >= 0
        if ok.sum() < 3:
            raise ValueError(
                f"only {int(ok.sum())} of {len(sites)} sites matched within {shift_max:.3f} Å; "
                "check origin_A, pixel_size_A and the sites' frame"
            )
        shift = shift + np.median(peaks[idx[ok]] - (sites[ok] + shift), axis=0)
    return shift
