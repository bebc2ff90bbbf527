"""Thermally activated hopping of a magnetic maze between metastable states.

A continuous-time Markov chain (CTMC) over the states of :mod:`.maze`: the rate of a hop
i → j is Arrhenius, ν0·exp(−(S_ij − E_i)/k_B T), with state energies E_i and symmetric
saddle energies S_ij = S_ji. Such rates obey detailed balance, so the stationary
distribution is the Boltzmann distribution π_i ∝ exp(−E_i/k_B T).

:func:`hopping_rates` builds a landscape in which hops between the internal modes of one
family (base ↔ sibling) are fast and hops between families are slow and heterogeneous;
:class:`MarkovHopping` samples the trajectory exactly (Gillespie's algorithm).

References
----------
C. Klose et al., Nature 614, 256 (2023) — hopping between maze states and internal modes.
D. T. Gillespie, J. Phys. Chem. 81, 2340 (1977) — exact stochastic simulation.
"""

from __future__ import annotations

import numpy as np
from scipy import linalg

__all__ = [
    "BOLTZMANN_EV_PER_K",
    "MarkovHopping",
    "hopping_rates",
]

#: Boltzmann constant in eV/K.
BOLTZMANN_EV_PER_K: float = 8.617333262e-5


def _as_generator(seed: int | np.random.Generator | None) -> np.random.Generator:
    if isinstance(seed, np.random.Generator):
        return seed
    if seed is None or (isinstance(seed, (int, np.integer)) and not isinstance(seed, bool)):
        return np.random.default_rng(seed)
    raise TypeError(f"seed must be an int, None or numpy.random.Generator, got {seed!r}")


class MarkovHopping:
    """Continuous-time Markov hopping between ``n`` states, sampled exactly.

    Parameters
    ----------
    rates : array_like, shape (n, n), float
        Hop rates in 1/s; ``rates[i, j]`` is the rate of i → j. The diagonal is ignored.
        Off-diagonal entries must be finite and >= 0.
    initial_state : int
        State at time 0.
    seed : int, numpy.random.Generator or None
        Source of randomness for the trajectory (a Generator is used as given).

    Raises
    ------
    ValueError
        If ``rates`` is not square, has fewer than 1 state, or holds negative or
        non-finite off-diagonal entries, or ``initial_state`` is out of range.
    TypeError
        If ``seed`` or ``initial_state`` has the wrong type.

    Notes
    -----
    The time to the next hop is kept between calls of :meth:`advance`, so splitting a
    period into several ``advance`` calls samples the same law as one call (the chain is
    memoryless in any case).

    References
    ----------
    D. T. Gillespie, J. Phys. Chem. 81, 2340 (1977).
    """

    def __init__(
        self,
        rates: np.ndarray,
        initial_state: int = 0,
        seed: int | np.random.Generator | None = 0,
    ) -> None:
        r = np.array(rates, dtype=np.float64, copy=True)
        if r.ndim != 2 or r.shape[0] != r.shape[1] or r.shape[0] < 1:
            raise ValueError(f"rates must be a square (n, n) array, got shape {r.shape}")
        np.fill_diagonal(r, 0.0)
        if not np.all(np.isfinite(r)):
            raise ValueError(
                f"rates has {int(np.count_nonzero(~np.isfinite(r)))} non-finite values"
            )
        if np.any(r < 0):
            i, j = np.argwhere(r < 0)[0]
            raise ValueError(f"rates must be >= 0, got rates[{i}, {j}] = {r[i, j]}")
        if isinstance(initial_state, bool) or not isinstance(initial_state, (int, np.integer)):
            raise TypeError(f"initial_state must be an int, got {initial_state!r}")
        n = r.shape[0]
        if not 0 <= initial_state < n:
            raise ValueError(f"initial_state must be in [0, {n}), got {initial_state}")
        r.setflags(write=False)
        self._rates = r
        self._exit = r.sum(axis=1)
        self._cumulative = np.cumsum(r, axis=1)
        self._rng = _as_generator(seed)
        self._state = int(initial_state)
        self._time = 0.0
        self._next_hop = self._draw_next_hop()

    @property
    def rates(self) -> np.ndarray:
        """Hop rates (n, n) float64 in 1/s, zero diagonal (read-only)."""
        return self._rates

    @property
    def n_states(self) -> int:
        """Number of states."""
        return int(self._rates.shape[0])

    @property
    def state(self) -> int:
        """Current state index."""
        return self._state

    @property
    def time(self) -> float:
        """Simulated time in s since construction."""
        return self._time

    def mean_dwell_times(self) -> np.ndarray:
        """Mean time per visit of each state, 1 / (total exit rate), shape (n,), s."""
        with np.errstate(divide="ignore"):
            return 1.0 / self._exit

    def generator_matrix(self) -> np.ndarray:
        """Generator Q (n, n) float64, 1/s: off-diagonal rates, rows summing to zero."""
        return self._rates - np.diag(self._exit)

    def stationary_distribution(self) -> np.ndarray:
        """Stationary distribution π with π·Q = 0, Σπ = 1.

        Returns
        -------
        ndarray, shape (n,), float64
            Occupation probabilities.

        Raises
        ------
        RuntimeError
            If the chain is reducible (the null space of Qᵀ is not one-dimensional), so
            the stationary distribution is not unique.
        """
        if self.n_states == 1:
            return np.ones(1)
        q = self.generator_matrix()
        # Scale to O(1) so the rank decision of null_space is meaningful.
        scale = float(np.max(np.abs(q)))
        if scale == 0.0:
            raise RuntimeError("all rates are zero: every state is absorbing")
        basis = linalg.null_space((q / scale).T, rcond=1e-12)
        if basis.shape[1] != 1:
            raise RuntimeError(
                f"chain is reducible: null space of the generator has dimension {basis.shape[1]}"
            )
        pi = basis[:, 0]
        pi = np.abs(pi) / np.abs(pi).sum()
        return pi

    def _draw_next_hop(self) -> float:
        rate = self._exit[self._state]
        if rate <= 0.0:
            return np.inf
        return self._time + self._rng.exponential(1.0 / rate)

    def advance(self, dt: float) -> list[tuple[int, float]]:
        """Advance the simulated clock by ``dt`` seconds.

        Parameters
        ----------
        dt : float
            Duration in s, finite and >= 0.

        Returns
        -------
        list of (int, float)
            Consecutive (state, time spent in s) segments; the times add up to ``dt``
            (to rounding) and consecutive states differ. At least one segment.

        Raises
        ------
        ValueError
            If ``dt`` is negative or not finite.
        """
        dt = float(dt)
        if not np.isfinite(dt) or dt < 0:
            raise ValueError(f"dt must be a finite duration >= 0 s, got {dt}")
        t_end = self._time + dt
        segments: list[tuple[int, float]] = []
        t = self._time
        while self._next_hop <= t_end:
            segments.append((self._state, self._next_hop - t))
            t = self._next_hop
            row = self._cumulative[self._state]
            u = self._rng.random() * row[-1]
            self._state = int(min(np.searchsorted(row, u, side="right"), self.n_states - 1))
            self._time = t
            self._next_hop = self._draw_next_hop()
        segments.append((self._state, t_end - t))
        self._time = t_end
        return segments


def hopping_rates(
    families: np.ndarray,
    *,
    temperature_K: float = 300.0,
    seed: int = 0,
    attempt_frequency_hz: float = 1e9,
    energy_spread_eV: float = 0.02,
    sibling_barrier_eV: tuple[float, float] = (0.565, 0.60),
    family_barrier_eV: tuple[float, float] = (0.60, 0.64),
    family_depth_eV: float = 0.05,
    family_links: int = 5,
) -> np.ndarray:
    """Arrhenius hop rates over a random energy landscape of maze states.

    Each state i gets an energy E_i; each pair a symmetric saddle S_ij = max(E_i, E_j) +
    b_ij, and the rate is ν0·exp(−(S_ij − E_i)/(k_B T)). Detailed balance holds by
    construction, so the stationary distribution is Boltzmann, π_i ∝ exp(−E_i/k_B T).
    Everything is drawn from ``seed``; ``temperature_K`` only enters the Arrhenius
    factor, and raising it raises every rate.

    * Energies: family energies uniform in ±``energy_spread_eV``/2, states of a family
      within ±``energy_spread_eV``/8 of it (0.02 eV ≈ 0.8 k_B T at 300 K: stationary
      occupations of 16 states lie between ~0.04 and ~0.10, so every state is seen).
    * Within a family (internal modes): one barrier level per family, uniform in
      ``sibling_barrier_eV`` (jittered ±5 meV per pair); at 300 K and ν0 = 1e9 Hz,
      0.565–0.60 eV means 3–12 s per hop between base and sibling — some families
      flicker, others are sluggish.
    * Between families: every family is linked to ``family_links`` others (a ring
      through a random permutation, which keeps the chain irreducible, plus random
      chords) with b uniform in ``family_barrier_eV`` plus the larger of the two
      families' "depths" (uniform in [0, ``family_depth_eV``]) and a 0–20 meV jitter per
      state pair; unlinked pairs get +0.25 eV (practically never used). At 300 K one
      link takes 12 s to 14 min per state pair: deep families are left rarely (calm
      periods), shallow ones exchange quickly (bursts).

    Why these numbers: a CCI run of 2 000 helicity pairs at 1 s per frame lasts
    4 000 s of sample time. For every state to be entered >= 20 times (16 states) the
    mean dwell must be a few seconds, which makes ~20 % of 1-s frames contain a hop; the
    Arrhenius ranges above are the slowest that still give that. Measured with the
    defaults (families ``repeat(arange(8), 2)``, 300 K, landscape and trajectory seeds
    0–19, 4 000 s each): every state entered >= 21 times and occupied >= 96 s; 18–26 %
    of 1-s frames contain a hop; a visit of a state lasts from < 0.15 s (2nd
    percentile) to 20–60 s (longest), an uninterrupted stay in one family up to
    1–3.5 min (57–203 s) — dwell times span more than 2 decades, and hop counts per
    minute are over-dispersed (bursts and calm periods).

    Parameters
    ----------
    families : ndarray, shape (n,), int
        Family label of each state (as :attr:`MazeStates.family`).
    temperature_K : float
        Temperature in K, > 0.
    seed : int
        Seed of the landscape (energies, barriers, links).
    attempt_frequency_hz : float
        Attempt frequency ν0 in Hz, > 0.
    energy_spread_eV : float
        Full range of the family energies in eV, >= 0.
    sibling_barrier_eV, family_barrier_eV : tuple of float
        (low, high) ranges of the barrier above the higher of the two state energies,
        in eV, 0 <= low <= high.
    family_links : int
        Number of other families each family is directly linked to (>= 1 when there is
        more than one family; capped at n_families − 1).

    Returns
    -------
    ndarray, shape (n, n), float64
        Rates in 1/s; ``rates[i, j]`` for i → j; zero diagonal.

    Raises
    ------
    ValueError
        If ``families`` is not a 1-D integer array with >= 1 entry, or a parameter is
        out of range (the message names it and its value).
    TypeError
        If ``family_links`` is not an int.

    References
    ----------
    C. Klose et al., Nature 614, 256 (2023).
    """
    fam = np.asarray(families)
    if fam.ndim != 1 or fam.size < 1 or fam.dtype.kind not in "iu":
        raise ValueError(
            f"families must be a 1-D int array, got shape {fam.shape} dtype {fam.dtype}"
        )
    t = float(temperature_K)
    if not (np.isfinite(t) and t > 0):
        raise ValueError(f"temperature_K must be > 0, got {temperature_K!r}")
    nu0 = float(attempt_frequency_hz)
    if not (np.isfinite(nu0) and nu0 > 0):
        raise ValueError(f"attempt_frequency_hz must be > 0, got {attempt_frequency_hz!r}")
    if not (np.isfinite(energy_spread_eV) and energy_spread_eV >= 0):
        raise ValueError(f"energy_spread_eV must be >= 0, got {energy_spread_eV!r}")
    for name, rng_ in (
        ("sibling_barrier_eV", sibling_barrier_eV),
        ("family_barrier_eV", family_barrier_eV),
    ):
        lo, hi = (float(v) for v in rng_)
        if not (np.isfinite(lo) and np.isfinite(hi) and 0 <= lo <= hi):
            raise ValueError(f"{name} must be (low, high) with 0 <= low <= high, got {rng_!r}")
    if not (np.isfinite(family_depth_eV) and family_depth_eV >= 0):
        raise ValueError(f"family_depth_eV must be >= 0, got {family_depth_eV!r}")
    if isinstance(family_links, bool) or not isinstance(family_links, (int, np.integer)):
        raise TypeError(f"family_links must be an int, got {family_links!r}")

    labels, fam_idx = np.unique(fam, return_inverse=True)
    n_fam = labels.size
    if n_fam > 1 and family_links < 1:
        raise ValueError(f"family_links must be >= 1, got {family_links}")
    rng = np.random.default_rng(seed)
    n = fam.size

    e_fam = rng.uniform(-0.5, 0.5, n_fam) * energy_spread_eV
    energy = e_fam[fam_idx] + rng.uniform(-0.125, 0.125, n) * energy_spread_eV

    # Family graph: a ring through a random permutation (connected) plus random chords.
    linked = np.zeros((n_fam, n_fam), dtype=bool)
    if n_fam > 1:
        ring = rng.permutation(n_fam)
        for a, b in zip(ring, np.roll(ring, -1)):
            if a != b:
                linked[a, b] = linked[b, a] = True
        k_links = min(int(family_links), n_fam - 1)
        for a in rng.permutation(n_fam):
            free = np.flatnonzero(~linked[a])
            free = free[free != a]
            need = k_links - int(linked[a].sum())
            if need > 0 and free.size:
                for b in rng.choice(free, size=min(need, free.size), replace=False):
                    linked[a, b] = linked[b, a] = True
    # A "deep" family (all its links raised) is left rarely: calm periods.
    depth = rng.uniform(0.0, family_depth_eV, n_fam)
    fam_barrier = rng.uniform(*family_barrier_eV, size=(n_fam, n_fam))
    fam_barrier = np.triu(fam_barrier, 1)
    fam_barrier = fam_barrier + fam_barrier.T + np.maximum(depth[:, None], depth[None, :])
    fam_barrier[~linked] += 0.25

    # Internal-mode barrier: one level per family (some flicker, some are sluggish),
    # jittered per pair by 0.01 eV.
    sib_level = rng.uniform(*sibling_barrier_eV, size=n_fam)
    sib_barrier = rng.uniform(-0.005, 0.005, size=(n, n))
    sib_barrier = np.triu(sib_barrier, 1)
    sib_barrier = sib_barrier + sib_barrier.T + sib_level[fam_idx][:, None]
    sib_barrier = np.maximum(sib_barrier, 0.0)
    # State-pair spread of the inter-family saddles (which internal modes connect).
    pair_jitter = rng.uniform(0.0, 0.02, size=(n, n))
    pair_jitter = np.triu(pair_jitter, 1)
    pair_jitter = pair_jitter + pair_jitter.T

    same = fam_idx[:, None] == fam_idx[None, :]
    barrier = np.where(same, sib_barrier, fam_barrier[fam_idx][:, fam_idx] + pair_jitter)
    saddle = np.maximum(energy[:, None], energy[None, :]) + barrier
    kt = BOLTZMANN_EV_PER_K * t
    rates = nu0 * np.exp(-(saddle - energy[:, None]) / kt)
    np.fill_diagonal(rates, 0.0)
    return rates
