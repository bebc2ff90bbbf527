"""Dynamic domain size, log-normal τ fits and median τ vs k_r against known truth."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage, optimize
from scipy.spatial import cKDTree
from speckleflow.devices.liquid import LiquidSample
from speckleflow.services.ecm.domains import (
    domain_size,
    lognormal_fit,
    lognormal_fits_per_phi,
    median_tau_vs_k_r,
    spatial_autocorrelation,
    tau_histograms,
)

FWHM = 2 * math.sqrt(2 * math.log(2))


@pytest.mark.parametrize("sigma_f", [2.0, 3.0])
def test_domain_size_of_gaussian_correlated_fields(sigma_f):
    """White noise filtered by a Gaussian of σ_f has autocorrelation exp(−r²/4σ_f²):
    FWHM = 2√(2 ln 2)·√2·σ_f exactly. Within 6 %, also with 10 % of the pixels NaN."""
    rng = np.random.default_rng(int(sigma_f))
    f = ndimage.gaussian_filter(rng.standard_normal((128, 128)), sigma_f, mode="wrap")
    tau = 0.2 * np.exp(0.5 * f / f.std())  # log-normal τ, correlated in ln τ
    expected = FWHM * math.sqrt(2) * sigma_f
    d = domain_size(tau, scan_step_nm=0.5)
    assert d.fwhm == pytest.approx(expected, rel=0.06)
    assert d.fwhm_nm == pytest.approx(0.5 * d.fwhm) and d.fwhm_err > 0
    holes = tau.copy()
    holes[rng.random(tau.shape) < 0.1] = np.nan
    assert domain_size(holes).fwhm == pytest.approx(expected, rel=0.06)


def test_autocorrelation_is_one_at_zero_lag_and_symmetric():
    rng = np.random.default_rng(0)
    tau = np.exp(rng.standard_normal((9, 11, 3)))
    tau[2, 3, 1] = np.nan
    c = spatial_autocorrelation(tau)
    assert c.shape == (17, 21) and c[8, 10] == pytest.approx(1.0)
    np.testing.assert_allclose(c, c[::-1, ::-1], atol=1e-12, equal_nan=True)
    # white noise: no correlation beyond zero lag
    assert np.nanmax(np.abs(np.delete(c.ravel(), 8 * 21 + 10))[:100]) < 0.5


def test_domain_size_of_the_model_voronoi_domains():
    """The model's τ(r, k_φ) maps are Poisson–Voronoi domains (mean √area 3 nm) with
    independent ln τ per cell, so their autocorrelation is the probability that two
    points at distance r share a cell. That probability, by Monte Carlo on an
    independent tessellation, fitted by a 2D Gaussian, gives the expected ξ_τ; the
    measured ξ_τ of the truth maps (8 k_φ maps of 48×48 steps of 0.5 nm) is within 10 %."""
    s = LiquidSample((48, 48), detector_shape=(32, 32), domain_size_nm=3.0, scan_step_nm=0.5,
                     drift_margin=0, n_components=2, seed=1)
    truth = s.truth()
    d = domain_size(truth.tau, scan_step_nm=truth.scan_step_nm)

    rng = np.random.default_rng(11)
    side = 300.0
    seeds = rng.uniform(0, side, (rng.poisson(side**2 / truth.domain_size_nm**2), 2))
    tree = cKDTree(seeds)
    p = rng.uniform(20, side - 20, (40000, 2))
    ang = rng.uniform(0, 2 * np.pi, p.shape[0])
    home = tree.query(p)[1]
    radii = np.linspace(0, 8, 41)
    same = np.array([(tree.query(p + r * np.c_[np.cos(ang), np.sin(ang)])[1] == home).mean() for r in radii])
    half = d.fit_radius * truth.scan_step_nm
    lag = np.arange(-d.fit_radius, d.fit_radius + 1) * truth.scan_step_nm
    ly, lx = np.meshgrid(lag, lag, indexing="ij")
    expected_c = np.interp(np.hypot(ly, lx), radii, same)
    g = lambda yx, a, sg, b: a * np.exp(-0.5 * (yx[0] ** 2 + yx[1] ** 2) / sg**2) + b
    (_a, sg, _b), _ = optimize.curve_fit(g, (ly.ravel(), lx.ravel()), expected_c.ravel(), p0=(1, half / 3, 0))
    expected = FWHM * sg
    print(f"ξ_τ {d.fwhm_nm:.3f} ± {d.fwhm_err_nm:.3f} nm, expected {expected:.3f} nm, domain size 3 nm")
    assert d.fwhm_nm == pytest.approx(expected, rel=0.10)


def test_lognormal_fit_recovers_known_parameters():
    rng = np.random.default_rng(4)
    tau = 0.3 * np.exp(0.5 * rng.standard_normal((4000, 3)))
    tau[::50, 0] = np.nan
    fits = lognormal_fits_per_phi(tau)
    assert len(fits) == 3
    for fit in fits:
        assert abs(fit.median - 0.3) < 4 * fit.median_err
        assert abs(fit.sigma - 0.5) < 4 * fit.sigma_err
    assert fits[0].n == 4000 - 80


def test_lognormal_fit_of_the_model_truth():
    """Pooled over 8 k_φ maps (~500 domains) the truth τ follows the log-normal the model
    drew its domains from: median within 6 %, σ of ln τ within 12 %."""
    s = LiquidSample((48, 48), detector_shape=(32, 32), tau_median=0.5, tau_sigma=0.6,
                     drift_margin=0, n_components=2, seed=3)
    fit = lognormal_fit(s.truth().tau)
    assert fit.median == pytest.approx(0.5, rel=0.06)
    assert fit.sigma == pytest.approx(0.6, rel=0.12)


def test_histograms_and_median_tau_vs_k_r():
    rng = np.random.default_rng(2)
    scale = np.array([0.5, 1.0, 2.0])  # τ median per k_r bin
    tau = scale[None, None, :, None] * np.exp(0.3 * rng.standard_normal((20, 20, 3, 6)))
    tau[0, 0, 1, :] = np.nan
    res = median_tau_vs_k_r(tau)
    np.testing.assert_allclose(res.median, scale, rtol=0.05)
    assert (res.q25 < res.median).all() and (res.median < res.q75).all()
    assert res.n.tolist() == [2400, 2394, 2400]
    counts, edges = tau_histograms(tau[:, :, 0, :], bins=12)
    assert counts.shape == (6, 12) and edges.size == 13
    assert (counts.sum(1) == 400).all() and np.allclose(np.diff(np.log(edges)), np.log(edges[1] / edges[0]))
    all_nan = np.full((2, 2, 2), np.nan)
    assert np.isnan(median_tau_vs_k_r(all_nan, k_r_axis=0).median).all()


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="ny, nx >= 3"):
        domain_size(np.ones((2, 5)))
    with pytest.raises(ValueError, match="finite, varying"):
        spatial_autocorrelation(np.full((5, 5), np.nan))
    with pytest.raises(ValueError, match="scan_step_nm"):
        domain_size(np.ones((5, 5)), scan_step_nm=-1.0)
    with pytest.raises(ValueError, match="two finite"):
        lognormal_fit(np.array([1.0, np.nan, -2.0]))
    with pytest.raises(ValueError, match="k_r_axis"):
        median_tau_vs_k_r(np.ones((3, 3)), k_r_axis=4)
    with pytest.raises(ValueError, match="bins"):
        tau_histograms(np.ones((3, 3)), bins=0)
