"""Displacement-field object states (services/ptycho/states): warping moves atoms by d."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")


def _blob(h: int, w: int, cy: float, cx: float, sigma: float = 2.0) -> np.ndarray:
    y, x = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    return np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * sigma**2)).astype(np.float32)


def _com(img: np.ndarray) -> np.ndarray:
    y, x = np.meshgrid(np.arange(img.shape[0]), np.arange(img.shape[1]), indexing="ij")
    return np.array([(img * y).sum(), (img * x).sum()]) / img.sum()


def test_a_uniform_displacement_moves_a_column_by_that_displacement() -> None:
    from speckleflow.services.ptycho.states import warp

    base = torch.as_tensor(_blob(40, 40, 20.0, 18.0))[None]
    d = torch.zeros(2, 2, 40, 40)
    d[1, 0], d[1, 1] = 0.3, -0.45  # state 1 moves by (+0.3, -0.45) px
    out = warp(base, d).numpy()
    np.testing.assert_allclose(out[0, 0], base[0].numpy(), atol=1e-6)  # zero field: identity
    moved = _com(out[1, 0]) - _com(base[0].numpy())
    np.testing.assert_allclose(moved, [0.3, -0.45], atol=0.02)


def test_smoothing_keeps_a_constant_field_and_the_gradient_reaches_the_field() -> None:
    from speckleflow.services.ptycho.states import gaussian_kernel, smooth_field, warp

    k = gaussian_kernel(1.5)
    assert k.shape == (2 * 5 + 1,) and abs(float(k.sum()) - 1) < 1e-6
    const = torch.full((3, 2, 16, 20), 0.7)
    np.testing.assert_allclose(smooth_field(const, k).numpy(), 0.7, rtol=1e-6)
    field = torch.zeros(1, 2, 40, 40, requires_grad=True)
    base = torch.as_tensor(_blob(40, 40, 20.0, 20.0))[None]
    target = torch.as_tensor(_blob(40, 40, 20.5, 20.0))[None, None]
    loss = ((warp(base, smooth_field(field, k)) - target) ** 2).sum()
    loss.backward()
    g = field.grad.numpy()
    assert g[0, 0].sum() < 0 and abs(g[0, 1].sum()) < 0.05 * abs(g[0, 0].sum())  # pushes +y (bilinear: one-sided at 0)
    with pytest.raises(ValueError, match="sigma_px"):
        gaussian_kernel(-1.0)
