"""Displacements, Green's tensor, LSM/CSM, Einstein check and Debye–Waller (issue 7).

Ground truth: a periodic triangular lattice (a = 2.5 Å, 6 × 6) with nearest-neighbour
springs k = 2 eV/Å² at 300 K, G = k_B T Φ⁺ (⟨u²⟩^{1/2} ≈ 0.08 Å per component);
configurations drawn from N(0, G); the three phonon cases of the issue (coherent,
Einstein, correlated) rendered as phase images with noise and passed through the atom
finder, then compared with the truth configurations.
"""

from __future__ import annotations

import numpy as np
import pytest
from lattice_models import greens, render, sample, springs, triangular
from speckleflow.services.lattice import (
    atom_table,
    bond_correlation,
    column_groups,
    column_positions,
    debye_waller,
    displacements,
    einstein_ratio,
    greens_tensor,
    in_plane_greens,
    neighbour_pairs,
    similarity,
    truth_reference,
)

A = 2.5
PIX = 0.1
MARGIN = np.array([3.0, 3.0])
N_STATES = 10  # object states of a CAVIAR reconstruction


@pytest.fixture(scope="module")
def model():
    sites, _, sup = triangular(6, 6, A)
    g = greens(springs(sites, sup, [(A, 2.0)]), 300.0)
    sites = sites + MARGIN
    shape = tuple(int(v) for v in np.ceil((sites.max(axis=0) + 3.0) / PIX))
    pairs = neighbour_pairs(sites, 1.1 * A)
    return sites, g, shape, pairs


def _reconstructed(truth: np.ndarray, shape, rng) -> np.ndarray:
    phase = np.stack([[render(p, shape, PIX, noise=0.02, offset=0.5, rng=rng)] for p in truth])
    sites = truth.mean(axis=0)
    return atom_table(phase, PIX, (0.0, 0.0), sites, radius_A=0.6, per_slice=False).positions_A


def test_correlated_lattice_csm_against_truth(model):
    sites, g, shape, pairs = model
    rng = np.random.default_rng(11)
    truth = sites[None] + sample(g, N_STATES, 2, rng)
    found = _reconstructed(truth, shape, rng)
    g_rec = greens_tensor(displacements(found))
    g_true = greens_tensor(displacements(truth))
    sim = similarity(g_rec, g_true, pairs)
    print(f"correlated: LSM {sim.lsm:.3f} CSM {sim.csm:.3f} over {sim.n_vectors} vectors")
    assert sim.csm >= 0.95 and sim.lsm >= 0.9
    rho_l, _ = bond_correlation(g_rec, sites, pairs)
    assert rho_l > 0.2  # neighbours move together along their bond (model: 0.36)


def test_coherent_data_finds_no_vibration(model):
    sites, g, shape, pairs = model
    rng = np.random.default_rng(12)
    truth = np.repeat(sites[None], N_STATES, axis=0)
    found = _reconstructed(truth, shape, rng)
    g_rec = greens_tensor(displacements(found))
    u_rms = np.sqrt(np.mean(np.diag(g_rec)))
    sim = similarity(g_rec, g, pairs)  # against the vibration the harmonic model expects
    print(f"coherent: <u²>^1/2 {u_rms:.4f} Å, LSM {sim.lsm:.4f} vs the model G")
    assert u_rms < 0.01  # the detection noise floor, vs 0.08 Å of the model
    assert sim.lsm < 0.02
    assert debye_waller(g_rec).max() < 8 * np.pi**2 * 0.01**2


def test_einstein_neighbour_correlations_vanish(model):
    sites, _, shape, pairs = model
    rng = np.random.default_rng(13)
    sigma = 0.08
    truth = sites[None] + sigma * rng.standard_normal((N_STATES, len(sites), 2))
    g_rec = greens_tensor(displacements(_reconstructed(truth, shape, rng)))
    rho_l, rho_t = bond_correlation(g_rec, sites, pairs)
    print(f"einstein: rho_L {rho_l:.3f} rho_T {rho_t:.3f} ratio {einstein_ratio(g_rec, pairs):.3f}")
    assert abs(rho_l) < 0.1 and abs(rho_t) < 0.1
    # |off-diagonal| / diagonal: at the 10-state sampling floor ≈ 0.94·(2/9)^½ = 0.44 …
    assert einstein_ratio(g_rec, pairs) < 0.55
    # … and with many states (positions straight from the truth) it vanishes
    many = sigma * rng.standard_normal((2000, len(sites), 2))
    assert einstein_ratio(greens_tensor(many), pairs) < 0.05
    b = debye_waller(greens_tensor(many))
    np.testing.assert_allclose(b.mean(), 8 * np.pi**2 * sigma**2, rtol=0.03)


def test_sampled_greens_tensor_converges_to_analytic(model):
    sites, g, _, pairs = model
    u = sample(g, 3000, 2, np.random.default_rng(14))
    sim = similarity(greens_tensor(displacements(sites[None] + u)), g, pairs)
    assert sim.csm > 0.97 and sim.lsm > 0.85
    assert 0.25 < einstein_ratio(g, pairs) < 0.3  # the model's own neighbour correlation


def test_columns_from_three_dimensional_truth():
    # two layers (z = 0, 3.3 Å) stacked on the same (x, y): 2 columns of 2 atoms, ase order
    eq = np.array([[1.0, 2.0, 0.0], [1.0, 2.0, 3.3], [3.5, 2.0, 0.0], [3.5, 2.0, 3.3]])
    groups, cols = column_groups(eq)
    assert [sorted(g.tolist()) for g in groups] == [[0, 1], [2, 3]]
    np.testing.assert_allclose(cols, [[2.0, 1.0], [2.0, 3.5]])  # (y, x)
    rng = np.random.default_rng(15)
    conf = eq[None] + 0.1 * rng.standard_normal((4000, 4, 3))
    pos = column_positions(conf, groups)
    assert pos.shape == (4000, 2, 2)
    g3 = greens_tensor(displacements(conf))
    g_cols = in_plane_greens(g3, groups)
    np.testing.assert_allclose(g_cols, greens_tensor(displacements(pos)), atol=1e-12)
    # independent atoms: the column's variance is half an atom's
    np.testing.assert_allclose(np.diag(g_cols), 0.005, rtol=0.1)


def test_missing_atoms_and_bad_input():
    r = np.zeros((3, 2, 2))
    r[1, 0] = np.nan
    u = displacements(r)
    assert np.isnan(u[1, 0]).all() and np.isfinite(u[0]).all()
    assert np.isfinite(greens_tensor(u)).all()
    with pytest.raises(ValueError, match="two states"):
        displacements(np.zeros((1, 2, 2)))
    with pytest.raises(ValueError, match="shapes differ"):
        similarity(np.eye(4), np.eye(6), [[0, 1]])
    with pytest.raises(ValueError, match="non-zero length"):
        similarity(np.zeros((4, 4)), np.zeros((4, 4)), [[0, 1]])


def test_truth_reference_projects_columns_and_analytic_greens():
    """Two stacked layers of a triangular spring lattice, in ase order (x, y, z)."""
    sites, _, sup = triangular(3, 3, A)
    g2 = greens(springs(sites, sup, [(A, 2.0)]), 300.0)  # (y, x) components
    n = len(sites)
    # 3-D analytic G of 2 layers moving rigidly together in-plane, independent along z
    g3 = np.zeros((2 * n, 3, 2 * n, 3))
    b2 = g2.reshape(n, 2, n, 2)
    for la in range(2):
        for lb in range(2):
            g3[la * n:(la + 1) * n, 1, lb * n:(lb + 1) * n, 1] = b2[:, 0, :, 0]  # y
            g3[la * n:(la + 1) * n, 0, lb * n:(lb + 1) * n, 0] = b2[:, 1, :, 1]  # x
            g3[la * n:(la + 1) * n, 1, lb * n:(lb + 1) * n, 0] = b2[:, 0, :, 1]
            g3[la * n:(la + 1) * n, 0, lb * n:(lb + 1) * n, 1] = b2[:, 1, :, 0]
    for i in range(2 * n):
        g3[i, 2, i, 2] = 0.01
    g3 = g3.reshape(6 * n, 6 * n)
    eq = np.concatenate([np.c_[sites[:, 1], sites[:, 0], np.zeros(n)],
                         np.c_[sites[:, 1], sites[:, 0], np.full(n, 3.3)]])
    conf = eq[None] + sample(g3, 500, 3, np.random.default_rng(16))
    ref = truth_reference(conf, eq, greens_analytic_A2=g3)
    assert ref.positions_A.shape == (500, n, 2)
    order = np.lexsort((sites[:, 1], np.round(sites[:, 0], 3)))
    np.testing.assert_allclose(ref.sites_A, sites[order], atol=1e-9)
    idx = np.stack([2 * order, 2 * order + 1], axis=1).ravel()
    np.testing.assert_allclose(ref.greens_analytic_A2, g2[np.ix_(idx, idx)], atol=1e-12)
    pairs = neighbour_pairs(ref.sites_A, 1.1 * A)
    assert similarity(ref.greens_sample_A2, ref.greens_analytic_A2, pairs).csm > 0.9
    nan_ref = truth_reference(conf, eq, greens_analytic_A2=np.full_like(g3, np.nan))
    assert nan_ref.greens_analytic_A2 is None
