"""The aperture-limited STEM probe and its incoherent modes (pure numpy).

Conventions (as abTEM): the probe wave in the back focal plane is
``A(k) exp(-i χ(k))`` with the aperture ``A = 1`` for ``λ|k| ≤ α``, the aberration phase
``χ(k) = 2π/λ (C10 θ²/2 + Cs θ⁴/4)`` at scattering angle ``θ = λ|k|`` and
``C10 = -defocus`` (a positive ``defocus_A`` is underfocus, abTEM's ``defocus``).
The probe window is the detector grid: ``Q`` pixels of ``Δα`` mrad give the reciprocal
pixel ``Δk = Δα / λ`` and the real-space pixel ``λ / (Q Δα)``.

References
----------
E. J. Kirkland, *Advanced Computing in Electron Microscopy*, 3rd ed. (Springer 2020),
eq. 2.5 (relativistic wavelength), eq. 5.6 (interaction constant σ), eqs. 3.42/5.27
(aberration function, probe).
"""

from __future__ import annotations

import numpy as np

# CODATA 2018
_H = 6.62607015e-34  # J s
_M0 = 9.1093837015e-31  # kg
_E = 1.602176634e-19  # C
_C = 299792458.0  # m/s


def _check_energy(energy_eV: float) -> float:
    energy = float(energy_eV)
    if not np.isfinite(energy) or energy <= 0:
        raise ValueError(f"energy_eV must be a positive number, got {energy_eV!r}")
    return energy


def electron_wavelength_A(energy_eV: float) -> float:
    """Relativistic electron wavelength.

    ``λ = h / sqrt(2 m0 e E (1 + e E / (2 m0 c²)))`` (Kirkland eq. 2.5).

    Parameters
    ----------
    energy_eV : float
        Kinetic energy of the electrons, eV (e.g. 200e3 for 200 kV).

    Returns
    -------
    float
        Wavelength, Å (0.02508 Å at 200 keV).

    Raises
    ------
    ValueError
        If ``energy_eV`` is not positive and finite.
    """
    energy = _check_energy(energy_eV)
    p = np.sqrt(2 * _M0 * _E * energy * (1 + _E * energy / (2 * _M0 * _C**2)))
    return float(_H / p * 1e10)


def interaction_constant(energy_eV: float) -> float:
    """Relativistic interaction constant σ = 2π m e λ / h², rad / (V·Å).

    The phase a fast electron picks up crossing a projected potential ``v_z`` (V·Å) is
    ``σ v_z`` (Kirkland eq. 5.6): ``σ = 2π / (λ V) · (m0c² + eV) / (2 m0c² + eV)``
    with ``V`` the accelerating voltage (7.288e-4 rad/(V·Å) at 200 kV).

    Parameters
    ----------
    energy_eV : float
        Kinetic energy, eV.

    Returns
    -------
    float
        σ, rad / (V·Å).

    Raises
    ------
    ValueError
        If ``energy_eV`` is not positive and finite.
    """
    energy = _check_energy(energy_eV)
    m0c2_eV = _M0 * _C**2 / _E
    lam = electron_wavelength_A(energy)
    return float(2 * np.pi / (lam * energy) * (m0c2_eV + energy) / (2 * m0c2_eV + energy))


def real_space_pixel_A(energy_eV: float, n_pixels: int, angular_sampling_mrad: float) -> float:
    """Real-space pixel of a ``n_pixels``-wide window sampled like the detector.

    ``Δx = λ / (Q · Δα)`` with ``Δα`` in rad.

    Raises
    ------
    ValueError
        If ``n_pixels`` < 2 or the sampling is not positive.
    """
    if int(n_pixels) < 2:
        raise ValueError(f"n_pixels must be >= 2, got {n_pixels!r}")
    if not float(angular_sampling_mrad) > 0:
        raise ValueError(f"angular_sampling_mrad must be > 0, got {angular_sampling_mrad!r}")
    return electron_wavelength_A(energy_eV) / (int(n_pixels) * float(angular_sampling_mrad) * 1e-3)


def spatial_frequencies(shape: tuple[int, int], pixel_A: float) -> tuple[np.ndarray, np.ndarray]:
    """``(ky, kx)`` grids in 1/Å of an FFT over ``shape`` with ``pixel_A`` sampling (unshifted)."""
    ky = np.fft.fftfreq(shape[0], d=pixel_A)
    kx = np.fft.fftfreq(shape[1], d=pixel_A)
    return np.meshgrid(ky, kx, indexing="ij")


def aperture_probe(
    shape: tuple[int, int],
    energy_eV: float,
    semiangle_mrad: float,
    angular_sampling_mrad: float,
    *,
    defocus_A: float = 0.0,
    Cs_A: float = 0.0,
    total_intensity: float = 1.0,
) -> np.ndarray:
    """The aperture-limited probe in real space, centred at pixel ``(qy//2, qx//2)``.

    Parameters
    ----------
    shape : (int, int)
        Window ``(qy, qx)`` = detector shape, pixels.
    energy_eV : float
        Electron energy, eV.
    semiangle_mrad : float
        Convergence semi-angle α, mrad.
    angular_sampling_mrad : float
        Detector pixel Δα, mrad (the window's reciprocal pixel is Δα/λ).
    defocus_A : float
        Defocus, Å; positive = underfocus (abTEM convention, C10 = −defocus).
    Cs_A : float
        Spherical aberration C30, Å.
    total_intensity : float
        ``Σ |ψ|²`` of the result (e.g. electrons per pattern).

    Returns
    -------
    ndarray, shape (qy, qx), complex64
        Probe wave function ψ(r).

    Raises
    ------
    ValueError
        If the aperture is not sampled by at least one pixel inside the window, or a
        parameter is out of range.

    References
    ----------
    Kirkland (2020) eqs. 3.42 and 5.27.
    """
    qy, qx = (int(s) for s in shape)
    if semiangle_mrad <= 0:
        raise ValueError(f"semiangle_mrad must be > 0, got {semiangle_mrad!r}")
    if total_intensity <= 0:
        raise ValueError(f"total_intensity must be > 0, got {total_intensity!r}")
    lam = electron_wavelength_A(energy_eV)
    pixel = real_space_pixel_A(energy_eV, qx, angular_sampling_mrad)
    if qy != qx:
        raise ValueError(f"the probe window must be square, got shape {shape!r}")
    ky, kx = spatial_frequencies((qy, qx), pixel)
    theta = lam * np.sqrt(ky**2 + kx**2)  # rad
    alpha = semiangle_mrad * 1e-3
    if alpha > theta.max():
        raise ValueError(
            f"semiangle {semiangle_mrad} mrad exceeds the detector's {theta.max() * 1e3:.1f} mrad"
        )
    aperture = (theta <= alpha).astype(np.float64)
    c10 = -float(defocus_A)
    chi = 2 * np.pi / lam * (c10 * theta**2 / 2 + float(Cs_A) * theta**4 / 4)
    psi = np.fft.fftshift(np.fft.ifft2(aperture * np.exp(-1j * chi)))
    psi *= np.sqrt(total_intensity / np.sum(np.abs(psi) ** 2))
    return psi.astype(np.complex64)


def probe_modes(probe: np.ndarray, n_modes: int, *, power_fraction: float = 0.1) -> np.ndarray:
    """Orthogonal incoherent probe modes initialised from one coherent probe.

    Mode 0 is ``probe``; mode ``m`` = ``probe · H_a(y') H_b(x')`` (Hermite polynomials of
    the coordinates scaled by the probe's rms radius, ``(a, b)`` in order of increasing
    degree), the set is orthogonalised (Gram-Schmidt by QR, mode 0 kept) and the modes beyond the
    first get ``power_fraction`` of the total intensity, shared equally — the usual start
    of mixed-state ptychography (Thibault & Menzel, Nature 494, 68 (2013)).

    Parameters
    ----------
    probe : ndarray, shape (qy, qx), complex
        The coherent probe.
    n_modes : int
        Number of modes M ≥ 1.
    power_fraction : float
        Fraction of ``Σ|probe|²`` given to modes 1…M−1 together, in [0, 1).

    Returns
    -------
    ndarray, shape (n_modes, qy, qx), complex64
        Mutually orthogonal modes, total intensity that of ``probe``.

    Raises
    ------
    ValueError
        If ``n_modes`` < 1 or ``power_fraction`` is outside [0, 1).
    """
    if int(n_modes) < 1:
        raise ValueError(f"n_modes must be >= 1, got {n_modes!r}")
    if not 0 <= power_fraction < 1:
        raise ValueError(f"power_fraction must be in [0, 1), got {power_fraction!r}")
    probe = np.asarray(probe, dtype=np.complex128)
    if probe.ndim != 2:
        raise ValueError(f"probe must be 2-D, got shape {probe.shape}")
    n_modes = int(n_modes)
    total = float(np.sum(np.abs(probe) ** 2))
    if n_modes == 1:
        return probe[None].astype(np.complex64)
    qy, qx = probe.shape
    y, x = np.meshgrid(np.arange(qy) - qy // 2, np.arange(qx) - qx // 2, indexing="ij")
    w = np.abs(probe) ** 2 / total
    cy, cx = float(np.sum(w * y)), float(np.sum(w * x))
    r = np.sqrt(max(float(np.sum(w * ((y - cy) ** 2 + (x - cx) ** 2))), 1.0))
    ys, xs = (y - cy) / r, (x - cx) / r
    orders = sorted(((a, b) for a in range(n_modes) for b in range(n_modes)), key=lambda t: (sum(t), t))
    stack = []
    for a, b in orders[:n_modes]:
        ha = np.polynomial.hermite.hermval(ys, [0] * a + [1])
        hb = np.polynomial.hermite.hermval(xs, [0] * b + [1])
        stack.append((probe * ha * hb).ravel())
    # Gram-Schmidt (QR): mode 0 stays the coherent probe, the others are orthogonal to it
    q, _ = np.linalg.qr(np.array(stack).T)
    modes = q.T.reshape(n_modes, qy, qx)
    modes[0] *= np.vdot(modes[0], probe) / abs(np.vdot(modes[0], probe))
    power = np.array([1 - power_fraction] + [power_fraction / (n_modes - 1)] * (n_modes - 1))
    modes = modes * np.sqrt(power * total)[:, None, None]
    return modes.astype(np.complex64)


def orthogonalize_modes(modes: np.ndarray) -> np.ndarray:
    """Orthogonal modes with the same incoherent sum, strongest first (SVD).

    ``Σ_m |ψ_m><ψ_m|`` is unchanged; the returned modes are its eigenvectors scaled by
    the square roots of the eigenvalues.

    Parameters
    ----------
    modes : ndarray, shape (n_modes, qy, qx), complex

    Returns
    -------
    ndarray, shape (n_modes, qy, qx), complex64
    """
    modes = np.asarray(modes)
    if modes.ndim != 3:
        raise ValueError(f"modes must have shape (n_modes, qy, qx), got {modes.shape}")
    n = modes.shape[0]
    _, s, vh = np.linalg.svd(modes.reshape(n, -1).astype(np.complex128), full_matrices=False)
    out = (s[:, None] * vh).reshape(modes.shape)
    return out.astype(np.complex64)
