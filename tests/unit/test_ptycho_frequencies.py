"""Phonon frequencies of the lattice step of process ptycho (issue 7: eq. 6 from the object states).

Truth: single-layer hBN [0001] from the simulator (devices/crystal.py, 8 × 5 orthogonal
cells, 80 columns) in its harmonic model (devices/phonons.py) at 300 K; 2000 truth
configurations; the "reconstruction" renders the first 12 of them as Gaussian phase
peaks (1 % noise) on an object grid in the scan frame, as in test_ptycho_lattice.py.
The scan (29 × 29 positions at 0.5 Å) is centred in the supercell as ``CrystalSample``
centres it, so the field is a 14 × 14 Å crop, not a periodic supercell.

Known answers:
- the model's Bloch D(q) (``HarmonicLattice.bloch_dynamical_matrix``, in-plane block)
  at the q points of the chosen block: the frequencies published from the truth G
  (2000 configurations, same block and detrending) and from the analytic G on the same
  cut must match its mean branches within 15 %, the tolerance of
  test_lattice_dispersion_cut.py (measured: 0.89–1.12 ×);
- the G of the truth columns of the 12 rendered configurations: the published
  frequencies of the reconstruction must match its mean branches within 10 % (measured
  over seeds: 0.94–1.01 ×). Twelve states do not pin the model itself (the stiffest
  branch comes out 1.17–1.40 × the model from the same 12 truth configurations —
  the sampling bias of ⟨ũũ†⟩⁻¹, services/lattice/dynamics.py), so that is not asserted.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("ase")

from lattice_models import render
from speckleflow.devices.crystal import CrystalSpec, build_crystal
from speckleflow.devices.phonons import HarmonicLattice
from speckleflow.services.lattice import (
    column_groups,
    column_positions,
    displacements,
    greens_tensor,
)
from speckleflow.services.lattice.dynamics import THZ_PER_SQRT_EV_A2_AMU
from speckleflow.services.lattice.model import cropped_field_dispersion
from speckleflow.services.ptycho_lattice import lattice_products

T, N_CONF, N_STATES, PIXEL, STEP, N_SCAN = 300.0, 2000, 12, 0.15, 0.5, 29


@pytest.fixture(scope="module")
def case():
    spec = CrystalSpec("hBN", layers=1, repeats=(8, 5))
    atoms = build_crystal(spec)
    lattice = HarmonicLattice(atoms, spec.default_springs())
    rng = np.random.default_rng(0)
    eq = atoms.get_positions()
    conf = eq[None] + lattice.sample(T, N_CONF, rng)
    lx, ly = np.diag(atoms.get_cell())[:2]
    iy, ix = np.meshgrid(np.arange(N_SCAN), np.arange(N_SCAN), indexing="ij")
    positions = np.stack([iy.ravel(), ix.ravel()], axis=1) * STEP
    span = (N_SCAN - 1) * STEP
    origin = np.array([(ly - span) / 2, (lx - span) / 2])  # as CrystalSample centres the scan
    obj_origin = np.array([-1.5, -1.5])
    shape = (int((span + 3) / PIXEL),) * 2
    yx = conf[:N_STATES, :, [1, 0]] - origin - obj_origin
    phase = np.stack([render(p, shape, PIXEL, sigma=0.3, noise=0.01, rng=rng) for p in yx])[:, None]
    result = SimpleNamespace(object_phase=phase.astype(np.float32), pixel_size_A=PIXEL,
                             object_origin_A=obj_origin, positions_A=positions)
    truth = {"atom_positions": conf, "atom_equilibrium": eq, "masses_amu": atoms.get_masses(),
             "greens_tensor_analytic": lattice.greens_tensor(T)}
    start = {"scan_origin_A": origin.tolist(), "crystal": spec.name, "temperature_K": T}
    out = lattice_products(result, truth, start)
    return SimpleNamespace(atoms=atoms, lattice=lattice, conf=conf, result=result, truth=truth,
                           start=start, out=out, origin=origin)


def _model_mean_branches(case, q_yx: np.ndarray) -> np.ndarray:
    """Mean over q ≠ 0 of the model's in-plane Bloch branches, THz."""
    q = q_yx[np.linalg.norm(q_yx, axis=1) > 1e-9]
    sublattice = (np.array(case.atoms.get_chemical_symbols()) == "N").astype(int)
    d = case.lattice.bloch_dynamical_matrix(np.c_[q[:, 1], q[:, 0], np.zeros(len(q))], sublattice)
    inplane = [0, 1, 3, 4]  # x, y of B and N: planar springs decouple z
    w2 = np.linalg.eigvalsh(d[:, inplane][:, :, inplane])
    return (np.sqrt(np.clip(w2, 0.0, None)) * THZ_PER_SQRT_EV_A2_AMU).mean(axis=0)


def test_published_frequencies_match_the_model_and_the_states(case):
    out, s = case.out, case.out.summary
    assert "frequencies_skipped" not in s, s.get("frequencies_skipped")
    rec, ref = out.frequencies, out.frequencies_truth
    # the largest square block of whole cells in the 14 Å field, detrended to order 1
    assert rec.n_cells == (4, 4) and len(rec.indices) == 32 and rec.detrend_order == 1
    assert s["frequency_block_cells"] == [4, 4] and s["frequency_path"] == "Γ–M–K–Γ"
    np.testing.assert_array_equal(ref.indices, rec.indices)
    d = rec.dispersion
    q = d.q[d.path_index]
    model = _model_mean_branches(case, q)
    print("mean branches THz: model", model.round(2), "analytic G", np.round(s["mean_branch_model_THz"], 2),
          "truth G", np.round(s["mean_branch_truth_THz"], 2),
          "reconstruction", np.round(s["mean_branch_THz"], 2))
    np.testing.assert_allclose(s["mean_branch_truth_THz"], model, rtol=0.15)
    np.testing.assert_allclose(s["mean_branch_model_THz"], model, rtol=0.15)  # analytic G, same cut
    # the reconstruction against the G of the 12 configurations it was rendered from
    groups, all_sites = column_groups(case.truth["atom_equilibrium"])
    sites = all_sites - case.origin
    inside = np.flatnonzero(np.all((sites >= case.result.positions_A.min(0))
                                   & (sites <= case.result.positions_A.max(0)), axis=1))
    np.testing.assert_allclose(out.sites_A, sites[inside])
    g_states = greens_tensor(displacements(column_positions(case.conf[:N_STATES], groups)[:, inside]))
    same = cropped_field_dispersion(g_states, out.sites_A, rec.model, T, block=(rec.indices, rec.n_cells))
    np.testing.assert_allclose(s["mean_branch_THz"], same.dispersion.mean_branch_THz, rtol=0.10)
    fig = out.figures["dispersion"]
    assert fig.dtype == np.uint8 and fig.ndim == 3 and fig.shape[-1] == 4


def test_frequencies_are_skipped_with_the_reason(case):
    r = case.result
    few = SimpleNamespace(object_phase=r.object_phase[:5], pixel_size_A=r.pixel_size_A,
                          object_origin_A=r.object_origin_A, positions_A=r.positions_A)
    s = lattice_products(few, case.truth, case.start).summary
    assert "needs >= 6" in s["frequencies_skipped"] and "mean_branch_THz" not in s
    # a 5 Å field holds no 2 × 2 block of cells: the rest of the lattice step is published
    small = SimpleNamespace(object_phase=r.object_phase, pixel_size_A=r.pixel_size_A,
                            object_origin_A=r.object_origin_A, positions_A=r.positions_A[r.positions_A.max(1) <= 5])
    out = lattice_products(small, case.truth, case.start)
    assert "no complete block of 2 × 2" in out.summary["frequencies_skipped"]
    assert out.frequencies is None and "dispersion" not in out.figures and out.summary["u_rms_A"] > 0
    s = lattice_products(few, case.truth, {**case.start, "crystal": "MoS2-1L[0001]"}).summary
    assert "'MoS2-1L[0001]'" in s["frequencies_skipped"]


@pytest.mark.system
def test_frequencies_are_published_under_analysis_ptycho(case, tiled_client):
    """The products written by process ptycho's publishing step into a real Tiled server
    (≈ 8 s of writes on the shared machine, plus the session's server start)."""
    from speckleflow.services.process_ptycho import PtychoProcessOptions, StoredPtychoRun, _publish
    from speckleflow.services.ptycho.result import ReconstructionResult

    phase = case.result.object_phase[:, :, :16, :16]
    result = ReconstructionResult(
        object=np.exp(1j * phase).astype(np.complex64), object_phase=phase, pixel_size_A=PIXEL,
        slice_thickness_A=1.0, object_origin_A=case.result.object_origin_A,
        probe=np.ones((1, 8, 8), np.complex64), loss=np.array([2.0, 1.0]),
        positions_A=case.result.positions_A, state_weights=np.full(N_STATES, 1 / N_STATES),
        params={"loss": "poisson", "first_stage_iterations": 1})
    uid = "ptfreq-publish-test"
    stored = StoredPtychoRun(uid, case.start, None, "test")
    summary = {"object_origin_A": [-1.5, -1.5], "lattice": case.out.summary}
    published = _publish(tiled_client, stored, PtychoProcessOptions(n_states=N_STATES), result, summary,
                         None, case.out)
    assert {"frequencies", "frequencies_truth", "figures/dispersion"} <= set(published)
    node = tiled_client["analysis"][uid]["ptycho"]
    freq = node["frequencies"]
    md = freq.metadata
    d = case.out.frequencies.dispersion
    np.testing.assert_allclose(freq.read(), d.frequencies_THz[d.path_index])
    assert md["dims"] == ["path_point", "branch"] and md["units"] == "THz"
    assert md["path_labels"] == ["Γ", "M", "K", "Γ"] and md["block_cells"] == [4, 4]
    assert len(md["path_distance_per_A"]) == len(d.path_index) == len(md["q_per_A"])
    np.testing.assert_allclose(md["mean_branch_THz"], case.out.summary["mean_branch_THz"])
    assert node["frequencies_truth"].metadata["source"] == "G of the truth configurations"
    assert node["figures"]["dispersion"].read().shape[-1] == 4
    lat = node.metadata["reconstruction"]["summary"]["lattice"]
    assert lat["frequency_block_cells"] == [4, 4] and len(lat["mean_branch_truth_THz"]) == 4
