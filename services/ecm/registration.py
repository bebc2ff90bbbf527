"""Drift registration of a repeated 4D-STEM raster (5D-STEM ECM).

The sample drifts slowly under the probe while the raster repeats, so scan position p
of repeat r looks at the sample point that position p + d_r looked at in the reference
repeat: image_r(p) = image_ref(p + d_r). Before per-position g2 the repeats must be
brought onto one grid. The static contrast of the virtual annular-dark-field (ADF)
images (mass-thickness, ring intensity) gives d_r by phase cross-correlation
(:func:`skimage.registration.phase_cross_correlation` with masks: normalised
cross-correlation over the overlap, Padfield 2012; optionally refined to sub-step
precision by upsampled phase correlation, Guizar-Sicairos et al. 2008); the 5D data are then shifted by the integer
part of d_r and cropped to the field of view every repeat covers
(:func:`crop_to_common_field`).

Sign convention: ``DriftEstimate.shift[r] = d_r`` is the displacement of the sample
between the reference repeat and repeat r, in scan steps (dy, dx) — the same sign as
the simulator's ``LiquidSample.site_shift(t) − site_shift(t_ref)``.

References
----------
Huang & Voyles, 5D-STEM k-resolved ECM (``ARCHITECTURE.md`` §3): drift registration by
cross-correlation of virtual dark-field images per repeat.
M. Guizar-Sicairos, S. T. Thurman, J. R. Fienup, Opt. Lett. 33, 156 (2008) — efficient
subpixel image registration by cross-correlation.
D. Padfield, IEEE Trans. Image Process. 21, 2706 (2012) — masked object registration in
the Fourier domain.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage
from skimage.filters import window
from skimage.registration import phase_cross_correlation

__all__ = ["CommonField", "DriftEstimate", "crop_to_common_field", "estimate_drift"]


@dataclass(frozen=True)
class DriftEstimate:
    """Drift of every repeat relative to the reference repeat.

    Attributes
    ----------
    shift : ndarray, shape (n_repeats, 2), float64
        d_r = (dy, dx), scan steps; image_r(p) ≈ image_ref(p + d_r). Zero for the
        reference. Whole steps, refined to 1/``upsample_factor`` when that is > 1.
    shift_nm : ndarray, shape (n_repeats, 2), float64, or None
        ``shift`` × scan step, nm (None without ``scan_step_nm``).
    correlation : ndarray, shape (n_repeats,), float64
        Pearson correlation of the (smoothed) image with its reference over their
        overlap at the whole-step shift: a quality figure (1 for the reference).
    reference : int
        Index of the reference repeat.
    upsample_factor : int
        Sub-step precision 1/upsample_factor (1: whole steps).
    chained : bool
        Whether each repeat was registered to its neighbour and the shifts summed.
    """

    shift: np.ndarray
    shift_nm: np.ndarray | None
    correlation: np.ndarray
    reference: int
    upsample_factor: int
    chained: bool

    def integer_shift(self) -> np.ndarray:
        """``shift`` rounded to whole scan steps, shape (n_repeats, 2), int64."""
        return np.rint(self.shift).astype(np.int64)


@dataclass(frozen=True)
class CommonField:
    """The part of the reference raster that every registered repeat covers.

    Attributes
    ----------
    rows, cols : slice
        Rows and columns of the reference repeat's scan grid kept after cropping.
    shape : tuple of int
        (ny, nx) of the cropped field, scan positions.
    """

    rows: slice
    cols: slice
    shape: tuple[int, int]


def _overlap(ref: np.ndarray, mov: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Parts of ref and mov showing the same sample points for mov(p) = ref(p + d)."""
    ny, nx = ref.shape
    dy, dx = int(d[0]), int(d[1])
    ys, xs = slice(max(dy, 0), min(ny, ny + dy)), slice(max(dx, 0), min(nx, nx + dx))
    ym, xm = slice(max(-dy, 0), min(ny, ny - dy)), slice(max(-dx, 0), min(nx, nx - dx))
    return ref[ys, xs], mov[ym, xm]


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    good = np.isfinite(a) & np.isfinite(b)
    if good.sum() < 3:
        return float("nan")
    a, b = a[good] - a[good].mean(), b[good] - b[good].mean()
    den = math.sqrt(float((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / den) if den > 0 else float("nan")


def estimate_drift(
    images: np.ndarray,
    *,
    reference: int = 0,
    upsample_factor: int = 1,
    scan_step_nm: float | None = None,
    smooth_sigma: float = 1.0,
    overlap_ratio: float = 0.3,
    chained: bool = False,
) -> DriftEstimate:
    """Drift of each repeat from its virtual dark-field image.

    Whole-step shifts come from the masked normalised cross-correlation of
    :func:`skimage.registration.phase_cross_correlation` (given masks, Padfield 2012):
    it correlates only where both images have data, so neither the raster edges (no
    wrap-around) nor unvisited positions (NaN) bias it — essential for the small,
    smooth images of a few-nm scan, where the FFT's periodic wrap-around dominates
    plain phase correlation. With ``upsample_factor`` > 1 the overlapping parts are
    then registered again by upsampled phase correlation (Guizar-Sicairos 2008) and
    the sub-step remainder is added.

    Parameters
    ----------
    images : array_like, shape (n_repeats, ny, nx), real
        One virtual image per repeat (ADF; any image with static contrast). NaN marks
        positions without data.
    reference : int
        Repeat the others are registered to (negative indices count from the end).
    upsample_factor : int
        ≥ 1; 1 gives whole scan steps (the sample model's drift is in whole sites).
    scan_step_nm : float, optional
        Scan step, nm, to express the shift in nm.
    smooth_sigma : float
        σ of a Gaussian prefilter, scan steps (0: none). Virtual images of one repeat
        are noisy (counting and speckle) while the static contrast is smooth.
    overlap_ratio : float
        Minimum overlap of two images, as a fraction of the image, for a shift to be
        considered (skimage), in (0, 1].
    chained : bool
        Register repeat r to its neighbour toward the reference and sum the steps:
        robust when the total drift is a large part of the field, at the cost of a
        random walk of errors. Default False: every repeat against the reference.

    Returns
    -------
    DriftEstimate

    Raises
    ------
    ValueError
        For images that are not 3-D, smaller than 2×2, a reference out of range,
        ``upsample_factor`` < 1, a negative ``smooth_sigma``, ``overlap_ratio``
        outside (0, 1], a non-positive ``scan_step_nm``, or an image without data.
    """
    images = np.asarray(images, dtype=np.float64)
    if images.ndim != 3 or images.shape[1] < 2 or images.shape[2] < 2 or images.shape[0] < 1:
        raise ValueError(f"images must be (n_repeats, ny, nx) with ny, nx >= 2, got {images.shape}")
    n = images.shape[0]
    if not -n <= reference < n:
        raise ValueError(f"reference {reference!r} out of range for {n} repeats")
    reference %= n
    if int(upsample_factor) != upsample_factor or upsample_factor < 1:
        raise ValueError(f"upsample_factor must be an integer >= 1, got {upsample_factor!r}")
    if scan_step_nm is not None and not scan_step_nm > 0:
        raise ValueError(f"scan_step_nm must be > 0 nm, got {scan_step_nm!r}")
    if not smooth_sigma >= 0:
        raise ValueError(f"smooth_sigma must be >= 0 scan steps, got {smooth_sigma!r}")
    if not 0 < overlap_ratio <= 1:
        raise ValueError(f"overlap_ratio must be in (0, 1], got {overlap_ratio!r}")
    masks = np.isfinite(images)
    clean = np.empty_like(images)
    for r in range(n):
        if not masks[r].any():
            raise ValueError(f"image {r} has no finite value (a repeat with no frame?)")
        img = np.where(masks[r], images[r] - images[r][masks[r]].mean(), 0.0)
        if smooth_sigma > 0:  # normalised convolution: NaN positions do not pull toward 0
            weight = ndimage.gaussian_filter(masks[r].astype(float), smooth_sigma, mode="constant")
            img = ndimage.gaussian_filter(img, smooth_sigma, mode="constant")
            with np.errstate(invalid="ignore", divide="ignore"):
                img = img / weight
        clean[r] = np.where(masks[r], img, 0.0)

    def register(i_ref: int, i_mov: int) -> tuple[np.ndarray, float]:
        ref, mov = clean[i_ref], clean[i_mov]
        whole = np.asarray(
            phase_cross_correlation(
                ref, mov, reference_mask=masks[i_ref], moving_mask=masks[i_mov], overlap_ratio=overlap_ratio
            )[0],
            float,
        )
        a, b = _overlap(np.where(masks[i_ref], ref, np.nan), np.where(masks[i_mov], mov, np.nan), whole)
        corr = _pearson(a, b)
        if upsample_factor > 1 and min(a.shape) >= 4 and np.isfinite(a).all() and np.isfinite(b).all():
            w = window("hann", a.shape)
            rest = np.asarray(
                phase_cross_correlation((a - a.mean()) * w, (b - b.mean()) * w, upsample_factor=int(upsample_factor))[0],
                float,
            )
            if np.abs(rest).max() <= 0.5:  # larger: the refinement locked onto noise
                whole = whole + rest
        return whole, corr

    shift = np.zeros((n, 2))
    corr = np.ones(n)
    if chained:
        for r in list(range(reference + 1, n)) + list(range(reference - 1, -1, -1)):
            prev = r - 1 if r > reference else r + 1
            step, corr[r] = register(prev, r)
            shift[r] = shift[prev] + step
    else:
        for r in range(n):
            if r != reference:
                shift[r], corr[r] = register(reference, r)
    return DriftEstimate(
        shift=shift,
        shift_nm=None if scan_step_nm is None else shift * float(scan_step_nm),
        correlation=corr,
        reference=reference,
        upsample_factor=int(upsample_factor),
        chained=chained,
    )


def crop_to_common_field(data: Any, shift: np.ndarray) -> tuple[Any, CommonField]:
    """Undo integer drift by index shifts and crop every repeat to the common field.

    Output position q (in the reference repeat's grid) of repeat r is input position
    q − d_r, so a sample point sits at one position in every repeat. Only the rows
    max_r d_y ≤ q_y < ny + min_r d_y (likewise columns) are seen by all repeats.

    Parameters
    ----------
    data : ndarray or dask array, shape (n_repeats, ny, nx, ...)
        The 5D data (repeat, iy, ix, ky, kx) or any per-repeat maps.
    shift : array_like, shape (n_repeats, 2)
        d_r in scan steps (``DriftEstimate.shift``); rounded to integers.

    Returns
    -------
    cropped : same array type, shape (n_repeats, ny', nx', ...)
        Registered, cropped data (views/lazy slices; a dask input stays lazy).
    field : CommonField
        The rows and columns of the reference grid that were kept.

    Raises
    ------
    ValueError
        If ``shift`` does not have one (dy, dx) per repeat, or the drift leaves no
        common field.
    """
    shape = tuple(data.shape)
    if len(shape) < 3:
        raise ValueError(f"data must be (n_repeats, ny, nx, ...), got shape {shape}")
    d = np.rint(np.asarray(shift, float)).astype(np.int64)
    if d.shape != (shape[0], 2):
        raise ValueError(f"shift must have shape ({shape[0]}, 2), got {d.shape}")
    ny, nx = shape[1], shape[2]
    # The grid of zero shift (the reference's) bounds the field as well.
    y0, y1 = max(int(d[:, 0].max()), 0), min(int(ny + d[:, 0].min()), ny)
    x0, x1 = max(int(d[:, 1].max()), 0), min(int(nx + d[:, 1].min()), nx)
    if y1 <= y0 or x1 <= x0:
        raise ValueError(
            f"the drift (dy {d[:, 0].min()}…{d[:, 0].max()}, dx {d[:, 1].min()}…{d[:, 1].max()} steps) "
            f"leaves no scan position common to all repeats of a {ny}×{nx} raster"
        )
    parts = [data[r, y0 - d[r, 0] : y1 - d[r, 0], x0 - d[r, 1] : x1 - d[r, 1]] for r in range(shape[0])]
    if hasattr(data, "__dask_graph__"):
        import dask.array as da

        cropped = da.stack(parts)
    else:
        cropped = np.stack(parts)
    return cropped, CommonField(slice(y0, y1), slice(x0, x1), (y1 - y0, x1 - x0))
