"""Online CCI: features and the incremental assigner against the simulator's truth."""

from __future__ import annotations

import collections

import numpy as np
import pytest

from speckleflow.devices.sample import MagneticSample
from speckleflow.services.cci.features import feature_mask, pair_features
from speckleflow.services.cci.online import IncrementalAssigner


def test_feature_rows_are_centred_unit_vectors_and_dot_is_pearson():
    sample = MagneticSample.from_options(seed=0)
    mask = feature_mask(sample.geometry.to_config())
    assert 30_000 < mask.n_pixels < 35_000  # the annulus of the default 256² geometry
    series = sample.record_pairs(4)
    x = pair_features(series.plus, series.minus, mask)
    assert x.shape == (4, mask.n_pixels) and x.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, rtol=1e-5)
    d = (series.plus.astype(float) - series.minus) / np.sqrt(np.maximum(series.plus.astype(float) + series.minus, 1))
    expected = np.corrcoef(d[0][mask.pixels], d[1][mask.pixels])[0, 1]
    assert float(x[0] @ x[1]) == pytest.approx(expected, abs=1e-4)


def test_bad_input_is_refused_with_the_bad_value_named():
    mask = feature_mask({"shape": [64, 64], "beamstop_radius": 2})
    with pytest.raises(ValueError, match="shape"):
        pair_features(np.zeros((1, 32, 32)), np.zeros((1, 32, 32)), mask)
    with pytest.raises(ValueError, match="NaN"):
        pair_features(np.full((64, 64), np.nan), np.zeros((64, 64)), mask)
    with pytest.raises(ValueError, match="q_min_px"):
        feature_mask({"shape": [64, 64]}, q_min_px=30, q_max_px=10)
    assigner = IncrementalAssigner(mask.n_pixels)
    with pytest.raises(ValueError, match="shape"):
        assigner.add(np.zeros(3, np.float32), 0, 0.0)
    with pytest.raises(ValueError, match="z_margin"):
        IncrementalAssigner(10, z_margin=-1)


@pytest.mark.slow
def test_online_assignment_matches_truth_once_every_state_was_seen_20_times():
    """Issue target: ≥ 98 % of pairs assigned correctly once every state was seen 20 times.

    3 000 pairs at 280 K with 0.5-s frames (sample seed 0): all 16 states visited, 4 %
    of pairs contain a hop. Measured: 16 of 16 states found; after the 20-visits point
    99.4 % correct; from pair 1 000 on 97.3 % correct and 99.5 % assigned (with the
    re-assignments of buffered pairs); per-pair decision p99 < 2 ms.
    """
    sample = MagneticSample.from_options(seed=0, temperature_K=280.0)
    series = sample.record_pairs(3000, exposure_time=0.5)
    mask = feature_mask(sample.geometry.to_config())
    x = np.concatenate([pair_features(series.plus[i : i + 250], series.minus[i : i + 250], mask)
                        for i in range(0, 3000, 250)])
    truth = series.state
    assigner = IncrementalAssigner(mask.n_pixels)
    current = {}
    for i in range(len(x)):
        for d in assigner.add(x[i], i, float(series.time[i])) + assigner.maintain():
            current[d.pair] = d.state
    state = np.array([current[i] for i in range(len(x))])
    # Each template is named after the true state most of its pairs are in.
    names = {k: np.bincount(truth[state == k]).argmax() for k in set(state) if k >= 0}
    named = np.array([names.get(k, -1) for k in state])
    assert len(set(names.values())) == len(set(truth)) == 16
    seen = collections.Counter()
    ready = None
    for i, t in enumerate(truth):
        seen[t] += 1
        if ready is None and len(seen) == 16 and min(seen.values()) >= 20:
            ready = i
    assert ready is not None
    after = np.arange(len(x)) > ready
    assert np.mean(named[after] == truth[after]) >= 0.98
    late = np.arange(len(x)) >= 1000
    assert np.mean(state[late] >= 0) >= 0.99
    assert np.mean(named[late] == truth[late]) >= 0.96
    assert sum(assigner.state_counts()) == int(np.sum(state >= 0))
