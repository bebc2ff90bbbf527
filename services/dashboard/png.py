"""Arrays to PNG bytes for the browser (Pillow for encoding, matplotlib colormaps)."""

from __future__ import annotations

import io

import numpy as np


def image_png(image: np.ndarray, *, cmap: str = "RdBu_r", percentile: float = 99.5) -> bytes:
    """Render a real 2D image with a diverging colormap symmetric about zero.

    FTH previews are ∝ mz up to sign and scale, so zero stays white and ±the
    ``percentile`` of |image| maps to the ends of the colormap. NaN pixels (outside the
    aperture) are transparent.

    Parameters
    ----------
    image : ndarray, shape (y, x), real
        The image, arbitrary units.
    cmap : str
        A matplotlib colormap name.
    percentile : float
        Percentile of |image| (finite pixels) mapped to the colormap ends, in (0, 100].

    Returns
    -------
    bytes
        PNG, RGBA 8 bit, same pixel shape as ``image``.

    Raises
    ------
    ValueError
        If ``image`` is not 2D, or ``percentile`` is outside (0, 100].
    """
    from matplotlib import colormaps

    a = np.asarray(image, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"image must be 2D (y, x), got shape {a.shape}")
    if not 0 < percentile <= 100:
        raise ValueError(f"percentile must be in (0, 100], got {percentile!r}")
    finite = np.isfinite(a)
    scale = float(np.percentile(np.abs(a[finite]), percentile)) if finite.any() else 0.0
    scaled = np.where(finite, a, 0.0) / (2 * scale) + 0.5 if scale > 0 else np.full(a.shape, 0.5)
    rgba = colormaps[cmap](np.clip(scaled, 0.0, 1.0), bytes=True)
    rgba[~finite, 3] = 0
    return rgba_png(rgba)


def rgba_png(rgba: np.ndarray) -> bytes:
    """Encode an RGBA (or RGB) uint8 array of shape (y, x, 4 or 3) as PNG.

    Raises
    ------
    ValueError
        If the shape or dtype is not that of an 8-bit RGB(A) image.
    """
    from PIL import Image

    a = np.asarray(rgba)
    if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] not in (3, 4):
        raise ValueError(f"expected a (y, x, 3|4) uint8 image, got shape {a.shape} dtype {a.dtype}")
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(a)).save(buf, "PNG")  # RGB(A) from the shape
    return buf.getvalue()
