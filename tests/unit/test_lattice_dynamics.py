"""Fourier-transformed displacements, D(q) and phonon frequencies (issue 7, eqs. 5–6).

Exact checks against spring models: the 1-D chain ω = 2 √(k/m) |sin(qa/2)|, and a
two-sublattice honeycomb (hBN-like masses 10.81 / 14.007 amu, first- and second-
neighbour springs) against D(q) Bloch-summed directly from the force constants.
"""

from __future__ import annotations

import numpy as np
import pytest
from lattice_models import bloch_dynamical, greens, honeycomb, sample, springs
from speckleflow.services.lattice import (
    assign_cells,
    dispersion,
    displacements,
    dynamical_matrix,
    fourier_covariance,
    fourier_displacements,
    frequencies_THz,
    greens_tensor,
    high_symmetry_path,
    supercell_q,
)
from speckleflow.services.lattice.dynamics import THZ_PER_SQRT_EV_A2_AMU

T = 300.0


def test_unit_conversion_constant():
    # (1 eV / (Å² amu))^½ = 9.8227e13 rad/s → /2π = 15.633 THz
    assert THZ_PER_SQRT_EV_A2_AMU == pytest.approx(15.6333, rel=1e-4)


def test_chain_dispersion_is_exact():
    n, a, k, m = 16, 2.0, 5.0, 12.0
    sites = np.arange(n, dtype=float)[:, None] * a
    g = greens(springs(sites, np.array([[n * a]]), [(a, k)]), T)
    res = dispersion(g, sites, [[a]], [[0.0]], (n,), [m], T, path="chain")
    q = res.q[:, 0]
    exact = 2 * np.sqrt(k / m) * np.abs(np.sin(q * a / 2)) * THZ_PER_SQRT_EV_A2_AMU
    np.testing.assert_allclose(res.frequencies_THz[:, 0], exact, atol=1e-6)
    assert res.frequencies_THz[0, 0] == 0.0  # Γ: no uniform translation in u
    assert len(res.path_index) == n // 2 + 1  # Γ … X


@pytest.fixture(scope="module")
def hbn_like():
    a = 2.5
    sites, sub, cell, sup = honeycomb(6, 6, a)
    phi = springs(sites, sup, [(a / np.sqrt(3), 20.0), (a, 5.0)])
    basis = np.array([[0.0, 0.0], (cell[0] + cell[1]) / 3])
    masses = np.array([10.81, 14.007])
    return sites, sub, cell, sup, phi, basis, masses


def test_honeycomb_frequencies_match_force_constant_model(hbn_like):
    sites, sub, cell, sup, phi, basis, masses = hbn_like
    found_sub, _ = assign_cells(sites, cell, basis)
    np.testing.assert_array_equal(found_sub, sub)
    res = dispersion(greens(phi, T), sites, cell, basis, (6, 6), masses, T, path="hexagonal")
    exact = frequencies_THz(bloch_dynamical(phi, sites, sub, sup, masses, res.q))
    np.testing.assert_allclose(res.frequencies_THz, exact, atol=1e-5)
    assert res.labels == ["Γ", "M", "K", "Γ"]
    # on a 6 × 6 supercell: Γ, q = M/3, 2M/3, M, K and K/2 lie on Γ–M–K–Γ
    assert len(res.path_index) == 6
    assert res.mean_branch_THz.shape == (4,)
    assert np.all(np.diff(res.mean_branch_THz) >= 0) and res.mean_branch_THz[0] > 0


def test_sampled_states_give_the_dispersion(hbn_like):
    """Eq. 5 on sampled configurations → eq. 6: frequencies within sampling error."""
    sites, sub, cell, sup, phi, _, masses = hbn_like
    g = greens(phi, T)
    u = displacements(sites[None] + sample(g, 4000, 2, np.random.default_rng(3)))
    q = supercell_q(cell, (6, 6))
    ut = fourier_displacements(u, sites, sub, q)
    assert ut.shape == (4000, 36, 2, 2)
    cov = np.einsum("nqk,nql->qkl", ut.reshape(4000, 36, 4), np.conj(ut.reshape(4000, 36, 4)))
    cov /= 4000 - 1
    # the same covariance from the sample Green's tensor
    g_s = greens_tensor(u)
    np.testing.assert_allclose(fourier_covariance(g_s, sites, sub, q), cov, atol=1e-12)
    f = frequencies_THz(dynamical_matrix(cov, masses, T))
    exact = frequencies_THz(bloch_dynamical(phi, sites, sub, sup, masses, q))
    np.testing.assert_allclose(f[1:], exact[1:], rtol=0.08)  # 4000 states: ~2 % per mode


def test_paths_and_errors():
    labels, corners = high_symmetry_path("rectangular", [[3.84, 0.0], [0.0, 5.43]])
    assert labels == ["Γ", "X", "S", "Y", "Γ"]
    np.testing.assert_allclose(corners[2], [np.pi / 3.84, np.pi / 5.43])
    _, hexc = high_symmetry_path("hexagonal", [[0.0, 2.5], [2.5 * np.sqrt(3) / 2, -1.25]])
    assert np.linalg.norm(hexc[2]) == pytest.approx(4 * np.pi / (3 * 2.5))  # |K| = 4π/3a
    with pytest.raises(ValueError, match="kind"):
        high_symmetry_path("cubic", np.eye(2))
    with pytest.raises(ValueError, match="temperature_K"):
        dynamical_matrix(np.eye(2)[None], [1.0], 0.0)
    with pytest.raises(ValueError, match="fit no basis"):
        assign_cells([[0.0, 0.0], [0.5, 0.5]], np.eye(2) * 2, [[0.0, 0.0]], tol_A=0.1)


def test_ten_states_unbiased_dynamical_matrix():
    """With N = 10 states the raw inverse covariance overestimates D by ν/(ν − p) ≈ 1.8;
    ``n_states`` removes that bias: the mean of D over 400 independent 10-state
    ensembles agrees with the force-constant model within sampling error."""
    a, n_rep, n_states = 2.5, 400, 10
    sites, sub, cell, sup = honeycomb(3, 3, a)
    phi = springs(sites, sup, [(a / np.sqrt(3), 20.0), (a, 5.0)])
    masses = np.array([10.81, 14.007])
    q = supercell_q(cell, (3, 3))
    exact = bloch_dynamical(phi, sites, sub, sup, masses, q)
    x = sample(greens(phi, T), n_rep * n_states, 2, np.random.default_rng(5))
    ut = fourier_displacements(x, sites, sub, q).reshape(n_rep, n_states, len(q), 4)
    ut -= ut.mean(axis=1, keepdims=True)  # eq. 1: about each ensemble's own mean
    cov = np.einsum("rnqk,rnql->rqkl", ut, np.conj(ut)) / (n_states - 1)
    real = np.zeros(len(q), bool)
    real[0] = True  # on a 3 × 3 supercell only Γ has 2q ≡ 0
    raw = dynamical_matrix(cov.reshape(-1, 4, 4), masses, T).reshape(n_rep, len(q), 4, 4)
    fixed = dynamical_matrix(cov.reshape(-1, 4, 4), masses, T, n_states=n_states,
                             real_q=np.tile(real, n_rep)).reshape(n_rep, len(q), 4, 4)
    norm = np.linalg.norm(exact[1:], axis=(1, 2))
    err_fixed = np.linalg.norm(fixed.mean(axis=0)[1:] - exact[1:], axis=(1, 2)) / norm
    ratio_raw = np.linalg.norm(raw.mean(axis=0)[1:], axis=(1, 2)) / norm
    assert err_fixed.max() < 0.12, err_fixed
    np.testing.assert_allclose(ratio_raw, 9 / 5, rtol=0.12)
    with pytest.raises(ValueError, match="too small"):
        dynamical_matrix(cov[0], masses, T, n_states=5)


def test_detection_noise_floor_is_removed(hbn_like):
    """White position errors (σ = 0.01 Å, vs u ≈ 0.03 Å) soften the stiff branches;
    subtracting their variance restores the model."""
    sites, sub, cell, sup, phi, basis, masses = hbn_like
    rng = np.random.default_rng(8)
    n = 3000
    x = sites[None] + sample(greens(phi, T), n, 2, rng) + 0.01 * rng.standard_normal((n, 72, 2))
    g = greens_tensor(displacements(x))
    exact = frequencies_THz(bloch_dynamical(phi, sites, sub, sup, masses, supercell_q(cell, (6, 6))))
    raw = dispersion(g, sites, cell, basis, (6, 6), masses, T, n_states=n)
    fixed = dispersion(g, sites, cell, basis, (6, 6), masses, T, n_states=n,
                       noise_variance_A2=1e-4)
    top_exact = exact[1:, -1].mean()
    assert raw.frequencies_THz[1:, -1].mean() < 0.9 * top_exact
    np.testing.assert_allclose(fixed.frequencies_THz[1:], exact[1:], rtol=0.1)


def test_rectangular_lattice_path_is_exact():
    """A centred-rectangular lattice (Si [110] column geometry, a/√2 × a) with springs."""
    ax, ay = 3.84, 5.43
    cell = np.array([[0.0, ax], [ay, 0.0]])  # rows (y, x)
    basis = np.array([[0.0, 0.0], [ay / 2, ax / 2]])
    i, j = np.meshgrid(np.arange(4), np.arange(4), indexing="ij")
    lat = i.reshape(-1, 1) * cell[0] + j.reshape(-1, 1) * cell[1]
    sites = np.concatenate([lat + basis[0], lat + basis[1]])
    sub = np.repeat([0, 1], 16)
    sup = 4 * cell
    diag = float(np.hypot(ax / 2, ay / 2))
    phi = springs(sites, sup, [(diag, 8.0), (ax, 3.0), (ay, 2.0)])
    masses = np.array([28.086, 28.086])
    res = dispersion(greens(phi, T), sites, cell, basis, (4, 4), masses, T, path="rectangular")
    exact = frequencies_THz(bloch_dynamical(phi, sites, sub, sup, masses, res.q))
    np.testing.assert_allclose(res.frequencies_THz, exact, atol=1e-5)
    assert res.labels == ["Γ", "X", "S", "Y", "Γ"]
    # 4 × 4 grid: Γ, X/2, X, X + Y/2, S, S − X/2, Y, Y/2 (Γ counted once)
    assert len(res.path_index) == 8
    np.testing.assert_allclose(np.diff(res.path_distance).min(), np.pi / (2 * ay), rtol=1e-9)
