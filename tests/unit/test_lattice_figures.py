"""Arrow plot, Green's tensor image and dispersion figure render off-screen (issue 7)."""

from __future__ import annotations

import numpy as np
from lattice_models import greens, honeycomb, sample, springs
from speckleflow.services.lattice import dispersion, displacements, greens_tensor
from speckleflow.services.lattice.figures import (
    correlation_figure,
    dispersion_figure,
    greens_figure,
)


def test_figures_render_and_write_png(tmp_path):
    a = 2.5
    sites, _, cell, sup = honeycomb(4, 4, a)
    phi = springs(sites, sup, [(a / np.sqrt(3), 20.0), (a, 5.0)])
    g = greens(phi, 300.0)
    g_s = greens_tensor(displacements(sites[None] + sample(g, 10, 2, np.random.default_rng(0))))
    basis = np.array([[0.0, 0.0], (cell[0] + cell[1]) / 3])
    res = dispersion(g, sites, cell, basis, (4, 4), [10.81, 14.007], 300.0)
    outputs = {
        "arrows.png": correlation_figure(sites, g_s, cutoff_A=1.1 * a, g_ref_A2=g,
                                         path=tmp_path / "arrows.png"),
        "greens.png": greens_figure(g_s, path=tmp_path / "greens.png"),
        "dispersion.png": dispersion_figure(res, path=tmp_path / "dispersion.png"),
    }
    for name, rgba in outputs.items():
        assert rgba.dtype == np.uint8 and rgba.ndim == 3 and rgba.shape[2] == 4
        assert rgba.shape[0] <= 600 and rgba.shape[1] <= 900
        assert rgba[..., :3].std() > 10, name  # something drawn, not a blank canvas
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
