"""KWW fits: accuracy on synthetic speckle with known τ and β, scipy agreement, flags."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import curve_fit
from speckleflow.services.ecm.kww import KWWFlag, fit_kww, kww_g2
from speckleflow.services.g2 import MultiTauCorrelator

FRAME_TIME = 1e-3  # s per frame


def gaussian_field(n: int, n_pix: int, tau: float, beta: float, rng) -> np.ndarray:
    """Stationary circular complex Gaussian field, ⟨E(t) E*(t+k)⟩ = exp(−(k/τ)^β).

    Circulant embedding: the autocovariance on a ring of 2n frames, its (real,
    non-negative after clipping) spectrum, filtered complex white noise; the first n
    frames. |E|² then has g2 = 1 + exp(−2 (k/τ)^β) (Siegert).
    """
    m = 2 * n
    k = np.arange(m)
    c = np.exp(-(np.minimum(k, m - k) / tau) ** beta)
    spectrum = np.clip(np.fft.fft(c).real, 0.0, None)
    noise = (rng.standard_normal((m, n_pix)) + 1j * rng.standard_normal((m, n_pix))) / np.sqrt(2)
    return np.fft.fft(np.sqrt(spectrum / m)[:, None] * noise, axis=0)[:n]


def g2_of(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray, MultiTauCorrelator]:
    corr = MultiTauCorrelator(frames.shape[1])
    corr.process(frames)
    lags, g2 = corr.g2()
    return lags, g2, corr


@pytest.mark.parametrize(("tau", "beta"), [(20.0, 1.0), (20.0, 0.6), (30.0, 1.5)])
def test_recovers_tau_and_beta_of_synthetic_speckle(tau, beta):
    rng = np.random.default_rng(int(10 * beta))
    intensity = np.abs(gaussian_field(2**15, 48, tau, beta, rng)) ** 2
    lags, g2, corr = g2_of(intensity)
    fit = fit_kww(lags, g2, time_per_lag=FRAME_TIME)
    assert (fit.flags == 0).all()
    # per-pixel fits: median within 10 % (τ) and 0.1 (β)
    assert abs(np.median(fit.tau) / (tau * FRAME_TIME) - 1) < 0.10
    assert abs(np.median(fit.beta) - beta) < 0.1
    assert abs(np.median(fit.A) - 1) < 0.1
    # the ensemble (all pixels binned) g2
    lags_b, g2_b, _ = corr.binned_g2(np.ones(48, int))
    ens = fit_kww(lags_b, g2_b[:, 0], time_per_lag=FRAME_TIME)
    assert ens.flags == 0
    assert abs(ens.tau / (tau * FRAME_TIME) - 1) < 0.10
    assert abs(ens.beta - beta) < 0.1


def test_recovers_tau_from_electron_counts():
    # 1 electron per pixel on average, Poisson counting: g2 at lags > 0 unchanged
    rng = np.random.default_rng(7)
    tau, beta = 15.0, 0.8
    counts = rng.poisson(np.abs(gaussian_field(2**15, 48, tau, beta, rng)) ** 2).astype(np.uint16)
    lags, g2, _ = g2_of(counts)
    fit = fit_kww(lags, g2, time_per_lag=FRAME_TIME)
    assert (fit.flags == 0).mean() > 0.9
    assert abs(np.median(fit.tau) / (tau * FRAME_TIME) - 1) < 0.10
    assert abs(np.median(fit.beta) - beta) < 0.1


def test_agrees_with_scipy_curve_fit():
    rng = np.random.default_rng(1)
    intensity = np.abs(gaussian_field(2**13, 6, 12.0, 0.7, rng)) ** 2
    lags, g2, _ = g2_of(intensity)
    fit = fit_kww(lags, g2, time_per_lag=FRAME_TIME)
    use = lags > 0
    t = lags[use] * FRAME_TIME

    def model(t, A, tau, beta):
        return 1 + A * np.exp(-2 * (t / tau) ** beta)

    for p in range(6):
        popt, pcov = curve_fit(model, t, g2[use, p], p0=[fit.A[p], fit.tau[p], fit.beta[p]])
        np.testing.assert_allclose([fit.A[p], fit.tau[p], fit.beta[p]], popt, rtol=1e-5)
        np.testing.assert_allclose(
            [fit.sigma_A[p], fit.sigma_tau[p], fit.sigma_beta[p]], np.sqrt(np.diag(pcov)),
            rtol=1e-3,
        )  # fmt: skip


def test_noise_free_curves_exactly_and_weights():
    lags = np.unique(np.round(np.geomspace(1, 2000, 60)))
    taus = np.array([5.0, 50.0, 500.0])
    betas = np.array([0.4, 1.0, 1.8])
    As = np.array([0.05, 0.3, 0.9])
    g2 = kww_g2(lags[:, None], taus, betas, As)
    fit = fit_kww(lags, g2, time_per_lag=2.0, sigma=np.full_like(g2, 1e-3), absolute_sigma=True)
    np.testing.assert_allclose(fit.tau, 2.0 * taus, rtol=1e-6)
    np.testing.assert_allclose(fit.beta, betas, rtol=1e-6)
    np.testing.assert_allclose(fit.A, As, rtol=1e-6)
    assert (fit.flags == 0).all()
    assert (fit.chi2_reduced < 1e-6).all()


def test_single_curve_gives_scalars_and_lag_zero_is_ignored():
    lags = np.arange(0, 200)
    g2 = kww_g2(lags, 20.0, 1.0, 0.5)
    g2[0] = 5.0  # shot noise at lag 0 must not matter
    fit = fit_kww(lags, g2, time_per_lag=1.0)
    assert fit.tau.shape == ()
    assert abs(fit.tau - 20.0) < 1e-6
    assert fit.n_points == 199


def test_flags():
    lags = np.arange(1, 64, dtype=float)
    curves = np.stack(
        [
            kww_g2(lags, 10.0, 1.0, 0.5),  # good
            kww_g2(lags, 1e4, 1.0, 0.5),  # τ far beyond the longest lag
            kww_g2(lags, 10.0, 3.0, 0.5),  # β > 2
            np.ones_like(lags) - 0.01 * np.exp(-lags / 5),  # anti-correlated: A < 0
            np.full_like(lags, np.nan),  # nothing to fit
        ],
        axis=1,
    )
    fit = fit_kww(lags, curves, time_per_lag=1.0)
    assert fit.flags[0] == KWWFlag.OK
    assert fit.flags[1] & KWWFlag.TAU_OUT_OF_RANGE
    assert fit.flags[2] & KWWFlag.BETA_OUT_OF_RANGE
    assert fit.flags[3] & KWWFlag.NO_CONTRAST
    assert fit.flags[4] == KWWFlag.TOO_FEW_POINTS
    assert np.isnan(fit.tau[4])
    assert fit.good.tolist() == [True, False, False, False, False]
    slow = fit_kww(lags, curves[:, :1] + 0.01 * np.sin(lags)[:, None], time_per_lag=1.0,
                   max_iter=1)  # fmt: skip
    assert slow.flags[0] & KWWFlag.NOT_CONVERGED


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"time_per_lag": 0.0}, "time_per_lag must be a finite number > 0 s, got 0.0"),
        ({"time_per_lag": float("nan")}, "got nan"),
        ({"time_per_lag": 1.0, "sigma": -np.ones((5, 2))}, "sigma must be > 0, got -1.0"),
        ({"time_per_lag": 1.0, "sigma": np.ones((4, 2))}, r"shape of g2 \(5, 2\)"),
        ({"time_per_lag": 1.0, "max_iter": 0}, "max_iter must be an int >= 1, got 0"),
    ],
)
def test_bad_arguments_raise_naming_the_value(kwargs, match):
    lags = np.arange(1, 6, dtype=float)
    with pytest.raises(ValueError, match=match):
        fit_kww(lags, np.ones((5, 2)), **kwargs)


def test_bad_lags_raise_naming_the_value():
    with pytest.raises(ValueError, match="got 3.0 followed by 2.0 at index 2"):
        fit_kww(np.array([1.0, 2, 3, 2, 5]), np.ones(5), time_per_lag=1.0)
    with pytest.raises(ValueError, match=r"n_lags=3"):
        fit_kww(np.arange(3), np.ones(4), time_per_lag=1.0)
    with pytest.raises(ValueError, match="lags > 0"):
        fit_kww(np.array([0.0]), np.ones(1), time_per_lag=1.0)
