"""Accuracy of the CAVIAR lattice analysis on synthetic object states (issue 7).

One command:  python bench/bench_lattice.py [--quick] [--plain]

An hBN-like honeycomb (a = 2.5 Å, 6 × 6 cells, B/N columns of different phase, masses
10.81/14.007 amu, first/second-neighbour springs 20/5 eV Å⁻², 300 K) is sampled in the
three phonon cases of the issue — coherent, Einstein (same ⟨u²⟩, no correlation),
correlated (harmonic G = k_B T Φ⁺) — rendered as phase images (Gaussian peaks, 1 %
noise), and analysed by ``analyse_states``. Table 1 prints, per case, the detection
error, ⟨u²⟩^½, LSM/CSM against the truth configurations and against the analytic model,
the signed bond correlation ρ_L and the |off-diagonal|/diagonal ratio, and the time per
state. Table 2 prints the mean branch frequencies (Γ–M–K–Γ) from N states, raw and
unbiased (inverse-Wishart factor), against the force-constant model: the spread over
repetitions shows what N = 10 states can and cannot say. The time column is the
analysis only; the baseline for it is the time to render the same images (ratio).

The ground-truth generators come from the tests (``tests/unit/lattice_models.py``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "unit"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchtable import print_table
from lattice_models import bloch_dynamical, greens, honeycomb, render, sample, springs
from speckleflow.services.lattice import (
    LatticeModel,
    analyse_states,
    dispersion,
    displacements,
    frequencies_THz,
    greens_tensor,
    neighbour_pairs,
    similarity,
    supercell_q,
)

A, PIX, T = 2.5, 0.1, 300.0
MASSES = np.array([10.81, 14.007])


def _setup(n_cells: int):
    sites, sub, cell, sup = honeycomb(n_cells, n_cells, A)
    phi = springs(sites, sup, [(A / np.sqrt(3), 20.0), (A, 5.0)])
    g = greens(phi, T)
    margin = np.array([3.0, 3.0]) - sites.min(axis=0)
    basis = np.array([[0.0, 0.0], (cell[0] + cell[1]) / 3]) + margin
    return sites + margin, sub, cell, sup, phi, g, basis


def accuracy_table(n_cells: int, n_states: int, plain: bool) -> None:
    sites, sub, cell, _, _, g, basis = _setup(n_cells)
    shape = tuple(int(v) for v in np.ceil((sites.max(axis=0) + 3.0) / PIX))
    amp = np.where(sub == 0, 0.8, 1.0)
    pairs = neighbour_pairs(sites, 1.1 * A)
    sigma = float(np.sqrt(np.mean(np.diag(g))))
    rng = np.random.default_rng(0)
    cases = {
        "coherent": np.zeros((n_states, len(sites), 2)),
        "einstein": sigma * rng.standard_normal((n_states, len(sites), 2)),
        "correlated": sample(g, n_states, 2, rng),
    }
    model = LatticeModel(cell_A=cell, basis_A=basis, supercell=(n_cells, n_cells),
                         masses_amu=MASSES)
    rows = []
    for name, u in cases.items():
        truth = sites[None] + u
        t0 = time.perf_counter()
        phase = np.stack([[render(p, shape, PIX, amplitude=amp, noise=0.01, rng=rng)]
                          for p in truth])
        t_render = time.perf_counter() - t0
        t0 = time.perf_counter()
        res = analyse_states(phase, PIX, (0.0, 0.0), sites, radius_A=0.5, cutoff_A=1.1 * A,
                             lattice=model, temperature_K=T)  # raw eq. 6
        t_ana = time.perf_counter() - t0
        g_truth = greens_tensor(displacements(truth))
        err = np.sqrt(np.nanmean((res.atoms.positions_A - truth) ** 2))
        vs_truth = (similarity(res.greens_tensor_A2, g_truth, pairs)
                    if np.abs(g_truth).max() > 1e-12 else None)
        vs_model = similarity(res.greens_tensor_A2, g, pairs)
        rows.append([
            name,
            f"{err:.4f}",
            f"{np.sqrt(np.nanmean(res.displacements_A ** 2)):.4f}",
            "—" if vs_truth is None else f"{vs_truth.lsm:.3f} / {vs_truth.csm:.3f}",
            f"{vs_model.lsm:.3f} / {vs_model.csm:.3f}",
            f"{res.bond_correlation[0]:+.3f}",
            f"{res.einstein_ratio:.3f}",
            f"{t_ana / n_states:.3f}",
            f"{t_ana / t_render:.2f}",
        ])
    print_table(
        ["case", "det. err Å", "u rms Å", "LSM/CSM truth", "LSM/CSM model", "ρ_L",
         "|off|/diag", "s/state", "ana/render"],
        rows,
        f"Lattice analysis, hBN-like {n_cells}×{n_cells} cells, {n_states} states, "
        f"model u rms {sigma:.3f} Å",
        plain=plain,
        right=range(1, 9),
    )


def branches_table(n_cells: int, counts: list[int], repeats: int, plain: bool) -> None:
    sites, sub, cell, sup, phi, g, basis = _setup(n_cells)
    q_all = supercell_q(cell, (n_cells, n_cells))
    ref = dispersion(g, sites, cell, basis, (n_cells, n_cells), MASSES, T)
    exact = frequencies_THz(bloch_dynamical(phi, sites, sub, sup, MASSES,
                                            q_all[ref.path_index]))[1:].mean(axis=0)
    rows = [["model", "—", " ".join(f"{v:5.1f}" for v in exact), "—"]]
    rng = np.random.default_rng(1)
    for n in counts:
        raw, fixed = [], []
        for _ in range(repeats):
            gs = greens_tensor(displacements(sites[None] + sample(g, n, 2, rng)))
            raw.append(dispersion(gs, sites, cell, basis, (n_cells, n_cells), MASSES, T)
                       .mean_branch_THz)
            fixed.append(dispersion(gs, sites, cell, basis, (n_cells, n_cells), MASSES, T,
                                    n_states=n).mean_branch_THz)
        for label, vals in (("raw", raw), ("unbiased", fixed)):
            v = np.array(vals)
            rows.append([label, str(n), " ".join(f"{x:5.1f}" for x in v.mean(axis=0)),
                         " ".join(f"{x:5.1f}" for x in v.std(axis=0))])
    print_table(["D(q) from", "states", "mean branches THz", "spread THz"], rows,
                f"Mean branch frequencies Γ–M–K–Γ, {repeats} repetitions per row",
                plain=plain, right=(1,))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="4×4 cells, fewer repetitions")
    ap.add_argument("--plain", action="store_true", help="plain-text tables")
    args = ap.parse_args()
    n_cells = 4 if args.quick else 6
    accuracy_table(n_cells, 10, args.plain)
    branches_table(n_cells, [10, 30] if args.quick else [10, 30, 100],
                   5 if args.quick else 20, args.plain)


if __name__ == "__main__":
    main()
