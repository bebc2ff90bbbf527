"""Holography-aided phase retrieval of one magnetic state from its two helicities.

Pipeline (Battistelli et al., Optica 11, 234 (2024)):

1. :func:`.prepare.prepare_holograms` — masks, centring, crop-then-bin, noise floor;
2. :func:`.support.support_from_hologram` — support from the FTH reconstruction of
   I_+ + I_−, optionally refined by shrink-wrap during the + retrieval;
3. + helicity: RAAR (Luke 2005) then ER, measured moduli on the valid pixels, free
   moduli behind the beamstop (:class:`.retrieval.Retriever`); between the two the
   loose FTH support is cut to where |φ_+| is at least ``amplitude_threshold`` × its
   median (``tighten_support``);
4. − helicity: RAAR then ER on the final + support. The paper seeds it with the +
   exit wave (``minus_seed="plus"``, with ``n_raar_minus=0`` its ER-only recipe). On
   the simulator that seed keeps the − wave near the + one in the low-q modes the
   beamstop hides: for a single domain wall or stripes |φ_−| then anti-correlates with
   the truth (mz correlation 0.38–0.43) while an independent start gives 0.96–0.997
   (maze states: 0.998 either way), so ``"independent"`` is the default;
5. optional partial coherence: Richardson–Lucy estimate of the blurring kernel every
   ``coherence_every`` iterations (:mod:`.coherence`);
6. mz ∝ log|φ_+/φ_−| inside the object support where |φ_+| is at least
   ``amplitude_threshold`` × its median (the aperture proper); for
   φ_± = φ_c·(1 ± c·mz), log|φ_+/φ_−| ≈ 2·Re(c)·mz;
7. optional refocusing (:mod:`.propagation`) of both waves by the distance that
   maximises the sharpness of φ_+.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from .coherence import CoherenceKernel
from .fftbackend import resolve_backend
from .prepare import PreparedHolograms, prepare_holograms
from .propagation import angular_spectrum, focus_search
from .retrieval import IterationLog, Retriever
from .support import Support, shrink_wrap, support_from_hologram

__all__ = ["PhaseParams", "PhaseResult", "Progress", "retrieve_starts", "retrieve_state"]

#: progress(step_name, done, total)
Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class PhaseParams:
    """Parameters of :func:`retrieve_state` (defaults converge on the simulator).

    Attributes
    ----------
    n_raar, n_er : int
        RAAR then ER iterations for the + helicity.
    n_raar_minus, n_er_minus : int
        RAAR then ER iterations for the − helicity.
    minus_seed : str
        ``"plus"``: start the − helicity from the + exit wave (the paper's recipe);
        ``"independent"``: from the same kind of start as the +, on the final + support.
    beta : tuple of float
        RAAR β (start, end), ramped linearly, each in (0, 1].
    init : str
        ``"support"`` (uniform wave on the support) or ``"random"`` (random phases,
        seeded by ``seed``) for the + start.
    seed : int
        Random start.
    support_dilate_px : int or None
        Dilation of the FTH support (px); None: round(R/8) for an object aperture of
        radius R (:func:`.support.support_from_hologram`), the same relative looseness
        on every grid.
    tighten_support : bool
        After the + RAAR iterations, cut the object support down to where the smoothed
        |φ_+| >= ``amplitude_threshold`` × its median (the aperture proper): the loose
        FTH support leaves the low-q modes hidden by the beamstop weakly constrained.
    shrink_wrap_every : int
        Shrink-wrap the object support every this many + iterations (0: off).
    shrink_wrap_sigma_px, shrink_wrap_threshold : float
        Gaussian σ (px) and threshold (fraction of the maximum) of shrink-wrap.
    coherence : bool
        Model partial coherence (Richardson–Lucy kernel estimate).
    coherence_every, coherence_start : int
        Kernel update period and the first iteration with the kernel (iterations).
    coherence_rl_iterations : int
        Richardson–Lucy steps per update.
    coherence_sigma_px : float
        σ of the initial Gaussian kernel (detector px).
    coherence_radius_px : int
        Half-size of the kernel window (detector px).
    amplitude_threshold : float
        mz is computed where |φ_+| >= this × its median over the object support.
    focus_range_nm : tuple of float or None
        Search range of the refocusing distance, nm; None: no refocusing.
    wavelength_nm, pixel_size_nm : float or None
        Wavelength and sample-plane pixel size, nm (needed for refocusing; the pixel
        size also converts resolutions to nm).
    fft_backend : str
        ``"auto"``, ``"pyfftw"``, ``"scipy"`` or ``"numpy"``.
    noise_floor : float
        Subtracted from the holograms (input units).
    find_center : bool
        Re-centre the holograms on their centre of symmetry.
    crop : int or None
        Centred crop of the holograms (px).
    bin : int
        Binning after the crop.
    """

    n_raar: int = 300
    n_er: int = 100
    n_raar_minus: int = 300
    n_er_minus: int = 100
    minus_seed: str = "independent"
    beta: tuple[float, float] = (0.9, 0.9)
    init: str = "support"
    seed: int = 0
    support_dilate_px: int | None = None
    tighten_support: bool = True
    shrink_wrap_every: int = 0
    shrink_wrap_sigma_px: float = 1.0
    shrink_wrap_threshold: float = 0.3
    coherence: bool = False
    coherence_every: int = 25
    coherence_start: int = 50
    coherence_rl_iterations: int = 10
    coherence_sigma_px: float = 1.0
    coherence_radius_px: int = 6
    amplitude_threshold: float = 0.5
    focus_range_nm: tuple[float, float] | None = None
    wavelength_nm: float | None = None
    pixel_size_nm: float | None = None
    fft_backend: str = "auto"
    noise_floor: float = 0.0
    find_center: bool = False
    crop: int | None = None
    bin: int = 1

    def __post_init__(self) -> None:
        for name in (
            "n_raar",
            "n_er",
            "n_raar_minus",
            "n_er_minus",
            "shrink_wrap_every",
            "coherence_every",
            "coherence_start",
            "coherence_rl_iterations",
            "bin",
        ):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
                raise ValueError(f"{name} must be an int >= 0, got {v!r}")
        d = self.support_dilate_px
        if d is not None and (isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 0):
            raise ValueError(f"support_dilate_px must be None or an int >= 0, got {d!r}")
        if self.n_raar + self.n_er < 1:
            raise ValueError(f"n_raar + n_er must be >= 1, got {self.n_raar} + {self.n_er}")
        if (
            int(self.coherence_radius_px) != self.coherence_radius_px
            or self.coherence_radius_px < 1
        ):
            raise ValueError(
                f"coherence_radius_px must be an int >= 1, got {self.coherence_radius_px!r}"
            )
        b = tuple(self.beta)
        if len(b) != 2 or not all(0 < float(v) <= 1 for v in b):
            raise ValueError(f"beta must be (start, end) in (0, 1], got {self.beta!r}")
        if self.minus_seed not in ("plus", "independent"):
            raise ValueError(f"minus_seed must be 'plus' or 'independent', got {self.minus_seed!r}")
        if self.init not in ("support", "random"):
            raise ValueError(f"init must be 'support' or 'random', got {self.init!r}")
        for name in ("shrink_wrap_sigma_px", "coherence_sigma_px"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be > 0, got {v!r}")
        for name in ("shrink_wrap_threshold", "amplitude_threshold"):
            v = getattr(self, name)
            if not 0 <= v < 1:
                raise ValueError(f"{name} must be in [0, 1), got {v!r}")
        for name in ("wavelength_nm", "pixel_size_nm"):
            v = getattr(self, name)
            if v is not None and not (math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be > 0 nm, got {v!r}")
        if self.focus_range_nm is not None and (
            self.wavelength_nm is None or self.pixel_size_nm is None
        ):
            raise ValueError("focus_range_nm needs wavelength_nm and pixel_size_nm")
        resolve_backend(self.fft_backend)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of all parameters (JSON-able)."""
        d = dataclasses.asdict(self)
        d["beta"] = [float(v) for v in self.beta]
        if self.focus_range_nm is not None:
            d["focus_range_nm"] = [float(v) for v in self.focus_range_nm]
        return d


@dataclass(frozen=True)
class PhaseResult:
    """Result of :func:`retrieve_state`.

    Attributes
    ----------
    exit_wave_plus, exit_wave_minus : ndarray, shape (ny, nx), complex64
        Retrieved exit waves φ_+ and φ_− on the sample grid (scale: sqrt of the
        hologram units).
    mz : ndarray, shape (ny, nx), float32
        log|φ_+/φ_−| inside ``mz_support``, 0 elsewhere (dimensionless, ≈ 2·Re(c)·mz).
    mz_support : ndarray, shape (ny, nx), bool
        Where ``mz`` is defined.
    support : ndarray, shape (ny, nx), bool
        Final support (object part ∪ reference holes).
    object_support : ndarray, shape (ny, nx), bool
        Final object part of the support.
    fth_support : Support
        The support found from the FTH reconstruction.
    log_plus, log_minus : IterationLog
        Fourier-modulus and support error per iteration.
    coherence_kernel : ndarray, shape (ny, nx), float64, or None
        Final partial-coherence kernel (FFT order, sum 1), None when coherent.
    focus_nm : float or None
        Refocusing distance applied, nm.
    prepared : PreparedHolograms
    params : PhaseParams
    """

    exit_wave_plus: np.ndarray
    exit_wave_minus: np.ndarray
    mz: np.ndarray
    mz_support: np.ndarray
    support: np.ndarray
    object_support: np.ndarray
    fth_support: Support
    log_plus: IterationLog
    log_minus: IterationLog
    coherence_kernel: np.ndarray | None
    focus_nm: float | None
    prepared: PreparedHolograms
    params: PhaseParams

    def parameters(self) -> dict[str, Any]:
        """All parameters plus the derived geometry and final errors (JSON-able)."""
        d = self.params.to_dict()
        d["fft_backend_used"] = resolve_backend(self.params.fft_backend)
        d["geometry_config"] = self.prepared.geometry_config
        d["center_shift"] = list(self.prepared.center_shift)
        d["focus_nm"] = self.focus_nm
        d["fourier_error_plus"] = float(self.log_plus.fourier_error[-1])
        d["fourier_error_minus"] = (
            float(self.log_minus.fourier_error[-1]) if self.log_minus.fourier_error else None
        )
        return d


def _log_ratio_mz(
    plus: np.ndarray, minus: np.ndarray, object_support: np.ndarray, threshold: float
) -> tuple[np.ndarray, np.ndarray]:
    ap = np.abs(plus)
    am = np.abs(minus)
    smooth = ndimage.gaussian_filter(ap.astype(np.float64), 0.5, mode="wrap")
    med = float(np.median(ap[object_support])) if object_support.any() else 0.0
    region = object_support & (smooth >= threshold * med) & (am > 0) & (ap > 0)
    mz = np.zeros(plus.shape, dtype=np.float32)
    mz[region] = np.log(ap[region] / am[region])
    return mz, region


def _start(support: np.ndarray, total_intensity: float, init: str, seed: int) -> np.ndarray:
    n = support.size
    # uniform amplitude a on |S| px: Σ|F[x]|² = N·a²·|S| ≈ Σ I_meas
    a = math.sqrt(max(total_intensity, 0.0) / (n * max(int(support.sum()), 1)))
    x = np.zeros(support.shape, dtype=np.complex64)
    if init == "random":
        rng = np.random.default_rng(seed)
        x[support] = a * np.exp(2j * np.pi * rng.random(int(support.sum())))
    else:
        x[support] = a
    return x


def retrieve_state(
    hologram_plus: np.ndarray,
    hologram_minus: np.ndarray,
    geometry_config: Mapping[str, Any],
    *,
    params: PhaseParams | None = None,
    bad_pixels: np.ndarray | None = None,
    progress: Progress | None = None,
) -> PhaseResult:
    """Phase-retrieve φ_+ and φ_− of one state and image its mz.

    Parameters
    ----------
    hologram_plus, hologram_minus : ndarray, shape (ny, nx), real
        Averaged (or summed) holograms I_+ and I_− of the state, counts or normalised
        intensity, q = 0 at (ny // 2, nx // 2).
    geometry_config : dict
        Mask geometry (:meth:`speckleflow.devices.fth.FTHGeometry.to_config`).
    params : PhaseParams, optional
        Defaults: :class:`PhaseParams`.
    bad_pixels : ndarray, shape (ny, nx), bool, optional
        Unusable detector pixels.
    progress : callable, optional
        ``progress(step_name, done, total)``, e.g. ("RAAR +", 120, 300).

    Returns
    -------
    PhaseResult

    Raises
    ------
    TypeError, ValueError
        For bad holograms, geometry or parameters (the bad value is named).

    References
    ----------
    R. Battistelli et al., Optica 11, 234 (2024); D. R. Luke, Inverse Problems 21, 37
    (2005); J. R. Fienup, Appl. Opt. 21, 2758 (1982); J. N. Clark and A. G. Peele, Appl.
    Phys. Lett. 99, 154103 (2011).
    """
    p = params if params is not None else PhaseParams()
    if not isinstance(p, PhaseParams):
        raise TypeError(f"params must be a PhaseParams, got {type(p).__name__}")

    def report(step: str, done: int, total: int) -> None:
        if progress is not None:
            progress(step, done, total)

    prep = prepare_holograms(
        hologram_plus,
        hologram_minus,
        geometry_config,
        bad_pixels=bad_pixels,
        noise_floor=p.noise_floor,
        find_center=p.find_center,
        crop=p.crop,
        bin=p.bin,
    )
    report("support", 0, 1)
    fth = support_from_hologram(
        prep.plus + prep.minus, prep.geometry_config, dilate_px=p.support_dilate_px
    )
    report("support", 1, 1)
    refs = fth.mask & ~fth.object_mask
    valid = np.fft.ifftshift(prep.valid)
    coherence = (
        CoherenceKernel(prep.shape, p.coherence_sigma_px, p.coherence_radius_px)
        if p.coherence
        else None
    )
    plus = Retriever(np.fft.ifftshift(prep.plus), valid, fth.mask, fft_backend=p.fft_backend)
    plus.x[...] = _start(fth.mask, float(prep.plus.sum()), p.init, p.seed)

    sw = None
    if p.shrink_wrap_every:

        def sw(x: np.ndarray) -> np.ndarray:
            return (
                shrink_wrap(
                    x,
                    fth.object_mask,
                    sigma_px=p.shrink_wrap_sigma_px,
                    threshold=p.shrink_wrap_threshold,
                )
                | refs
            )

    def run(r: Retriever, n: int, alg: str, step: str, offset: int) -> None:
        if n <= 0:
            return
        # the coherent phase first: the kernel is estimated from a sensible |Ψ|²
        n_coh = 0
        if coherence is not None and r.coherence is None:
            n_coh = min(n, max(p.coherence_start - offset, 0))
            if n_coh:
                r.iterate(
                    n_coh,
                    alg,
                    beta=p.beta,
                    shrink_wrap=sw,
                    shrink_wrap_every=p.shrink_wrap_every,
                    progress=lambda d: report(step, d, n),
                )
            r.coherence = coherence
        if n - n_coh > 0:
            r.iterate(
                n - n_coh,
                alg,
                beta=p.beta,
                coherence_every=p.coherence_every,
                coherence_rl_iterations=p.coherence_rl_iterations,
                shrink_wrap=sw,
                shrink_wrap_every=p.shrink_wrap_every,
                progress=lambda d: report(step, n_coh + d, n),
            )

    run(plus, p.n_raar, "RAAR", "RAAR +", 0)
    if p.tighten_support:
        _, region = _log_ratio_mz(plus.x, plus.x, fth.object_mask, p.amplitude_threshold)
        if region.any():
            plus.set_support(region | refs)
    run(plus, p.n_er, "ER", "ER +", p.n_raar)
    sw = None
    minus = Retriever(
        np.fft.ifftshift(prep.minus),
        valid,
        plus.support,
        fft_backend=p.fft_backend,
        coherence=coherence,
    )
    if p.minus_seed == "plus":
        minus.x[...] = plus.x
    else:
        minus.x[...] = _start(plus.support, float(prep.minus.sum()), p.init, p.seed + 1)
    run(minus, p.n_raar_minus, "RAAR", "RAAR −", p.n_raar + p.n_er)
    run(minus, p.n_er_minus, "ER", "ER −", p.n_raar + p.n_er)
    object_support = plus.support & fth.object_mask
    wave_p, wave_m = plus.x.copy(), minus.x.copy()
    focus = None
    if p.focus_range_nm is not None:
        report("focus", 0, 1)
        assert p.wavelength_nm is not None and p.pixel_size_nm is not None
        focus, _, _ = focus_search(
            wave_p,
            wavelength_nm=p.wavelength_nm,
            pixel_size_nm=p.pixel_size_nm,
            range_nm=p.focus_range_nm,
        )
        wave_p = angular_spectrum(
            wave_p, focus, wavelength_nm=p.wavelength_nm, pixel_size_nm=p.pixel_size_nm
        ).astype(np.complex64)
        wave_m = angular_spectrum(
            wave_m, focus, wavelength_nm=p.wavelength_nm, pixel_size_nm=p.pixel_size_nm
        ).astype(np.complex64)
        report("focus", 1, 1)
    mz, region = _log_ratio_mz(wave_p, wave_m, object_support, p.amplitude_threshold)
    return PhaseResult(
        exit_wave_plus=wave_p,
        exit_wave_minus=wave_m,
        mz=mz,
        mz_support=region,
        support=plus.support.copy(),
        object_support=object_support,
        fth_support=fth,
        log_plus=plus.log,
        log_minus=minus.log,
        coherence_kernel=None if coherence is None else coherence.kernel.copy(),
        focus_nm=focus,
        prepared=prep,
        params=p,
    )


def retrieve_starts(
    hologram_plus: np.ndarray,
    hologram_minus: np.ndarray,
    geometry_config: Mapping[str, Any],
    n_starts: int,
    *,
    params: PhaseParams | None = None,
    progress: Progress | None = None,
) -> list[PhaseResult]:
    """:func:`retrieve_state` from ``n_starts`` random starts (seeds 0 … n − 1), for the PRTF.

    Raises
    ------
    ValueError
        For ``n_starts`` < 2.
    """
    if int(n_starts) != n_starts or n_starts < 2:
        raise ValueError(f"n_starts must be an int >= 2, got {n_starts!r}")
    base = params if params is not None else PhaseParams()
    out = []
    for s in range(int(n_starts)):
        ps = dataclasses.replace(base, init="random", seed=s)
        out.append(
            retrieve_state(
                hologram_plus, hologram_minus, geometry_config, params=ps, progress=progress
            )
        )
        if progress is not None:
            progress("starts", s + 1, int(n_starts))
    return out
