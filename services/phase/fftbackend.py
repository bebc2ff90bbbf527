"""In-place complex64 2-D FFTs on a fixed grid, with a choice of backend.

The iterative phase retrieval spends most of its time in one forward and one inverse
2-D FFT per iteration on the same array. :class:`FFT2` holds that work array and
transforms it in place. Backends, fastest first (``bench/bench_phase.py`` measures
them on this machine, one thread each):

* ``"pyfftw"`` — FFTW plans (``FFTW_MEASURE``) on a SIMD-aligned buffer, executed in
  place (pyFFTW, wrapping FFTW 3, single precision);
* ``"scipy"`` — :func:`scipy.fft.fft2` / :func:`scipy.fft.ifft2` (pocketfft),
  ``workers=1``, ``overwrite_x=True``;
* ``"numpy"`` — :func:`numpy.fft.fft2` / :func:`numpy.fft.ifft2` (numpy ≥ 2 keeps
  complex64; a new array per call).

``"auto"`` takes pyfftw when it imports and scipy otherwise. Conventions are numpy's:
forward unnormalised, inverse divided by the number of pixels, zero frequency at index
(0, 0) (no fftshift).

References
----------
M. Frigo and S. G. Johnson, Proc. IEEE 93, 216 (2005) — FFTW.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["BACKENDS", "FFT2", "available_backends", "resolve_backend"]

#: Backends known to :class:`FFT2`, in order of preference for ``"auto"``.
BACKENDS: tuple[str, ...] = ("pyfftw", "scipy", "numpy")


def _have_pyfftw() -> bool:
    try:
        import pyfftw  # noqa: F401
    except ImportError:
        return False
    return True


def available_backends() -> list[str]:
    """Backends that import here, in order of preference."""
    return [b for b in BACKENDS if b != "pyfftw" or _have_pyfftw()]


def resolve_backend(backend: str) -> str:
    """Name of the backend ``backend`` stands for (``"auto"`` → the first available).

    Raises
    ------
    ValueError
        If ``backend`` is unknown, or is ``"pyfftw"`` and pyFFTW does not import.
    """
    if backend == "auto":
        return available_backends()[0]
    if backend not in BACKENDS:
        raise ValueError(f"fft backend must be one of {('auto', *BACKENDS)}, got {backend!r}")
    if backend == "pyfftw" and not _have_pyfftw():
        raise ValueError("fft backend 'pyfftw' requested but pyfftw does not import")
    return backend


class FFT2:
    """Forward and inverse 2-D FFT of one complex64 work array, in place.

    Parameters
    ----------
    shape : tuple of int
        Grid (ny, nx), px.
    backend : str
        ``"auto"``, ``"pyfftw"``, ``"scipy"`` or ``"numpy"`` (see the module docstring).

    Attributes
    ----------
    array : ndarray, shape (ny, nx), complex64
        The work array. Write the input into it, call :meth:`forward` or
        :meth:`inverse`, read the result from it. With the scipy backend the attribute
        is rebound to the transform's output with the scipy and numpy backends:
        always read ``fft.array`` after a call.
    backend : str
        The backend in use.

    Raises
    ------
    ValueError
        For a bad shape or backend.
    """

    def __init__(self, shape: tuple[int, int], backend: str = "auto") -> None:
        try:
            ny, nx = (int(s) for s in shape)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"shape must be (ny, nx), got {shape!r}") from exc
        if ny < 1 or nx < 1:
            raise ValueError(f"shape must be positive, got {shape!r}")
        self.backend = resolve_backend(backend)
        self.shape = (ny, nx)
        self._fwd: Any = None
        self._inv: Any = None
        if self.backend == "pyfftw":
            import pyfftw

            self.array = pyfftw.empty_aligned(self.shape, dtype=np.complex64)
            flags = ("FFTW_MEASURE", "FFTW_DESTROY_INPUT")
            # Planning with FFTW_MEASURE overwrites the buffer; it is empty here.
            self._fwd = pyfftw.FFTW(
                self.array,
                self.array,
                axes=(0, 1),
                direction="FFTW_FORWARD",
                flags=flags,
                threads=1,
            )
            self._inv = pyfftw.FFTW(
                self.array,
                self.array,
                axes=(0, 1),
                direction="FFTW_BACKWARD",
                flags=flags,
                threads=1,
            )
            self.array[...] = 0
        else:
            self.array = np.zeros(self.shape, dtype=np.complex64)

    def forward(self) -> None:
        """``array ← fft2(array)`` (unnormalised)."""
        if self.backend == "pyfftw":
            self._fwd.execute()
        elif self.backend == "scipy":
            import scipy.fft

            self.array = scipy.fft.fft2(self.array, workers=1, overwrite_x=True)
        else:  # numpy's out= may not alias the input of a multi-axis transform
            self.array = np.fft.fft2(self.array)

    def inverse(self) -> None:
        """``array ← ifft2(array)`` (divided by ny·nx)."""
        if self.backend == "pyfftw":
            self._inv.execute()
            self.array *= np.float32(1.0 / (self.shape[0] * self.shape[1]))
        elif self.backend == "scipy":
            import scipy.fft

            self.array = scipy.fft.ifft2(self.array, workers=1, overwrite_x=True)
        else:
            self.array = np.fft.ifft2(self.array)

    def inverse_raw(self) -> None:
        """``array ← ny·nx·ifft2(array)``: the inverse without the 1/(ny·nx) factor.

        The retrieval folds that factor into its Fourier-modulus projection and saves a
        pass over the array.
        """
        if self.backend == "pyfftw":
            self._inv.execute()
        elif self.backend == "scipy":
            import scipy.fft

            self.array = scipy.fft.ifft2(self.array, workers=1, overwrite_x=True, norm="forward")
        else:
            self.array = np.fft.ifft2(self.array, norm="forward")
