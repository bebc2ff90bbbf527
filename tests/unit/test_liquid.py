"""The supercooled-liquid speckle model: KWW statistics, dose calibration, drift, truth."""

from __future__ import annotations

import numpy as np
import pytest
from speckleflow.devices.kww import SpeckleField, kww_g2, kww_mixture
from speckleflow.devices.liquid import LiquidSample, electron_wavelength


def empirical_g2(series: np.ndarray, lags: np.ndarray) -> np.ndarray:
    """g2(lag) = ⟨I(t)·I(t+lag)⟩ / ⟨I⟩², averaged over the last axis.

    series : (n_t, n_rep, n_pix) float — n_rep statistically identical series per pixel.
    The mean ⟨I⟩ is taken over time and replicas (per-series time means would bias g2
    low by ≈ 2∫(g2 − 1)dt / T for a finite series T).
    """
    mean = series.mean(axis=(0, 1))
    out = np.empty(lags.size)
    for i, lag in enumerate(lags):
        a, b = series[: series.shape[0] - lag], series[lag:]
        out[i] = np.mean((a * b).mean(axis=(0, 1)) / mean**2)
    return out


@pytest.mark.parametrize("beta, tol", [(0.3, 6e-3), (0.5, 2.5e-3), (0.7, 1e-3), (1.0, 1e-12)])
def test_kww_mixture_approximates_the_stretched_exponential(beta, tol):
    mix = kww_mixture(beta)
    x = np.logspace(-3, np.log10(30), 500)
    assert np.abs(mix.g1(x) - np.exp(-(x**beta))).max() < tol
    assert mix.weights.sum() == pytest.approx(1.0) and (mix.weights >= 0).all()
    assert mix.max_error < tol


@pytest.mark.parametrize("beta", [0.45, 0.8])
def test_speckle_field_has_kww_g2(beta):
    """Simulated |E|² series of 3000 pixels: g2 = 1 + exp(−2(Δt/τ)^β) within 0.02."""
    rng = np.random.default_rng(7)
    tau, dt, n_t, n_pix = 1.0, 0.05, 1500, 3000
    field = SpeckleField(np.full((1, 1), tau), np.full((1, 1), beta), np.zeros(n_pix, int), rng)
    series = np.empty((n_t, n_pix), np.float32)
    for n in range(n_t):
        e = field.amplitudes(np.array([0]), np.array([n * dt]))[0]
        series[n] = e.real**2 + e.imag**2
    assert series.mean() == pytest.approx(1.0, abs=0.03)
    lags = np.array([1, 2, 5, 10, 20, 40, 80])
    measured = empirical_g2(series[:, :, None], lags)
    expected = kww_g2(lags * dt, tau, beta)
    print("g2 measured", measured.round(4), "expected", expected.round(4))
    np.testing.assert_allclose(measured, expected, atol=0.02)


def test_speckle_field_rejects_repeated_sites_and_time_reversal():
    field = SpeckleField(np.ones((2, 1)), np.full((2, 1), 0.6), np.zeros(4, int), np.random.default_rng(0))
    field.amplitudes(np.array([0, 1]), np.array([1.0, 1.0]))
    with pytest.raises(ValueError, match="distinct"):
        field.amplitudes(np.array([0, 0]), np.array([2.0, 3.0]))
    with pytest.raises(ValueError, match="backwards"):
        field.amplitudes(np.array([0]), np.array([0.5]))


def _small_sample(**kw) -> LiquidSample:
    opts = {"detector_shape": (48, 48), "tau_sigma": 0.0, "beta_sd": 0.0, "seed": 3}
    opts.update(kw)
    return LiquidSample((4, 4), **opts)


def test_pixel_series_of_the_model_follow_their_truth():
    """Counts of every dynamic pixel at every scan position, repeated 600 times:
    mean over pixels of g2 − 1 equals mean of A·exp(−2(Δt/τ)^β) (truth A, τ, β) within 0.015."""
    tau, beta = 1.0, 0.6
    s = _small_sample(tau_median=tau, beta_mean=beta, dose=40.0, thickness_variation=0.0)
    truth = s.truth()
    assert np.allclose(truth.tau, tau) and np.allclose(truth.beta, beta)
    period, n_t = 0.04, 600  # repeat period Δt = τ/25
    ny, nx = s.scan_shape
    ix, iy = np.tile(np.arange(nx), ny), np.repeat(np.arange(ny), nx)
    dyn = truth.phi_bin.ravel() >= 0
    series = np.empty((n_t, ny * nx, int(dyn.sum())), np.float32)
    for n in range(n_t):
        frames = s.electrons(ix, iy, n * period + np.arange(nx * ny) * period / (nx * ny))
        series[n] = frames.reshape(nx * ny, -1)[:, dyn]
    lags = np.array([1, 3, 10, 25, 50, 100])
    contrast = truth.contrast.ravel()[dyn]
    expected = np.array([np.mean(contrast * np.exp(-2 * (lag * period / tau) ** beta)) for lag in lags])
    measured = empirical_g2(series, lags) - 1
    print("g2 − 1 measured", measured.round(4), "expected", expected.round(4))
    np.testing.assert_allclose(measured, expected, atol=0.015)
    assert expected[0] > 0.15  # a real test: the contrast is large at short lags


@pytest.mark.parametrize("dose", [0.1, 1.0, 5.0])
def test_mean_counts_on_the_first_ring_equal_the_dose(dose):
    s = LiquidSample((8, 8), detector_shape=(64, 64), dose=dose, seed=5)
    ix, iy = np.tile(np.arange(8), 8), np.repeat(np.arange(8), 8)
    counts = np.concatenate([s.electrons(ix, iy, r * 0.5 + np.arange(64) * 1e-4) for r in range(20)])
    ring = counts[:, s.ring_mask]
    assert s.ring_pixels == int(s.ring_mask.sum()) > 100
    assert ring.mean() == pytest.approx(dose, rel=0.03)
    # Brighter inside (bright-field disk), dark beyond the ring.
    assert counts[:, s.k_r < 0.5 * s.bf_radius].mean() > 5 * dose
    assert counts[:, s.k_r > s.k_ring + 4 * s.ring_fwhm].mean() < 0.5 * dose


def test_ring_geometry_and_k_calibration():
    s = LiquidSample((2, 2), detector_shape=(128, 256), k_ring=0.45, seed=0)
    truth = s.truth()
    assert truth.k_per_pixel == pytest.approx(0.45 / (0.3 * 128))
    assert truth.ring_radius_px == pytest.approx(0.3 * 128)
    rows, cols = np.nonzero(truth.ring_mask)
    radius = np.hypot(rows - truth.center[0], cols - truth.center[1]) * truth.k_per_pixel
    assert np.abs(radius - 0.45).max() <= 0.03 + truth.k_per_pixel
    # Every k_φ bin has pixels, each in the right direction.
    phi = np.mod(np.arctan2(rows - truth.center[0], cols - truth.center[1]), 2 * np.pi)
    bins = truth.phi_bin[rows, cols]
    assert set(np.unique(bins)) == set(range(8))
    assert np.all(np.abs(phi - (bins + 0.5) * 2 * np.pi / 8) <= np.pi / 8 + 1e-9)
    assert electron_wavelength(200.0) == pytest.approx(0.02508, rel=1e-3)


def test_domains_are_a_few_nm_and_differ_between_k_phi_bins():
    s = LiquidSample((40, 40), detector_shape=(32, 32), scan_step_nm=0.5, domain_size_nm=3.0,
                     tau_median=2.0, tau_sigma=0.5, seed=11)
    truth = s.truth()
    tau = truth.tau
    assert tau.shape == (40, 40, 8) and truth.beta.shape == (40, 40, 8)
    # Log-normal: median near tau_median, spread near tau_sigma (over ~100 domains per bin).
    log_tau = np.log(tau)
    assert np.exp(np.median(log_tau)) == pytest.approx(2.0, rel=0.25)
    assert truth.ensemble_tau == pytest.approx(np.median(tau))
    # Domains: neighbouring positions mostly share τ; a domain covers ~ (3 nm / 0.5 nm)² positions.
    same = np.mean(tau[1:, :, 0] == tau[:-1, :, 0])
    assert 0.7 < same < 0.97
    n_domains = np.unique(tau[:, :, 0]).size
    expected_domains = (40 * 0.5) ** 2 / 3.0**2  # a 20 nm × 20 nm field, 9 nm² per domain
    assert 0.6 * expected_domains < n_domains < 1.8 * expected_domains
    # Different k_φ bins see different domains.
    assert np.corrcoef(log_tau[..., 0].ravel(), log_tau[..., 1].ravel())[0, 1] < 0.5
    assert 0.3 <= truth.beta.min() and truth.beta.max() <= 1.0


def test_drift_shifts_the_sample_under_the_probe():
    """Without speckle or noise, intensity follows the thickness map shifted by round(d/step)."""
    v = 0.5  # nm/s, one scan step (0.5 nm) per second
    s = LiquidSample((6, 6), detector_shape=(32, 32), speckle_fraction=0.0, thickness_variation=0.3,
                     drift_velocity_nm_s=(0.0, v), drift_margin=3, seed=2)
    np.testing.assert_allclose(s.drift(np.array([0.0, 2.0]))[:, 1], [0.0, 2 * v])
    assert s.site_shift(2.0).tolist() == [0, 2]
    ix, iy = np.arange(6), np.full(6, 3)
    early = s.intensity(ix, iy, np.zeros(6)).sum(axis=(1, 2))
    late = s.intensity(ix, iy, np.full(6, 2.0)).sum(axis=(1, 2))
    np.testing.assert_allclose(late[:-2], early[2:], rtol=1e-5)
    assert not np.allclose(late, early)
    assert s.drift_clipped == 0


def test_wander_is_bounded_and_slow():
    s = LiquidSample((4, 4), detector_shape=(32, 32), drift_wander_nm=1.0, drift_period_s=5.0, seed=4)
    t = np.linspace(0, 100, 2001)
    d = s.drift(t)
    assert np.abs(d).max() <= 1.0 + 1e-9
    assert np.abs(np.diff(d, axis=0)).max() < 2 * np.pi / 5.0 * 0.05 + 1e-9  # |ḋ| ≤ 2π·A/T


def test_invalid_configurations_are_refused_with_the_reason():
    with pytest.raises(ValueError, match="does not fit"):
        LiquidSample((2, 2), detector_shape=(32, 32), k_per_pixel=0.02)
    with pytest.raises(ValueError, match="max_state_bytes"):
        LiquidSample((64, 64), max_state_bytes=1 << 20)
    with pytest.raises(ValueError, match="dose"):
        LiquidSample((2, 2), detector_shape=(32, 32), dose=0.0)
    s = LiquidSample((2, 2), detector_shape=(32, 32))
    with pytest.raises(ValueError, match="outside"):
        s.intensity(np.array([2]), np.array([0]), np.array([0.0]))


def test_seeded_models_are_reproducible():
    a = LiquidSample((3, 3), detector_shape=(32, 32), seed=9)
    b = LiquidSample((3, 3), detector_shape=(32, 32), seed=9)
    ix, iy, t = np.arange(3), np.zeros(3, int), np.arange(3) * 1e-3
    np.testing.assert_array_equal(a.electrons(ix, iy, t), b.electrons(ix, iy, t))
    np.testing.assert_array_equal(a.truth().tau, b.truth().tau)
