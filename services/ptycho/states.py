"""Object states as displaced copies of one base object (a frozen-phonon prior, torch).

In frozen-phonon multislice every configuration ``n`` is the same crystal with its atoms
moved by ``u_i^n`` (Loane, Xu & Silcox, Acta Cryst. A47, 267 (1991)); projected along
the beam, the transmission function of configuration ``n`` is, near column ``i``, that of
the mean crystal shifted by the column's displacement. The *displacement* state model
writes state ``n`` as the base object warped by a smooth displacement field ``d_n(r)``:

``φ_n(r) = φ_base(r − d_n(r))``, ``μ_n(r) = μ_base(r − d_n(r))``,

with ``d_n = g_σ * a_n`` (a Gaussian of σ pixels smoothing the free field ``a_n``, so a
column moves as a whole while its neighbours ~1.4 Å away move independently). Compared
with free pixel-wise states (the paper's ``O(x, y, z, n)``, Gladyshev et al. (2025)), the
states have 2 parameters per pixel instead of 2 × slices, all sharing one atom shape:
Poisson noise cannot be fitted into per-state phase ripples that the lattice analysis's
centre of mass reads as displacements. Our choice, not the paper's, and experimental:
measured (helper ptfit, 2026-11-21) it does not beat free states. Synthetic two-state
data of ``tests/unit/test_ptycho_fit.py`` (atoms displaced 0.3 Å rms): local matched
correlation 0.80–0.85 against 0.99 for free states (60 passes; the base object, the
first stage's blurred mean, sharpens slowly). abTEM hBN-1L correlated, 16 × 16, 40
passes: u rms 0.063 Å against 0.09–0.11 (truth's centre of mass 0.034), LSM 0.58, but
CSM −0.10 at 1e5 e/Å² and 0.05 at 1e7 e/Å² (free states 0.40–0.53 and 0.49).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["gaussian_kernel", "smooth_field", "warp"]


def gaussian_kernel(sigma_px: float) -> torch.Tensor:
    """Normalised 1-D Gaussian (2⌈3σ⌉+1,) float32; ``[1.]`` for σ = 0.

    Raises
    ------
    ValueError
        If ``sigma_px`` < 0.
    """
    if not sigma_px >= 0:
        raise ValueError(f"sigma_px must be >= 0, got {sigma_px!r}")
    if sigma_px == 0:
        return torch.ones(1)
    half = int(np.ceil(3 * sigma_px))
    x = torch.arange(-half, half + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / sigma_px) ** 2)
    return k / k.sum()


def smooth_field(field: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian smoothing of ``field`` (N, C, H, W) with ``kernel`` (K,), edges replicated."""
    k = kernel.numel()
    if k == 1:
        return field
    n, c, h, w = field.shape
    x = field.reshape(n * c, 1, h, w)
    pad = k // 2
    x = F.conv2d(F.pad(x, (pad, pad, 0, 0), mode="replicate"), kernel.view(1, 1, 1, k))
    x = F.conv2d(F.pad(x, (0, 0, pad, pad), mode="replicate"), kernel.view(1, 1, k, 1))
    return x.reshape(n, c, h, w)


def warp(base: torch.Tensor, displacement: torch.Tensor) -> torch.Tensor:
    """Sample ``base`` at ``r − d(r)`` for every state.

    Parameters
    ----------
    base : Tensor, shape (C, H, W), float32
        Real maps (e.g. phase and log-amplitude of every slice stacked).
    displacement : Tensor, shape (N, 2, H, W), float32
        ``d_n(r)`` in pixels, components (y, x).

    Returns
    -------
    Tensor, shape (N, C, H, W), float32
        Bilinear interpolation, edges replicated; zero displacement returns ``base``.
    """
    c, h, w = base.shape
    n = displacement.shape[0]
    yy = torch.arange(h, dtype=base.dtype)[:, None].expand(h, w)
    xx = torch.arange(w, dtype=base.dtype)[None, :].expand(h, w)
    sy = yy[None] - displacement[:, 0]
    sx = xx[None] - displacement[:, 1]
    grid = torch.stack([2 * sx / max(w - 1, 1) - 1, 2 * sy / max(h - 1, 1) - 1], dim=-1)  # (N, H, W, 2) as (x, y)
    return F.grid_sample(base[None].expand(n, c, h, w), grid, mode="bilinear", padding_mode="border",
                         align_corners=True)
