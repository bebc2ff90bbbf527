"""What the CAVIAR lattice analysis can deliver, on simulated atom positions (issue 7).

No ptychography: the simulator's own frozen-phonon configurations
(devices/crystal_sample.py → devices/phonons.py; the arrays a ptycho run stores in its
``truth`` stream) for single-layer hBN [0001] and two-cell Si [110], 10 configurations
at 300 K, coherent / Einstein / correlated. Each configuration's projected columns are
"detected" with a Gaussian position error of σ_det = 0.01 Å per component (an
accurate reconstruction; the analysis sees nothing else), then go through eqs. (1)–(4)
and the Einstein check:

- coherent (one configuration seen by all 10 object states): u rms at the detection
  floor σ_det (≤ 1.2 σ_det), LSM against the harmonic model's G ≈ 0 (no vibration found);
- Einstein: the neighbour correlation is consistent with its null distribution for 10
  independent configurations (p > 0.01) and far below what correlated data give;
- correlated: CSM ≥ 0.9 against the truth configurations' G (the issue's target), and
  the neighbour correlation far above the null (p at its floor).

The columns' rms vibration is ≈ 0.036 Å (hBN) and 0.038 Å (Si) per component: at
σ_det = 0.015 Å, CSM falls to ≈ 0.82–0.89 with 10 states, at 0.02 Å to ≈ 0.73–0.84
(measured over 5 seeds; ``bench/bench_lattice.py`` prints the dependence).
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("ase")

from speckleflow.devices.crystal import CrystalSpec
from speckleflow.devices.crystal_sample import CrystalSample, SimulationParams
from speckleflow.services.lattice import (
    bond_correlation,
    displacements,
    greens_tensor,
    neighbour_correlation_test,
    neighbour_pairs,
    similarity,
    truth_reference,
)

N_STATES = 10
SIGMA_DET_A = 0.01
CRYSTALS = {
    "hBN-1L": CrystalSpec("hBN", layers=1, repeats=(6, 4)),
    "Si-2c": CrystalSpec("Si", layers=2, repeats=(3, 4)),
}


def _truth(spec: CrystalSpec, model: str, seed: int, sigma_A: float | None = None):
    params = SimulationParams(crystal=spec, scan_shape=(4, 4), phonon_model=model,
                              n_configurations=1 if model == "none" else N_STATES, seed=seed,
                              einstein_sigma_A=sigma_A)
    sample = CrystalSample(params, use_cache=False)
    return sample, sample.configurations()


@pytest.fixture(scope="module", params=sorted(CRYSTALS))
def crystal(request):
    """Columns, pairs and the harmonic model's projected G of one crystal."""
    spec = CRYSTALS[request.param]
    sample, conf = _truth(spec, "correlated", seed=3)  # the correlated case's truth
    eq = np.asarray(sample.atoms.get_positions())
    g3 = sample.greens_tensor()
    ref = truth_reference(conf, eq, greens_analytic_A2=g3)
    d = np.linalg.norm(ref.sites_A[:, None] - ref.sites_A[None], axis=-1)
    nn = float(d[d > 0.3].min())
    pairs = neighbour_pairs(ref.sites_A, 1.15 * nn)
    sigma = float(np.sqrt(np.mean(np.diag(g3))))  # Einstein: the harmonic model's rms
    return (request.param, spec, eq, ref.sites_A, pairs, ref.greens_analytic_A2, sigma,
            conf)


def _detected(model: str, crystal, seed: int):
    """Column positions per object state with the detection error, and the truth's."""
    _, spec, eq, _, _, _, sigma, conf_correlated = crystal
    if model == "correlated":
        conf = conf_correlated
    else:
        _, conf = _truth(spec, model, seed, sigma_A=sigma if model == "einstein" else None)
    if model == "none":  # every object state sees the one configuration
        conf = np.repeat(conf, N_STATES, axis=0)
    cols = truth_reference(conf, eq).positions_A
    truth = None if model == "none" else cols
    rng = np.random.default_rng([seed, 7])
    return cols + SIGMA_DET_A * rng.standard_normal(cols.shape), truth


def test_coherent_finds_no_vibration(crystal):
    name, _, _, _, pairs, g_model, _, _ = crystal
    found, _ = _detected("none", crystal, seed=1)
    g = greens_tensor(displacements(found))
    u_rms = float(np.sqrt(np.mean(np.diag(g))))
    sim = similarity(g, g_model, pairs)  # against the vibration the harmonic model expects
    test = neighbour_correlation_test(g, pairs, N_STATES)
    model_rms = float(np.sqrt(np.mean(np.diag(g_model))))
    print(f"{name} coherent: u rms {u_rms:.4f} Å (model {model_rms:.4f}), LSM/CSM vs model "
          f"{sim.lsm:.3f}/{sim.csm:.3f}; {test.label()}")
    assert u_rms <= 1.2 * SIGMA_DET_A  # the detection floor, not the 0.036–0.038 Å of 300 K
    assert sim.lsm < 0.1
    assert test.p_value > 0.01  # detection errors are independent: no neighbour correlation


def test_einstein_neighbour_correlations_are_at_the_null(crystal):
    name, _, _, sites, pairs, g_model, _, _ = crystal
    found, truth = _detected("einstein", crystal, seed=2)
    g = greens_tensor(displacements(found))
    sim = similarity(g, greens_tensor(displacements(truth)), pairs)
    test = neighbour_correlation_test(g, pairs, N_STATES, model_greens_A2=g_model)
    rho_l, rho_t = bond_correlation(g, sites, pairs)
    print(f"{name} einstein: LSM/CSM vs truth {sim.lsm:.3f}/{sim.csm:.3f}, ρ_L {rho_l:+.3f} "
          f"ρ_T {rho_t:+.3f}; {test.label()} (z {test.z_null:+.1f})")
    assert test.p_value > 0.01  # not rejected at 1 %
    # and classified: nearer the null's mean than the correlated model's, which lies
    # several null widths higher (10 states; 250 pairs in hBN, 48 in Si)
    assert abs(test.statistic - test.null_mean) < abs(test.statistic - test.model_mean)
    assert test.model_mean - test.null_mean > 3 * test.null_std


def test_correlated_csm_and_neighbour_correlation(crystal):
    name, _, _, _, pairs, g_model, _, _ = crystal
    found, truth = _detected("correlated", crystal, seed=3)  # seed 3: the fixture's
    g = greens_tensor(displacements(found))
    g_truth = greens_tensor(displacements(truth))
    sim = similarity(g, g_truth, pairs)
    vs_model = similarity(g, g_model, pairs)
    test = neighbour_correlation_test(g, pairs, N_STATES, model_greens_A2=g_model)
    print(f"{name} correlated: LSM/CSM vs truth {sim.lsm:.3f}/{sim.csm:.3f}, vs model "
          f"{vs_model.lsm:.3f}/{vs_model.csm:.3f}; {test.label()} (z {test.z_null:+.1f})")
    assert sim.csm >= 0.9
    assert test.p_value <= 0.01  # independent vibrations rejected at 1 %
    assert test.z_null > 3
    assert abs(test.statistic - test.model_mean) < abs(test.statistic - test.null_mean)


def test_null_distribution_is_calibrated():
    """Independent Gaussian data of any on-site covariance: p is uniform (Einstein check)."""
    rng = np.random.default_rng(5)
    sites = np.stack(np.meshgrid(np.arange(6.0), np.arange(6.0), indexing="ij"), -1).reshape(-1, 2)
    pairs = neighbour_pairs(sites, 1.1)
    scale = rng.uniform(0.02, 0.08, (len(sites), 2, 2))  # anisotropic, site-dependent
    p = []
    for k in range(40):
        u = np.einsum("iab,nib->nia", scale, rng.standard_normal((N_STATES, len(sites), 2)))
        g = greens_tensor(displacements(u))
        p.append(neighbour_correlation_test(g, pairs, N_STATES, n_draws=100, seed=k).p_value)
    p = np.array(p)
    print(f"p values: mean {p.mean():.2f}, fraction < 0.05: {np.mean(p < 0.05):.2f}")
    assert 0.35 < p.mean() < 0.65  # uniform: 0.5 ± 0.05 for 40 draws
    assert np.mean(p < 0.05) <= 0.15


def test_too_few_states_are_refused():
    """N − 1 ≤ 2d: two sites' whitened cross-correlation is 1 whatever the data."""
    u = np.random.default_rng(6).standard_normal((5, 4, 2))
    with pytest.raises(ValueError, match="n_states must be an integer >= 2 d \\+ 2 = 6"):
        neighbour_correlation_test(greens_tensor(displacements(u)), [[0, 1]], 5)
