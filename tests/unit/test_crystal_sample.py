"""CrystalSample: abTEM frozen-phonon 4D-STEM, the disk cache, Poisson dose, ground truth.

One small simulation per session (1-layer hBN, 4×4 scan, 32×32 detector, 2 correlated
configurations, 0.1 Å sampling): ~1 s of multislice per configuration once abTEM is
imported and its numba kernels compiled (the first test pays ~20–30 s for that on the
shared 2-core machine).
"""

from __future__ import annotations

import time

import numpy as np
import pytest

pytest.importorskip("abtem")

from speckleflow.devices.crystal import CrystalSpec
from speckleflow.devices.crystal_sample import CrystalSample, SimulationParams

SMALL = {
    "scan_shape": (4, 4), "step_A": 0.3, "detector_shape": (32, 32), "n_configurations": 2,
    "sampling_A": 0.1, "max_angle_mrad": 50.0, "semiangle_mrad": 25.0,
}  # fmt: skip


def small_params(**kw) -> SimulationParams:
    args = {"crystal": CrystalSpec("hBN", layers=1, repeats=(4, 3)), **SMALL, **kw}
    return SimulationParams(**args)


@pytest.fixture(scope="session")
def crystal_cache(tmp_path_factory):
    return tmp_path_factory.getbasetemp() / "crystal-cache"


@pytest.fixture(scope="session")
def simulated(crystal_cache):
    sample = CrystalSample(small_params(), dose=2e4, cache_dir=crystal_cache)
    calls = []
    sample.simulate(progress=lambda done, total, msg: calls.append((done, total)))
    return sample, calls


def test_patterns_are_normalised_and_centred(simulated):
    sample, calls = simulated
    assert calls == [(1, 2), (2, 2)]
    assert not sample.from_cache
    data = sample.simulate()
    assert data.shape == (4, 4, 32, 32) and data.dtype == np.float32
    total = data.sum(axis=(-2, -1))
    # flux inside ±50 mrad: the bright field plus most of the scattering of one layer
    assert np.all(total > 0.97) and np.all(total <= 1.0001)
    # bright-field disc: radius 25 mrad / 3.125 mrad per pixel = 8 px, on the optical axis
    mean = data.mean(axis=(0, 1))
    bright = mean > 0.5 * mean.max()
    assert np.sqrt(bright.sum() / np.pi) == pytest.approx(8.0, abs=0.5)
    yy, xx = np.nonzero(bright)
    assert yy.mean() == pytest.approx(16, abs=0.5) and xx.mean() == pytest.approx(16, abs=0.5)
    # patterns change with the scan position (the crystal is resolved)
    assert np.abs(data[0, 0] - data[2, 1]).max() > 1e-3 * data.max()


def test_cache_is_keyed_by_every_parameter(simulated, crystal_cache):
    sample, _ = simulated
    t0 = time.perf_counter()
    again = CrystalSample(small_params(), dose=5.0, cache_dir=crystal_cache)  # dose is not simulated
    data = again.simulate()
    assert again.from_cache and time.perf_counter() - t0 < 5
    assert np.array_equal(data, sample.simulate())
    assert np.array_equal(again.truth().atom_positions, sample.truth().atom_positions)
    other = CrystalSample(small_params(temperature_K=301.0), cache_dir=crystal_cache)
    assert other.cache_path() != sample.cache_path()
    assert CrystalSample(small_params(seed=1), cache_dir=crystal_cache).cache_path() != sample.cache_path()


def test_poisson_counts_at_the_dose(simulated):
    sample, _ = simulated
    n = 200
    ix = np.tile(np.arange(4), n)
    iy = np.full(ix.size, 2)
    counts = sample.electrons(ix, iy, np.zeros(ix.size))
    assert counts.shape == (ix.size, 32, 32) and np.issubdtype(counts.dtype, np.integer)
    expected = sample.simulate()[2].sum() * n * sample.electrons_per_pattern  # 4 positions × n
    assert sample.electrons_per_pattern == pytest.approx(2e4 * 0.09)
    assert abs(counts.sum() - expected) < 5 * np.sqrt(expected)
    mean = counts.reshape(n, 4, 32, 32).mean(axis=0)
    lam = sample.simulate()[2] * sample.electrons_per_pattern
    bright = lam > 0.5 * lam.max()
    assert np.abs(mean[bright] - lam[bright]).max() < 6 * np.sqrt(lam[bright].max() / n)
    with pytest.raises(ValueError, match="outside"):
        sample.electrons(np.array([4]), np.array([0]), np.zeros(1))


def test_truth_keeps_every_configuration(simulated):
    sample, _ = simulated
    t = sample.truth()
    n_atoms = 4 * 4 * 3
    assert t.atom_positions.shape == (2, n_atoms, 3) and t.atom_equilibrium.shape == (n_atoms, 3)
    u = t.atom_positions - t.atom_equilibrium
    assert 0.005 < np.sqrt((u**2).mean()) < 0.2  # Å
    assert not np.allclose(u[0], u[1])
    assert np.abs(u.mean(axis=1)).max() < 1e-12  # no net translation
    assert t.greens_tensor_analytic.shape == (3 * n_atoms, 3 * n_atoms)
    assert set(np.unique(t.atomic_numbers)) == {5, 7}
    assert t.scan_positions_A.shape == (16, 2)
    assert np.allclose(np.diff(t.scan_positions_A[:4, 1]), 0.3)
    md = sample.metadata()
    for key in ("energy_eV", "semiangle_mrad", "defocus_A", "scan_step_A", "detector_shape",
                "angular_sampling_mrad", "dose_e_per_A2", "crystal", "phonon_model", "temperature_K",
                "n_configurations", "source_fwhm_A", "sample_thickness_A", "cell_A", "simulator"):  # fmt: skip
        assert key in md, key
    assert md["crystal"] == "hBN-1L[0001]" and md["angular_sampling_mrad"] == [3.125, 3.125]


def test_coherent_and_einstein_models(crystal_cache):
    coherent = CrystalSample(small_params(phonon_model="none", n_configurations=1), cache_dir=crystal_cache)
    assert coherent.configurations().shape == (1, 48, 3)
    assert np.isnan(coherent.greens_tensor()).all()
    ein = CrystalSample(small_params(phonon_model="einstein", einstein_sigma_A=0.05), cache_dir=crystal_cache)
    g = ein.greens_tensor()
    assert np.allclose(g, 0.05**2 * np.eye(g.shape[0]))
    with pytest.raises(ValueError, match="phonon_model"):
        small_params(phonon_model="debye")
    with pytest.raises(ValueError, match="one configuration"):
        small_params(phonon_model="none")


def test_source_average_blurs_and_conserves_flux(crystal_cache):
    sample = CrystalSample(small_params(source_fwhm_A=0.6, source_points=3), cache_dir=crystal_cache)
    shifts, weights = sample.source_offsets()
    sigma = 0.6 / (2 * np.sqrt(2 * np.log(2)))
    assert weights.sum() == pytest.approx(1.0)
    assert (weights[:, None] * shifts**2).sum(axis=0) == pytest.approx([sigma**2, sigma**2])
    coherent = CrystalSample(
        small_params(phonon_model="none", n_configurations=1, scan_shape=(2, 2)), cache_dir=crystal_cache
    ).simulate()
    blurred = CrystalSample(
        small_params(phonon_model="none", n_configurations=1, scan_shape=(2, 2), source_fwhm_A=0.6),
        cache_dir=crystal_cache,
    ).simulate()
    assert np.allclose(blurred.sum(axis=(-2, -1)), coherent.sum(axis=(-2, -1)), atol=2e-3)
    # averaging over source positions makes neighbouring scan positions more alike
    spread_c = np.abs(coherent[0, 0] - coherent[1, 1]).sum()
    spread_b = np.abs(blurred[0, 0] - blurred[1, 1]).sum()
    assert spread_b < spread_c


def test_pixels_integrate_the_continuous_far_field():
    """pixel_integrated_patterns against a brute-force average of the exact far field
    (the wave's DTFT evaluated at 12 × 12 points inside every pixel), and pixels tiling
    one period of the far field collect all of the wave's flux."""
    from speckleflow.devices.crystal_sample import pixel_integrated_patterns

    rng = np.random.default_rng(0)
    h, w, lam, sampling = 10, 12, 0.025, (0.1, 0.12)
    waves = rng.normal(size=(3, h, w)) + 1j * rng.normal(size=(3, h, w))
    q, pix = 9, (4.0, 3.0)  # mrad
    centres = ((np.arange(q) - q // 2) * pix[0] + 1.0, (np.arange(q) - q // 2) * pix[1])
    ours = pixel_integrated_patterns(waves, sampling, lam, centres, pix, batch=2)

    sub = (np.arange(12) + 0.5) / 12 - 0.5
    ty = (centres[0][:, None] + sub[None] * pix[0]).ravel() * 1e-3
    tx = (centres[1][:, None] + sub[None] * pix[1]).ravel() * 1e-3
    fy = np.exp(-2j * np.pi * np.outer(ty, np.arange(h) * sampling[0]) / lam)
    fx = np.exp(-2j * np.pi * np.outer(tx, np.arange(w) * sampling[1]) / lam)
    far = np.abs(np.einsum("ky,nyx,lx->nkl", fy, waves, fx)) ** 2
    mean = far.reshape(3, q, 12, q, 12).mean(axis=(2, 4))
    power = np.sum(np.abs(waves) ** 2, axis=(1, 2))
    brute = mean * (pix[0] * 1e-3 * sampling[0] / lam) * (pix[1] * 1e-3 * sampling[1] / lam) / power[:, None, None]
    # measured 1.3e-4 of the peak: the 12-point midpoint rule's own error
    np.testing.assert_allclose(ours, brute, rtol=0, atol=1e-3 * brute.max())

    # one period of Ψ is λ/pixel: 1e3·λ/sampling mrad, here tiled by exactly 5 × 6 pixels
    period = (1e3 * lam / sampling[0], 1e3 * lam / sampling[1])
    tiles = ((np.arange(5) - 2) * period[0] / 5, (np.arange(6) - 3) * period[1] / 6)
    full = pixel_integrated_patterns(waves, sampling, lam, tiles, (period[0] / 5, period[1] / 6))
    np.testing.assert_allclose(full.sum(axis=(1, 2)), 1.0, rtol=1e-9)
