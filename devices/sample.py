"""The fluctuating magnetic sample seen through an FTH mask (pure physics, no Bluesky).

Combines the three physics pieces:

* :mod:`.maze` — the metastable maze-domain states mz(x, y);
* :mod:`.dynamics` — continuous-time Markov hopping between them;
* :mod:`.fth` — the FTH mask and hologram formation.

A frame integrates the sample's dynamics over the exposure: when the state changes
during an exposure the intensities of the visited states add, weighted by the time
spent in each (the states are mutually incoherent in time).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .dynamics import MarkovHopping, hopping_rates
from .fth import (
    DEFAULT_PHOTONS_PER_FRAME,
    FTHGeometry,
    default_geometry,
    embed_mz,
    expose,
    hologram,
)
from .maze import MazeStates, generate_maze_states, load_states


@dataclass(frozen=True)
class Exposure:
    """One simulated exposure.

    Attributes
    ----------
    frame : ndarray, shape (ny, nx), uint16
        Photon counts per pixel.
    state : int
        Dominant state (longest time during the exposure) — the ground-truth label.
    state_fraction : float
        Fraction of the exposure spent in ``state`` (1.0 when no hop happened).
    hops : int
        Number of state changes during the exposure.
    time : float
        Simulated time at the end of the exposure, s.
    """

    frame: np.ndarray
    state: int
    state_fraction: float
    hops: int
    time: float


class MagneticSample:
    """A magnetic film hopping between maze states, imaged by FTH.

    Parameters
    ----------
    states : MazeStates
        The metastable configurations (from :func:`generate_maze_states` or a file).
    geometry : FTHGeometry, optional
        Mask geometry; :func:`default_geometry` of ``detector_shape`` by default.
    temperature_K : float
        Sample temperature in kelvin; raises all hopping rates (Arrhenius).
    contrast : complex
        Dichroic contrast c in φ_h = φ_c·(1 + h·c·mz) (Battistelli et al.).
    seed : int
        Seeds the hopping trajectory and the photon noise.
    """

    def __init__(
        self,
        states: MazeStates,
        *,
        geometry: FTHGeometry | None = None,
        detector_shape: tuple[int, int] = (256, 256),
        temperature_K: float = 300.0,
        contrast: complex = 0.1 + 0.05j,
        seed: int = 0,
    ) -> None:
        self.states = states
        self.geometry = geometry or default_geometry(detector_shape)
        self.temperature_K = float(temperature_K)
        self.contrast = complex(contrast)
        self.seed = int(seed)
        self.rng = np.random.default_rng(seed)
        rates = hopping_rates(states.family, temperature_K=temperature_K, seed=seed)
        self.hopping = MarkovHopping(rates, initial_state=0, seed=seed)
        # Expected intensity per (state, helicity), normalised to sum 1.
        fields = [embed_mz(self.geometry, mz) for mz in states.mz]
        self._intensity = {
            (k, h): hologram(self.geometry, f, h, self.contrast)
            for k, f in enumerate(fields)
            for h in (+1, -1)
        }

    @classmethod
    def from_options(
        cls,
        *,
        states_file: str | None = None,
        n_families: int = 8,
        seed: int = 0,
        detector_shape: tuple[int, int] = (256, 256),
        temperature_K: float = 300.0,
    ) -> MagneticSample:
        """Build the sample from a states file (npz with ``mz``) or the built-in model."""
        if states_file:
            states = load_states(states_file)
        else:
            states = generate_maze_states(n_families=n_families, seed=seed)
        return cls(states, detector_shape=detector_shape, temperature_K=temperature_K, seed=seed)

    @property
    def n_states(self) -> int:
        return int(self.states.mz.shape[0])

    def expected_intensity(self, state: int, helicity: int) -> np.ndarray:
        """Noise-free intensity (ny, nx) float64, sum 1, of one state at one helicity."""
        if helicity not in (+1, -1):
            raise ValueError(f"helicity must be +1 or -1, got {helicity!r}")
        return self._intensity[(int(state), helicity)]

    def expose(self, exposure_time: float, helicity: int, photons_per_frame: float) -> Exposure:
        """Advance the dynamics by ``exposure_time`` s and record one noisy frame.

        Raises
        ------
        ValueError
            For a non-positive exposure time or photon count, or a helicity not ±1.
        """
        if not exposure_time > 0:
            raise ValueError(f"exposure_time must be > 0 s, got {exposure_time!r}")
        if not photons_per_frame > 0:
            raise ValueError(f"photons_per_frame must be > 0, got {photons_per_frame!r}")
        segments = self.hopping.advance(float(exposure_time))
        weights: dict[int, float] = {}
        for state, dt in segments:
            weights[state] = weights.get(state, 0.0) + dt
        total = sum(weights.values())
        expected = sum(
            (w / total) * self.expected_intensity(s, helicity) for s, w in weights.items()
        )
        frame = expose(
            expected,
            photons_per_frame,
            self.rng,
            beamstop_radius=self.geometry.beamstop_radius,
        )
        dominant = max(weights, key=weights.__getitem__)
        return Exposure(
            frame=frame,
            state=int(dominant),
            state_fraction=float(weights[dominant] / total),
            hops=len(segments) - 1,
            time=float(self.hopping.time),
        )


    def record_pairs(
        self,
        n_pairs: int,
        exposure_time: float = 1.0,
        photons_per_frame: float = DEFAULT_PHOTONS_PER_FRAME,
        *,
        progress: Callable[[int], None] | None = None,
    ) -> PairSeries:
        """Record ``n_pairs`` helicity pairs (+1 then −1) without Bluesky.

        What the ``cci_series`` plan records through the device, for tests and
        benchmarks of the CCI algorithms that need thousands of pairs quickly.

        Parameters
        ----------
        n_pairs : int
            Number of pairs, ≥ 1.
        exposure_time : float
            Per frame, s.
        photons_per_frame : float
            Expected photons per frame in the detector plane.
        progress : callable, optional
            Called with the number of pairs recorded so far, every 100 pairs.

        Returns
        -------
        PairSeries
            Frames and the ground truth of every pair.

        Raises
        ------
        ValueError
            For ``n_pairs`` < 1 (and as :meth:`expose`).
        """
        if int(n_pairs) != n_pairs or n_pairs < 1:
            raise ValueError(f"n_pairs must be a positive integer, got {n_pairs!r}")
        n = int(n_pairs)
        ny, nx = self.geometry.shape
        plus = np.empty((n, ny, nx), np.uint16)
        minus = np.empty((n, ny, nx), np.uint16)
        state = np.empty(n, np.int32)
        purity = np.empty(n, np.float64)
        time = np.empty(n, np.float64)
        for i in range(n):
            a = self.expose(exposure_time, +1, photons_per_frame)
            b = self.expose(exposure_time, -1, photons_per_frame)
            plus[i], minus[i] = a.frame, b.frame
            # Dominant state over the pair: the time-weighted majority of the two frames.
            weight = {a.state: a.state_fraction}
            weight[b.state] = weight.get(b.state, 0.0) + b.state_fraction
            state[i] = max(weight, key=weight.__getitem__)
            purity[i] = weight[state[i]] / 2.0
            time[i] = b.time
            if progress is not None and (i + 1) % 100 == 0:
                progress(i + 1)
        return PairSeries(plus=plus, minus=minus, state=state, purity=purity, time=time)


@dataclass(frozen=True)
class PairSeries:
    """Helicity pairs recorded by :meth:`MagneticSample.record_pairs`.

    Attributes
    ----------
    plus, minus : ndarray, shape (n, ny, nx), uint16
        Photon counts of the + and − helicity frames.
    state : ndarray, shape (n,), int32
        Ground truth: the state the sample spent most of the pair's time in.
    purity : ndarray, shape (n,), float64
        Fraction of the pair's time spent in ``state`` (a lower bound when a frame
        visited three or more states); 1.0 for a pair without a hop.
    time : ndarray, shape (n,), float64
        Simulated time at the end of the pair, s.
    """

    plus: np.ndarray
    minus: np.ndarray
    state: np.ndarray
    purity: np.ndarray
    time: np.ndarray


__all__ = ["DEFAULT_PHOTONS_PER_FRAME", "Exposure", "MagneticSample", "PairSeries"]
