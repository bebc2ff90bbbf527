"""CCI state dynamics, transition network, agglomerates, pinning landscape and figures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage
from scipy.stats import spearmanr
from speckleflow.services.cci.dynamics import (
    Timeline,
    agglomerates,
    classical_mds,
    dwell_times,
    network_summary,
    state_occupancy,
    state_timeline,
    transition_counts,
    transition_network,
    transition_table,
)
from speckleflow.services.cci.figures import (
    dendrogram_figure,
    images_figure,
    network_figure,
    pinning_figure,
    state_timeline_figure,
)
from speckleflow.services.cci.pinning import (
    compare_with_true_sites,
    domain_wall_map,
    pinning_landscape,
    transition_crossings,
    wall_occupancy,
)

# ------------------------------------------------------------------------- timeline


def test_timeline_small_hand_example() -> None:
    #        0  1  2   3   4  5  6   7  8   9  10  11
    state = [-1, 0, 0, -1, 0, 1, 1, -1, -1, 2, 2, -1]
    time = np.arange(12, dtype=float) * 0.5  # pairs every 0.5 s
    tl = state_timeline(state, time)
    np.testing.assert_array_equal(tl.state, [0, 1, 2])
    np.testing.assert_array_equal(tl.start_pair, [1, 5, 9])
    np.testing.assert_array_equal(tl.end_pair, [4, 6, 10])
    np.testing.assert_array_equal(tl.n_pairs, [3, 2, 2])  # the -1 inside state 0 not counted
    np.testing.assert_array_equal(tl.gap_before, [0, 0, 2])
    # 0 → 1 between pairs 4 and 5 (t = 2.0, 2.5); 1 → 2 across the gap: midpoint of 3.0, 4.5
    np.testing.assert_allclose(tl.start_time, [0.5, 2.25, 3.75])
    np.testing.assert_allclose(tl.end_time, [2.25, 3.75, 5.0])
    np.testing.assert_array_equal(tl.censored, [True, False, True])
    cols = tl.as_columns()
    assert set(cols) >= {"state", "start_time", "end_time", "duration", "censored"}
    assert len({len(v) for v in cols.values()}) == 1


def test_timeline_edge_cases_and_errors() -> None:
    empty = state_timeline([-1, -1], [0.0, 1.0])
    assert len(empty) == 0
    assert transition_counts(empty, 3).sum() == 0
    one = state_timeline([2, 2, 2], [0.0, 1.0, 2.0])
    assert len(one) == 1 and one.duration[0] == 2.0
    with pytest.raises(ValueError, match="non-decreasing"):
        state_timeline([0, 1], [1.0, 0.0])
    with pytest.raises(ValueError, match="-2"):
        state_timeline([0, -2], [0.0, 1.0])
    with pytest.raises(ValueError, match="shape"):
        state_timeline([0, 1, 2], [0.0, 1.0])
    with pytest.raises(ValueError, match="n_states=2"):
        transition_counts(state_timeline([0, 1, 2], [0.0, 1.0, 2.0]), 2)


def _markov_run(
    p: np.ndarray, n: int, seed: int, gap_prob: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A Markov label sequence; returns (true labels, observed labels with -1, time)."""
    rng = np.random.default_rng(seed)
    k = p.shape[0]
    s = np.empty(n, dtype=np.int64)
    s[0] = 0
    cum = np.cumsum(p, axis=1)
    u = rng.random(n)
    for i in range(1, n):
        s[i] = min(int(np.searchsorted(cum[s[i - 1]], u[i], side="right")), k - 1)
    obs = s.copy()
    obs[rng.random(n) < gap_prob] = -1
    return s, obs, np.arange(n) * 0.1


def _runs(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force run lengths of a fully assigned label sequence."""
    states, lengths = [int(s[0])], [1]
    for x in s[1:]:
        if x == states[-1]:
            lengths[-1] += 1
        else:
            states.append(int(x))
            lengths.append(1)
    return np.asarray(states), np.asarray(lengths)


def test_markov_sequence_counts_and_dwell() -> None:
    p = np.array([[0.95, 0.04, 0.01], [0.02, 0.90, 0.08], [0.05, 0.05, 0.90]])
    truth, _obs, t = _markov_run(p, 20_000, seed=1, gap_prob=0.0)
    tl = state_timeline(truth, t)
    runs_state, runs_len = _runs(truth)
    np.testing.assert_array_equal(tl.state, runs_state)
    np.testing.assert_array_equal(tl.n_pairs, runs_len)
    # exact counts of label changes
    expected = np.zeros((3, 3), dtype=np.int64)
    np.add.at(expected, (runs_state[:-1], runs_state[1:]), 1)
    counts = transition_counts(tl, 3)
    assert counts.dtype == np.int64
    np.testing.assert_array_equal(counts, expected)
    # the empirical off-diagonal transition matrix follows p (≈ 2 000 transitions)
    rate = counts / np.bincount(truth, minlength=3)[:, None]
    off = ~np.eye(3, dtype=bool)
    np.testing.assert_allclose(rate[off], p[off], rtol=0.25, atol=0.004)
    # interior segments of n pairs last n·dt; the mean dwell is dt / (1 − p_kk)
    dw = dwell_times(tl, 3)
    np.testing.assert_allclose(tl.duration[1:-1], 0.1 * tl.n_pairs[1:-1])
    np.testing.assert_allclose(dw.mean_s, 0.1 / (1 - np.diag(p)), rtol=0.1)
    assert dw.n_censored.sum() == 2 and dw.n.sum() == len(tl) - 2
    assert np.all(dw.median_s <= dw.mean_s)  # geometric dwell distribution
    summary = dw.summary()
    json.dumps(summary)
    assert summary["n"] == [int(v) for v in dw.n]


def test_markov_sequence_with_gaps() -> None:
    p = np.array([[0.9, 0.1], [0.2, 0.8]])
    truth, obs, t = _markov_run(p, 5_000, seed=2, gap_prob=0.15)
    tl = state_timeline(obs, t)
    # Segments are the runs of the assigned labels with the -1 pairs squeezed out.
    assigned = obs[obs >= 0]
    runs_state, runs_len = _runs(assigned)
    np.testing.assert_array_equal(tl.state, runs_state)
    np.testing.assert_array_equal(tl.n_pairs, runs_len)
    assert np.all(tl.state[1:] != tl.state[:-1])
    # segments tile the observed window without holes
    np.testing.assert_allclose(tl.start_time[1:], tl.end_time[:-1])
    assert tl.duration.sum() == pytest.approx(np.ptp(t[np.flatnonzero(obs >= 0)[[0, -1]]]))
    counts = transition_counts(tl, 2)
    assert counts[0, 1] + counts[1, 0] == len(tl) - 1
    # transitions hidden in gaps can be dropped
    assert np.any(tl.gap_before > 0)
    strict = transition_counts(tl, 2, max_gap_pairs=0)
    assert strict.sum() == np.count_nonzero(tl.gap_before[1:] == 0)
    # a gap transition sits at the midpoint of the gap
    i = int(np.flatnonzero(tl.gap_before > 0)[0])
    assert tl.start_time[i] == pytest.approx(0.5 * (t[tl.end_pair[i - 1]] + t[tl.start_pair[i]]))
    # gaps bias nothing in the long run: counts close to the gap-free truth
    true_counts = transition_counts(state_timeline(truth, t), 2)
    assert abs(counts.sum() - true_counts.sum()) < 0.1 * true_counts.sum()


def test_transition_table_and_occupancy() -> None:
    counts = np.array([[0, 3, 0], [1, 0, 2], [0, 0, 0]])
    table = transition_table(counts)
    np.testing.assert_array_equal(table["from_state"], [0, 1, 1])
    np.testing.assert_array_equal(table["to_state"], [1, 0, 2])
    np.testing.assert_array_equal(table["count"], [3, 1, 2])
    assert all(v.dtype == np.int64 for v in table.values())
    np.testing.assert_array_equal(state_occupancy([0, -1, 2, 2], 4), [1, 0, 2, 0])
    with pytest.raises(ValueError, match="5"):
        state_occupancy([5], 4)


# -------------------------------------------------------------------------- network


def _embeddable_distance(k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    pts = rng.uniform(0, 1, size=(k, 2))
    d = np.hypot(*(pts[:, None] - pts[None]).transpose(2, 0, 1))
    return pts, d


@pytest.mark.parametrize("layout", ["mds", "kamada_kawai"])
def test_network_layout_follows_distances(layout: str) -> None:
    k = 12
    _, d = _embeddable_distance(k, seed=3)
    rng = np.random.default_rng(0)
    counts = rng.integers(0, 5, size=(k, k))
    np.fill_diagonal(counts, 0)
    occ = rng.integers(1, 100, size=k)
    g = transition_network(counts, d, occ, layout=layout)
    assert sorted(g.nodes) == list(range(k))
    assert g.number_of_edges() == np.count_nonzero(counts)
    for u, v, a in g.edges(data=True):
        assert a["count"] == counts[u, v]
    xy = np.array([g.nodes[i]["pos"] for i in range(k)])
    e = np.hypot(*(xy[:, None] - xy[None]).transpose(2, 0, 1))
    iu = np.triu_indices(k, 1)
    rho = spearmanr(e[iu], d[iu]).statistic
    assert rho > 0.9
    assert g.graph["layout_stress"] < 0.05
    assert g.nodes[3]["occupancy"] == occ[3]


def test_network_layout_on_pearson_distances() -> None:
    """Real Pearson distances of noisy vectors are not 2-D: the ranks still hold."""
    rng = np.random.default_rng(4)
    centers = rng.standard_normal((3, 500))
    x = np.concatenate([c + 0.7 * rng.standard_normal((5, 500)) for c in centers])
    d = 1.0 - np.corrcoef(x)
    np.fill_diagonal(d, 0.0)
    g = transition_network(np.zeros((15, 15), int), d, np.ones(15, int))
    xy = np.array([g.nodes[i]["pos"] for i in range(15)])
    e = np.hypot(*(xy[:, None] - xy[None]).transpose(2, 0, 1))
    iu = np.triu_indices(15, 1)
    assert spearmanr(e[iu], d[iu]).statistic > 0.8


def test_classical_mds_exact_for_planar_points() -> None:
    _pts, d = _embeddable_distance(8, seed=5)
    xy = classical_mds(d)
    e = np.hypot(*(xy[:, None] - xy[None]).transpose(2, 0, 1))
    np.testing.assert_allclose(e, d, atol=1e-9)


def test_network_errors() -> None:
    _, d = _embeddable_distance(4, seed=0)
    with pytest.raises(ValueError, match="shape"):
        transition_network(np.zeros((3, 3), int), d, np.ones(3))
    with pytest.raises(ValueError, match="symmetric"):
        transition_network(np.zeros((4, 4), int), d + np.triu(np.ones((4, 4))), np.ones(4))
    with pytest.raises(ValueError, match="layout"):
        transition_network(np.zeros((4, 4), int), d, np.ones(4), layout="spring")
    with pytest.raises(ValueError, match="alpha"):
        agglomerates(np.zeros((4, 4), int), d, alpha=1.5)


def _planted_communities(seed: int) -> tuple[np.ndarray, np.ndarray, list[set[int]]]:
    """Two groups of 6 states: similar and frequently connected inside, not across."""
    rng = np.random.default_rng(seed)
    k = 12
    group = np.repeat([0, 1], 6)
    same = group[:, None] == group[None, :]
    counts = np.where(same, rng.poisson(20, (k, k)), rng.poisson(1, (k, k)))
    np.fill_diagonal(counts, 0)
    d = np.where(same, rng.uniform(0.1, 0.4, (k, k)), rng.uniform(0.8, 1.2, (k, k)))
    d = np.triu(d, 1)
    d = d + d.T
    return counts, d, [set(range(6)), set(range(6, 12))]


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_agglomerates_recover_planted_communities(alpha: float) -> None:
    counts, d, truth = _planted_communities(seed=7)
    found = agglomerates(counts, d, alpha=alpha, seed=0)
    assert found == truth
    assert agglomerates(counts, d, alpha=alpha, seed=0) == found  # deterministic


def test_agglomerates_combine_similarity_and_transitions() -> None:
    """Transitions say {0..5} vs {6..11}, similarity says {0..2, 6..8} vs the rest."""
    counts, _, truth = _planted_communities(seed=8)
    k = 12
    sim_group = np.array([0, 0, 0, 1, 1, 1, 0, 0, 0, 1, 1, 1])
    d = np.where(sim_group[:, None] == sim_group[None, :], 0.1, 1.0)
    np.fill_diagonal(d, 0.0)
    assert agglomerates(counts, d, alpha=1.0) == truth
    by_similarity = agglomerates(counts, d, alpha=0.0)
    assert by_similarity == [{0, 1, 2, 6, 7, 8}, {3, 4, 5, 9, 10, 11}]
    assert sum(len(a) for a in agglomerates(counts, d, alpha=0.5)) == k


def test_network_summary_is_json() -> None:
    counts, d, _ = _planted_communities(seed=9)
    tl = state_timeline(np.repeat(np.arange(12), 3), np.arange(36.0))
    dw = dwell_times(tl, 12)
    g = transition_network(counts, d, np.full(12, 3), dwell=dw)
    agg = agglomerates(counts, d)
    summary = network_summary(g, agg)
    text = json.dumps(summary)  # NaN dwell of censored states → null
    assert "NaN" not in text
    assert summary["n_states"] == 12 and len(summary["nodes"]) == 12
    assert sum(e["count"] for e in summary["edges"]) == counts.sum()
    assert {n["agglomerate"] for n in summary["nodes"]} == {0, 1}
    assert summary["nodes"][5]["mean_dwell_s"] == pytest.approx(3.0)
    with pytest.raises(ValueError, match="state 3"):
        network_summary(g, [{0, 3}, {3}])


# -------------------------------------------------------------------------- pinning

N = 128
YY, XX = np.mgrid[:N, :N]
APERTURE = np.hypot(YY - (N - 1) / 2, XX - (N - 1) / 2) <= N / 2


def test_domain_wall_map_of_a_disc() -> None:
    r0 = 20.0
    mz = np.tanh((r0 - np.hypot(YY - 63.5, XX - 63.5)) / 1.5)
    mz[~APERTURE] = np.nan
    walls = domain_wall_map(-3.0 * mz, APERTURE)  # sign and scale do not matter
    assert walls.dtype == bool
    np.testing.assert_array_equal(walls, domain_wall_map(mz, APERTURE))
    r = np.hypot(YY - 63.5, XX - 63.5)[walls]
    assert r.size > 100 and np.all(np.abs(r - r0) < 1.0)  # a thin ring at the zero crossing
    # the aperture edge is no wall, even where mz jumps to NaN/0 there
    assert not domain_wall_map(np.ones((N, N)), APERTURE).any()
    with pytest.raises(TypeError, match="bool"):
        domain_wall_map(mz, APERTURE.astype(int))


@pytest.fixture(scope="module")
def maze_images():
    from speckleflow.devices.maze import generate_maze_states

    out = []
    for seed in (0, 1, 2):
        m = generate_maze_states(seed=seed)
        imgs = np.stack([ndimage.gaussian_filter(mz.astype(float), 1.5) for mz in m.mz])
        imgs[:, ~APERTURE] = np.nan  # as an FTH reconstruction: nothing outside the aperture
        out.append((m, imgs))
    return out


def test_pinning_sites_recovered_on_simulated_maze(maze_images) -> None:
    """Attractive sites find the maze model's pinning discs far above chance.

    Measured (defaults, σ = 1.5 px blur, tolerance 3 px): recall of the pinning discs that
    lie on a wall in some state 0.20 / 0.37 / 0.47 for seeds 0 / 1 / 2 (pooled 0.34;
    seeds 0–7: 0.20–0.47, mean 0.33), where random points would be hit ≈ 0.10 of the
    time (3.4× chance). Precision against the discs is only ≈ 0.12: the model's random
    anisotropy creates attractive places as well.
    """
    matched = total = 0
    chance = []
    for m, imgs in maze_images:
        occ = wall_occupancy(imgs, np.ones(len(imgs)), APERTURE)
        assert np.all(np.isnan(occ[~APERTURE]))
        inside = np.isfinite(occ)
        assert 0.0 <= np.nanmin(occ) and np.nanmax(occ) <= 1.0
        land = pinning_landscape(occ, APERTURE)
        assert 20 <= land.n_attractive <= 80
        assert np.all(np.diff(land.attractive_occupancy) <= 0)
        # the true sites inside the analysed region that lie on a wall in some state
        on_wall = np.zeros((N, N), dtype=bool)
        for img in imgs:
            on_wall |= ndimage.binary_dilation(domain_wall_map(img, APERTURE), iterations=2)
        rc = np.clip(np.round(m.pinning_sites).astype(int), 0, N - 1)
        keep = inside[rc[:, 0], rc[:, 1]] & on_wall[rc[:, 0], rc[:, 1]]
        sites = m.pinning_sites[keep]
        assert len(sites) >= 12
        res = compare_with_true_sites(land.attractive_xy, sites, tol_px=3.0)
        assert all(dist <= 3.0 for *_, dist in res["matches"])
        matched += res["n_matched"]
        total += res["n_true"]
        # chance level: the fraction of the region within 3 px of a detected site
        near = np.zeros((N, N), dtype=bool)
        rc_found = land.attractive_xy.astype(int)
        near[rc_found[:, 0], rc_found[:, 1]] = True
        near = ndimage.distance_transform_edt(~near) <= 3.0
        chance.append(np.count_nonzero(near & inside) / np.count_nonzero(inside))
    recall = matched / total
    assert recall >= 0.25, recall  # measured 0.34
    assert recall >= 2.5 * float(np.mean(chance)), (recall, chance)  # measured ≈ 3.5×


def test_pinning_landscape_repulsive_and_crossings() -> None:
    """A hand-made landscape: two stripe walls that jump over a never-walled band."""
    h = w = 64
    ap = np.ones((h, w), dtype=bool)
    x = np.arange(w)[None, :].repeat(h, 0).astype(float)
    # mode 0: wall at x = 20; mode 1: wall at x = 44 (domain between 20 and 44 flips)
    m0 = np.tanh((x - 20) / 2.0)
    m1 = np.tanh((x - 44) / 2.0)
    m2 = m0.copy()  # mode 2 = mode 0: a transition 0 → 2 sweeps nothing
    imgs = np.stack([m0, m1, m2])
    occ = wall_occupancy(imgs, [2, 1, 1], ap, wall_radius_px=1.0)
    assert np.nanmax(occ[:, 19:22]) == pytest.approx(0.75)  # modes 0 and 2: 3/4 of the time
    assert np.nanmax(occ[:, 43:46]) == pytest.approx(0.25)
    land = pinning_landscape(
        occ,
        ap,
        min_repulsive_area_px=50,
        mode_images=imgs,
        transitions=np.array([[0, 1], [1, 0], [0, 2]]),
    )
    # repulsive: the band between the walls (x ≈ 23..41) and the margins beyond them
    mask = land.repulsive_mask
    assert mask[32, 32] and not mask[32, 20] and not mask[32, 44]
    band = land.repulsive_labels[32, 32]
    cr = land.crossings
    assert cr is not None
    np.testing.assert_array_equal(cr["crosses_repulsive"], [True, True, False])
    assert band in cr["crossed_regions"][0]
    assert cr["swept_px"][2] == 0 and cr["swept_px"][0] > 20 * (h - 4)
    # direct call, and the error on a count matrix
    direct = transition_crossings(imgs, np.array([[1, 0]]), land.repulsive_labels, ap)
    assert direct["n_crossed"][0] == cr["n_crossed"][1]
    with pytest.raises(ValueError, match=r"\(n, 2\)"):
        transition_crossings(imgs, np.ones((3, 3), int), land.repulsive_labels, ap)
    with pytest.raises(ValueError, match="both"):
        pinning_landscape(occ, ap, mode_images=imgs)


def test_compare_with_true_sites_matching() -> None:
    found = np.array([[10.0, 10.0], [50.0, 50.0], [11.0, 10.0], [90.0, 0.0]])
    true = np.array([[10.5, 10.0], [52.0, 50.0], [30.0, 30.0]])
    res = compare_with_true_sites(found, true, tol_px=2.5)
    assert res["n_matched"] == 2  # one-to-one: the two finds near (10, 10) match once
    assert res["precision"] == pytest.approx(0.5) and res["recall"] == pytest.approx(2 / 3)
    json.dumps(res)
    none = compare_with_true_sites(np.zeros((0, 2)), true, tol_px=1.0)
    assert none["recall"] == 0.0 and none["mean_distance_px"] is None
    with pytest.raises(ValueError, match="tol_px"):
        compare_with_true_sites(found, true, tol_px=0)


# -------------------------------------------------------------------------- figures


def _check_png(rgba: np.ndarray, path: Path) -> None:
    import matplotlib.image as mpimg

    assert rgba.dtype == np.uint8 and rgba.ndim == 3 and rgba.shape[2] == 4
    assert 100 <= rgba.shape[0] <= 600 and 100 <= rgba.shape[1] <= 900
    n_colors = np.unique(np.ascontiguousarray(rgba).view(np.uint32)).size  # one uint32 per RGBA
    assert n_colors > 10, n_colors
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    back = mpimg.imread(path)
    assert back.shape[:2] == rgba.shape[:2]


def test_figures_render_and_write_png(tmp_path: Path, maze_images) -> None:
    from scipy.cluster.hierarchy import linkage

    rng = np.random.default_rng(0)
    p = np.array([[0.95, 0.05, 0.0], [0.03, 0.94, 0.03], [0.0, 0.1, 0.9]])
    _, obs, t = _markov_run(p, 600, seed=3, gap_prob=0.1)
    out = tmp_path / "timeline.png"
    _check_png(state_timeline_figure(obs, t, path=out), out)

    x = rng.standard_normal((300, 20)) + np.repeat(rng.standard_normal((6, 20)) * 3, 50, axis=0)
    z = linkage(x, "average", metric="correlation")
    out = tmp_path / "dendrogram.png"
    _check_png(dendrogram_figure(z, leaf_modes=np.repeat(np.arange(6), 50), path=out), out)
    small = linkage(x[:20], "average", metric="correlation")
    out = tmp_path / "dendrogram_small.png"
    labels = [f"p{i}" for i in range(20)]
    _check_png(dendrogram_figure(small, leaf_labels=labels, path=out), out)

    counts, d, _ = _planted_communities(seed=1)
    g = transition_network(counts, d, rng.integers(10, 200, 12))
    out = tmp_path / "network.png"
    _check_png(network_figure(g, agglomerates(counts, d), path=out), out)

    m, imgs = maze_images[0]
    out = tmp_path / "images.png"
    _check_png(images_figure(imgs[:6], [f"state {i}" for i in range(6)], path=out), out)

    occ = wall_occupancy(imgs, None, APERTURE)
    land = pinning_landscape(occ, APERTURE)
    out = tmp_path / "pinning.png"
    rgba = pinning_figure(occ, land.attractive_xy, land.repulsive_labels, m.pinning_sites, path=out)
    _check_png(rgba, out)
    # without a path nothing is written, and the array is still returned
    assert state_timeline_figure(obs, t).shape[2] == 4


def test_figures_do_not_touch_pyplot_state() -> None:
    import inspect
    import sys

    from speckleflow.services.cci import figures

    source = inspect.getsource(figures)
    assert "import matplotlib.pyplot" not in source and "import pyplot" not in source
    before = set(sys.modules)
    state_timeline_figure(np.array([0, 1, -1, 1]), np.arange(4.0))
    loaded = set(sys.modules) - before
    assert "matplotlib.pyplot" not in loaded


def test_timeline_dataclass_is_frozen() -> None:
    tl = state_timeline([0, 1], [0.0, 1.0])
    assert isinstance(tl, Timeline)
    with pytest.raises(AttributeError):
        tl.state = np.zeros(2)  # type: ignore[misc]
