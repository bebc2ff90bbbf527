"""Iterative phase retrieval of one exit wave: RAAR and ER with a Fourier-modulus
constraint on the measured pixels only, optional partial coherence.

Projections (Fienup, Appl. Opt. 21, 2758 (1982); Luke, Inverse Problems 21, 37 (2005)):

* P_M — Fourier-modulus projection: Ψ = F[x]; Ψ ← Ψ·sqrt(I_meas)/|Ψ| on measured
  pixels, Ψ unchanged where unmeasured (beamstop, bad pixels: the moduli are free);
  with partial coherence Ψ ← Ψ·sqrt(I_meas / (|Ψ|² ⊛ K)) (:mod:`.coherence`);
* P_S — support projection: x ← x inside the support S, 0 outside.

ER: x ← P_S P_M x. RAAR (Luke 2005, eq. (20)), with R = 2P − 1:

    x ← [β/2 (R_S R_M + 1) + (1 − β) P_M] x
      = P_M x inside S,   β·x + (1 − 2β)·P_M x outside S,

β ramped linearly from ``beta[0]`` to ``beta[1]`` over the RAAR iterations.

Error metrics, per iteration, before the projection: the Fourier-modulus error
E_F = sqrt(Σ_valid (|Ψ_model| − sqrt(I_meas))² / Σ_valid I_meas) with |Ψ_model|² = |Ψ|²
(coherent) or |Ψ|² ⊛ K, and the support error E_S = sqrt(Σ_{∉S} |P_M x|² / Σ |P_M x|²).

Arrays in this module are in FFT order (q = 0 at index (0, 0)); the caller converts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from scipy.linalg.blas import caxpy as _caxpy
from scipy.linalg.blas import cscal as _cscal

from .coherence import CoherenceKernel
from .fftbackend import FFT2

__all__ = ["IterationLog", "Retriever"]

_TINY = np.float32(1e-20)


@dataclass
class IterationLog:
    """Error metrics per iteration.

    Attributes
    ----------
    fourier_error, support_error : list of float
        E_F and E_S (dimensionless) of every iteration, in order.
    algorithm : list of str
        ``"RAAR"`` or ``"ER"`` per iteration.
    """

    fourier_error: list[float] = field(default_factory=list)
    support_error: list[float] = field(default_factory=list)
    algorithm: list[str] = field(default_factory=list)


class Retriever:
    """Phase retrieval of one exit wave on a fixed grid.

    Parameters
    ----------
    intensity : ndarray, shape (ny, nx), float
        I_meas in FFT order (q = 0 at (0, 0)), >= 0; ignored where not ``valid``.
    valid : ndarray, shape (ny, nx), bool
        Measured pixels, FFT order.
    support : ndarray, shape (ny, nx), bool
        Where the exit wave may be non-zero.
    fft_backend : str
        See :class:`.fftbackend.FFT2`.
    coherence : CoherenceKernel or None
        Partial-coherence model; None: fully coherent.

    Attributes
    ----------
    x : ndarray, shape (ny, nx), complex64
        The current exit-wave estimate (sample grid, arbitrary scale set by I_meas).
    log : IterationLog
    """

    def __init__(
        self,
        intensity: np.ndarray,
        valid: np.ndarray,
        support: np.ndarray,
        *,
        fft_backend: str = "auto",
        coherence: CoherenceKernel | None = None,
    ) -> None:
        shape = intensity.shape
        self.shape = shape
        self.n = shape[0] * shape[1]
        self.valid = np.asarray(valid, dtype=bool)
        self.measured = np.where(self.valid, np.maximum(intensity, 0), 0).astype(np.float32)
        self.amp = np.sqrt(self.measured)
        # amplitudes divided by N: the 1/N of the inverse FFT is folded in here
        self._amp_n = (self.amp / np.float32(self.n)).astype(np.float32)
        self._invalid = np.flatnonzero(~self.valid.ravel())
        self._sum_meas = float(self.measured.sum(dtype=np.float64))
        self.set_support(support)
        self.fft = FFT2(shape, fft_backend)
        self.coherence = coherence
        self.x = np.zeros(shape, dtype=np.complex64)
        self.log = IterationLog()
        self._abs = np.empty(shape, dtype=np.float32)
        self._tmp = np.empty(shape, dtype=np.float32)

    def set_support(self, support: np.ndarray) -> None:
        """Replace the support (bool (ny, nx), FFT-free sample grid)."""
        s = np.asarray(support, dtype=bool)
        if s.shape != self.shape:
            raise ValueError(f"support has shape {s.shape}, expected {self.shape}")
        if not s.any():
            raise ValueError("support is empty")
        self.support = s
        self._s_idx = np.flatnonzero(s.ravel())

    def coherent_intensity(self) -> np.ndarray:
        """|F[x]|² of the current estimate, FFT order, float32."""
        self.fft.array[...] = self.x
        self.fft.forward()
        return (np.abs(self.fft.array) ** 2).astype(np.float32)

    def _project_modulus(self) -> tuple[float, float]:
        """Replace ``fft.array`` (= F[x]) by P_M x (real space).

        Returns E_F of F[x] and Σ|Ψ'|² of the projected Fourier array.
        """
        f = self.fft.array
        a = self._abs
        t = self._tmp
        np.abs(f, out=a)
        if self.coherence is None:
            # Σ_valid (|Ψ| − A)² = Σ|Ψ|² − Σ_invalid |Ψ|² − 2 Σ |Ψ|·A + Σ A² (A = 0 where
            # invalid): two BLAS dot products instead of a difference array
            inv = a.ravel()[self._invalid]
            fr = f.ravel()
            err2 = (
                float(np.vdot(fr, fr).real)
                - float(np.dot(inv, inv))
                - 2.0 * float(np.dot(a.ravel(), self.amp.ravel()))
                + self._sum_meas
            )
            err2 = max(err2, 0.0)
            np.maximum(a, _TINY, out=t)
            np.divide(self._amp_n, t, out=t)
        else:
            np.multiply(a, a, out=t)
            model = self.coherence.blur(t).astype(np.float32)
            np.maximum(model, _TINY, out=model)
            np.sqrt(model, out=model)
            np.subtract(model, self.amp, out=t)
            t.ravel()[self._invalid] = 0.0
            err2 = float(np.dot(t.ravel(), t.ravel()))
            np.divide(self._amp_n, model, out=t)
        t.ravel()[self._invalid] = np.float32(1.0 / self.n)
        # Σ|Ψ'|² = Σ_valid |Ψ|²·factor² + Σ_invalid |Ψ|²  (for the support error)
        inv = a.ravel()[self._invalid]
        if self.coherence is None:
            power = self._sum_meas + float(np.dot(inv, inv))
        else:
            power = float(np.dot((a * t).ravel(), (a * t).ravel())) * self.n**2
        f *= t
        self.fft.inverse_raw()
        return float(np.sqrt(err2 / max(self._sum_meas, 1e-300))), power

    def iterate(
        self,
        n_iter: int,
        algorithm: str,
        *,
        beta: tuple[float, float] = (0.9, 0.9),
        coherence_every: int = 0,
        coherence_rl_iterations: int = 10,
        shrink_wrap: Callable[[np.ndarray], np.ndarray] | None = None,
        shrink_wrap_every: int = 0,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        """Run ``n_iter`` iterations of ``"RAAR"`` or ``"ER"`` on :attr:`x`.

        Parameters
        ----------
        n_iter : int
            Iterations (>= 0).
        algorithm : str
            ``"RAAR"`` or ``"ER"``.
        beta : tuple of float
            RAAR relaxation (start, end) in (0, 1], ramped linearly.
        coherence_every : int
            Update the coherence kernel by Richardson–Lucy every this many iterations
            (0: never; needs :attr:`coherence`).
        coherence_rl_iterations : int
            Richardson–Lucy steps per update.
        shrink_wrap : callable or None
            Maps the current exit wave to a new support (bool (ny, nx)).
        shrink_wrap_every : int
            Apply ``shrink_wrap`` every this many iterations (0: never).
        progress : callable or None
            Called with the number of iterations done, every 10 and at the end.
        """
        if algorithm not in ("RAAR", "ER"):
            raise ValueError(f"algorithm must be 'RAAR' or 'ER', got {algorithm!r}")
        n = int(n_iter)
        b0, b1 = (float(v) for v in beta)
        x = self.x
        s_idx = self._s_idx
        for i in range(n):
            if self.coherence is not None and coherence_every and i and i % coherence_every == 0:
                self.coherence.update(
                    self.coherent_intensity(),
                    self.measured,
                    self.valid,
                    coherence_rl_iterations,
                )
            if shrink_wrap is not None and shrink_wrap_every and i and i % shrink_wrap_every == 0:
                self.set_support(shrink_wrap(x))
                s_idx = self._s_idx
            self.fft.array[...] = x
            self.fft.forward()
            e_f, power = self._project_modulus()
            m = self.fft.array.ravel()
            ms = m[s_idx]
            inside = float(np.vdot(ms, ms).real) * self.n  # Parseval: Σ|Ψ'|² = N·Σ|m|²
            e_s = float(np.sqrt(max(0.0, 1.0 - inside / power))) if power > 0 else 0.0
            if algorithm == "RAAR":
                bt = b0 + (b1 - b0) * (i / max(n - 1, 1))
                # x ← β·x + (1 − 2β)·P_M x (BLAS scal + axpy, in place), then P_M x on S
                xr = x.ravel()
                _cscal(np.complex64(bt), xr)
                _caxpy(self.fft.array.ravel(), xr, a=np.complex64(1.0 - 2.0 * bt))
                xr[s_idx] = ms
            else:
                x[...] = 0
                x.ravel()[s_idx] = ms
            self.log.fourier_error.append(e_f)
            self.log.support_error.append(e_s)
            self.log.algorithm.append(algorithm)
            if progress is not None and ((i + 1) % 10 == 0 or i + 1 == n):
                progress(i + 1)
