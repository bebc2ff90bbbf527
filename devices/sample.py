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


__all__ = ["DEFAULT_PHOTONS_PER_FRAME", "Exposure", "MagneticSample"]
