"""The mixed-state estimator of G (services/lattice/mixed_state.py, issue 7).

Synthetic object states: Gaussian phase columns (σ 0.25 Å, 0.35 rad, like one hBN layer
on the 0.25 Å object pixel) on a square grid of 1.45 Å, displaced by correlated
Gaussian configurations (exponential correlation over 2 Å, 0.036 Å rms per component).
A mixed-object fit may return any unitary mix of the configurations' transmission
functions; the estimator must give the same G for all of them, the centre of mass must
not (that is why the estimator exists).
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from speckleflow.services.lattice import analysis
from speckleflow.services.lattice.correlations import greens_tensor, neighbour_pairs, similarity
from speckleflow.services.lattice.mixed_state import (
    coherent_object,
    column_displacements,
    equivalent_configurations,
    greens_from_displacements,
    projected_transmission,
)

PIXEL, N_STATES, SPACING = 0.25, 10, 1.45


def _crystal(seed: int = 0):
    rng = np.random.default_rng(seed)
    sites = np.array([[y, x] for y in np.arange(1.5, 9.0, SPACING) for x in np.arange(1.5, 9.0, SPACING)])
    d = np.linalg.norm(sites[:, None] - sites[None], axis=-1)
    cov = np.kron(np.exp(-d / 2.0), np.eye(2)) * 0.036**2
    u = rng.multivariate_normal(np.zeros(cov.shape[0]), cov, size=N_STATES).reshape(N_STATES, -1, 2)
    u -= u.mean(axis=0)
    yy = np.arange(44)[:, None] * PIXEL
    xx = np.arange(44)[None, :] * PIXEL

    def transmission(columns: np.ndarray) -> np.ndarray:
        phase = sum(0.35 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 0.25**2)) for cy, cx in columns)
        return np.exp(1j * phase)

    states = np.stack([transmission(sites + u[n]) for n in range(N_STATES)])
    return sites, u, states, neighbour_pairs(sites, 1.15 * SPACING)


def _random_unitary(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    q, r = np.linalg.qr(rng.normal(size=(n, n)) + 1j * rng.normal(size=(n, n)))
    return q * (np.diag(r) / np.abs(np.diag(r)))


def test_g_of_the_configurations_is_recovered_and_invariant_under_a_unitary_mix():
    sites, u, states, pairs = _crystal()
    g_true = greens_tensor(u)
    v = column_displacements(states, PIXEL, (0, 0), sites, radius_A=0.6 * SPACING)
    g = greens_from_displacements(v)
    sim = similarity(g, g_true, pairs)
    ratio = np.mean(np.diag(g)) / np.mean(np.diag(g_true))
    print(f"configurations: CSM {sim.csm:.4f} LSM {sim.lsm:.4f}, <u²> ratio {ratio:.3f}")
    assert sim.csm > 0.99 and sim.lsm > 0.95
    assert 0.95 < ratio < 1.05

    mixed = np.einsum("mn,nhw->mhw", _random_unitary(N_STATES, 1), states)
    g_mixed = greens_from_displacements(column_displacements(mixed, PIXEL, (0, 0), sites, radius_A=0.6 * SPACING))
    np.testing.assert_allclose(g_mixed, g, rtol=1e-6, atol=1e-12)

    # the per-state centre of mass of the same mixed states: the correlations are lost
    com = analysis.analyse_states(np.angle(mixed)[:, None], PIXEL, (0, 0), sites, radius_A=0.35 * SPACING,
                                  cutoff_A=1.15 * SPACING, register=False, reference_greens_A2=g_true)
    inv = analysis.analyse_states(np.angle(mixed)[:, None], PIXEL, (0, 0), sites, radius_A=0.35 * SPACING,
                                  cutoff_A=1.15 * SPACING, register=False, reference_greens_A2=g_true,
                                  objects=mixed[:, None])
    print(f"unitary mix: centre of mass CSM {com.similarity.csm:.3f}, mixed-state CSM {inv.similarity.csm:.3f}")
    assert com.similarity.csm < 0.5
    assert inv.similarity.csm > 0.99 and inv.estimator == "mixed-state"


def test_a_coherent_object_in_every_state_has_no_vibration():
    sites, _, states, _ = _crystal()
    phases = np.exp(2j * np.pi * np.random.default_rng(3).random(N_STATES))
    same = states[0][None] * phases[:, None, None]
    g = greens_from_displacements(column_displacements(same, PIXEL, (0, 0), sites, radius_A=0.6 * SPACING))
    assert np.sqrt(np.nanmax(np.abs(np.diag(g)))) < 1e-6
    o0, lam = coherent_object(same)
    assert lam[1] < 1e-9 * lam[0]
    np.testing.assert_allclose(np.abs(o0), np.abs(states[0]), rtol=1e-9)


def test_equivalent_configurations_carry_the_same_g():
    sites, _, states, _ = _crystal(seed=2)
    mixed = np.einsum("mn,nhw->mhw", _random_unitary(N_STATES, 4), states)
    v = column_displacements(mixed, PIXEL, (0, 0), sites, radius_A=0.6 * SPACING)
    u = equivalent_configurations(v)
    assert u.shape == (N_STATES, len(sites), 2) and np.isrealobj(u)
    second = np.einsum("mi,mj->ij", u.reshape(N_STATES, -1), u.reshape(N_STATES, -1)) / N_STATES
    g = greens_from_displacements(v) * (N_STATES - 1) / N_STATES
    # exact for first-order displacements (real rank N); the rest is the higher orders
    assert np.linalg.norm(second - g) < 0.02 * np.linalg.norm(g)


def test_bad_input_is_refused_with_the_value_named():
    sites, _, states, _ = _crystal()
    with pytest.raises(ValueError, match="complex"):
        projected_transmission(np.zeros((2, 1, 4, 4)))
    bad = states[:, None].copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        projected_transmission(bad)
    with pytest.raises(ValueError, match="weights"):
        column_displacements(states, PIXEL, (0, 0), sites, radius_A=1.0, weights=np.ones(3))
    with pytest.raises(ValueError, match="radius_A"):
        column_displacements(states, PIXEL, (0, 0), sites, radius_A=0.0)
    with pytest.raises(ValueError, match="two states"):
        greens_from_displacements(np.zeros((1, 3, 2), complex))


def test_band_limit_keeps_the_columns_and_removes_what_no_pattern_constrains():
    """States on a fine grid carry unconstrained noise above the information limit (here
    independent per state, |k| > 1.6 / Å, four times the phase of the columns' spectrum
    there): it leaks into the coefficients through the estimator's gradient (measured:
    ⟨u²⟩ 1.44× the truth, CSM 0.25; on a real fit, where the noise is mostly shared by the
    states, ⟨u²⟩ came out too small instead); low-passed to 1.5 / Å the configurations'
    G is back (⟨u²⟩ 1.03×, CSM 0.999)."""
    from speckleflow.services.lattice.mixed_state import band_limit

    sites, u, states, pairs = _crystal()
    g_true = greens_tensor(u)
    rng = np.random.default_rng(5)
    ky = np.fft.fftfreq(44, PIXEL)[:, None]
    kx = np.fft.fftfreq(44, PIXEL)[None, :]
    high = np.hypot(ky, kx) > 1.6
    noise = np.fft.ifft2(np.fft.fft2(rng.normal(size=(N_STATES, 44, 44))) * high).real
    noisy = states * np.exp(1j * 0.1 * noise / noise.std())

    def ratio_csm(k_max):
        v = column_displacements(noisy, PIXEL, (0, 0), sites, radius_A=0.6 * SPACING, k_max_per_A=k_max)
        g = greens_from_displacements(v)
        return np.mean(np.diag(g)) / np.mean(np.diag(g_true)), similarity(g, g_true, pairs).csm

    raw, limited = ratio_csm(None), ratio_csm(1.5)
    print(f"<u²> ratio, CSM: raw {raw[0]:.3f}, {raw[1]:.3f}; band-limited {limited[0]:.3f}, {limited[1]:.3f}")
    assert abs(raw[0] - 1) > 0.3 and raw[1] < 0.5
    assert 0.9 < limited[0] < 1.1 and limited[1] > 0.95

    # a low frequency passes (away from the edges: the mirror extension is exact for
    # cosines on the pixel grid), a high one is removed
    y = np.arange(44)[:, None] * PIXEL + 0 * np.arange(44)[None, :]
    low, fast = np.exp(1j * np.cos(2 * np.pi * 0.3 * y)), np.cos(2 * np.pi * 1.8 * y)
    out = band_limit(np.stack([low, fast + 0j]), PIXEL, 1.0)
    np.testing.assert_allclose(out[0, 10:34, 10:34], low[10:34, 10:34], atol=0.05)
    assert np.abs(out[1, 10:34, 10:34]).max() < 0.05
    with pytest.raises(ValueError, match="k_max_per_A"):
        band_limit(states, PIXEL, 0.0)


def test_a_phase_varying_slowly_across_the_cells_is_not_read_as_vibration():
    # a mixed-object fit leaves each state a smooth phase where the patterns hardly
    # constrain it (below the probe's spatial frequencies): 0.02 rad rms, correlated
    # over 2 Å, about 0.007 rad/Å across a cell
    sites, u, states, pairs = _crystal()
    smooth = ndimage.gaussian_filter(np.random.default_rng(5).normal(size=states.shape),
                                     (0, 2.0 / PIXEL, 2.0 / PIXEL))
    ramp = np.exp(1j * 0.02 * smooth / smooth.std())

    def u_rms(objects: np.ndarray, ramps: bool) -> tuple[float, np.ndarray]:
        g = greens_from_displacements(column_displacements(objects, PIXEL, (0, 0), sites,
                                                           radius_A=0.6 * SPACING, ramps=ramps))
        return float(np.sqrt(np.nanmean(np.diag(g)))), g

    coherent = states[0][None] * ramp
    without, _ = u_rms(coherent, ramps=False)
    with_ramps, _ = u_rms(coherent, ramps=True)
    print(f"coherent: false u rms {without:.4f} Å without the ramps, {with_ramps:.5f} Å with")
    assert without > 0.003  # what the three-function fit reads: a tenth of the vibration below
    assert with_ramps < 0.0005

    _, g = u_rms(states * ramp, ramps=True)
    sim = similarity(g, greens_tensor(u), pairs)
    print(f"correlated with the slow phase: CSM {sim.csm:.4f} LSM {sim.lsm:.4f}")
    assert sim.csm > 0.99 and sim.lsm > 0.95
