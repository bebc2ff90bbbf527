"""Two-time correlation: scikit-beam agreement, definition, rolling window, errors."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
from speckleflow.services.g2.twotime import (
    TwoTimeCorrelator,
    g2_from_two_time,
    two_time_correlation,
)


def direct(frames: np.ndarray, pixels: np.ndarray) -> np.ndarray:
    """⟨I(t1)I(t2)⟩ / (⟨I(t1)⟩⟨I(t2)⟩) over the given pixels, element by element."""
    x = frames.reshape(frames.shape[0], -1)[:, pixels].astype(np.float64)
    T = x.shape[0]
    out = np.empty((T, T))
    for a in range(T):
        for b in range(T):
            out[a, b] = np.mean(x[a] * x[b]) / (np.mean(x[a]) * np.mean(x[b]))
    return out


@pytest.fixture
def speckle():
    rng = np.random.default_rng(3)
    frames = rng.poisson(rng.exponential(2.0, (8, 10)), (60, 8, 10)).astype(np.uint16)
    labels = (np.arange(80) % 3 + 1).reshape(8, 10)
    labels[0, :3] = 0
    return frames, labels


def test_definition_and_chunking(speckle):
    frames, labels = speckle
    G, bins = two_time_correlation(frames, labels, pixel_chunk=7)
    np.testing.assert_array_equal(bins, [1, 2, 3])
    for b, label in enumerate(bins):
        np.testing.assert_allclose(G[b], direct(frames, np.flatnonzero(labels.ravel() == label)),
                                   rtol=1e-13)  # fmt: skip
    G_all, bins_all = two_time_correlation(frames)
    np.testing.assert_array_equal(bins_all, [1])
    np.testing.assert_allclose(G_all[0], direct(frames, np.arange(80)), rtol=1e-13)
    np.testing.assert_array_equal(G, two_time_correlation(frames, labels, pixel_chunk=1000)[0])


def test_agrees_with_scikit_beam(speckle):
    correlation = pytest.importorskip("skbeam.core.correlation")
    frames, labels = speckle
    T = frames.shape[0]
    result = correlation.two_time_corr(labels, frames, T, T, 1)
    G, _ = two_time_correlation(frames, labels)
    assert np.abs(result.g2 - G).max() < 1e-9
    one_time = correlation.one_time_from_two_time(result.g2)
    np.testing.assert_allclose(g2_from_two_time(G), one_time, rtol=1e-12)


def test_lazy_dask_frames(speckle):
    frames, labels = speckle
    lazy = da.from_array(frames, chunks=(60, 4, 10))
    np.testing.assert_array_equal(two_time_correlation(lazy, labels, pixel_chunk=16)[0],
                                  two_time_correlation(frames, labels)[0])  # fmt: skip


def test_rolling_window_is_the_window_of_the_full_matrix(speckle):
    frames, labels = speckle
    G, _ = two_time_correlation(frames, labels)
    rolling = TwoTimeCorrelator((8, 10), window=25, labels=labels)
    for part in np.array_split(frames, 9):
        rolling.process(part)
        index, Gw, _bins = rolling.result()
        assert index[-1] == rolling.n_frames - 1
        np.testing.assert_allclose(Gw, G[:, index][:, :, index], rtol=1e-13)
    assert index.tolist() == list(range(35, 60))
    one_call = TwoTimeCorrelator(80, window=25, labels=labels)
    one_call.process(frames.reshape(60, 80))
    np.testing.assert_allclose(one_call.result()[1], Gw, rtol=1e-13)


def test_stationary_speckle_diagonals_follow_g2():
    # exponentially correlated complex Gaussian field: g2(k) = 1 + exp(-2k/τ)
    rng = np.random.default_rng(0)
    tau, T, P = 5.0, 80, 4000
    rho = np.exp(-1 / tau)
    E = np.empty((T, P), complex)
    E[0] = (rng.standard_normal(P) + 1j * rng.standard_normal(P)) / np.sqrt(2)
    for t in range(1, T):
        w = (rng.standard_normal(P) + 1j * rng.standard_normal(P)) / np.sqrt(2)
        E[t] = rho * E[t - 1] + np.sqrt(1 - rho**2) * w
    G, _ = two_time_correlation(np.abs(E) ** 2)
    g2 = g2_from_two_time(G)[0]
    k = np.arange(20)
    np.testing.assert_allclose(g2[:20], 1 + np.exp(-2 * k / tau), atol=0.03)


def test_bad_inputs_raise_naming_the_value():
    with pytest.raises(ValueError, match=r"got \(5,\)"):
        two_time_correlation(np.ones(5))
    with pytest.raises(ValueError, match="-1.0"):
        two_time_correlation(-np.ones((3, 4)))
    with pytest.raises(ValueError, match="labels must have one entry per pixel"):
        two_time_correlation(np.ones((3, 4)), np.ones(5, int))
    with pytest.raises(ValueError, match="window must be an int >= 1, got 0"):
        TwoTimeCorrelator(4, window=0)
    rolling = TwoTimeCorrelator(4, window=3)
    with pytest.raises(ValueError, match=r"got \(2, 5\)"):
        rolling.process(np.ones((2, 5)))
    with pytest.raises(ValueError, match="G must have shape"):
        g2_from_two_time(np.ones((3, 4)))
