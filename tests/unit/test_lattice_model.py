"""The projected 2-D lattice of a run's crystal (services/lattice/model.py) from the simulator's own arrays.

Truth: the crystal a ``CrystalSample`` (devices/crystal_sample.py) puts under the beam —
its start-document ``crystal`` name and the equilibrium atoms and masses its truth
stream carries (``sample.atoms``, the arrays ``truth()`` writes; no simulation needed).
The known answer is devices/crystal.py: hBN a = 2.504 Å, honeycomb B and N columns;
Si a = 5.431 Å, the rectangular cell a/√2 × a with four columns; a column's mass is the
sum of its atoms' masses.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

pytest.importorskip("ase")

from speckleflow.devices.crystal import HBN_A, SI_A, CrystalSpec
from speckleflow.devices.crystal_sample import CrystalSample, SimulationParams
from speckleflow.services.lattice import assign_cells, column_groups
from speckleflow.services.lattice.model import crystal_kind, largest_block, projected_lattice

B, N, SI = 10.81, 14.007, 28.085


def _sample(kind: str, layers: int, repeats: tuple[int, int]) -> CrystalSample:
    params = SimulationParams(CrystalSpec(kind, layers=layers, repeats=repeats), scan_shape=(4, 4))
    return CrystalSample(params)


def _model(sample: CrystalSample):
    atoms = sample.atoms
    return projected_lattice(sample.params.crystal.name, atoms.get_positions(), atoms.get_masses())


@pytest.mark.parametrize("layers", [1, 2])
def test_hbn_columns_form_the_honeycomb(layers):
    sample = _sample("hBN", layers, (4, 3))
    model = _model(sample)
    assert model.path == "hexagonal" and model.basis_A.shape == (2, 2)
    cell = HBN_A * np.array([[0.0, 1.0], [math.sqrt(3) / 2, 0.5]])
    np.testing.assert_allclose(model.cell_A, cell, atol=1e-9)
    # B and N columns a/√3 apart; AA' stacking puts B over N, so 2L columns weigh B + N
    assert np.linalg.norm(model.basis_A[1] - model.basis_A[0]) == pytest.approx(HBN_A / math.sqrt(3), abs=1e-9)
    expected = [B, N] if layers == 1 else [B + N, B + N]
    np.testing.assert_allclose(model.masses_amu, expected, rtol=1e-3)
    _, sites = column_groups(sample.atoms.get_positions())
    sub, _ = assign_cells(sites, model.cell_A, model.basis_A, tol_A=1e-6)
    assert np.bincount(sub).tolist() == [len(sites) // 2] * 2


@pytest.mark.parametrize("layers", [1, 2])
def test_si_columns_form_the_rectangular_cell(layers):
    sample = _sample("Si", layers, (2, 3))
    model = _model(sample)
    assert model.path == "rectangular" and model.basis_A.shape == (4, 2)
    np.testing.assert_allclose(model.cell_A, [[SI_A / math.sqrt(2), 0.0], [0.0, SI_A]], atol=1e-9)
    np.testing.assert_allclose(model.masses_amu, [layers * SI] * 4, rtol=1e-3)
    # two dumbbells, each two columns a/4 apart along x ([001])
    d = np.linalg.norm(model.basis_A[:, None] - model.basis_A[None], axis=-1)
    assert np.sort(d[d > 0])[0] == pytest.approx(SI_A / 4, abs=1e-9)
    _, sites = column_groups(sample.atoms.get_positions())
    assign_cells(sites, model.cell_A, model.basis_A, tol_A=1e-6)


def test_other_crystals_are_named_in_the_error():
    eq = np.zeros((2, 3))
    with pytest.raises(ValueError, match="'graphene-1L'"):
        projected_lattice("graphene-1L", eq, np.ones(2))
    with pytest.raises(ValueError, match=r"'hBN-1L\[1010\]'.*\[0001\]"):
        crystal_kind("hBN-1L[1010]")
    assert crystal_kind("Si-2c[110]") == "Si" and crystal_kind("hBN") == "hBN"


def test_largest_block_is_the_largest_complete_square():
    # a 5 × 4 field of a square lattice; then without one corner site
    cell = np.eye(2)
    i, j = np.meshgrid(np.arange(5), np.arange(4), indexing="ij")
    sites = np.stack([i.ravel(), j.ravel()], axis=1).astype(float)
    idx, n = largest_block(sites, cell, np.zeros((1, 2)))
    assert n == (4, 4) and len(idx) == 16
    idx, n = largest_block(sites[sites[:, 1] > 0], cell, np.zeros((1, 2)))  # 5 × 3 left
    assert n == (3, 3) and len(idx) == 9
    with pytest.raises(ValueError, match="no complete block of 2 × 2"):
        largest_block(sites[:3], cell, np.zeros((1, 2)))
