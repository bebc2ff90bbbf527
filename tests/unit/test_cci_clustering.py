"""CCI clustering core: Pearson distances, natural modes, misassignment, states.

The fast tests check the numerics on small random data; the slow ones check the science
on the simulator (seed-0 sample at 280 K, 0.5 s exposures): accuracy on 3 000 pairs, a
single state that must not split, and the misassignment estimate against held-out
pairs.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import pdist, squareform
from speckleflow.services.cci.agreement import adjusted_rand_index, matched_accuracy
from speckleflow.services.cci.clustering import (
    DEFAULT_Z_THRESHOLD,
    average_linkage,
    natural_modes,
)
from speckleflow.services.cci.correlation import (
    condensed_index,
    downsampled_matrix,
    n_from_condensed,
    pearson_distance_condensed,
    pearson_matrix_float32,
)
from speckleflow.services.cci.states import (
    PIPELINE_STEPS,
    assign_frames,
    group_states,
    misassignment_matrix,
    mode_templates,
    refine_modes,
    run_cci_clustering,
)

# ----------------------------------------------------------------------------- helpers


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Centred unit-norm float32 rows (what pair_features returns)."""
    x = np.asarray(x, dtype=np.float64)
    x = x - x.mean(axis=1, keepdims=True)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def planted(
    sizes: list[int], m: int = 2048, r0: float = 0.2, seed: int = 0, rho: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """Noisy pairs of len(sizes) random patterns (mutual correlation ≈ rho), r ≈ r0."""
    rng = np.random.default_rng(seed)
    base = unit_rows(rng.standard_normal((1, m)))[0]
    own = unit_rows(rng.standard_normal((len(sizes), m)))
    patterns = unit_rows(np.sqrt(rho) * base + np.sqrt(1 - rho) * own)
    labels = np.repeat(np.arange(len(sizes)), sizes)
    noise = unit_rows(rng.standard_normal((labels.size, m)))
    return unit_rows(np.sqrt(r0) * patterns[labels] + np.sqrt(1 - r0) * noise), labels


def test_adjusted_rand_index_helper() -> None:
    a = np.array([0, 0, 1, 1, 2, 2])
    assert adjusted_rand_index(a, a) == pytest.approx(1.0)
    assert adjusted_rand_index(a, 5 - a) == pytest.approx(1.0)
    # the textbook example: ARI of [0,0,1,1] vs [0,0,1,2] is 0.5714
    assert adjusted_rand_index(np.array([0, 0, 1, 1]), np.array([0, 0, 1, 2])) == pytest.approx(
        4 / 7
    )


# ------------------------------------------------------------------------ correlation


def test_condensed_order_and_values_match_scipy_pdist() -> None:
    rng = np.random.default_rng(1)
    X = unit_rows(rng.standard_normal((157, 64)) + rng.standard_normal((1, 64)))
    d = pearson_distance_condensed(X, block_rows=40)
    assert d.dtype == np.float64
    assert d.shape == (157 * 156 // 2,)
    np.testing.assert_allclose(d, pdist(X.astype(np.float64), "correlation"), atol=2e-6)
    assert n_from_condensed(d.size) == 157
    square = squareform(d)
    for i, j in [(0, 1), (0, 156), (5, 3), (155, 156), (100, 20)]:
        assert d[condensed_index(157, i, j)] == square[i, j]


def test_condensed_is_independent_of_block_size() -> None:
    rng = np.random.default_rng(2)
    X = unit_rows(rng.standard_normal((203, 97)))
    ref = pearson_distance_condensed(X, block_rows=203)
    for b in (1, 7, 64, 202, 4096):
        np.testing.assert_allclose(pearson_distance_condensed(X, block_rows=b), ref, atol=1e-6)


def test_condensed_clips_and_reports_progress() -> None:
    X = unit_rows(np.random.default_rng(3).standard_normal((50, 8)))
    X = np.concatenate([X, X[:1], -X[:1]])  # r = 1 and r = -1 exactly
    calls: list[tuple[int, int]] = []
    d = pearson_distance_condensed(X, block_rows=16, progress=lambda k, t: calls.append((k, t)))
    assert d.min() >= 0.0 and d.max() <= 2.0
    assert d[condensed_index(52, 0, 50)] == pytest.approx(0.0, abs=1e-6)
    assert d[condensed_index(52, 0, 51)] == pytest.approx(2.0, abs=1e-6)
    assert calls == [(1, 4), (2, 4), (3, 4), (4, 4)]


def test_condensed_with_a_dask_client_matches_numpy() -> None:
    distributed = pytest.importorskip("distributed")
    X = unit_rows(np.random.default_rng(4).standard_normal((301, 33)))
    with (
        distributed.LocalCluster(
            n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        calls: list[int] = []
        d = pearson_distance_condensed(
            X, block_rows=32, client=client, progress=lambda k, t: calls.append(k)
        )
    np.testing.assert_allclose(d, pearson_distance_condensed(X), atol=1e-6)
    assert calls == list(range(1, 11))


def test_bad_features_are_rejected_with_the_value() -> None:
    with pytest.raises(ValueError, match="2-D"):
        pearson_distance_condensed(np.zeros(10, np.float32))
    with pytest.raises(ValueError, match="at least 2"):
        pearson_distance_condensed(np.zeros((1, 4), np.float32))
    bad = unit_rows(np.random.default_rng(0).standard_normal((5, 4)))
    bad[2, 1] = np.nan
    with pytest.raises(ValueError, match="1 NaN"):
        pearson_distance_condensed(bad)
    with pytest.raises(ValueError, match="block_rows"):
        pearson_distance_condensed(unit_rows(np.ones((3, 4)) + np.eye(3, 4)), block_rows=0)
    with pytest.raises(TypeError, match="float"):
        pearson_distance_condensed(np.ones((3, 4), dtype=np.int64))
    with pytest.raises(ValueError, match="n\\*\\(n-1\\)/2"):
        n_from_condensed(7)


def test_dense_matrix_and_downsampled_views_agree() -> None:
    X = unit_rows(np.random.default_rng(5).standard_normal((230, 40)))
    R = pearson_matrix_float32(X, block_rows=50)
    np.testing.assert_allclose(R, X @ X.T, atol=1e-6)
    view_x = downsampled_matrix(X, max_size=64)
    view_d = downsampled_matrix(pearson_distance_condensed(X), max_size=64)
    assert view_x.shape == view_d.shape == (64, 64)
    assert view_x.dtype == np.float32
    np.testing.assert_allclose(view_x, view_d, atol=1e-5)
    # cell (0, 0): the block mean of the full matrix, diagonal included
    edges = (np.arange(65) * 230) // 64
    np.testing.assert_allclose(view_x[0, 0], R[: edges[1], : edges[1]].mean(), atol=1e-6)
    assert downsampled_matrix(X, max_size=1024).shape == (230, 230)


# ------------------------------------------------------------------------- clustering


def test_linkage_is_average_linkage_and_consumes_its_input() -> None:
    from scipy.cluster.hierarchy import linkage

    X, _ = planted([30, 20], m=256)
    d = pearson_distance_condensed(X)
    Z_ref = linkage(d, method="average")
    Z = average_linkage(d)
    np.testing.assert_allclose(Z[:, 2], Z_ref[:, 2], atol=1e-12)
    np.testing.assert_array_equal(Z[:, 3], Z_ref[:, 3])


def test_natural_modes_find_planted_modes_and_set_outliers_aside() -> None:
    X, truth = planted([120, 80, 40], m=2048)
    junk = unit_rows(np.random.default_rng(9).standard_normal((3, 2048)))  # no pattern
    X = np.concatenate([X, junk])
    Z = average_linkage(pearson_distance_condensed(X))
    result = natural_modes(Z, X)
    assert result.n_modes == 3
    # the frames that join a cluster last, alone, are set aside with the junk (the
    # final assignment of run_cci_clustering takes them back)
    assert set(result.outliers.tolist()) >= {240, 241, 242}
    assert np.all(result.labels[result.outliers] == -1)
    kept = result.labels[:240] >= 0
    assert kept.mean() > 0.8
    assert adjusted_rand_index(result.labels[:240][kept], truth[kept]) == pytest.approx(1.0)
    assert [len(m) for m in result.modes] == sorted((len(m) for m in result.modes), reverse=True)
    natural = [s for s in result.splits if s.natural]
    assert len(natural) == 2 and all(s.z_eff > DEFAULT_Z_THRESHOLD for s in natural)
    assert result.splits[0].as_dict()["n_a"] + result.splits[0].as_dict()["n_b"] <= 243


def test_natural_modes_from_preserved_distances_agree_with_features() -> None:
    X, _ = planted([60, 50], m=1024, seed=3)
    d = pearson_distance_condensed(X)
    Z = average_linkage(d.copy())
    from_d = natural_modes(Z, d)
    from_x = natural_modes(Z, X)
    assert from_d.n_modes == from_x.n_modes == 2
    np.testing.assert_array_equal(from_d.labels, from_x.labels)


def test_natural_modes_do_not_split_one_pattern() -> None:
    X, _ = planted([600], m=4096, seed=11)
    Z = average_linkage(pearson_distance_condensed(X))
    result = natural_modes(Z, X)
    assert result.n_modes == 1
    assert max(s.z_eff for s in result.splits) < DEFAULT_Z_THRESHOLD


def test_natural_modes_reject_bad_arguments() -> None:
    X, _ = planted([10, 10], m=64)
    Z = average_linkage(pearson_distance_condensed(X))
    with pytest.raises(ValueError, match="min_mode_size"):
        natural_modes(Z, X, min_mode_size=1)
    with pytest.raises(ValueError, match="z_threshold"):
        natural_modes(Z, X, z_threshold=-1.0)
    with pytest.raises(ValueError, match="19 rows"):
        natural_modes(Z, X[:19])
    with pytest.raises(ValueError, match="linkage"):
        natural_modes(Z[:, :3], X)


# ----------------------------------------------------------------------------- states


def test_group_states_links_confused_modes_and_numbers_by_size() -> None:
    P = np.zeros((5, 5))
    P[0, 3] = 0.05  # one direction suffices
    P[4, 1] = 0.02
    P[2, 4] = 0.005  # below the threshold
    states = group_states(P, 0.01, mode_sizes=np.array([10, 50, 5, 10, 40]))
    assert states.tolist() == [1, 0, 2, 1, 0]
    assert group_states(P, 0.01).tolist() == [0, 1, 2, 0, 1]
    with pytest.raises(ValueError, match="square"):
        group_states(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="threshold"):
        group_states(P, 1.5)


def test_misassignment_is_small_for_distinct_and_large_for_identical_modes() -> None:
    X, truth = planted([150, 150, 100], m=2048, seed=4)
    labels = truth.copy()
    labels[:150] = np.where(np.arange(150) % 2 == 0, 0, 3)  # split pattern 0 in two modes
    for method in ("leave-one-out", "split-half"):
        mis = misassignment_matrix(X, labels, method=method, rng=0)
        assert mis.P.shape == (4, 4)
        assert np.all(np.diag(mis.P) == 0)
        assert mis.P[0, 3] > 0.2 and mis.P[3, 0] > 0.2  # the same pattern: a coin toss
        assert mis.P[0, 1] < 1e-6 and mis.P[1, 2] < 1e-6
        np.testing.assert_array_equal(group_states(mis.P), [0, 1, 2, 0])
    with pytest.raises(ValueError, match="method"):
        misassignment_matrix(X, labels, method="bootstrap-ish")


def test_leave_one_out_removes_the_self_correlation_bias() -> None:
    # two modes of one pattern, one of them small: without leave-one-out its frames
    # would score far higher on their own mean and P would be underestimated
    X, _ = planted([200], m=2048, seed=6)
    labels = np.where(np.arange(200) < 20, 1, 0)
    mis = misassignment_matrix(X, labels)
    assert mis.P[1, 0] > 0.3  # a frame of the small mode prefers it only by chance
    assert abs(mis.location[1, 0]) < 3 * mis.scale[1, 0] / np.sqrt(20)


def test_refine_modes_moves_misplaced_frames_between_groups_only() -> None:
    X, truth = planted([100, 100], m=2048, seed=7)
    labels = truth.copy()
    labels[[0, 1, 2]] = 1  # three frames of pattern 0 put in mode 1
    refined, iterations = refine_modes(X, labels)
    assert adjusted_rand_index(refined, truth) == pytest.approx(1.0)
    assert iterations >= 1
    # with both modes in one group nothing moves
    same, _ = refine_modes(X, labels, groups=np.array([0, 0]))
    assert adjusted_rand_index(same, labels) == pytest.approx(1.0)


def test_assign_frames_leaves_frames_of_no_state_unassigned() -> None:
    X, truth = planted([100, 80], m=2048, seed=8)
    stranger = unit_rows(np.random.default_rng(1).standard_normal((4, 2048)))
    templates = mode_templates(X, truth)
    state, mode, score = assign_frames(
        np.concatenate([X, stranger]),
        templates,
        np.array([0, 1]),
        member_of=np.concatenate([truth, [-1] * 4]),
    )
    assert state.dtype == mode.dtype == np.int32 and score.dtype == np.float32
    np.testing.assert_array_equal(state[:180], truth)
    assert np.all(state[180:] == -1)
    assert np.median(score[:180]) == pytest.approx(np.sqrt(0.2), rel=0.05)


def test_run_cci_clustering_end_to_end_on_planted_modes() -> None:
    X, truth = planted([300, 200, 120, 60], m=2048, seed=10, rho=0.5)
    steps: list[str] = []
    result = run_cci_clustering(X, progress=lambda step, done, total: steps.append(step))
    assert result.n_states == 4 and result.n_modes == 4
    assert result.assigned_fraction == 1.0
    assert adjusted_rand_index(result.state, truth) == pytest.approx(1.0)
    assert result.state_counts.tolist() == [300, 200, 120, 60]
    assert result.misassignment.P.shape == (4, 4)
    assert result.linkage.shape == (679, 4)
    assert result.correlation_view.shape == result.correlation_view_sorted.shape == (680, 680)
    assert [s for s in PIPELINE_STEPS if s in steps] == list(PIPELINE_STEPS)
    assert set(result.timings) == set(PIPELINE_STEPS)
    assert result.parameters["z_threshold"] == DEFAULT_Z_THRESHOLD


# ---------------------------------------------------------------- on the simulator


@pytest.fixture(scope="module")
def sample():
    from speckleflow.devices.sample import MagneticSample

    return MagneticSample.from_options(seed=0, temperature_K=280)


@pytest.fixture(scope="module")
def mask(sample):
    from speckleflow.services.cci.features import feature_mask

    return feature_mask(sample.geometry.to_config())


def pure_pairs(sample, mask, state: int, n: int, photons: float, rng) -> np.ndarray:
    """Features of n hop-free pairs of one state: the Poisson draws of ``fth.expose``."""
    from speckleflow.devices.fth import beamstop_mask
    from speckleflow.services.cci.features import pair_features

    stop = beamstop_mask(sample.geometry.shape, sample.geometry.beamstop_radius)
    lam = {}
    for h in (+1, -1):
        lam[h] = sample.expected_intensity(state, h) * photons
        lam[h][stop] = 0.0
    out = []
    for c in range(0, n, 250):
        k = min(250, n - c)
        plus = np.minimum(rng.poisson(lam[+1], size=(k, *lam[+1].shape)), 65535)
        minus = np.minimum(rng.poisson(lam[-1], size=(k, *lam[-1].shape)), 65535)
        out.append(pair_features(plus.astype(np.uint16), minus.astype(np.uint16), mask))
    return np.concatenate(out)


@pytest.mark.slow
def test_simulated_series_states_are_recovered(sample, mask) -> None:
    from speckleflow.services.cci.features import pair_features

    chunks, truth, purity = [], [], []
    for _ in range(6):
        ps = sample.record_pairs(500, exposure_time=0.5)
        chunks.append(pair_features(ps.plus, ps.minus, mask))
        truth.append(ps.state)
        purity.append(ps.purity)
    X, truth, purity = np.concatenate(chunks), np.concatenate(truth), np.concatenate(purity)
    result = run_cci_clustering(X)

    assigned = result.state >= 0
    assert assigned.mean() >= 0.995
    accuracy = matched_accuracy(result.state[assigned], truth[assigned])
    assert accuracy >= 0.99, accuracy
    ari = adjusted_rand_index(result.state[assigned], truth[assigned])
    assert ari >= 0.99, ari
    assert result.n_states == int(np.sum(np.bincount(truth) >= 20))
    # no true state split over several modes: every sizeable mode is one state's
    for k in range(result.n_modes):
        members = truth[(result.internal_mode == k) & assigned]
        if members.size >= 20:
            assert np.bincount(members).max() / members.size >= 0.95
    # what is wrong is ambiguous: pairs that spent about half their time in each state
    wrong = assigned.copy()
    _, fi = np.unique(result.state[assigned], return_inverse=True)
    table = np.zeros((fi.max() + 1, truth.max() + 1))
    np.add.at(table, (fi, truth[assigned]), 1)
    rows, cols = linear_sum_assignment(-table)
    match = dict(zip(np.unique(result.state[assigned])[rows], cols, strict=True))
    wrong[assigned] = (
        np.array([match.get(s, -1) for s in result.state[assigned]]) != truth[assigned]
    )
    assert np.all(purity[wrong] <= 0.6)


@pytest.mark.slow
def test_a_single_state_is_not_split(sample, mask) -> None:
    from speckleflow.devices.fth import DEFAULT_PHOTONS_PER_FRAME

    X = pure_pairs(sample, mask, 12, 2000, DEFAULT_PHOTONS_PER_FRAME, np.random.default_rng(1))
    result = run_cci_clustering(X)
    assert result.n_modes == 1 and result.n_states == 1
    assert result.assigned_fraction >= 0.995
    assert max(s.z_eff for s in result.modes.splits) < DEFAULT_Z_THRESHOLD


@pytest.mark.slow
def test_misassignment_estimate_matches_held_out_pairs(sample, mask) -> None:
    # base/sibling of the family with the smallest difference (states 8 and 9); at
    # 3·10⁴ photons per frame (≈ 5 000 recorded) single pairs confuse them at ≈ 7 %
    rng = np.random.default_rng(7)
    photons = 3e4
    n_train, n_test = 300, 750
    train = [pure_pairs(sample, mask, k, n_train, photons, rng) for k in (8, 9)]
    test = [pure_pairs(sample, mask, k, n_test, photons, rng) for k in (8, 9)]
    X = np.concatenate(train)
    labels = np.repeat([0, 1], n_train)
    estimate = misassignment_matrix(X, labels)
    templates = mode_templates(X, labels)
    for i in (0, 1):
        measured = float(np.mean(templates.scores(test[i]).argmax(axis=1) != i))
        assert 0.01 < measured < 0.25, measured  # the regime this test is about
        predicted = estimate.P[i, 1 - i]
        assert measured / 2 <= predicted <= 2 * measured, (i, predicted, measured)
