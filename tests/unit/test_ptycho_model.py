"""Probe, object grid and forward model of services/ptycho against independent calculations."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from speckleflow.services.ptycho import (
    aperture_probe,
    electron_wavelength_A,
    fresnel_propagator,
    interaction_constant,
    object_grid,
    orthogonalize_modes,
    probe_modes,
    real_space_pixel_A,
)

torch = pytest.importorskip("torch")

E, ALPHA, DALPHA, Q = 200e3, 20.0, 2.0, 32


def test_wavelength_and_interaction_constant_match_tables() -> None:
    # Kirkland (2020) Table 2.2 / eq. 5.6: λ(200 kV) = 0.02508 Å, σ(200 kV) = 7.288e-4 /(V·Å)
    assert electron_wavelength_A(200e3) == pytest.approx(0.025079, rel=2e-4)
    assert electron_wavelength_A(300e3) == pytest.approx(0.019687, rel=2e-4)
    assert interaction_constant(200e3) == pytest.approx(7.2884e-4, rel=1e-3)
    assert real_space_pixel_A(200e3, 64, 1.0) == pytest.approx(0.025079 / (64 * 1e-3), rel=2e-4)
    with pytest.raises(ValueError, match="energy_eV"):
        electron_wavelength_A(-1)


def test_aperture_probe_is_band_limited_and_normalised() -> None:
    psi = aperture_probe((Q, Q), E, ALPHA, DALPHA, defocus_A=30.0, total_intensity=1e4)
    assert psi.dtype == np.complex64 and psi.shape == (Q, Q)
    assert np.sum(np.abs(psi) ** 2) == pytest.approx(1e4, rel=1e-5)
    far = np.abs(np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(psi)))) ** 2
    k = (np.arange(Q) - Q // 2) * DALPHA  # mrad
    theta = np.hypot(k[:, None], k[None, :])
    assert far[theta > ALPHA].max() < 1e-6 * far.max()
    inside = far[theta <= ALPHA]
    assert inside.std() / inside.mean() < 1e-4  # flat disc: aberrations change the phase only
    # in focus, the probe is centred at (Q//2, Q//2)
    focus = np.abs(aperture_probe((Q, Q), E, ALPHA, DALPHA)) ** 2
    assert np.unravel_index(focus.argmax(), focus.shape) == (Q // 2, Q // 2)
    with pytest.raises(ValueError, match="semiangle"):
        aperture_probe((Q, Q), E, 100.0, DALPHA)


def test_probe_modes_are_orthogonal_and_keep_the_intensity() -> None:
    psi = aperture_probe((Q, Q), E, ALPHA, DALPHA, defocus_A=50.0, total_intensity=100.0)
    modes = probe_modes(psi, 5, power_fraction=0.2)
    flat = modes.reshape(5, -1).astype(np.complex128)
    gram = flat.conj() @ flat.T
    assert np.abs(gram - np.diag(np.diag(gram))).max() < 1e-4 * np.abs(gram).max()
    assert np.real(np.trace(gram)) == pytest.approx(100.0, rel=1e-4)
    assert np.real(gram[0, 0]) == pytest.approx(80.0, rel=1e-4)
    corr = abs(np.vdot(modes[0], psi)) / (np.linalg.norm(modes[0]) * np.linalg.norm(psi))
    assert corr == pytest.approx(1.0, abs=1e-5)
    # orthogonalisation keeps the incoherent sum (the density matrix)
    rng = np.random.default_rng(0)
    mixed = (rng.normal(size=(3, 5)) + 1j * rng.normal(size=(3, 5))) @ flat
    ortho = orthogonalize_modes(mixed.reshape(3, Q, Q)).reshape(3, -1).astype(np.complex128)
    np.testing.assert_allclose(ortho.T @ ortho.conj(), mixed.T @ mixed.conj(), atol=1e-3 * np.abs(mixed).max() ** 2)
    power = np.sum(np.abs(ortho) ** 2, axis=1)
    assert np.all(np.diff(power) <= 0)


def _numpy_pattern(obj2d: np.ndarray, psi: np.ndarray, centre_px: np.ndarray) -> np.ndarray:
    """Projection approximation with numpy/scipy: shift the probe by scipy's Fourier
    shift, multiply the window of the object, |unitary FFT|², zero frequency at the centre."""
    base = np.floor(centre_px).astype(int)
    frac = centre_px - base
    shifted = np.fft.ifft2(ndimage.fourier_shift(np.fft.fft2(psi), frac))
    t = base - Q // 2
    exit_wave = shifted * obj2d[t[0] : t[0] + Q, t[1] : t[1] + Q]
    return np.abs(np.fft.fftshift(np.fft.fft2(exit_wave, norm="ortho"))) ** 2


def test_single_slice_matches_the_projection_approximation() -> None:
    from speckleflow.services.ptycho.model import simulate

    rng = np.random.default_rng(1)
    pixel = real_space_pixel_A(E, Q, DALPHA)
    positions = rng.uniform(0, 6.0, size=(7, 2))  # Å, sub-pixel
    grid = object_grid(positions, pixel, Q, margin_px=2)
    phase = ndimage.gaussian_filter(rng.normal(size=grid.shape), 2) * 5
    obj = (np.exp(1j * phase) * (1 - 0.1 * rng.random(grid.shape))).astype(np.complex64)
    psi = aperture_probe((Q, Q), E, ALPHA, DALPHA, defocus_A=40.0, total_intensity=1e3)
    top_left, frac = grid.split(positions)
    ours = simulate(obj[None, None], psi[None], top_left, frac)
    centres = grid.centres_px(positions)
    ref = np.array([_numpy_pattern(obj, psi.astype(np.complex128), c) for c in centres])
    np.testing.assert_allclose(ours, ref, rtol=0, atol=2e-5 * ref.max())
    # two probe modes and two equal-weight states: the incoherent sums
    modes = probe_modes(psi, 2, power_fraction=0.3)
    obj2 = np.stack([obj, np.conj(obj)])[:, None]
    mixed = simulate(obj2, modes, top_left, frac, weights=np.array([0.25, 0.75]))
    ref2 = np.array([
        sum(w * _numpy_pattern(o, m.astype(np.complex128), c)
            for w, o in ((0.25, obj), (0.75, np.conj(obj))) for m in modes)
        for c in centres
    ])
    np.testing.assert_allclose(mixed, ref2, rtol=0, atol=2e-5 * ref2.max())


def test_multislice_of_an_empty_object_is_free_propagation() -> None:
    from speckleflow.services.ptycho.model import simulate

    pixel = real_space_pixel_A(E, Q, DALPHA)
    positions = np.array([[0.0, 0.0], [0.3, 1.7]])
    grid = object_grid(positions, pixel, Q)
    psi = aperture_probe((Q, Q), E, ALPHA, DALPHA, defocus_A=20.0, total_intensity=1.0)
    prop = fresnel_propagator(Q, pixel, electron_wavelength_A(E), 5.0)
    empty = np.ones((1, 4, *grid.shape), np.complex64)
    top_left, frac = grid.split(positions)
    out = simulate(empty, psi[None], top_left, frac, propagator=prop)
    far = np.abs(np.fft.fftshift(np.fft.fft2(psi, norm="ortho"))) ** 2
    for pattern in out:
        np.testing.assert_allclose(pattern, far, atol=1e-5 * far.max())
    # sign check: a probe focused at the entrance surface, propagated 30 Å downstream,
    # diverges like a probe focused 30 Å upstream (overfocus: defocus −30 Å, abTEM sign)
    focus = aperture_probe((Q, Q), E, ALPHA, DALPHA)
    prop30 = fresnel_propagator(Q, pixel, electron_wavelength_A(E), 30.0)
    moved = np.fft.ifft2(np.fft.fft2(focus) * prop30)
    expected = aperture_probe((Q, Q), E, ALPHA, DALPHA, defocus_A=-30.0)
    np.testing.assert_allclose(np.abs(moved), np.abs(expected), atol=1e-5 * np.abs(expected).max())


def test_object_grid_holds_every_window_and_maps_positions() -> None:
    pixel = 0.4
    positions = np.array([[-2.0, 1.0], [3.1, 7.3], [0.0, 0.0]])
    grid = object_grid(positions, pixel, Q, margin_px=3)
    top_left, frac = grid.split(positions)
    assert top_left.min() >= 3 and np.all(top_left + Q <= np.array(grid.shape) - 3)
    assert np.all((frac >= 0) & (frac < 1))
    centres = top_left + Q // 2 + frac
    np.testing.assert_allclose(grid.origin_A + centres * pixel, positions, atol=1e-12)
    with pytest.raises(ValueError, match="positions_A"):
        object_grid(np.zeros((3, 3)), pixel, Q)


@pytest.mark.slow
def test_multislice_matches_abtem_and_the_probe_is_abtems() -> None:
    """abTEM (the simulator of the paper and of our sample model) as the reference:
    its transmission functions and probe through our multislice give its pattern, and our
    aperture probe is its probe but for the aperture edge (abTEM tapers it)."""
    abtem = pytest.importorskip("abtem")
    ase = pytest.importorskip("ase")
    from speckleflow.services.ptycho.model import simulate

    q, defocus, dz = 64, 30.0, 2.0
    pixel = real_space_pixel_A(E, q, DALPHA)
    side = q * pixel
    atoms = ase.Atoms("CSi", positions=[(side / 2 + 0.3, side / 2 - 0.2, 1.0), (side / 2 - 0.8, side / 2 + 0.5, 3.0)],
                      cell=(side, side, 2 * dz))
    with abtem.config.set({"antialias.cutoff": 1.0, "antialias.taper": 0.0, "precision": "float64"}):
        potential = abtem.Potential(atoms, gpts=(q, q), slice_thickness=dz, projection="infinite")
        transmission = np.asarray(potential.build().transmission_function(E).compute().array)
        probe = abtem.Probe(energy=E, semiangle_cutoff=ALPHA, defocus=defocus)
        probe.grid.match(potential)
        psi_abtem = np.asarray(probe.build().compute().array).squeeze()
        exit_waves = probe.multislice(potential, scan=abtem.CustomScan([(side / 2, side / 2)]))
        ref = np.asarray(exit_waves.diffraction_patterns(max_angle=None, block_direct=False).compute().array)
    ref = ref.squeeze()
    assert transmission.shape == (2, q, q)
    prop = fresnel_propagator(q, pixel, electron_wavelength_A(E), dz)
    ours = simulate(transmission[None], psi_abtem[None], np.zeros((1, 2), np.int64), np.zeros((1, 2)),
                    propagator=prop)[0]
    np.testing.assert_allclose(ours / ours.sum(), ref / ref.sum(), atol=1e-4 * (ref / ref.sum()).max())
    psi = aperture_probe((q, q), E, ALPHA, DALPHA, defocus_A=defocus)
    overlap = abs(np.vdot(psi_abtem, psi)) / (np.linalg.norm(psi_abtem) * np.linalg.norm(psi))
    wrong_sign = aperture_probe((q, q), E, ALPHA, DALPHA, defocus_A=-defocus)
    overlap_wrong = abs(np.vdot(psi_abtem, wrong_sign)) / (np.linalg.norm(psi_abtem) * np.linalg.norm(psi))
    assert overlap > 0.98 and overlap_wrong < 0.8


def _grating_patterns(oversampling: int, k_g: float, a: float) -> np.ndarray:
    """The detector patterns (2, Q, Q) of two probe positions on the one-sided grating
    ``1 + i a exp(2πi k_g x)`` through ``simulate`` with a ``oversampling·Q`` window."""
    from speckleflow.services.ptycho.model import simulate

    window = oversampling * Q
    pixel = real_space_pixel_A(E, window, DALPHA)
    positions = np.array([[0.0, 0.0], [0.13, -0.21]])
    grid = object_grid(positions, pixel, window, margin_px=1)
    x = grid.origin_A[1] + pixel * np.arange(grid.shape[1])
    obj = np.broadcast_to(1 + 1j * a * np.exp(2j * np.pi * k_g * x), grid.shape).astype(np.complex64)
    psi = aperture_probe((window, window), E, ALPHA, DALPHA, total_intensity=1.0)
    top_left, frac = grid.split(positions)
    return simulate(obj[None, None], psi[None], top_left, frac, detector=Q)


def test_oversampled_far_field_keeps_what_leaves_the_detector_off_it() -> None:
    """A diffraction order partly beyond the detector's edge: the part beyond is lost (as
    on a real detector) with an oversampled window, and wraps onto the opposite side at
    s = 1. Reference: the same grating (one order, so the far side stays dark) through a
    4× window, where nothing wraps onto the detector, without ``simulate``'s cropping."""
    edge = Q * DALPHA / 2  # 32 mrad
    theta_g = 26.0  # mrad; the first order spans 6…46 mrad, the detector ±32
    k_g = theta_g * 1e-3 / electron_wavelength_A(E)
    a = 0.3
    pixel4 = real_space_pixel_A(E, 4 * Q, DALPHA)
    psi4 = aperture_probe((4 * Q, 4 * Q), E, ALPHA, DALPHA, total_intensity=1.0).astype(np.complex128)
    refs, lost = [], 0.0
    for shift_A in ((0.0, 0.0), (0.13, -0.21)):
        x = (np.arange(4 * Q) - 2 * Q) * pixel4 + shift_A[1]
        obj = 1 + 1j * a * np.exp(2j * np.pi * k_g * x)[None, :]
        # probe centred at the shift: multiply the object seen from the probe's frame
        far = np.abs(np.fft.fftshift(np.fft.fft2(psi4 * obj, norm="ortho"))) ** 2
        c = 2 * Q - Q // 2
        refs.append(far[c : c + Q, c : c + Q])
        lost += 0.5 * (1 - refs[-1].sum() / far.sum())
    ref = np.array(refs)
    assert 0.01 < lost < 0.1  # the reference really loses part of the order

    over = _grating_patterns(2, k_g, a)
    np.testing.assert_allclose(over, ref, rtol=0, atol=1e-4 * ref.max())
    plain = _grating_patterns(1, k_g, a)
    theta = (np.arange(Q) - Q // 2) * DALPHA
    wrapped = (theta[None, :] < -(2 * edge - theta_g - ALPHA)) & (np.abs(theta[None, :]) > ALPHA)
    wrapped = np.broadcast_to(wrapped, (Q, Q))
    # at s = 1 the cut-off part lands on the far side of the detector; the truth has nothing there
    assert plain[:, wrapped].sum() > 0.5 * lost * plain.sum()
    assert ref[:, wrapped].sum() < 1e-6 * ref.sum()
    with pytest.raises(ValueError, match="detector"):
        from speckleflow.services.ptycho.model import simulate

        simulate(np.ones((1, 1, 80, 80), np.complex64), psi4[None, :Q, :Q], np.zeros((1, 2), np.int64),
                 np.zeros((1, 2)), detector=Q + 1)


def test_model_window_covers_the_detector_plus_the_aperture() -> None:
    from speckleflow.services.ptycho import model_window

    # 64 pixels of 1.5625 mrad, α = 25 mrad: 16 pixels of aperture on each side → 96
    assert model_window(64, 25.0, 1.5625) == 96
    assert model_window(64, 24.0, 1.5625) == 96  # ceil(15.36) = 16
    assert model_window(33, 2.0, 1.0) == 38  # 33 + 4, rounded up to even
    assert model_window(64, 25.0, 1.5625, oversampling=1.0) == 64
    assert model_window(64, 25.0, 1.5625, oversampling=2.0) == 128
    for bad in ({"oversampling": 0.9}, {"oversampling": float("nan")}):
        with pytest.raises(ValueError, match="oversampling"):
            model_window(64, 25.0, 1.5625, **bad)
    with pytest.raises(ValueError, match="semiangle"):
        model_window(64, 0.0, 1.5625)


def _box_integrated_reference(psi: np.ndarray) -> np.ndarray:
    """The exact mean of ``|Ψ(k)|²`` over each far-field pixel of a wave ``psi`` (Q, Q)
    supported on its window: its autocorrelation, exact on a 2Q grid, times sinc(r/Q) per
    axis (the Fourier transform of the pixel's box), back to the far field at the pixel
    centres. With the sinc left out this returns the point-sampled pattern."""
    q = psi.shape[0]
    padded = np.zeros((2 * q, 2 * q), np.complex128)
    padded[:q, :q] = psi
    patterson = np.fft.ifft2(np.abs(np.fft.fft2(padded)) ** 2)
    r = np.fft.fftfreq(2 * q, d=1.0 / (2 * q))
    box = np.sinc(r / q)
    out = np.fft.fft2(patterson * box[:, None] * box[None, :]).real[::2, ::2] / q**2
    return np.fft.fftshift(out)


def test_pixel_quadrature_integrates_each_detector_pixel() -> None:
    """A focused probe on a strong random phase object: the Gauss–Legendre tilt rule
    against the exact box integral (independent: the exit wave's Patterson function times
    the box's sinc). Point sampling is off by several per cent of the peak at the disc edge
    and the diffuse scattering; orders 2 and 3 close that to the rule's stated error."""
    from speckleflow.services.ptycho.model import pixel_tilts, simulate

    rng = np.random.default_rng(3)
    phase = ndimage.gaussian_filter(rng.normal(size=(Q, Q)), 1.0)
    obj = np.exp(1j * 3 * phase / phase.std()).astype(np.complex64)
    psi = aperture_probe((Q, Q), E, ALPHA, DALPHA, total_intensity=1.0)
    exit_wave = psi.astype(np.complex128) * obj
    zero = np.zeros((1, 2))
    point = simulate(obj[None, None], psi[None], zero.astype(np.int64), zero)[0]
    exact = _box_integrated_reference(exit_wave)
    # the reference without its sinc is the point-sampled pattern: it shares the model's conventions
    q = Q
    padded = np.zeros((2 * q, 2 * q), np.complex128)
    padded[:q, :q] = exit_wave
    unboxed = np.fft.fftshift(np.fft.fft2(np.fft.ifft2(np.abs(np.fft.fft2(padded)) ** 2)).real[::2, ::2] / q**2)
    np.testing.assert_allclose(point, unboxed, rtol=0, atol=1e-5 * unboxed.max())
    assert exact.sum() == pytest.approx(point.sum(), rel=1e-3)  # flux moves between pixels, not lost

    err = {order: np.abs(simulate(obj[None, None], psi[None], zero.astype(np.int64), zero,
                                  pixel_quadrature=order)[0] - exact).max() / exact.max()
           for order in (1, 2, 3)}
    # measured: 8 %, 0.36 %, 0.014 % of the peak
    assert err[1] > 0.03
    assert err[2] < 0.01 and err[3] < 1e-3
    ramps, weights = pixel_tilts(Q, 2)
    assert ramps.shape == (4, Q, Q) and float(weights.sum()) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="order"):
        pixel_tilts(Q, 0)
