"""Products of the full CCI pipeline: Fourier-space averages, state images, dynamics."""

from __future__ import annotations

import numpy as np
import pytest
from speckleflow.devices import MagneticSample
from speckleflow.services.cci.features import feature_mask, pair_features
from speckleflow.services.cci.products import (
    HologramSums,
    build_products,
    label_distance,
)
from speckleflow.services.cci.states import run_cci_clustering
from speckleflow.services.fth.preview import crop_aperture_mask, preview_image
from speckleflow.services.process_cci import pair_rows


def test_pair_rows_skips_broken_pairs() -> None:
    #            0  1   2  3   4   5  6
    helicity = [1, -1, 1, 1, -1, -1, 1]
    plus, minus, unpaired = pair_rows(np.array(helicity))
    np.testing.assert_array_equal(plus, [0, 3])
    np.testing.assert_array_equal(minus, [1, 4])
    assert unpaired == 3  # frame 2 (+ without −), 5 (− without +), 6 (last +)


def test_hologram_sums_partition_the_pairs() -> None:
    rng = np.random.default_rng(1)
    plus = rng.poisson(5.0, (6, 8, 8)).astype(np.uint16)
    minus = rng.poisson(5.0, (6, 8, 8)).astype(np.uint16)
    state = np.array([0, 1, -1, 0, 1, 1])
    mode = np.array([0, 2, 1, 1, 2, 2])
    sums = HologramSums((8, 8), state, np.where(state >= 0, mode, -1), 2, 3)
    sums.add(np.arange(3), plus[:3], minus[:3])
    sums.add(np.arange(3, 6), plus[3:], minus[3:])
    np.testing.assert_array_equal(sums.state_pairs, [2, 3])
    np.testing.assert_array_equal(sums.mode_pairs, [1, 1, 3])
    np.testing.assert_allclose(sums.state_plus[1], plus[[1, 4, 5]].sum(0))
    diff = plus.astype(float) - minus
    np.testing.assert_allclose(sums.total_difference, diff.sum(0))
    # Mode sums partition the assigned pairs' differences.
    np.testing.assert_allclose(sums.mode_difference.sum(0), diff[state >= 0].sum(0))
    means = sums.state_means()
    assert means.shape == (2, 2, 8, 8) and means.dtype == np.float32
    np.testing.assert_allclose(means[0, 1], minus[[0, 3]].mean(0), rtol=1e-6)
    with pytest.raises(ValueError, match="must be"):
        sums.add(np.arange(2), plus[:3], minus[:3])
    with pytest.raises(ValueError, match="out of range"):
        sums.add(np.array([9]), plus[:1], minus[:1])


def test_label_distance_of_identical_and_opposite_groups() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(size=50)
    X = np.stack([a, a, -a, rng.normal(size=50)])
    X -= X.mean(axis=1, keepdims=True)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    d = label_distance(X.astype(np.float32), np.array([0, 0, 1, -1]), 3)
    assert d.shape == (3, 3)
    np.testing.assert_allclose(d, d.T)
    assert d[0, 1] == pytest.approx(2.0, abs=1e-5)  # anti-correlated means
    assert d[0, 2] == 1.0 and d[2, 2] == 0.0  # the empty group


@pytest.mark.slow
def test_state_images_match_the_true_states() -> None:
    """Averaged + reconstructed states look like the simulator's states (noise-free FTH)."""
    sample = MagneticSample.from_options(n_families=4, seed=3, temperature_K=280.0)
    series = sample.record_pairs(400, exposure_time=0.5)
    config = sample.geometry.to_config()
    mask = feature_mask(config)
    X = pair_features(series.plus, series.minus, mask)
    result = run_cci_clustering(X)
    sums = HologramSums(mask.shape, result.state, np.where(result.state >= 0, result.internal_mode, -1),
                        result.n_states, result.n_modes)
    sums.add(np.arange(len(X)), series.plus, series.minus)
    products = build_products(result, X, sums, series.time, config, figures=False)

    aperture = crop_aperture_mask(config)
    assert products.state_images.shape == (result.n_states, *aperture.shape)
    assert np.all(np.isnan(products.state_images[:, ~aperture]))
    signs = []
    for s in range(result.n_states):
        members = series.state[result.state == s]
        true_state = np.bincount(members).argmax()
        truth = preview_image(
            sample.expected_intensity(true_state, +1) - sample.expected_intensity(true_state, -1), config
        )[aperture]
        r = np.corrcoef(products.state_images[s][aperture], truth)[0, 1]
        if sums.state_pairs[s] >= 30:
            assert abs(r) >= 0.9, (s, true_state, r, sums.state_pairs[s])
            signs.append(np.sign(r))
    assert len(set(signs)) == 1  # one sign convention for all images
    # Dynamics: the timeline covers every assigned pair and the counts are consistent.
    assert products.timeline.n_pairs.sum() == np.sum(result.state >= 0)
    assert products.transitions.shape == (result.n_states, result.n_states)
    assert products.transitions.sum() >= len(products.timeline) - 1 - np.sum(products.timeline.gap_before > 10)
    assert products.wall_occupancy.shape == aperture.shape
