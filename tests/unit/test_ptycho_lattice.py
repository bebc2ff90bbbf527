"""The lattice step of process ptycho (services/ptycho_lattice.py) on a synthetic reconstruction.

Truth: a 1-layer hBN supercell (devices/crystal.py) vibrating in the harmonic lattice
model (devices/phonons.py) — the same truth arrays `run ptycho` writes. The
"reconstruction" renders each configuration's atoms as Gaussian phase peaks on an
object grid whose origin is in the scan frame (scan_origin_A subtracted), as
services/ptycho does. The glue must undo the ase (x, y, z) → (y, x) order and the scan
origin, keep the columns of the scanned field and recover G of the truth configurations.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from lattice_models import render
from speckleflow.devices.crystal import CrystalSpec, build_crystal
from speckleflow.devices.phonons import HarmonicLattice
from speckleflow.services.ptycho_lattice import lattice_products

N_CONF, PIXEL = 12, 0.1


@pytest.fixture(scope="module")
def case():
    spec = CrystalSpec("hBN", layers=1, repeats=(3, 2))
    atoms = build_crystal(spec)
    lattice = HarmonicLattice(atoms, spec.default_springs())
    rng = np.random.default_rng(3)
    eq = atoms.get_positions()  # (n, 3) x, y, z
    u = lattice.sample(300.0, N_CONF, rng)
    conf = eq[None] + u.reshape(N_CONF, len(eq), 3)
    cell = np.diag(atoms.get_cell())  # lx, ly, lz
    origin = np.array([2.0, 2.5])  # scan origin (y, x), Å, in the supercell frame
    iy, ix = np.meshgrid(np.arange(12), np.arange(14), indexing="ij")
    positions = np.stack([iy.ravel(), ix.ravel()], axis=1) * 0.4  # scan frame
    obj_origin = np.array([-1.5, -1.5])  # object pixel (0, 0) in the scan frame
    shape = (int((positions[:, 0].max() + 3) / PIXEL), int((positions[:, 1].max() + 3) / PIXEL))
    yx = conf[:, :, [1, 0]] - origin - obj_origin  # in object-pixel Å
    phase = np.stack([render(p, shape, PIXEL, sigma=0.3, noise=0.01, rng=rng) for p in yx])[:, None]
    result = SimpleNamespace(object_phase=phase.astype(np.float32), pixel_size_A=PIXEL,
                             object_origin_A=obj_origin, positions_A=positions)
    truth = {"atom_positions": conf, "atom_equilibrium": eq}
    return result, truth, {"scan_origin_A": origin.tolist()}, cell


def test_lattice_step_keeps_the_scanned_columns_and_recovers_G(case):
    result, truth, start, _ = case
    out = lattice_products(result, truth, start)
    pos = result.positions_A
    inside = np.all((out.sites_A >= pos.min(0)) & (out.sites_A <= pos.max(0)), axis=1)
    assert inside.all() and len(out.sites_A) >= 6
    assert out.atoms_A.shape == (N_CONF, len(out.sites_A), 2)
    assert out.greens_tensor_A2.shape == out.greens_truth_A2.shape == (2 * len(out.sites_A),) * 2
    s = out.summary
    print({k: s[k] for k in ("n_sites", "found_fraction", "u_rms_A", "lsm", "csm")})
    assert s["found_fraction"] == 1.0
    # the peaks move with the truth columns: G of the recovered positions is that of the truth
    assert s["csm"] > 0.95 and s["lsm"] > 0.8
    assert np.allclose(out.greens_tensor_A2, out.greens_tensor_A2.T)
    assert set(out.figures) == {"correlation_vectors", "greens_tensor"}
    assert all(f.dtype == np.uint8 and f.ndim == 3 for f in out.figures.values())


def test_lattice_step_names_a_field_without_columns(case):
    result, truth, _, cell = case
    far = {"scan_origin_A": [cell[1] * 10, cell[0] * 10]}
    with pytest.raises(ValueError, match="truth columns lie in the scanned field"):
        lattice_products(result, truth, far)


def test_other_configurations_do_not_match(case):
    # truth configurations the phase was not rendered from (the displacements reversed
    # in every other row): the recovered G no longer matches, so the CSM check above can fail.
    result, truth, start, _ = case
    eq = truth["atom_equilibrium"]
    u = truth["atom_positions"] - eq
    other = {"atom_positions": eq + u[::-1] * np.where(np.arange(len(eq)) % 2, 1.0, -1.0)[None, :, None],
             "atom_equilibrium": eq}
    out = lattice_products(result, other, start)
    assert out.summary["csm"] < 0.8


def test_coherent_run_with_several_states_finds_no_vibration(case):
    """One truth configuration, 12 object states: vibration found only if the states move."""
    result, truth, start, _ = case
    eq = truth["atom_equilibrium"]
    coherent = {"atom_positions": eq[None], "atom_equilibrium": eq}
    # the states see the same crystal: render the equilibrium 12 times (noise differs)
    rng = np.random.default_rng(4)
    obj_origin = result.object_origin_A
    yx = eq[:, [1, 0]] - np.asarray(start["scan_origin_A"]) - obj_origin
    shape = result.object_phase.shape[-2:]
    still = np.stack([render(yx, shape, PIXEL, sigma=0.3, noise=0.01, rng=rng)
                      for _ in range(N_CONF)])[:, None]
    quiet = SimpleNamespace(object_phase=still.astype(np.float32), pixel_size_A=PIXEL,
                            object_origin_A=obj_origin, positions_A=result.positions_A)
    s = lattice_products(quiet, coherent, start).summary
    print({k: s[k] for k in ("u_rms_A", "position_error_rms_A", "vibration_found")})
    assert s["vibration_found"] is False and s["lsm"] is None
    assert s["u_rms_A"] < 0.01
    # the vibrating states of the fixture against the same coherent truth: found
    s = lattice_products(result, coherent, start).summary
    print({k: s[k] for k in ("u_rms_A", "position_error_rms_A", "vibration_found")})
    assert s["vibration_found"] is True


def test_few_states_have_no_einstein_check(case):
    """Three object states: G exists, the Einstein check needs six; the step still publishes."""
    result, truth, start, _ = case
    few = SimpleNamespace(object_phase=result.object_phase[:3], pixel_size_A=PIXEL,
                          object_origin_A=result.object_origin_A, positions_A=result.positions_A)
    out = lattice_products(few, truth, start)
    assert "neighbour_correlation" not in out.summary and out.summary["u_rms_A"] > 0
