"""Atom detection and centre-of-mass refinement on synthetic phase images (issue 7).

Ground truth: Gaussian phase peaks at known positions of a triangular lattice with
displacements ~0.08 Å rms, additive noise (2 % of the peak) and a constant phase offset.
"""

from __future__ import annotations

import numpy as np
import pytest
from lattice_models import greens, render, sample, springs, triangular
from speckleflow.services.lattice import (
    atom_table,
    detect_atoms,
    match_sites,
    refine_centre_of_mass,
)

A = 2.5  # Å, lattice constant
PIX = 0.1  # Å per pixel
MARGIN = np.array([3.0, 3.0])


@pytest.fixture(scope="module")
def lattice():
    sites, _, sup = triangular(5, 5, A)
    sites = sites + MARGIN
    g = greens(springs(sites - MARGIN, sup, [(A, 2.0)]), 300.0)
    shape = tuple(int(v) for v in np.ceil((sites.max(axis=0) + 3.0) / PIX))
    return sites, g, shape


def test_projected_and_slice_positions_match_truth(lattice):
    sites, g, shape = lattice
    rng = np.random.default_rng(7)
    u = sample(g, 4, 2, rng)
    truth = sites[None] + u
    # two slices, each carrying half the column's phase, with their own noise and offset
    phase = np.stack([
        [render(p, shape, PIX, amplitude=0.5, noise=0.01, offset=0.3, rng=rng) for _ in range(2)]
        for p in truth
    ])
    tab = atom_table(phase, PIX, (0.0, 0.0), sites, radius_A=0.6)
    assert tab.positions_A.shape == (4, len(sites), 2)
    assert tab.slice_positions_A.shape == (4, 2, len(sites), 2)
    assert tab.found_fraction == 1.0
    err = np.sqrt(np.mean((tab.positions_A - truth) ** 2))
    err_slice = np.sqrt(np.mean((tab.slice_positions_A - truth[:, None]) ** 2))
    u_rms = np.sqrt(np.mean(u**2))
    # detection error far below the vibration amplitude (≈0.08 Å)
    assert err < 0.01 < u_rms / 5, (err, u_rms)
    assert err_slice < 0.015, err_slice


def test_origin_and_offset_do_not_bias_positions(lattice):
    sites, _, shape = lattice
    origin = np.array([-12.3, 4.56])
    img = render(sites, shape, PIX) + 5.0  # large constant phase offset
    found = refine_centre_of_mass(img, sites + origin + 0.15, PIX, origin, radius_A=0.6)
    np.testing.assert_allclose(found, sites + origin, atol=2e-3)


def test_detect_and_match_handles_missing_and_extra_atoms(lattice):
    sites, _, shape = lattice
    keep = np.ones(len(sites), bool)
    keep[3] = False
    extra = np.array([[0.6, 0.6]])  # a spurious peak far from every site
    img = render(np.concatenate([sites[keep], extra]), shape, PIX)
    peaks = detect_atoms(img, PIX, min_distance_A=A / 2)
    assert len(peaks) == keep.sum() + 1
    idx = match_sites(peaks, sites, max_distance_A=A / 2)
    assert idx[3] == -1
    assert np.all(idx[keep] >= 0)
    np.testing.assert_allclose(peaks[idx[keep]], sites[keep], atol=PIX)
    tab = atom_table(img[None, None], PIX, (0, 0), sites, radius_A=0.6)
    assert np.isnan(tab.positions_A[0, 3]).all()
    assert np.isfinite(tab.positions_A[0, keep]).all()


def test_bad_arguments_name_the_value():
    img = np.zeros((10, 10))
    with pytest.raises(ValueError, match="pixel_size_A"):
        detect_atoms(img, 0.0, min_distance_A=1.0)
    with pytest.raises(ValueError, match="radius_A"):
        refine_centre_of_mass(img, [[1.0, 1.0]], 0.1, radius_A=0.05)
    with pytest.raises(ValueError, match="n_states, n_slices"):
        atom_table(img, 0.1, (0, 0), [[1.0, 1.0], [2.0, 2.0]], radius_A=0.5)
    with pytest.raises(TypeError, match="complex"):
        atom_table(np.zeros((1, 1, 4, 4), complex), 0.1, (0, 0), [[0, 0], [1, 1]], radius_A=0.2)
