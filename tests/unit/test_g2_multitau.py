"""Incremental multi-tau g2: agreement with references, batch-split invariance, errors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from speckleflow.services.g2 import MultiTauCorrelator, multi_tau_g2, multi_tau_lags


def brute_force_g2(frames: np.ndarray, n_buffers: int, n_levels: int | None = None):
    """Direct multi-tau, written independently: bin the whole stack level by level, then
    average every pair (k − i, k) of each level with symmetric normalisation."""
    x = np.asarray(frames, dtype=np.float64).reshape(frames.shape[0], -1)
    lags, rows = [], []
    level = 0
    while x.shape[0] >= 1 and (n_levels is None or level < n_levels):
        n = x.shape[0]
        for i in range(0 if level == 0 else n_buffers // 2, n_buffers):
            m = n - i
            if m < 1:
                break
            past, future = x[:m], x[i:]
            with np.errstate(divide="ignore", invalid="ignore"):
                rows.append(m * (past * future).sum(0) / (past.sum(0) * future.sum(0)))
            lags.append(i * 2**level)
        pairs = n // 2
        x = (x[0 : 2 * pairs : 2] + x[1 : 2 * pairs : 2]) / 2.0  # averages, as scikit-beam
        level += 1
    return np.array(lags), np.array(rows)


def counts(rng, n_frames: int, shape, dose: float = 2.0) -> np.ndarray:
    mean = rng.exponential(dose, shape)
    return rng.poisson(mean, (n_frames, *np.atleast_1d(shape))).astype(np.uint16)


@pytest.mark.parametrize("n_frames", [1, 2, 15, 16, 17, 33, 100, 1000, 2500])
def test_matches_brute_force_exactly_for_counts(n_frames):
    rng = np.random.default_rng(n_frames)
    frames = counts(rng, n_frames, 70)
    corr = MultiTauCorrelator(70, min_block=1)
    for part in np.array_split(frames, max(1, n_frames // 37)):
        corr.process(part)
    lags, g2 = corr.g2()
    ref_lags, ref = brute_force_g2(frames, 16)
    np.testing.assert_array_equal(lags, ref_lags)
    np.testing.assert_array_equal(lags, multi_tau_lags(n_frames)[0])
    np.testing.assert_allclose(g2, ref, rtol=0, atol=1e-12, equal_nan=True)


@pytest.mark.parametrize(("n_buffers", "n_levels"), [(2, None), (4, 3), (8, None), (16, 4), (32, 3)])
def test_matches_brute_force_for_float_intensities(n_buffers, n_levels):
    rng = np.random.default_rng(n_buffers)
    frames = rng.gamma(1.5, 1.0, (777, 23))
    lags, g2 = multi_tau_g2(frames, n_buffers=n_buffers, n_levels=n_levels)
    ref_lags, ref = brute_force_g2(frames, n_buffers, n_levels)
    np.testing.assert_array_equal(lags, ref_lags)
    np.testing.assert_allclose(g2, ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("width", [1, 8, 13, 264])
@pytest.mark.parametrize(("lo", "hi"), [(0, 16), (8, 16), (4, 8), (3, 6), (0, 13)])
def test_vector_lag_kernel_sums_equal_integer_products(width, lo, hi):
    # Lag groups of 8, 4 and 1, full 8-lane blocks and the scalar tail: every lag sum is
    # the exact integer Σ R[t]·R[t − i], on a padded tile as the streaming kernel uses.
    from speckleflow.services.g2._kernels import _PAD, _lag_rows32

    rng = np.random.default_rng(width * 100 + hi)
    h, n = 15, 37
    rows = rng.integers(0, 300, (h + n, width + _PAD)).astype(np.float32)
    got = np.zeros((hi - lo, width + _PAD), np.float32)
    _lag_rows32(rows, h, n, lo, hi, got, width)
    x = rows[:, :width].astype(np.int64)
    want = np.array([(x[h : h + n] * x[h - i : h + n - i]).sum(0) for i in range(lo, hi)])
    np.testing.assert_array_equal(got[:, :width], want)
    assert not got[:, width:].any()  # the padding is never written


@pytest.mark.parametrize("n_buffers", [6, 8, 12, 16])
def test_uint16_stream_matches_brute_force_for_wide_tiles(n_buffers):
    # 300 pixels: one full 256-pixel tile and a 44-pixel one (5 lane blocks + 4 tail pixels).
    rng = np.random.default_rng(n_buffers)
    frames = counts(rng, 1500, 300, dose=5.0)
    corr = MultiTauCorrelator(300, n_buffers=n_buffers)
    for part in np.array_split(frames, 3):
        corr.process(part)
    lags, g2 = corr.g2()
    ref_lags, ref = brute_force_g2(frames, n_buffers)
    np.testing.assert_array_equal(lags, ref_lags)
    np.testing.assert_allclose(g2, ref, rtol=0, atol=1e-12)


def test_large_counts_take_the_float64_path_and_stay_exact():
    rng = np.random.default_rng(1)
    frames = rng.poisson(3000.0, (1500, 40)).astype(np.uint16)  # block sums > 2^24
    corr = MultiTauCorrelator(40)
    corr.process(frames)
    _lags, g2 = corr.g2()
    np.testing.assert_allclose(g2, brute_force_g2(frames, 16)[1], rtol=0, atol=1e-12)
    assert corr.is_exact


def test_raw_sums_exact_at_the_uint16_maximum(monkeypatch):
    # The uint16 kernel sums each chunk's rows in float32 (exact while rows·65535 < 2^24)
    # and derives the sums of levels >= 1 from the level below; a chunk asked larger
    # than the bound is clamped to it, so every sum stays the exact integer.
    from speckleflow.services.g2 import multitau

    monkeypatch.setattr(multitau, "CHUNK_ROWS", 1024)
    frames = np.full((1023, 5), 65535, dtype=np.uint16)
    frames[::7, 1] = 65534  # odd and even levels, unpaired last values
    frames[:, 2] = 0
    corr = MultiTauCorrelator(5)
    corr.process(frames)
    sums = corr.sums()
    x = frames.astype(np.int64)
    for row, (lag, level) in enumerate(zip(sums.lags, sums.level, strict=True)):
        series = x
        for _ in range(level):
            k = series.shape[0] // 2 * 2
            series = series[0:k:2] + series[1:k:2]
        i = lag >> level
        m = series.shape[0] - i
        np.testing.assert_array_equal(sums.past[row], series[:m].sum(0))
        np.testing.assert_array_equal(sums.future[row], series[i:].sum(0))
        np.testing.assert_array_equal(sums.products[row], (series[:m] * series[i:]).sum(0))


def test_agrees_with_scikit_beam_within_1e_9():
    correlation = pytest.importorskip("skbeam.core.correlation")
    rng = np.random.default_rng(2)
    ny, nx = 6, 9
    frames = counts(rng, 700, (ny, nx), dose=3.0)
    labels = np.arange(1, ny * nx + 1).reshape(ny, nx)  # every pixel its own ROI
    for n_buffers, n_levels in [(16, 6), (8, 8)]:
        with np.errstate(divide="ignore", invalid="ignore"):
            g2_sk, lags_sk = correlation.multi_tau_auto_corr(n_levels, n_buffers, labels, frames)
        corr = MultiTauCorrelator((ny, nx), n_buffers=n_buffers, n_levels=n_levels)
        corr.process(frames)
        lags, g2 = corr.g2()
        k = len(lags_sk)
        assert k > 30
        np.testing.assert_array_equal(lags[:k], lags_sk)
        assert np.abs(g2[:k].reshape(k, -1) - g2_sk).max() < 1e-9
        # the same for ring-like bins (scikit-beam averages over the ROI first)
        bins = (np.arange(ny * nx) % 3 + 1).reshape(ny, nx)
        bins[0, 0] = 0
        with np.errstate(divide="ignore", invalid="ignore"):
            g2_skb, lags_skb = correlation.multi_tau_auto_corr(n_levels, n_buffers, bins, frames)
        _lags_b, g2_b, labels_b = corr.binned_g2(bins)
        kb = len(lags_skb)
        np.testing.assert_array_equal(labels_b, [1, 2, 3])
        assert np.abs(g2_b[:kb] - g2_skb).max() < 1e-9


@pytest.mark.parametrize("dtype", [np.uint16, np.float64])
def test_any_batch_split_gives_identical_results(dtype):
    rng = np.random.default_rng(3)
    frames = counts(rng, 1300, 300).astype(dtype)
    whole = MultiTauCorrelator(300)
    whole.process(frames)
    lags, g2 = whole.g2()
    for seed in range(3):
        cuts = np.sort(np.random.default_rng(seed).choice(np.arange(1, 1300), 40, replace=False))
        parts = MultiTauCorrelator(300, min_block=1 + 50 * seed)
        for part in np.split(frames, cuts):
            parts.process(part)
        lags_p, g2_p = parts.g2()
        np.testing.assert_array_equal(lags_p, lags)
        if dtype == np.uint16:
            np.testing.assert_array_equal(g2_p, g2)  # exact integer sums: bit for bit
        else:
            np.testing.assert_allclose(g2_p, g2, rtol=1e-13)


@settings(max_examples=25, deadline=None)
@given(
    n_frames=st.integers(1, 300),
    n_buffers=st.sampled_from([2, 4, 6, 8, 16]),
    n_levels=st.one_of(st.none(), st.integers(1, 6)),
    seed=st.integers(0, 2**16),
)
def test_property_streamed_equals_brute_force(n_frames, n_buffers, n_levels, seed):
    rng = np.random.default_rng(seed)
    frames = rng.poisson(1.5, (n_frames, 5)).astype(np.uint16)
    corr = MultiTauCorrelator(5, n_buffers=n_buffers, n_levels=n_levels, min_block=1)
    cuts = np.sort(rng.choice(np.arange(1, n_frames + 1), min(n_frames, 7), replace=False))
    for part in np.split(frames, cuts):
        corr.process(part)
    lags, g2 = corr.g2()
    ref_lags, ref = brute_force_g2(frames, n_buffers, n_levels)
    np.testing.assert_array_equal(lags, ref_lags)
    np.testing.assert_allclose(g2, ref.reshape(g2.shape), rtol=0, atol=1e-12, equal_nan=True)


def test_g2_mid_stream_equals_g2_of_the_prefix():
    rng = np.random.default_rng(4)
    frames = counts(rng, 600, 50)
    corr = MultiTauCorrelator(50)  # min_block 128: frames are pending between calls
    corr.process(frames[:100])
    assert corr.n_frames == 100
    _lags, g2 = corr.g2()
    np.testing.assert_array_equal(g2, multi_tau_g2(frames[:100])[1])
    corr.process(frames[100:])
    np.testing.assert_array_equal(corr.g2()[1], multi_tau_g2(frames)[1])


def test_merge_of_disjoint_pixel_sets_equals_one_correlator():
    rng = np.random.default_rng(5)
    frames = counts(rng, 900, 120)
    a, b = MultiTauCorrelator(70), MultiTauCorrelator(50)
    for part in np.array_split(frames, 5):
        a.process(part[:, :70])
        b.process(part[:, 70:])
    merged = a.merge(b)
    _lags, g2 = merged.g2()
    np.testing.assert_array_equal(g2, multi_tau_g2(frames)[1])
    merged.process(frames[:10])  # the merged correlator goes on
    assert merged.n_frames == 910


def test_merge_of_correlators_fed_in_different_batches():
    # the state is allocated with spare levels when it grows, so two correlators of the
    # same stream can hold different capacities (here 9 and 10 levels); merge pads them
    rng = np.random.default_rng(6)
    frames = counts(rng, 300, 30)
    a = MultiTauCorrelator(10, min_block=1)
    b = MultiTauCorrelator(20, min_block=1)
    a.process(frames[:16, :10])
    a.process(frames[16:32, :10])
    b.process(frames[:32, 10:])
    merged = a.merge(b)
    merged.process(frames[32:])
    np.testing.assert_array_equal(merged.g2()[1], multi_tau_g2(frames)[1])


def test_merge_refuses_different_frame_counts():
    a, b = MultiTauCorrelator(4), MultiTauCorrelator(4)
    a.process(np.ones((10, 4), np.uint16))
    b.process(np.ones((11, 4), np.uint16))
    with pytest.raises(ValueError, match="n_frames: 10 vs 11"):
        a.merge(b)
    with pytest.raises(TypeError, match="MultiTauCorrelator"):
        a.merge("b")  # type: ignore[arg-type]


def test_pixel_shape_for_scan_positions_and_k_pixels():
    # 5D-STEM ECM: frame stream = scan repeats, pixels = (ny, nx, n_k)
    rng = np.random.default_rng(6)
    data = counts(rng, 200, (3, 4, 5))  # (repeat, y, x, k)
    corr = MultiTauCorrelator((3, 4, 5))
    for repeat in data:  # one whole repeat per call
        corr.process(repeat)
    lags, g2 = corr.g2()
    assert g2.shape == (lags.size, 3, 4, 5)
    np.testing.assert_array_equal(g2.reshape(lags.size, -1), multi_tau_g2(data.reshape(200, -1))[1])


def test_binned_mean_of_pixels():
    rng = np.random.default_rng(7)
    frames = counts(rng, 400, 12, dose=5.0)
    corr = MultiTauCorrelator(12)
    corr.process(frames)
    _lags, g2 = corr.g2()
    labels = np.repeat([0, 1, 2], 4)
    _lags_b, g2_b, bins = corr.binned_g2(labels, method="mean")
    np.testing.assert_allclose(g2_b, np.stack([g2[:, 4:8].mean(1), g2[:, 8:].mean(1)], 1))
    np.testing.assert_array_equal(bins, [1, 2])


def test_integer_dtypes_and_floats_agree():
    rng = np.random.default_rng(8)
    frames = counts(rng, 300, 10)
    ref = multi_tau_g2(frames)[1]
    for dtype in (np.uint8, np.int32, np.int64, np.uint32, np.float32):
        np.testing.assert_allclose(multi_tau_g2(frames.astype(dtype))[1], ref, rtol=1e-12)
    np.testing.assert_array_equal(multi_tau_g2(frames > 1)[1], multi_tau_g2((frames > 1) * 1)[1])


def test_pixels_without_counts_give_nan():
    frames = np.zeros((50, 3), np.uint16)
    frames[:, 1] = 2
    _lags, g2 = multi_tau_g2(frames)
    assert np.isnan(g2[:, 0]).all()
    np.testing.assert_array_equal(g2[:, 1], 1.0)


def test_exactness_bound_reported():
    corr = MultiTauCorrelator(2)
    corr.process(np.full((10, 2), 3, np.uint16))
    assert corr.is_exact
    corr.process(np.full((10, 2), 0.5))
    assert not corr.is_exact  # float frames: float64 accumulation, not exact
    assert corr.nbytes > 0


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"n_buffers": 7}, ValueError, "even number >= 2, got 7"),
        ({"n_buffers": 0}, ValueError, "got 0"),
        ({"n_buffers": 2.0}, TypeError, "got 2.0"),
        ({"n_levels": 0}, ValueError, "got 0"),
        ({"min_block": 0}, ValueError, "got 0"),
    ],
)
def test_bad_parameters_raise_naming_the_value(kwargs, error, match):
    with pytest.raises(error, match=match):
        MultiTauCorrelator(4, **kwargs)


def test_bad_frames_raise_naming_the_value():
    corr = MultiTauCorrelator((2, 3))
    with pytest.raises(ValueError, match=r"got \(4, 5\)"):
        corr.process(np.zeros((4, 5)))
    bad = np.ones((3, 6))
    bad[2, 4] = np.nan
    with pytest.raises(ValueError, match="non-finite.*frame 2, pixel 4"):
        corr.process(bad)
    neg = np.ones((3, 6), np.int32)
    neg[1, 0] = -7
    with pytest.raises(ValueError, match="-7 at frame 1, pixel 0"):
        corr.process(neg)
    with pytest.raises(TypeError, match="complex"):
        corr.process(np.ones((2, 6), complex))
    with pytest.raises(ValueError, match="labels must have one entry per pixel"):
        corr.binned_g2(np.ones(5, int))
    with pytest.raises(ValueError, match="'median'"):
        corr.binned_g2(np.ones(6, int), method="median")  # type: ignore[arg-type]
    assert corr.n_frames == 0  # nothing bad got in


def test_lag_scheme():
    lags, level, pairs = multi_tau_lags(100, n_buffers=8)
    np.testing.assert_array_equal(lags[:8], np.arange(8))
    np.testing.assert_array_equal(lags[8:12], [8, 10, 12, 14])
    np.testing.assert_array_equal(level[8:12], 1)
    np.testing.assert_array_equal(pairs[:3], [100, 99, 98])
    np.testing.assert_array_equal(pairs[8:12], [46, 45, 44, 43])  # 50 level-1 frames
    with pytest.raises(ValueError, match="n_frames must be an int >= 0, got -1"):
        multi_tau_lags(-1)
