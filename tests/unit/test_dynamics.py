"""Continuous-time Markov hopping between maze states."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from speckleflow.devices.dynamics import BOLTZMANN_EV_PER_K, MarkovHopping, hopping_rates

FAMILIES = np.repeat(np.arange(8), 2).astype(np.int16)  # 16 states as in the magnum file


def _visits(segments: list[tuple[int, float]]) -> tuple[np.ndarray, np.ndarray]:
    """Merge segments into visits: (state, dwell time) per uninterrupted stay."""
    states: list[int] = []
    dwell: list[float] = []
    for s, t in segments:
        if states and states[-1] == s:
            dwell[-1] += t
        else:
            states.append(s)
            dwell.append(t)
    return np.asarray(states), np.asarray(dwell)


def test_two_state_stationary_distribution() -> None:
    chain = MarkovHopping(np.array([[0.0, 2.0], [0.5, 0.0]]), initial_state=0, seed=0)
    np.testing.assert_allclose(chain.stationary_distribution(), [0.2, 0.8], rtol=1e-12)
    np.testing.assert_allclose(chain.mean_dwell_times(), [0.5, 2.0])


def test_advance_covers_exactly_dt() -> None:
    chain = MarkovHopping(np.array([[0.0, 3.0], [1.0, 0.0]]), seed=1)
    total = 0.0
    for dt in [0.1, 1.0, 7.5, 0.0, 20.0]:
        segs = chain.advance(dt)
        assert len(segs) >= 1
        assert sum(t for _, t in segs) == pytest.approx(dt, abs=1e-12)
        assert all(t >= 0 for _, t in segs)
        assert all(a[0] != b[0] for a, b in itertools.pairwise(segs))
        assert segs[-1][0] == chain.state
        total += dt
    assert chain.time == pytest.approx(total, abs=1e-12)


def test_trajectory_is_reproducible_from_seed() -> None:
    rates = hopping_rates(FAMILIES, seed=2)
    a = MarkovHopping(rates, seed=5).advance(500.0)
    b = MarkovHopping(rates, seed=5).advance(500.0)
    c = MarkovHopping(rates, seed=6).advance(500.0)
    assert a == b and a != c


def test_generator_seed_is_used_as_given() -> None:
    rng = np.random.default_rng(0)
    chain = MarkovHopping(np.ones((3, 3)), seed=rng)
    chain.advance(10.0)
    assert rng.bit_generator.state != np.random.default_rng(0).bit_generator.state


@pytest.mark.parametrize(
    ("rates", "match"),
    [
        (np.ones((2, 3)), r"shape \(2, 3\)"),
        (np.array([[0.0, -1.0], [1.0, 0.0]]), r"rates\[0, 1\] = -1.0"),
        (np.array([[0.0, np.nan], [1.0, 0.0]]), "1 non-finite"),
    ],
)
def test_rejects_bad_rates(rates: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        MarkovHopping(rates)


def test_rejects_bad_arguments() -> None:
    chain = MarkovHopping(np.ones((2, 2)))
    with pytest.raises(ValueError, match="-1.0"):
        chain.advance(-1.0)
    with pytest.raises(ValueError, match="nan"):
        chain.advance(float("nan"))
    with pytest.raises(ValueError, match="initial_state"):
        MarkovHopping(np.ones((2, 2)), initial_state=2)
    with pytest.raises(TypeError, match="seed"):
        MarkovHopping(np.ones((2, 2)), seed="x")  # type: ignore[arg-type]


def test_reducible_chain_has_no_unique_stationary_distribution() -> None:
    rates = np.zeros((4, 4))
    rates[0, 1] = rates[1, 0] = rates[2, 3] = rates[3, 2] = 1.0
    with pytest.raises(RuntimeError, match="reducible"):
        MarkovHopping(rates).stationary_distribution()


def test_absorbing_state_stays() -> None:
    chain = MarkovHopping(np.zeros((2, 2)), initial_state=1)
    assert chain.advance(1e6) == [(1, 1e6)]


def test_rates_obey_detailed_balance_and_boltzmann() -> None:
    rates = hopping_rates(FAMILIES, seed=0)
    assert rates.shape == (16, 16) and np.all(np.diag(rates) == 0)
    pi = MarkovHopping(rates).stationary_distribution()
    flux = pi[:, None] * rates
    np.testing.assert_allclose(flux, flux.T, rtol=1e-8, atol=1e-300)
    # Boltzmann: pi_i / pi_j = k_ji / k_ij = exp(-(E_i - E_j)/kT): energies from rates.
    kt = BOLTZMANN_EV_PER_K * 300.0
    energy = -kt * np.log(pi)
    i, j = 0, 5
    assert energy[i] - energy[j] == pytest.approx(-kt * np.log(rates[j, i] / rates[i, j]))


def test_rates_depend_on_seed_and_temperature() -> None:
    a = hopping_rates(FAMILIES, seed=0)
    np.testing.assert_array_equal(a, hopping_rates(FAMILIES, seed=0))
    assert not np.array_equal(a, hopping_rates(FAMILIES, seed=1))
    hot = hopping_rates(FAMILIES, seed=0, temperature_K=320.0)
    off = ~np.eye(16, dtype=bool)
    assert np.all(hot[off] > a[off])


def test_internal_modes_hop_faster_than_families() -> None:
    rates = hopping_rates(FAMILIES, seed=0)
    same = FAMILIES[:, None] == FAMILIES[None, :]
    off = ~np.eye(16, dtype=bool)
    # Slowest sibling hop (12 s at most) beats the fastest single inter-family link.
    assert rates[same & off].min() > rates[~same].max()


def test_empirical_occupation_matches_stationary_distribution() -> None:
    rates = hopping_rates(FAMILIES, seed=0)
    chain = MarkovHopping(rates, seed=1)
    pi = chain.stationary_distribution()
    # 2e5 s of sample time: ~5e4 hops, ~2e4 family changes (measured TV 0.012).
    states, dwell = _visits(chain.advance(2.0e5))
    occupation = np.bincount(states, weights=dwell, minlength=16) / dwell.sum()
    total_variation = 0.5 * np.abs(occupation - pi).sum()
    assert total_variation < 0.05


def test_dwell_times_span_subsecond_to_minutes() -> None:
    chain = MarkovHopping(hopping_rates(FAMILIES, seed=0), seed=1)
    states, dwell = _visits(chain.advance(2.0e5))
    # Per visit of a state: measured 1st percentile 0.03 s, longest 55 s.
    assert np.percentile(dwell, 1) < 0.1
    # Per stay in a family (internal modes flicker inside): measured longest 294 s.
    fam = FAMILIES[states]
    change = np.flatnonzero(np.diff(fam)) + 1
    stays = np.add.reduceat(dwell, np.r_[0, change])
    assert stays.max() > 120.0
    assert stays.max() / np.percentile(dwell, 1) > 100.0  # >= 2 decades
    # Bursts and calm periods: hop counts per minute are over-dispersed (measured
    # variance/mean 1.5; a Poisson process gives 1).
    hop_times = np.cumsum(dwell)[:-1]
    per_minute = np.bincount((hop_times // 60.0).astype(int))
    assert per_minute.var() / per_minute.mean() > 1.2


def test_cci_run_visits_every_state_many_times() -> None:
    """2 000 helicity pairs at 1 s per frame = 4 000 s of sample time (as a CCD run)."""
    chain = MarkovHopping(hopping_rates(FAMILIES, seed=0), seed=0)
    segments: list[tuple[int, float]] = []
    for _ in range(4000):
        segments += chain.advance(1.0)
    states, dwell = _visits(segments)
    entries = np.bincount(states, minlength=16)
    seconds = np.bincount(states, weights=dwell, minlength=16)
    assert entries.min() >= 20, entries
    assert seconds.min() >= 80.0, seconds
    # Irregular order: the family sequence is not a fixed cycle.
    fam = FAMILIES[states]
    fam_seq = fam[np.r_[True, np.diff(fam) != 0]]
    successors = set(itertools.pairwise(fam_seq.tolist()))
    assert len(successors) > 2 * 8


def test_hopping_rates_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="families"):
        hopping_rates(np.zeros((2, 2), int))
    with pytest.raises(ValueError, match="temperature_K"):
        hopping_rates(FAMILIES, temperature_K=-5.0)
    with pytest.raises(ValueError, match="sibling_barrier_eV"):
        hopping_rates(FAMILIES, sibling_barrier_eV=(0.7, 0.6))
    with pytest.raises(ValueError, match="family_links"):
        hopping_rates(FAMILIES, family_links=0)
    with pytest.raises(TypeError, match="family_links"):
        hopping_rates(FAMILIES, family_links=2.5)  # type: ignore[arg-type]


def test_single_family_and_singletons() -> None:
    # Every state its own family (a file without 'family'): still irreducible.
    rates = hopping_rates(np.arange(6))
    assert MarkovHopping(rates).stationary_distribution().shape == (6,)
    rates = hopping_rates(np.zeros(3, int))
    assert np.all(rates[~np.eye(3, dtype=bool)] > 0)
