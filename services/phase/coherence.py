"""Partial coherence: the measured intensity is the coherent one blurred by a kernel.

With a partially coherent beam the detector records I_pc = I_coh ⊛ K, where K (sum 1)
is the Fourier transform of the normalised mutual coherence function and I_coh = |Ψ|²
the fully coherent intensity of the current exit wave (Clark & Peele, Appl. Phys. Lett.
99, 154103 (2011)). The modulus constraint then rescales Ψ by sqrt(I_meas / I_coh ⊛ K),
and K itself is estimated every few iterations by Richardson–Lucy deconvolution with
I_coh playing the role of the known image (Clark et al., Nat. Commun. 3, 993 (2012);
Battistelli et al., Optica 11, 234 (2024)):

    K ← K · [(I_meas / (I_coh ⊛ K)) ⋆ I_coh] / Σ I_coh ,

the correlation ⋆ taken over the measured pixels (the ratio is 1 where unmeasured), K
kept inside a (2·radius + 1)² window around q = 0 and renormalised to sum 1.

Arrays here are in FFT order (q = 0 at index (0, 0)); convolutions are periodic, by real
FFTs (:mod:`scipy.fft`, one worker).
"""

from __future__ import annotations

import numpy as np
import scipy.fft

__all__ = ["CoherenceKernel", "gaussian_kernel"]


def _window(shape: tuple[int, int], radius: int) -> np.ndarray:
    ny, nx = shape
    dy = np.minimum(np.arange(ny), ny - np.arange(ny))[:, None]
    dx = np.minimum(np.arange(nx), nx - np.arange(nx))[None, :]
    return (dy <= radius) & (dx <= radius)


def gaussian_kernel(shape: tuple[int, int], sigma_px: float, radius: int) -> np.ndarray:
    """Normalised Gaussian kernel in FFT order.

    Parameters
    ----------
    shape : tuple of int
        Detector grid (ny, nx), px.
    sigma_px : float
        Standard deviation (detector px), > 0.
    radius : int
        Half-size of the square support around q = 0 (px), >= 1.

    Returns
    -------
    ndarray, shape (ny, nx), float64
        exp(−|q|²/2σ²) inside the window, 0 outside, sum 1, centred at index (0, 0).
    """
    if not sigma_px > 0:
        raise ValueError(f"sigma_px must be > 0, got {sigma_px!r}")
    if int(radius) != radius or radius < 1:
        raise ValueError(f"radius must be an int >= 1, got {radius!r}")
    ny, nx = shape
    dy = np.minimum(np.arange(ny), ny - np.arange(ny))[:, None]
    dx = np.minimum(np.arange(nx), nx - np.arange(nx))[None, :]
    k = np.exp(-(dy * dy + dx * dx) / (2.0 * sigma_px**2)) * _window(shape, int(radius))
    return k / k.sum()


class CoherenceKernel:
    """The blurring kernel K and its Richardson–Lucy update.

    Parameters
    ----------
    shape : tuple of int
        Detector grid (ny, nx), px.
    sigma_px : float
        σ of the initial Gaussian (detector px), > 0: Richardson–Lucy is multiplicative
        and cannot grow K where it starts at 0.
    radius : int
        Half-size of the window K lives in (px), >= 1.
    """

    def __init__(self, shape: tuple[int, int], sigma_px: float = 1.0, radius: int = 6) -> None:
        self.shape = (int(shape[0]), int(shape[1]))
        self.radius = int(radius)
        self.kernel = gaussian_kernel(self.shape, sigma_px, radius)
        self._window = _window(self.shape, self.radius)
        self._khat = scipy.fft.rfft2(self.kernel.astype(np.float32), workers=1)

    def blur(self, intensity: np.ndarray) -> np.ndarray:
        """I ⊛ K (periodic), shape (ny, nx), float32."""
        ihat = scipy.fft.rfft2(intensity, workers=1)
        ihat *= self._khat
        return scipy.fft.irfft2(ihat, s=self.shape, workers=1)

    def update(
        self, coherent: np.ndarray, measured: np.ndarray, valid: np.ndarray, n_iter: int = 10
    ) -> None:
        """``n_iter`` Richardson–Lucy steps for K given I_coh and I_meas.

        Parameters
        ----------
        coherent : ndarray, shape (ny, nx), float
            I_coh = |Ψ|² of the current estimate, FFT order.
        measured : ndarray, shape (ny, nx), float
            I_meas, FFT order, same scale as the estimate.
        valid : ndarray, shape (ny, nx), bool
            Measured pixels.
        n_iter : int
            Richardson–Lucy steps (>= 1).
        """
        c = np.asarray(coherent, dtype=np.float64)
        chat = scipy.fft.rfft2(c, workers=1)
        chat_conj = np.conj(chat)
        total = float(c.sum())
        if not total > 0:
            return
        k = self.kernel
        for _ in range(int(n_iter)):
            khat = scipy.fft.rfft2(k, workers=1)
            model = scipy.fft.irfft2(chat * khat, s=self.shape, workers=1)
            ratio = np.ones(self.shape)
            good = valid & (model > 0)
            ratio[good] = measured[good] / model[good]
            corr = scipy.fft.irfft2(
                scipy.fft.rfft2(ratio, workers=1) * chat_conj, s=self.shape, workers=1
            )
            k = np.maximum(k * corr / total, 0.0) * self._window
            s = k.sum()
            if not s > 0:
                return
            k /= s
        self.kernel = k
        self._khat = scipy.fft.rfft2(k.astype(np.float32), workers=1)
