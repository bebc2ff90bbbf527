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


def test_empty_slice_gives_no_atoms(lattice):
    sites, _, shape = lattice
    rng = np.random.default_rng(9)
    atoms = render(sites, shape, PIX, noise=0.01, rng=rng)
    vacuum = render(sites[:0], shape, PIX, noise=0.01, rng=rng)
    tab = atom_table(np.stack([atoms, vacuum])[None], PIX, (0, 0), sites, radius_A=0.6)
    assert np.isfinite(tab.slice_positions_A[0, 0]).all()
    assert np.isnan(tab.slice_positions_A[0, 1]).all()
    np.testing.assert_allclose(tab.positions_A[0], sites, atol=0.01)


def test_silicon_110_dumbbells_are_resolved():
    """Si along [110]: columns in dumbbells 1.36 Å apart on a 3.84 × 5.43 Å cell."""
    ax, ay, dz = 3.84, 5.43, 1.358
    cells = np.array([[iy * ay, ix * ax] for iy in range(3) for ix in range(3)])
    dumbbell = np.array([[0.0, 0.0], [dz, 0.0]])
    centre = np.array([ay / 2, ax / 2])
    sites = np.concatenate([cells + d for d in (*dumbbell, *(dumbbell + centre))]) + 3.0
    shape = tuple(int(v) for v in np.ceil((sites.max(axis=0) + 3.0) / PIX))
    rng = np.random.default_rng(10)
    truth = sites[None] + 0.06 * rng.standard_normal((3, len(sites), 2))
    phase = np.stack([[render(p, shape, PIX, sigma=0.3, noise=0.01, rng=rng)] for p in truth])
    tab = atom_table(phase, PIX, (0, 0), sites, radius_A=0.45)
    assert tab.found_fraction == 1.0
    # the neighbour in the dumbbell pulls the centre of mass slightly: still ≪ 0.06 Å
    err = np.sqrt(np.mean((tab.positions_A - truth) ** 2))
    print(f"Si [110] dumbbell columns: rms error {err:.4f} Å")
    assert err < 0.015
