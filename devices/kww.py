"""Stretched-exponential (KWW) speckle dynamics as a sum of Ornstein–Uhlenbeck processes.

The intermediate scattering function of a supercooled liquid relaxes as a stretched
exponential (Kohlrausch–Williams–Watts),

    g1(Δt) = exp(−(Δt/τ)^β),   0 < β ≤ 1,

and, for a fully coherent speckle pattern of a complex Gaussian field E, the intensity
autocorrelation follows the Siegert relation

    g2(Δt) = ⟨I(t) I(t+Δt)⟩ / ⟨I⟩² = 1 + A·|g1(Δt)|² = 1 + A·exp(−2(Δt/τ)^β).

A stretched exponential is a superposition of simple exponentials (it is completely
monotone), so it is approximated here by J exponentials, g1(x) ≈ Σ_j w_j·exp(−x/r_j)
(x = Δt/τ, w_j ≥ 0, Σ w_j = 1), fitted once per β by least squares over
x ∈ [10⁻³, 30]. The field is then E = Σ_j √w_j·E_j with E_j independent unit-variance
complex Ornstein–Uhlenbeck processes of correlation time r_j·τ. An OU process sampled
at arbitrary times is an exact AR(1) recursion,

    E_j(t + Δt) = ρ_j·E_j(t) + √(1 − ρ_j²)·ξ,   ρ_j = exp(−Δt/(r_j·τ)),   ξ ~ CN(0, 1),

so frames are generated on demand from a small state (J complex numbers per pixel)
without storing the time series.

References
----------
R. Kohlrausch, Ann. Phys. 167, 179 (1854); G. Williams and D. C. Watts, Trans. Faraday
Soc. 66, 80 (1970) — the stretched exponential.
L. He, P. Zhang, M. F. Besser, M. J. Kramer, P. M. Voyles, Microsc. Microanal. 21, 1026
(2015); P. Zhang, Z. Maldonis, Z. Liu, J. Schroers, P. M. Voyles, Nat. Commun. 9, 1129
(2018) — electron correlation microscopy, g2 = 1 + A·exp(−2(Δt/τ)^β).
Huang & Voyles — k-resolved ECM in 5D-STEM (``ARCHITECTURE.md`` §3).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy.optimize import least_squares, nnls

__all__ = [
    "BETA_RANGE",
    "KWWMixture",
    "SpeckleField",
    "kww_g1",
    "kww_g2",
    "kww_mixture",
]

#: Stretching exponents the mixture fit supports (inclusive).
BETA_RANGE: tuple[float, float] = (0.2, 1.0)

# Where the sum-of-exponentials fit is made, in units of x = Δt/τ.
_FIT_X = np.logspace(-3.0, np.log10(30.0), 240)


def kww_g1(dt: np.ndarray | float, tau: np.ndarray | float, beta: np.ndarray | float) -> np.ndarray:
    """Field autocorrelation exp(−(Δt/τ)^β).

    Parameters
    ----------
    dt : array_like
        Lag Δt ≥ 0, s.
    tau : array_like
        Relaxation time τ > 0, s.
    beta : array_like
        Stretching exponent β in (0, 1].

    Returns
    -------
    ndarray, float64
        Broadcast of the inputs.
    """
    return np.exp(-((np.asarray(dt, float) / np.asarray(tau, float)) ** np.asarray(beta, float)))


def kww_g2(
    dt: np.ndarray | float,
    tau: np.ndarray | float,
    beta: np.ndarray | float,
    contrast: np.ndarray | float = 1.0,
) -> np.ndarray:
    """Intensity autocorrelation 1 + A·exp(−2(Δt/τ)^β) (Siegert relation).

    Parameters
    ----------
    dt, tau, beta : array_like
        As :func:`kww_g1`.
    contrast : array_like
        Speckle contrast A (1 for a fully coherent, single-mode speckle).

    Returns
    -------
    ndarray, float64
    """
    return 1.0 + np.asarray(contrast, float) * kww_g1(dt, tau, beta) ** 2


@dataclass(frozen=True)
class KWWMixture:
    """Sum-of-exponentials approximation of exp(−x^β).

    Attributes
    ----------
    beta : float
        Stretching exponent approximated.
    weights : ndarray, shape (J,), float64
        w_j ≥ 0, summing to 1.
    tau_ratios : ndarray, shape (J,), float64
        r_j: correlation time of component j in units of τ.
    max_error : float
        max |Σ w_j exp(−x/r_j) − exp(−x^β)| over x ∈ [10⁻³, 30].
    """

    beta: float
    weights: np.ndarray
    tau_ratios: np.ndarray
    max_error: float

    def g1(self, x: np.ndarray | float) -> np.ndarray:
        """The approximation at x = Δt/τ (array_like, ≥ 0)."""
        x = np.asarray(x, float)
        return np.exp(-x[..., None] / self.tau_ratios) @ self.weights


@lru_cache(maxsize=512)
def kww_mixture(beta: float, n_components: int = 6) -> KWWMixture:
    """Fit exp(−x^β) by ``n_components`` exponentials (cached per (β, J)).

    Non-negative least squares on a log-spaced grid of r_j whose span widens as β
    falls, refined by nonlinear least squares over both r_j and w_j.

    Parameters
    ----------
    beta : float
        Stretching exponent in :data:`BETA_RANGE`.
    n_components : int
        J, 1 to 16. Six components reach a maximum error of ≈ 5·10⁻³ at β = 0.3,
        2·10⁻³ at β = 0.5 and < 5·10⁻⁴ for β ≥ 0.7 (see ``tests/unit/test_liquid.py``).

    Returns
    -------
    KWWMixture

    Raises
    ------
    ValueError
        For β outside :data:`BETA_RANGE` or J outside 1–16.
    """
    beta = float(beta)
    if not BETA_RANGE[0] <= beta <= BETA_RANGE[1]:
        raise ValueError(f"beta must be in {BETA_RANGE}, got {beta!r}")
    if int(n_components) != n_components or not 1 <= n_components <= 16:
        raise ValueError(f"n_components must be an integer in 1..16, got {n_components!r}")
    j = int(n_components)
    x = _FIT_X
    target = np.exp(-(x**beta))
    if beta >= 1.0 - 1e-12:
        return KWWMixture(beta, np.full(j, 1.0 / j), np.ones(j), 0.0)
    span = 1.0 - beta
    ratios = np.logspace(-8.0 * span - 0.05, 2.0 * span + 0.05, j)
    design = np.exp(-x[:, None] / ratios[None, :])
    # A heavy extra row pins Σ w = 1 (g1(0) = 1).
    w, _ = nnls(np.vstack([design, 100.0 * np.ones(j)]), np.append(target, 100.0))
    w = np.maximum(w, 1e-6)
    w /= w.sum()

    def residual(p: np.ndarray) -> np.ndarray:
        lw = p[j:]
        ww = np.exp(lw - lw.max())
        ww /= ww.sum()
        return np.exp(-x[:, None] / np.exp(p[:j])[None, :]) @ ww - target

    sol = least_squares(residual, np.concatenate([np.log(ratios), np.log(w)]), xtol=1e-10)
    ratios = np.exp(sol.x[:j])
    w = np.exp(sol.x[j:] - sol.x[j:].max())
    w /= w.sum()
    order = np.argsort(ratios)
    return KWWMixture(beta, w[order], ratios[order], float(np.abs(residual(sol.x)).max()))


class SpeckleField:
    """Complex Gaussian speckle amplitudes with KWW time correlation, generated on demand.

    Holds ``n_sites`` × ``n_pixels`` independent fields (one per sample site and
    detector pixel). Pixel ``p`` of site ``s`` relaxes with ``tau[s, pixel_class[p]]``
    and ``beta[s, pixel_class[p]]``: pixels of one class (e.g. a k_φ bin) share the
    dynamics of the domain that diffracts into them.

    Parameters
    ----------
    tau : ndarray, shape (n_sites, n_classes), float
        τ per site and class, s (> 0).
    beta : ndarray, shape (n_sites, n_classes), float
        β per site and class, in :data:`BETA_RANGE`. Values are used as given; round
        them (e.g. to 0.02) to keep the number of distinct fits small.
    pixel_class : ndarray, shape (n_pixels,), int
        Class of every pixel, in ``[0, n_classes)``.
    rng : numpy.random.Generator
        Source of the innovations.
    n_components : int
        J of :func:`kww_mixture`.

    Notes
    -----
    State: ``n_sites · n_pixels · J`` complex64 (8 bytes each), see :meth:`state_bytes`.
    A site never visited starts from the stationary distribution at its first visit.
    """

    def __init__(
        self,
        tau: np.ndarray,
        beta: np.ndarray,
        pixel_class: np.ndarray,
        rng: np.random.Generator,
        *,
        n_components: int = 6,
    ) -> None:
        tau = np.asarray(tau, float)
        beta = np.asarray(beta, float)
        pixel_class = np.asarray(pixel_class)
        if tau.ndim != 2 or beta.shape != tau.shape:
            raise ValueError(f"tau and beta must be 2-D of one shape, got {tau.shape}, {beta.shape}")
        if not (np.isfinite(tau).all() and (tau > 0).all()):
            raise ValueError("tau must be finite and > 0 s")
        if pixel_class.ndim != 1 or pixel_class.size == 0:
            raise ValueError(f"pixel_class must be a non-empty 1-D array, got shape {pixel_class.shape}")
        if pixel_class.min() < 0 or pixel_class.max() >= tau.shape[1]:
            raise ValueError(f"pixel_class values must be in [0, {tau.shape[1]})")
        self.n_sites, self.n_classes = tau.shape
        self.n_pixels = int(pixel_class.size)
        self.n_components = int(n_components)
        self.pixel_class = pixel_class.astype(np.intp)
        self.rng = rng
        rates = np.empty((*tau.shape, self.n_components))
        sqrt_w = np.empty_like(rates)
        for b in np.unique(beta):
            mix = kww_mixture(float(b), self.n_components)
            sel = beta == b
            rates[sel] = 1.0 / (tau[sel][:, None] * mix.tau_ratios[None, :])
            sqrt_w[sel] = np.sqrt(mix.weights)
        self._rates = rates
        self._sqrt_w = sqrt_w.astype(np.float32)
        self._state = np.zeros((self.n_sites, self.n_pixels, self.n_components), np.complex64)
        self._last = np.full(self.n_sites, np.nan)

    @staticmethod
    def state_bytes(n_sites: int, n_pixels: int, n_components: int = 6) -> int:
        """Memory of the state for these sizes, bytes."""
        return int(n_sites) * int(n_pixels) * int(n_components) * 8

    def amplitudes(self, sites: np.ndarray, times: np.ndarray) -> np.ndarray:
        """Advance the given sites to the given times and return their fields.

        Parameters
        ----------
        sites : ndarray, shape (B,), int
            Distinct site indices.
        times : ndarray, shape (B,), float
            Time of each sample, s; not earlier than that site's previous sample.

        Returns
        -------
        ndarray, shape (B, n_pixels), complex64
            E with ⟨|E|²⟩ = 1.

        Raises
        ------
        ValueError
            For repeated sites, or a time earlier than the site's last sample.
        """
        sites = np.asarray(sites, np.intp)
        times = np.asarray(times, float)
        if sites.shape != times.shape or sites.ndim != 1:
            raise ValueError(f"sites and times must be 1-D of one length, got {sites.shape}, {times.shape}")
        if np.unique(sites).size != sites.size:
            raise ValueError("sites within one call must be distinct")
        last = self._last[sites]
        dt = times - last
        if (dt < 0).any():
            raise ValueError("time went backwards for a site: samples must come in time order")
        b = sites.size
        # ρ per (site, class, component), then per pixel by class; first visit: ρ = 0.
        rho_c = np.exp(-np.nan_to_num(dt, nan=np.inf)[:, None, None] * self._rates[sites])
        rho = rho_c[:, self.pixel_class, :].astype(np.float32)
        noise = self.rng.standard_normal(2 * b * self.n_pixels * self.n_components, dtype=np.float32)
        noise = noise.view(np.complex64).reshape(b, self.n_pixels, self.n_components)
        innovation = np.sqrt(np.float32(0.5) * (1.0 - rho * rho))
        state = rho * self._state[sites] + innovation * noise
        self._state[sites] = state
        self._last[sites] = times
        weights = self._sqrt_w[sites][:, self.pixel_class, :]
        return np.einsum("bpj,bpj->bp", state, weights)
