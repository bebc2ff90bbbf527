"""Accuracy of the CAVIAR lattice analysis on simulated atom positions (issue 7).

One command:  python bench/bench_lattice.py [--quick] [--plain]

Ground truth from the simulator's model (devices/phonons.py): single-layer hBN
(a = 2.504 Å, B/N masses 10.81/14.007 amu, the crystal's default springs of
devices/crystal.py) on a periodic n × n supercell of primitive cells at 300 K,
analytic G = k_B T Φ⁺, configurations by normal-mode sampling; Einstein with the same
rms; coherent = one configuration seen by every state.

Table 1 — phase images (Gaussian peaks, 1 % noise) of the three cases through
``analyse_states``: detection error, u rms, LSM/CSM against the truth configurations
and the analytic model, signed bond correlation ρ_L, the Einstein check (whitened
neighbour correlation r vs its null distribution for N independent configurations:
mean ± std and p), and the analysis time per state (ratio to rendering the images).
Table 2 — what a given detection error allows: positions = truth + Gaussian error σ_det,
10 states, 5 seeds: CSM against the truth configurations and the Einstein-check p of
Einstein and correlated data.
Table 3 — mean branch frequencies (Γ–M–K–Γ) from N states, raw and unbiased
(inverse-Wishart factor), against the model's Bloch D(q)
(``HarmonicLattice.bloch_dynamical_matrix``); the spread over repetitions shows what
N = 10 states can and cannot say.
Table 4 — the block rule of process ptycho's frequencies (services/lattice/model.py):
blocks of whole primitive cells cut from a 20 × 20 Å crop of a larger hBN-1L supercell,
G of the truth configurations detrended to order 0 or 1, mean branches / the model's
Bloch D(q) at the block's q points; "rule" marks what ``largest_block`` and the default
detrending choose.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchtable import print_table
from speckleflow.devices.crystal import HBN_A, HBN_C, CrystalSpec
from speckleflow.devices.phonons import HarmonicLattice, einstein
from speckleflow.services.lattice import (
    LatticeModel,
    analyse_states,
    dispersion,
    displacements,
    greens_tensor,
    in_plane_greens,
    neighbour_correlation_test,
    neighbour_pairs,
    similarity,
    supercell_q,
)
from speckleflow.services.lattice.dynamics import THZ_PER_SQRT_EV_A2_AMU

PIX, T, MARGIN = 0.1, 300.0, 3.0


class Honeycomb:
    """hBN-1L on an n × n periodic supercell of primitive cells, in (y, x) for the analysis."""

    def __init__(self, n: int) -> None:
        from ase import Atoms

        a = HBN_A
        cell3 = [[a, 0.0, 0.0], [a / 2, math.sqrt(3) * a / 2, 0.0], [0.0, 0.0, HBN_C]]
        unit = Atoms("BN", positions=[[0.0, 0.0, HBN_C / 2], [a / 2, a / (2 * math.sqrt(3)), HBN_C / 2]],
                     cell=cell3, pbc=True)
        atoms = unit.repeat((n, n, 1))
        self.n = n
        self.lattice = HarmonicLattice(atoms, CrystalSpec("hBN").default_springs())
        self.sublattice = np.tile([0, 1], n * n)
        eq = atoms.get_positions()
        self.shift = MARGIN - eq[:, [1, 0]].min(axis=0)
        self.sites = eq[:, [1, 0]] + self.shift  # (y, x) Å
        self.eq3 = eq
        self.cell = np.array([[0.0, a], [math.sqrt(3) * a / 2, a / 2]])  # rows a1, a2 (y, x)
        self.basis = np.array([[0.0, 0.0], [a / (2 * math.sqrt(3)), a / 2]]) + self.sites[0]
        self.masses = np.array([10.81, 14.007])
        self.g = in_plane_greens(self.lattice.greens_tensor(T))  # per atom, (y, x)
        self.sigma = float(np.sqrt(np.mean(np.diag(self.lattice.greens_tensor(T)))))
        self.model = LatticeModel(cell_A=self.cell, basis_A=self.basis, supercell=(n, n),
                                  masses_amu=self.masses)

    def positions(self, case: str, n_states: int, rng: np.random.Generator) -> np.ndarray:
        """(n_states, n_atoms, 2) (y, x) Å of the truth configurations of one case."""
        if case == "coherent":
            u = np.zeros((n_states, len(self.sites), 3))
        elif case == "einstein":
            u = einstein(len(self.sites), self.sigma, n_states, rng)
        else:
            u = self.lattice.sample(T, n_states, rng)
        return self.sites[None] + u[:, :, [1, 0]]

    def model_branches(self, q_yx: np.ndarray) -> np.ndarray:
        """Model ν (n_q, 4) THz, in-plane branches, from the Bloch D(q)."""
        q = np.c_[q_yx[:, 1], q_yx[:, 0], np.zeros(len(q_yx))]
        d = self.lattice.bloch_dynamical_matrix(q, self.sublattice)[:, [0, 1, 3, 4]][:, :, [0, 1, 3, 4]]
        return np.sqrt(np.clip(np.linalg.eigvalsh(d), 0.0, None)) * THZ_PER_SQRT_EV_A2_AMU


def render(positions: np.ndarray, shape: tuple[int, int], amplitude: np.ndarray, noise: float,
           rng: np.random.Generator, sigma: float = 0.35) -> np.ndarray:
    """Phase image (H, W), rad: Gaussian peaks at (y, x) Å, pixel PIX, origin (0, 0), noise."""
    yy, xx = np.arange(shape[0]) * PIX, np.arange(shape[1]) * PIX
    gy = np.exp(-((yy[None] - positions[:, :1]) ** 2) / (2 * sigma**2))
    gx = np.exp(-((xx[None] - positions[:, 1:]) ** 2) / (2 * sigma**2))
    return np.einsum("n,ny,nx->yx", amplitude, gy, gx) + noise * rng.standard_normal(shape)


def accuracy_table(h: Honeycomb, n_states: int, plain: bool) -> None:
    shape = tuple(int(v) for v in np.ceil((h.sites.max(axis=0) + MARGIN) / PIX))
    amp = np.where(h.sublattice == 0, 0.8, 1.0)
    nn = HBN_A / math.sqrt(3)
    pairs = neighbour_pairs(h.sites, 1.15 * nn)
    rng = np.random.default_rng(0)
    rows = []
    for name in ("coherent", "einstein", "correlated"):
        truth = h.positions(name, n_states, rng)
        t0 = time.perf_counter()
        phase = np.stack([[render(p, shape, amp, 0.01, rng)] for p in truth])
        t_render = time.perf_counter() - t0
        t0 = time.perf_counter()
        res = analyse_states(phase, PIX, (0.0, 0.0), h.sites, radius_A=0.5, cutoff_A=1.15 * nn,
                             model_greens_A2=h.g, lattice=h.model, temperature_K=T)  # raw eq. 6
        t_ana = time.perf_counter() - t0
        g_truth = greens_tensor(displacements(truth))
        err = np.sqrt(np.nanmean((res.atoms.positions_A - truth) ** 2))
        vs_truth = (similarity(res.greens_tensor_A2, g_truth, pairs)
                    if np.abs(g_truth).max() > 1e-12 else None)
        vs_model = similarity(res.greens_tensor_A2, h.g, pairs)
        nt = res.neighbour_test
        rows.append([
            name,
            f"{err:.4f}",
            f"{np.sqrt(np.nanmean(res.displacements_A ** 2)):.4f}",
            "—" if vs_truth is None else f"{vs_truth.lsm:.3f}/{vs_truth.csm:.3f}",
            f"{vs_model.lsm:.3f}/{vs_model.csm:.3f}",
            f"{res.bond_correlation[0]:+.3f}",
            f"{nt.statistic:.3f}",
            f"{nt.null_mean:.3f}±{nt.null_std:.3f}",
            f"{nt.p_value:.3f}",
            f"{nt.model_mean:.3f}",
            f"{t_ana / n_states:.3f}",
            f"{t_ana / t_render:.2f}",
        ])
    print_table(
        ["case", "det. err Å", "u rms Å", "LSM/CSM truth", "LSM/CSM model", "ρ_L",
         "r", "r null", "p", "r model", "s/state", "ana/render"],
        rows,
        f"Lattice analysis of phase images, hBN-1L {h.n}×{h.n} cells, {n_states} states, "
        f"model u rms {h.sigma:.3f} Å",
        plain=plain,
        right=range(1, 12),
    )


def detection_table(h: Honeycomb, errors: list[float], seeds: int, plain: bool) -> None:
    pairs = neighbour_pairs(h.sites, 1.15 * HBN_A / math.sqrt(3))
    rows = []
    for err in errors:
        csm, p_e, p_c = [], [], []
        for seed in range(seeds):
            rng = np.random.default_rng([seed, 17])
            for case, out in (("einstein", p_e), ("correlated", p_c)):
                truth = h.positions(case, 10, rng)
                found = truth + err * rng.standard_normal(truth.shape)
                g = greens_tensor(displacements(found))
                out.append(neighbour_correlation_test(g, pairs, 10, n_draws=100, seed=seed).p_value)
                if case == "correlated":
                    csm.append(similarity(g, greens_tensor(displacements(truth)), pairs).csm)
        c = np.array(csm)
        rows.append([f"{err:.3f}", f"{c.mean():.3f}", f"{c.min():.3f}",
                     f"{np.median(p_e):.3f}", f"{np.max(p_c):.3f}"])
    print_table(["σ_det Å", "CSM mean", "CSM min", "p Einstein (median)", "p correlated (max)"],
                rows, f"Detection error vs accuracy: positions = truth + N(0, σ_det²), 10 states, "
                f"{seeds} seeds, hBN-1L {h.n}×{h.n} (column u rms {h.sigma:.3f} Å)",
                plain=plain, right=range(5))


def branches_table(h: Honeycomb, counts: list[int], repeats: int, plain: bool) -> None:
    n = h.n
    q_all = supercell_q(h.cell, (n, n))
    ref = dispersion(h.g, h.sites, h.cell, h.basis, (n, n), h.masses, T)
    exact = h.model_branches(q_all[ref.path_index])[1:].mean(axis=0)
    rows = [["model", "—", " ".join(f"{v:5.1f}" for v in exact), "—"],
            ["analytic G", "∞", " ".join(f"{v:5.1f}" for v in ref.mean_branch_THz), "—"]]
    rng = np.random.default_rng(1)
    for count in counts:
        raw, fixed = [], []
        for _ in range(repeats):
            gs = greens_tensor(displacements(h.positions("correlated", count, rng)))
            raw.append(dispersion(gs, h.sites, h.cell, h.basis, (n, n), h.masses, T).mean_branch_THz)
            fixed.append(dispersion(gs, h.sites, h.cell, h.basis, (n, n), h.masses, T,
                                    n_states=count).mean_branch_THz)
        for label, vals in (("raw", raw), ("unbiased", fixed)):
            v = np.array(vals)
            rows.append([label, str(count), " ".join(f"{x:5.1f}" for x in v.mean(axis=0)),
                         " ".join(f"{x:5.1f}" for x in v.std(axis=0))])
    print_table(["D(q) from", "states", "mean branches THz", "spread THz"], rows,
                f"Mean branch frequencies Γ–M–K–Γ, {repeats} repetitions per row",
                plain=plain, right=(1,))


def blocks_table(n_conf: int, field_A: float, plain: bool) -> None:
    """Blocks cut from a crop of a larger crystal (process ptycho's frequencies), vs the model."""
    from speckleflow.devices.crystal import build_crystal
    from speckleflow.services.lattice import (
        column_groups,
        column_positions,
        cropped_field_dispersion,
        largest_block,
        periodic_cut,
        projected_lattice,
    )

    spec = CrystalSpec("hBN", layers=1, repeats=(10, 6))
    atoms = build_crystal(spec)
    lattice = HarmonicLattice(atoms, spec.default_springs())
    eq = atoms.get_positions()
    groups, sites = column_groups(eq)
    cols = column_positions(eq[None] + lattice.sample(T, n_conf, np.random.default_rng(1)), groups)
    model = projected_lattice(spec.name, eq, atoms.get_masses())
    centre = np.diag(atoms.get_cell())[[1, 0]] / 2
    inside = np.all(np.abs(sites - centre) <= field_A / 2, axis=1)
    s, g = sites[inside], greens_tensor(displacements(cols[:, inside]))
    sublattice = (np.array(atoms.get_chemical_symbols()) == "N").astype(int)
    _, chosen = largest_block(s, model.cell_A, model.basis_A)
    rows = []
    for n, order in (((2, 2), 0), ((2, 2), 1), ((3, 3), 0), ((3, 3), 1), ((4, 4), 1), ((5, 5), 1),
                     ((3, 4), 1), ((3, 5), 1), ((4, 5), 1), ((4, 6), 1)):
        try:
            sel = periodic_cut(s, model.cell_A, model.basis_A, n)
        except ValueError:
            continue
        d = cropped_field_dispersion(g, s, model, T, block=(sel, n), detrend_order=order).dispersion
        q = d.q[d.path_index]
        q = q[np.linalg.norm(q, axis=1) > 1e-9]
        bloch = lattice.bloch_dynamical_matrix(np.c_[q[:, 1], q[:, 0], np.zeros(len(q))], sublattice)
        w2 = np.linalg.eigvalsh(bloch[:, [0, 1, 3, 4]][:, :, [0, 1, 3, 4]])
        ratio = d.mean_branch_THz / (np.sqrt(np.clip(w2, 0, None)) * THZ_PER_SQRT_EV_A2_AMU).mean(axis=0)
        auto = 1 if min(n) >= 3 else 0
        rows.append([f"{n[0]}×{n[1]}", str(order), "yes" if n == chosen and order == auto else "",
                     " ".join(f"{v:.2f}" for v in ratio), f"{np.abs(ratio - 1).max():.2f}"])
    print_table(["block", "detrend", "rule", "mean branches / model", "worst |ratio − 1|"], rows,
                f"Frequencies of whole-cell blocks of a {field_A:g} × {field_A:g} Å crop of hBN-1L "
                f"(10 × 6 orthogonal cells), truth G of {n_conf} configurations, Γ–M–K–Γ",
                plain=plain, right=(1, 4))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="4×4 cells, fewer repetitions")
    ap.add_argument("--plain", action="store_true", help="plain-text tables")
    args = ap.parse_args()
    h = Honeycomb(4 if args.quick else 6)
    accuracy_table(h, 10, args.plain)
    detection_table(h, [0.0, 0.01, 0.02] if args.quick else [0.0, 0.005, 0.01, 0.015, 0.02, 0.03],
                    2 if args.quick else 10, args.plain)
    branches_table(h, [10, 30] if args.quick else [10, 30, 100], 5 if args.quick else 20, args.plain)
    blocks_table(1000 if args.quick else 3000, 20.0, args.plain)


if __name__ == "__main__":
    main()
