"""D(q) (eqs. 5–6) from a field cut out of a larger crystal, against the harmonic model.

The reconstructed field is a crop, not a periodic supercell. ``periodic_cut`` picks a
block of whole primitive cells from the field and ``dispersion`` treats it as periodic;
``detrend_greens`` removes each state's block translation and linear strain (the phonons
longer than the block, which leak into every q of its grid). Truth: single-layer hBN
[0001] from the simulator (devices/crystal.py, 8 × 5 orthogonal cells = 160 atoms) in
its harmonic model (devices/phonons.py) at 300 K, 2000 configurations (the truth
positions, no detection error); the known answer is the model's Bloch D(q)
(``HarmonicLattice.bloch_dynamical_matrix``, in-plane block) at the cut's q points.

Measured (4 × 4 cells): mean branches Γ–M–K–Γ without detrending 0.81–0.93 × the model,
with detrending 0.88–1.11 × (leakage is what remains: the same analysis on a truly
periodic supercell is exact, test_lattice_dynamics.py). Tolerance stated: 15 %.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

pytest.importorskip("ase")

from speckleflow.devices.crystal import HBN_A, CrystalSpec, build_crystal
from speckleflow.devices.phonons import HarmonicLattice
from speckleflow.services.lattice import (
    column_groups,
    column_positions,
    detrend_greens,
    dispersion,
    displacements,
    greens_tensor,
    periodic_cut,
)
from speckleflow.services.lattice.dynamics import THZ_PER_SQRT_EV_A2_AMU

T, N_CONF, CUT = 300.0, 2000, (4, 4)
MASSES = np.array([10.81, 14.007])  # B, N


@pytest.fixture(scope="module")
def field():
    spec = CrystalSpec("hBN", layers=1, repeats=(8, 5))
    atoms = build_crystal(spec)
    lattice = HarmonicLattice(atoms, spec.default_springs())
    eq = atoms.get_positions()
    groups, sites = column_groups(eq)
    symbols = np.array(atoms.get_chemical_symbols())
    u = lattice.sample(T, N_CONF, np.random.default_rng(0))
    cols = column_positions(eq[None] + u, groups)
    # primitive cell (y, x): a1 along x, a2 at 60°; basis B and N (N displaced along y)
    cell = np.array([[0.0, HBN_A], [math.sqrt(3) * HBN_A / 2, HBN_A / 2]])
    b_site = sites[[symbols[g[0]] == "B" for g in groups].index(True)]
    basis = np.array([b_site, b_site + [HBN_A / math.sqrt(3), 0.0]])
    return lattice, (symbols == "N").astype(int), sites, cols, cell, basis


def _model_branches(lattice, sublattice, q_yx):
    q = np.c_[q_yx[:, 1], q_yx[:, 0], np.zeros(len(q_yx))]  # (y, x) → ase (x, y, z)
    d = lattice.bloch_dynamical_matrix(q, sublattice)
    inplane = [0, 1, 3, 4]  # x, y of B and N: planar springs decouple z
    w2 = np.linalg.eigvalsh(d[:, inplane][:, :, inplane])
    return np.sqrt(np.clip(w2, 0.0, None)) * THZ_PER_SQRT_EV_A2_AMU


def test_bloch_matrix_matches_the_supercell_modes(field):
    """The known answer is right: at q of the supercell grid, ω² are modes of the supercell."""
    lattice, sublattice, *_ = field
    lx, ly = lattice.cell[0, 0], lattice.cell[1, 1]
    q = np.array([[2 * np.pi / lx * 3, 2 * np.pi / ly * 2, 0.0]])
    w2 = np.linalg.eigvalsh(lattice.bloch_dynamical_matrix(q, sublattice))[0]
    for v in w2:
        assert np.min(np.abs(lattice.omega2 - v)) < 1e-6 * lattice.omega2.max()


def test_cut_block_dispersion_matches_the_model(field):
    lattice, sublattice, sites, cols, cell, basis = field
    sel = periodic_cut(sites, cell, basis, CUT)
    assert len(sel) == 2 * CUT[0] * CUT[1]
    g = greens_tensor(displacements(cols[:, sel]))
    raw = dispersion(g, sites[sel], cell, basis, CUT, MASSES, T)
    res = dispersion(detrend_greens(g, sites[sel]), sites[sel], cell, basis, CUT, MASSES, T)
    q = res.q[res.path_index]
    not_gamma = np.linalg.norm(q, axis=1) > 1e-9
    model = _model_branches(lattice, sublattice, q[not_gamma]).mean(axis=0)
    print("mean branches THz: model", model.round(2), "cut", raw.mean_branch_THz.round(2),
          "cut detrended", res.mean_branch_THz.round(2))
    np.testing.assert_allclose(res.mean_branch_THz, model, rtol=0.15)
    # detrending is what brings the acoustic branches in: without, they are > 15 % low
    assert np.max(np.abs(raw.mean_branch_THz / model - 1)) > 0.15


def test_no_complete_block_names_the_field():
    cell = np.eye(2)
    sites = np.array([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    with pytest.raises(ValueError, match="no complete block"):
        periodic_cut(sites, cell, np.zeros((1, 2)), (2, 2))
