"""A vibrating crystal for 4D-STEM: abTEM multislice over frozen-phonon configurations.

:class:`CrystalSample` simulates what a pixelated camera records while a convergent
probe rasters over a crystal supercell (:mod:`.crystal`):

1. **Configurations** — ``phonon_model`` ``"none"`` (one coherent, undisplaced
   configuration), ``"einstein"`` (uncorrelated Gaussian displacements, rms σ per
   Cartesian component; default σ = the harmonic model's rms at T) or ``"correlated"``
   (drawn from :class:`~.phonons.HarmonicLattice` at temperature T by equipartition in
   normal-mode space, Cov(u) = k_B T Φ⁺). Every configuration's atom positions are
   kept as ground truth.
2. **Multislice** — for each configuration abTEM builds the projected potential
   (``Potential``: Lobato parametrisation, infinite projection, ``sampling_A``,
   ``slice_thickness_A``) and propagates ``Probe(energy, semiangle_cutoff, defocus)``
   through it at every scan position (``CustomScan``), keeping the exit waves; the
   incoherent (frozen-phonon) average over configurations of their patterns (step 4)
   is the noise-free 4D data set (Loane, Xu & Silcox 1991).
3. **Partial spatial coherence** — a Gaussian source of FWHM ``source_fwhm_A`` blurs
   the probe position: each pattern is the Gauss–Hermite weighted sum over
   ``source_points``² probe shifts (nodes ±√2·σ·x_k, σ = FWHM/2√(2 ln 2)), exact for
   the Gaussian average of any smooth pattern up to polynomial degree 2·points−1.
4. **Detector** — every pixel of the camera's ``detector_shape`` (qy, qx), spanning
   ±``max_angle_mrad``, row-major (y, x) with the optical axis at pixel (qy//2, qx//2),
   integrates the continuous far field of abTEM's exit wave over its area
   (:func:`pixel_integrated_patterns`), as a real pixel does. abTEM's own patterns are
   samples at the cell's angular step λ/L, about one camera pixel for the small cells
   used here, and cannot be rebinned onto the camera without a moiré of the two grids.
   abTEM's arrays are (x, y) and are transposed.
5. **Dose** — ``dose`` electrons per Å² of scanned area: each pattern receives
   dose·step² incident electrons, Poisson-distributed per pixel
   (:meth:`CrystalSample.electrons`).

The noise-free intensities and every configuration are cached on disk (``np.savez``) in
``cache_dir`` (default ``$SPECKLEFLOW_CACHE`` or ``~/.cache/speckleflow``) under the
SHA-256 of every parameter plus the abTEM and ase versions; a second sample with the
same parameters loads in milliseconds.

Conventions: lengths Å, angles mrad, energy eV, temperature K; beam along +z, the
probe's focal plane at the entrance surface of the potential; ``defocus_A`` is abTEM's
``defocus`` = −C10 (positive = underfocus: the crossover lies below the entrance
surface, inside the sample, for a positive value).

References
----------
Madsen & Susi, "The abTEM code: transmission electron microscopy from first
principles", Open Research Europe 1, 24 (2021). Loane, Xu & Silcox, Acta Cryst. A47,
267 (1991) (frozen phonons). Gladyshev et al. (2025), CAVIAR (data simulated with
abTEM).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .crystal import CrystalSpec, build_crystal
from .phonons import HarmonicLattice, Spring, einstein

__all__ = [
    "CACHE_ENV",
    "PHONON_MODELS",
    "CrystalSample",
    "CrystalSampleTruth",
    "SimulationParams",
    "default_cache_dir",
    "electron_wavelength_A",
]

CACHE_ENV = "SPECKLEFLOW_CACHE"
PHONON_MODELS = ("none", "einstein", "correlated")
#: Bumped when the cached arrays change meaning (2: pixels integrate the continuous far field).
CACHE_FORMAT = 2

#: ``progress(done, total, message)`` — configurations simulated so far.
ProgressCallback = Callable[[int, int, str], None]


def pixel_integrated_patterns(
    waves: np.ndarray,
    sampling_A: tuple[float, float],
    wavelength_A: float,
    centres_mrad: tuple[np.ndarray, np.ndarray],
    pixel_mrad: tuple[float, float],
    *,
    batch: int = 32,
) -> np.ndarray:
    """Flux a box-integrating pixelated detector collects from exit waves.

    Each wave (one period of the simulation cell, zero outside it) has the continuous far
    field ``Ψ(θ) = Σ_r ψ(r) exp(−2πi θ·r/λ)``. A pixel of width ``Δθ`` centred at ``θ_j``
    collects ``∫ |Ψ|²`` over its area, which is the Fourier transform of the wave's
    autocorrelation ``A(d) = Σ_r ψ(r + d) ψ*(r)`` (exact on a grid padded 2×) times
    ``sinc(d_y Δθ_y/λ) sinc(d_x Δθ_x/λ)``, evaluated at the pixel centres by a separable
    matrix DFT. Sampling ``Ψ`` at the simulation's own angular step ``λ/L`` and
    redistributing those samples over detector pixels of a similar width instead makes a
    moiré of the two grids: up to 8 % of the peak at the bright-field edge for a 15 Å cell
    and 1.5625 mrad pixels.

    Parameters
    ----------
    waves : ndarray, shape (n, H, W), complex
        Exit waves, (y, x) rows and columns, each centred in its window (the window edge
        is where the wave is cut).
    sampling_A : (float, float)
        Real-space pixel (dy, dx), Å.
    wavelength_A : float
        Electron wavelength λ, Å.
    centres_mrad : (ndarray, ndarray)
        Pixel centres along y (qy,) and x (qx,), mrad.
    pixel_mrad : (float, float)
        Pixel widths (dy, dx), mrad.
    batch : int
        Waves per FFT batch (memory: ``batch · 4HW`` complex128).

    Returns
    -------
    ndarray, shape (n, qy, qx), float64
        Flux per pixel in units of ``Σ_r |ψ(r)|²``: pixels tiling one full period of
        ``Ψ`` sum to exactly 1.
    """
    waves = np.asarray(waves)
    n, h, w = waves.shape
    dy = np.fft.fftfreq(2 * h, 1.0 / (2 * h)) * sampling_A[0]
    dx = np.fft.fftfreq(2 * w, 1.0 / (2 * w)) * sampling_A[1]
    ty, tx = (np.asarray(c, dtype=np.float64) * 1e-3 for c in centres_mrad)
    py, px = (float(v) * 1e-3 for v in pixel_mrad)
    ey = np.sinc(dy * py / wavelength_A)[None] * np.exp(-2j * np.pi * np.outer(ty, dy) / wavelength_A)
    ex = np.sinc(dx * px / wavelength_A)[None] * np.exp(-2j * np.pi * np.outer(tx, dx) / wavelength_A)
    scale = (py * sampling_A[0] / wavelength_A) * (px * sampling_A[1] / wavelength_A)
    out = np.empty((n, len(ty), len(tx)), np.float64)
    padded = np.zeros((min(batch, n), 2 * h, 2 * w), np.complex128)
    for i in range(0, n, batch):
        chunk = waves[i : i + batch]
        pad = padded[: len(chunk)]
        pad[:, :h, :w] = chunk
        power = np.einsum("nyx,nyx->n", chunk, chunk.conj()).real
        autocorrelation = np.fft.ifft2(np.abs(np.fft.fft2(pad)) ** 2)
        flux = np.einsum("yb,nba,xa->nyx", ey, autocorrelation, ex, optimize=True).real * scale
        out[i : i + batch] = flux / np.where(power > 0, power, 1.0)[:, None, None]
    return out


def default_cache_dir() -> Path:
    """``$SPECKLEFLOW_CACHE`` or ``~/.cache/speckleflow``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else Path.home() / ".cache" / "speckleflow"


def electron_wavelength_A(energy_eV: float) -> float:
    """Relativistic electron wavelength λ = h / sqrt(2 m e E (1 + e E / 2 m c²)), Å."""
    h, m, e, c = 6.62607015e-34, 9.1093837015e-31, 1.602176634e-19, 299792458.0
    return h / math.sqrt(2 * m * e * energy_eV * (1 + e * energy_eV / (2 * m * c * c))) * 1e10


@dataclass(frozen=True)
class SimulationParams:
    """Every parameter the simulated data depend on (the cache key hashes all of them).

    Attributes
    ----------
    crystal : CrystalSpec
    scan_shape : tuple of int
        (ny, nx) scan positions.
    step_A : float
        Scan step, Å.
    detector_shape : tuple of int
        (qy, qx) camera pixels.
    energy_eV, semiangle_mrad, defocus_A : float
        Probe: energy (eV), convergence semi-angle (mrad), defocus (Å, abTEM: −C10).
    max_angle_mrad : float
        Half-width of the detector's angular field, mrad (pixel = 2·max/q).
    phonon_model : str
        ``"none"``, ``"einstein"`` or ``"correlated"``.
    temperature_K : float
    n_configurations : int
        Frozen-phonon configurations (1 for ``"none"``).
    einstein_sigma_A : float or None
        Einstein rms per component, Å (None: the harmonic model's mean rms at T).
    springs : tuple of Spring or None
        Force constants (None: the crystal's defaults).
    source_fwhm_A : float
        Gaussian source FWHM, Å (0: coherent).
    source_points : int
        Gauss–Hermite nodes per axis for the source average.
    sampling_A : float
        Real-space sampling of the potential and wave, Å.
    slice_thickness_A : float
        Multislice slice thickness, Å.
    seed : int
        Seeds the configurations (the Poisson noise uses it too, not cached).
    """

    crystal: CrystalSpec
    scan_shape: tuple[int, int] = (16, 16)
    step_A: float = 0.3
    detector_shape: tuple[int, int] = (64, 64)
    energy_eV: float = 200e3
    semiangle_mrad: float = 25.0
    defocus_A: float = 0.0
    max_angle_mrad: float = 50.0
    phonon_model: str = "correlated"
    temperature_K: float = 300.0
    n_configurations: int = 10
    einstein_sigma_A: float | None = None
    springs: tuple[Spring, ...] | None = None
    source_fwhm_A: float = 0.0
    source_points: int = 3
    sampling_A: float = 0.05
    slice_thickness_A: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        def positive(name: str) -> None:
            v = getattr(self, name)
            if not (isinstance(v, int | float) and math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be > 0, got {v!r}")

        for name in ("step_A", "energy_eV", "semiangle_mrad", "max_angle_mrad", "temperature_K",
                     "sampling_A", "slice_thickness_A"):  # fmt: skip
            positive(name)
        for name in ("scan_shape", "detector_shape"):
            v = getattr(self, name)
            if len(v) != 2 or min(v) < 1 or any(int(x) != x for x in v):
                raise ValueError(f"{name} must be two positive integers, got {v!r}")
        if min(self.detector_shape) < 8:
            raise ValueError(f"detector_shape must be at least 8×8 pixels, got {self.detector_shape!r}")
        if self.phonon_model not in PHONON_MODELS:
            raise ValueError(f"phonon_model must be one of {PHONON_MODELS}, got {self.phonon_model!r}")
        if int(self.n_configurations) != self.n_configurations or self.n_configurations < 1:
            raise ValueError(f"n_configurations must be a positive integer, got {self.n_configurations!r}")
        if self.phonon_model == "none" and self.n_configurations != 1:
            raise ValueError(f"phonon_model 'none' has one configuration, got n_configurations={self.n_configurations!r}")
        if not (math.isfinite(self.source_fwhm_A) and self.source_fwhm_A >= 0):
            raise ValueError(f"source_fwhm_A must be >= 0 Å, got {self.source_fwhm_A!r}")
        if int(self.source_points) != self.source_points or not 1 <= self.source_points <= 7:
            raise ValueError(f"source_points must be an integer in [1, 7], got {self.source_points!r}")
        if self.einstein_sigma_A is not None and not self.einstein_sigma_A >= 0:
            raise ValueError(f"einstein_sigma_A must be >= 0 Å, got {self.einstein_sigma_A!r}")
        if self.max_angle_mrad <= self.semiangle_mrad:
            raise ValueError(
                f"max_angle_mrad ({self.max_angle_mrad!r}) must exceed semiangle_mrad ({self.semiangle_mrad!r}): "
                "the detector must hold the bright-field disc"
            )

    @property
    def angular_sampling_mrad(self) -> tuple[float, float]:
        """(dy, dx) mrad per detector pixel."""
        qy, qx = self.detector_shape
        return 2 * self.max_angle_mrad / qy, 2 * self.max_angle_mrad / qx

    @property
    def electrons_scale(self) -> float:
        """Incident electrons per pattern per unit dose (e/Å²): step², Å²."""
        return self.step_A**2

    def springs_or_default(self) -> list[Spring]:
        return list(self.springs) if self.springs is not None else self.crystal.default_springs()

    def cache_key(self, versions: dict[str, str]) -> str:
        """SHA-256 of every parameter, the simulator versions and the cache format."""
        blob = json.dumps({"params": asdict(self), "versions": versions, "format": CACHE_FORMAT},
                          sort_keys=True, default=str)  # fmt: skip
        return hashlib.sha256(blob.encode()).hexdigest()


@dataclass
class CrystalSampleTruth:
    """Ground truth of a simulated crystal (``services/ptycho/CAVIAR_CONTRACT.md`` truth keys).

    Attributes
    ----------
    atom_positions : ndarray, shape (n_configurations, n_atoms, 3), float64
        Every configuration's atom positions, Å (supercell frame).
    atom_equilibrium : ndarray, shape (n_atoms, 3), float64
        Å.
    atomic_numbers : ndarray, shape (n_atoms,), int64
    masses_amu : ndarray, shape (n_atoms,), float64
    greens_tensor_analytic : ndarray, shape (3·n_atoms, 3·n_atoms), float64
        Å²: k_B T Φ⁺ (``"correlated"``), σ²·1 (``"einstein"``), NaN (``"none"``).
    scan_positions_A : ndarray, shape (ny·nx, 2), float64
        (y, x) probe positions in the supercell frame, Å, raster order.
    temperature_K : float
    """

    atom_positions: np.ndarray
    atom_equilibrium: np.ndarray
    atomic_numbers: np.ndarray
    masses_amu: np.ndarray
    greens_tensor_analytic: np.ndarray
    scan_positions_A: np.ndarray
    temperature_K: float


@dataclass
class _Dataset:
    intensities: np.ndarray  # (ny, nx, qy, qx) float32, fraction of the incident electrons
    atom_positions: np.ndarray
    seconds: float
    from_cache: bool
    path: Path | None = None
    timings: list[float] = field(default_factory=list)


class CrystalSample:
    """A crystal under a scanned probe, for the DE-Celeritas-like camera (see the module doc).

    Parameters
    ----------
    params : SimulationParams
    dose : float
        Electrons per Å² of scanned area (> 0); each pattern gets dose·step².
    cache_dir : str or Path, optional
        Default :func:`default_cache_dir`.
    use_cache : bool
        Read and write the cache (False: always simulate, never write).
    num_threads : int
        Threads for abTEM's dask computation (1 on a shared machine).

    Notes
    -----
    The camera interface (:class:`~.celeritas.Celeritas`): ``scan_shape``,
    ``detector_shape``, ``seed``, ``dose`` (settable), ``geometry()``,
    ``electrons(ix, iy, t)``, ``drift(t)``/``site_shift(t)`` (zero: no drift),
    ``truth()``. The simulation runs on the first :meth:`simulate` (or the first call
    that needs the data).
    """

    def __init__(
        self,
        params: SimulationParams,
        *,
        dose: float = 1e5,
        cache_dir: str | Path | None = None,
        use_cache: bool = True,
        num_threads: int = 1,
    ) -> None:
        if not isinstance(params, SimulationParams):
            raise TypeError(f"params must be a SimulationParams, got {type(params).__name__}")
        self.params = params
        self.dose = dose
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.use_cache = bool(use_cache)
        self.num_threads = int(num_threads)
        self.seed = int(params.seed)
        self.rng = np.random.default_rng([self.seed, 0x9717])
        self.atoms = build_crystal(params.crystal)
        cell = np.asarray(self.atoms.cell)  # type: ignore[attr-defined]
        self.cell = cell
        ny, nx = params.scan_shape
        ly, lx = cell[1, 1], cell[0, 0]
        self.scan_origin = np.array([(ly - (ny - 1) * params.step_A) / 2, (lx - (nx - 1) * params.step_A) / 2])
        if np.any(self.scan_origin < 0):
            raise ValueError(
                f"the scan ({ny}×{nx} at {params.step_A} Å) is larger than the supercell "
                f"({ly:.2f}×{lx:.2f} Å): increase the crystal repeats"
            )
        self._lattice: HarmonicLattice | None = None
        self._data: _Dataset | None = None

    # -- parameters ---------------------------------------------------------------------
    @property
    def dose(self) -> float:
        """Electrons per Å² of scanned area."""
        return self._dose

    @dose.setter
    def dose(self, value: float) -> None:
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"dose must be > 0 electrons/Å², got {value!r}")
        self._dose = float(value)

    @property
    def scan_shape(self) -> tuple[int, int]:
        return (int(self.params.scan_shape[0]), int(self.params.scan_shape[1]))

    @property
    def detector_shape(self) -> tuple[int, int]:
        return (int(self.params.detector_shape[0]), int(self.params.detector_shape[1]))

    @property
    def electrons_per_pattern(self) -> float:
        """Incident electrons per scan position: dose·step²."""
        return self.dose * self.params.electrons_scale

    @staticmethod
    def versions() -> dict[str, str]:
        """abTEM and ase versions (part of the cache key and the run's metadata)."""
        import abtem
        import ase

        return {"abtem": str(abtem.__version__), "ase": str(ase.__version__)}

    @property
    def lattice(self) -> HarmonicLattice:
        """The harmonic model of the supercell (built on first use)."""
        if self._lattice is None:
            self._lattice = HarmonicLattice(self.atoms, self.params.springs_or_default())
        return self._lattice

    def scan_positions(self) -> np.ndarray:
        """(ny·nx, 2) float64 — (y, x) Å of each scan position, raster order (x fastest)."""
        ny, nx = self.scan_shape
        iy, ix = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
        return self.scan_origin + np.stack([iy.ravel(), ix.ravel()], axis=1) * self.params.step_A

    def einstein_sigma(self) -> float:
        """Einstein rms per component, Å: the given one or the harmonic rms at T."""
        if self.params.einstein_sigma_A is not None:
            return float(self.params.einstein_sigma_A)
        g = self.lattice.greens_tensor(self.params.temperature_K)
        return float(np.sqrt(np.mean(np.diag(g))))

    def configurations(self) -> np.ndarray:
        """Atom positions of every configuration, (n_configurations, n_atoms, 3) Å.

        Deterministic in ``seed``: the same parameters give the same configurations.
        """
        p = self.params
        eq = np.asarray(self.atoms.get_positions(), dtype=np.float64)  # type: ignore[attr-defined]
        rng = np.random.default_rng([self.seed, 0xF0F0])
        if p.phonon_model == "none":
            return eq[None].copy()
        if p.phonon_model == "einstein":
            u = einstein(len(eq), self.einstein_sigma(), p.n_configurations, rng)
        else:
            u = self.lattice.sample(p.temperature_K, p.n_configurations, rng)
        return eq[None] + u

    def greens_tensor(self) -> np.ndarray:
        """Analytic G, (3N, 3N) Å² (NaN-filled for ``phonon_model="none"``)."""
        n = 3 * len(self.atoms)  # type: ignore[arg-type]
        if self.params.phonon_model == "correlated":
            return self.lattice.greens_tensor(self.params.temperature_K)
        if self.params.phonon_model == "einstein":
            return self.einstein_sigma() ** 2 * np.eye(n)
        return np.full((n, n), np.nan)

    def source_offsets(self) -> tuple[np.ndarray, np.ndarray]:
        """Probe shifts (n_src, 2) Å (y, x) and their weights (n_src,) summing to 1."""
        p = self.params
        if p.source_fwhm_A == 0 or p.source_points == 1:
            return np.zeros((1, 2)), np.ones(1)
        sigma = p.source_fwhm_A / (2 * math.sqrt(2 * math.log(2)))
        x, w = np.polynomial.hermite.hermgauss(p.source_points)
        x = x * math.sqrt(2) * sigma
        w = w / w.sum()
        dy, dx = np.meshgrid(x, x, indexing="ij")
        wy, wx = np.meshgrid(w, w, indexing="ij")
        return np.stack([dy.ravel(), dx.ravel()], axis=1), (wy * wx).ravel()

    # -- simulation -------------------------------------------------------------------
    def cache_path(self) -> Path:
        return self.cache_dir / f"crystal-{self.params.cache_key(self.versions())}.npz"

    @property
    def simulated(self) -> bool:
        return self._data is not None

    @property
    def from_cache(self) -> bool:
        """Whether the data came from the cache (False before :meth:`simulate`)."""
        return self._data is not None and self._data.from_cache

    @property
    def simulation_seconds(self) -> float:
        """Wall time of the last simulation or cache load, s."""
        return 0.0 if self._data is None else self._data.seconds

    def simulate(self, progress: ProgressCallback | None = None) -> np.ndarray:
        """The noise-free 4D data set, from the cache or by abTEM multislice.

        Parameters
        ----------
        progress : callable, optional
            ``progress(done, total, message)`` after each configuration.

        Returns
        -------
        ndarray, shape (ny, nx, qy, qx), float32
            Frozen-phonon (and source) averaged intensity per detector pixel, as a
            fraction of the incident electrons.
        """
        if self._data is not None:
            return self._data.intensities
        t0 = time.perf_counter()
        path = self.cache_path()
        if self.use_cache and path.exists():
            with np.load(path) as z:
                data = _Dataset(z["intensities"], z["atom_positions"], 0.0, True, path)
            data.seconds = time.perf_counter() - t0
            n = len(data.atom_positions)
            if progress is not None:
                progress(n, n, f"loaded from cache {path.name}")
            self._data = data
            return data.intensities
        positions = self.configurations()
        total = len(positions)
        acc = np.zeros((*self.scan_shape, *self.detector_shape), np.float64)
        timings = []
        for n, pos in enumerate(positions):
            tc = time.perf_counter()
            acc += self._multislice(pos)
            timings.append(time.perf_counter() - tc)
            if progress is not None:
                progress(n + 1, total, f"configuration {n + 1}/{total} ({timings[-1]:.1f} s)")
        intensities = (acc / total).astype(np.float32)
        data = _Dataset(intensities, positions, time.perf_counter() - t0, False, None, timings)
        if self.use_cache:
            data.path = self._write_cache(path, intensities, positions)
        self._data = data
        return intensities

    def _write_cache(self, path: Path, intensities: np.ndarray, positions: np.ndarray) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz.part")
        with os.fdopen(fd, "wb") as f:
            np.savez(f, intensities=intensities, atom_positions=positions,
                     params=json.dumps(asdict(self.params), default=str), versions=json.dumps(self.versions()))  # fmt: skip
        os.replace(tmp, path)  # atomic: a reader never sees a half-written file
        return path

    def _multislice(self, positions: np.ndarray) -> np.ndarray:
        """Patterns of one configuration, (ny, nx, qy, qx) float64 (source-averaged)."""
        import abtem

        p = self.params
        atoms = self.atoms.copy()  # type: ignore[attr-defined]
        atoms.set_positions(positions)
        potential = abtem.Potential(
            atoms, sampling=p.sampling_A, slice_thickness=p.slice_thickness_A,
            parametrization="lobato", projection="infinite",
        )  # fmt: skip
        probe = abtem.Probe(energy=p.energy_eV, semiangle_cutoff=p.semiangle_mrad, defocus=p.defocus_A)
        offsets, weights = self.source_offsets()
        yx = self.scan_positions()
        shifted = (yx[None, :, :] + offsets[:, None, :]).reshape(-1, 2)
        scan = abtem.CustomScan(shifted[:, ::-1].copy())  # abTEM positions are (x, y)
        waves = probe.multislice(potential, scan=scan, lazy=True)
        waves = waves.compute(scheduler="threads", num_workers=self.num_threads, progress_bar=False)
        sampling = (float(waves.sampling[1]), float(waves.sampling[0]))  # (y, x) Å
        lam = electron_wavelength_A(p.energy_eV)
        # abTEM band-limits its waves to 2/3 of the Nyquist angle λ/(2·pixel) (anti-aliasing)
        cutoff_mrad = 1e3 * lam / (3 * max(sampling))
        if cutoff_mrad < p.max_angle_mrad:
            raise ValueError(
                f"sampling_A={p.sampling_A} Å limits the simulated angles to {cutoff_mrad:.1f} mrad, "
                f"less than the detector's {p.max_angle_mrad} mrad: use a finer sampling"
            )
        psi = np.swapaxes(np.asarray(waves.array).reshape(-1, *waves.gpts), -1, -2)  # (n, y, x)
        out = self._to_detector(psi, shifted, sampling, lam)  # (n_src·n_pos, qy, qx)
        out = out.reshape(len(weights), -1, *self.detector_shape)
        out = np.tensordot(weights, out, axes=1)
        return out.reshape(*self.scan_shape, *self.detector_shape)

    def _to_detector(self, psi: np.ndarray, positions_A: np.ndarray, sampling_A: tuple[float, float],
                     wavelength_A: float) -> np.ndarray:
        """Exit waves (n, H, W) (y, x) of probes at ``positions_A`` (n, 2) → patterns (n, qy, qx).

        Each periodic wave is rolled so its probe sits at the window centre (the cut where
        the zero-padded far field sees the wave end is then as far from the probe as the
        cell allows) and integrated over the camera's pixels
        (:func:`pixel_integrated_patterns`).
        """
        h, w = psi.shape[-2:]
        psi = psi.copy()
        for j, (y, x) in enumerate(positions_A):
            shift = (h // 2 - round(y / sampling_A[0]), w // 2 - round(x / sampling_A[1]))
            psi[j] = np.roll(psi[j], shift, axis=(0, 1))
        qy, qx = self.detector_shape
        ay, ax = self.params.angular_sampling_mrad
        centres = ((np.arange(qy) - qy // 2) * ay, (np.arange(qx) - qx // 2) * ax)
        return pixel_integrated_patterns(psi, sampling_A, wavelength_A, centres, (ay, ax))

    # -- camera interface -----------------------------------------------------------------
    def electrons(self, ix: np.ndarray, iy: np.ndarray, t: np.ndarray) -> np.ndarray:
        """Poisson electron counts of the patterns at scan positions (ix, iy).

        Parameters
        ----------
        ix, iy : ndarray, shape (B,), int
            Scan column and row.
        t : ndarray, shape (B,), float
            Simulated time, s (unused: the crystal is static between configurations).

        Returns
        -------
        ndarray, shape (B, qy, qx), int64
            Electrons per pixel, Poisson(intensity·dose·step²).
        """
        data = self.simulate()
        ny, nx = self.scan_shape
        ix, iy = np.asarray(ix, dtype=np.int64), np.asarray(iy, dtype=np.int64)
        if ix.size and (ix.min() < 0 or iy.min() < 0 or ix.max() >= nx or iy.max() >= ny):
            raise ValueError(f"scan positions outside the simulated {nx}×{ny} raster")
        lam = data[iy, ix].astype(np.float64) * self.electrons_per_pattern
        return self.rng.poisson(lam)

    def drift(self, t: np.ndarray | float) -> np.ndarray:
        """No drift: zeros of shape (…, 2), nm."""
        return np.zeros((*np.shape(t), 2))

    def site_shift(self, t: np.ndarray | float) -> np.ndarray:
        """No drift: zeros of shape (…, 2), int."""
        return np.zeros((*np.shape(t), 2), dtype=np.int64)

    def metadata(self) -> dict[str, Any]:
        """Start-document keys of ``services/ptycho/CAVIAR_CONTRACT.md`` (JSON-serialisable)."""
        p = self.params
        positions = np.asarray(self.atoms.get_positions())  # type: ignore[attr-defined]
        return {
            "energy_eV": float(p.energy_eV),
            "semiangle_mrad": float(p.semiangle_mrad),
            "defocus_A": float(p.defocus_A),
            "defocus_convention": "abTEM defocus = -C10; positive = underfocus; focal plane at the entrance surface",
            "wavelength_A": electron_wavelength_A(p.energy_eV),
            "scan_step_A": float(p.step_A),
            "scan_origin_A": [float(v) for v in self.scan_origin],
            "detector_shape": [int(v) for v in p.detector_shape],
            "angular_sampling_mrad": [float(v) for v in p.angular_sampling_mrad],
            "max_angle_mrad": float(p.max_angle_mrad),
            "dose_e_per_A2": float(self.dose),
            "dose_unit": "electrons per Å² of scanned area; electrons per pattern = dose·step²",
            "electrons_per_pattern": float(self.electrons_per_pattern),
            "crystal": p.crystal.name,
            "phonon_model": p.phonon_model,
            "temperature_K": float(p.temperature_K),
            "n_configurations": int(p.n_configurations),
            "einstein_sigma_A": self.einstein_sigma() if p.phonon_model == "einstein" else None,
            "springs": [asdict(s) for s in p.springs_or_default()],
            "source_fwhm_A": float(p.source_fwhm_A),
            "source_points": int(p.source_points) if p.source_fwhm_A > 0 else 1,
            "sample_thickness_A": float(p.crystal.thickness),
            "cell_A": self.cell.tolist(),
            "potential_sampling_A": float(p.sampling_A),
            "slice_thickness_A": float(p.slice_thickness_A),
            "n_atoms": len(positions),
            "simulator": self.versions(),
            "seed": int(self.seed),
        }

    def geometry(self) -> dict[str, Any]:
        """The camera's ``geometry`` configuration (JSON): detector and probe."""
        p = self.params
        return {
            "detector_shape": [int(v) for v in p.detector_shape],
            "angular_sampling_mrad": [float(v) for v in p.angular_sampling_mrad],
            "energy_eV": float(p.energy_eV),
            "semiangle_mrad": float(p.semiangle_mrad),
            "defocus_A": float(p.defocus_A),
            "scan_step_A": float(p.step_A),
        }

    def truth(self) -> CrystalSampleTruth:
        """Ground truth; simulates (or loads the cache) to get the configurations."""
        self.simulate()
        assert self._data is not None
        numbers = np.asarray(self.atoms.get_atomic_numbers(), dtype=np.int64)  # type: ignore[attr-defined]
        return CrystalSampleTruth(
            atom_positions=np.asarray(self._data.atom_positions, dtype=np.float64),
            atom_equilibrium=np.asarray(self.atoms.get_positions(), dtype=np.float64),  # type: ignore[attr-defined]
            atomic_numbers=numbers,
            masses_amu=np.asarray(self.atoms.get_masses(), dtype=np.float64),  # type: ignore[attr-defined]
            greens_tensor_analytic=self.greens_tensor(),
            scan_positions_A=self.scan_positions(),
            temperature_K=float(self.params.temperature_K),
        )
