"""Harmonic lattice: sampled displacements reproduce the analytic Green's tensor k_B T Φ⁺."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("ase")

from speckleflow.devices.crystal import (
    CrystalSpec,
    build_crystal,
    parse_crystal,
    supercell_for_scan,
)
from speckleflow.devices.phonons import (
    KB_EV_PER_K,
    HarmonicLattice,
    Spring,
    einstein,
    neighbour_shells,
)


@pytest.fixture(scope="module")
def hbn_lattice():
    spec = CrystalSpec("hBN", layers=2, repeats=(2, 2))
    atoms = build_crystal(spec)
    return HarmonicLattice(atoms, spec.default_springs())


def _expected_rel_error(g: np.ndarray, n: int) -> float:
    # Wishart: E||C − G||²_F = (tr(G)² + ||G||²_F)/n for zero-mean Gaussian samples.
    fro2 = float(np.sum(g * g))
    return float(np.sqrt((np.trace(g) ** 2 + fro2) / (n * fro2)))


@pytest.mark.parametrize("n_configs", [2_000, 20_000])
def test_sample_covariance_converges_to_the_analytic_greens_tensor(hbn_lattice, n_configs):
    rng = np.random.default_rng(1)
    t = 300.0
    u = hbn_lattice.sample(t, n_configs, rng).reshape(n_configs, -1)
    cov = u.T @ u / n_configs
    g = hbn_lattice.greens_tensor(t)
    rel = np.linalg.norm(cov - g) / np.linalg.norm(g)
    # tolerance: 2× the expected sampling error, which falls as 1/sqrt(n_configs)
    assert rel < 2 * _expected_rel_error(g, n_configs), rel
    # and the near-neighbour blocks (what CAVIAR measures) carry real correlation
    i, j = 0, 1  # B and its N neighbour in the first layer
    block = g[3 * i : 3 * i + 3, 3 * j : 3 * j + 3]
    assert np.abs(block).max() > 0.05 * np.abs(g[:3, :3]).max()


def test_equipartition_and_zero_net_translation(hbn_lattice):
    rng = np.random.default_rng(2)
    t, n = 150.0, 4_000
    u = hbn_lattice.sample(t, n, rng)
    assert np.abs(u.mean(axis=1)).max() < 1e-12  # each configuration: no net translation
    n_modes = 3 * hbn_lattice.n_atoms - 3
    energy = hbn_lattice.potential_energy(u)
    expected = 0.5 * n_modes * KB_EV_PER_K * t
    # each mode ½k_BT·χ²₁: std of the mean energy = sqrt(n_modes/2)·k_BT/sqrt(n)
    sd = np.sqrt(n_modes / 2) * KB_EV_PER_K * t / np.sqrt(n)
    assert abs(energy.mean() - expected) < 4 * sd


def test_rms_displacement_and_frequencies_are_physical(hbn_lattice):
    g = hbn_lattice.greens_tensor(300.0)
    rms = np.sqrt(np.diag(g).mean())
    assert 0.01 < rms < 0.2  # Å, hBN at room temperature is ~0.05 Å
    nu = hbn_lattice.frequencies_THz
    assert np.all(nu[:3] == 0) and np.all(nu[3:] > 0) and nu.max() < 80


def test_floppy_lattice_is_refused():
    atoms = build_crystal(CrystalSpec("hBN", layers=1, repeats=(2, 2)))
    d1 = neighbour_shells(atoms, 1)[0]
    with pytest.raises(ValueError, match="zero modes"):
        HarmonicLattice(atoms, [Spring(d1 - 0.01, d1 + 0.01, 20.0)])  # planar central springs


def test_einstein_is_uncorrelated():
    rng = np.random.default_rng(3)
    u = einstein(5, 0.07, 20_000, rng).reshape(20_000, -1)
    cov = u.T @ u / len(u)
    assert np.allclose(np.diag(cov), 0.07**2, rtol=0.05)
    off = cov - np.diag(np.diag(cov))
    assert np.abs(off).max() < 5 * 0.07**2 / np.sqrt(20_000)
    with pytest.raises(ValueError, match="sigma"):
        einstein(5, -1.0, 2, rng)


def test_crystals_have_their_bonds():
    si = build_crystal(CrystalSpec("Si", layers=2, repeats=(2, 3)))
    assert neighbour_shells(si, 1)[0] == pytest.approx(2.352, abs=1e-3)
    # a slab (vacuum along the beam): inner Si atoms have 4 nearest neighbours, surface ones 2–3
    from ase.neighborlist import neighbor_list

    counts = np.bincount(neighbor_list("i", si, 2.4), minlength=len(si))
    assert counts.max() == 4 and counts.min() >= 2 and (counts == 4).sum() >= len(si) // 2
    HarmonicLattice(si, CrystalSpec("Si").default_springs())  # rigid: exactly 3 zero modes
    hbn = build_crystal(CrystalSpec("hBN", layers=3, repeats=(2, 2)))
    assert len(hbn) == 3 * 4 * 4
    assert neighbour_shells(hbn, 1)[0] == pytest.approx(1.4457, abs=1e-3)
    assert parse_crystal("hBN-3L[0001]") == ("hBN", 3) and parse_crystal("Si") == ("Si", 1)
    with pytest.raises(ValueError, match="crystal"):
        parse_crystal("graphene")
    assert supercell_for_scan("hBN", 4.5, 5.0) == (6, 4)
