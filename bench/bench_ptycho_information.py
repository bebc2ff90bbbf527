"""How much the 4D-STEM data say about correlated vibrations (issue 7, CAVIAR): a dose bound.

One command:  python bench/bench_ptycho_information.py [--plain] [--nx 16] [--step 0.3]
(``--quick``: a 6×6 scan, seconds).

Before asking a fit for the neighbour correlations (CSM), ask the data: do the patterns
of the true frozen-phonon configurations differ, beyond Poisson noise, from those of the
same configurations with each column's displacements shuffled across configurations
independently (every column keeps its displacement distribution, the correlations between
columns are destroyed)? The statistic is Pearson's χ² = Σ (I_corr − I_shuf)² / I_shuf
over every pixel of every pattern, for the incident electrons per pattern of the run
(χ² ∝ dose). The log-likelihood ratio of the two hypotheses is about χ²/2: with χ² of
order 1 no estimator — our fit or any other — can tell the correlated from the
uncorrelated crystal, and the CSM of a reconstruction is then set by its initialisation
and noise, not by the sample. For reference the second χ² compares the vibrating crystal
with its static mean structure (what the Debye-Waller smearing is worth).

Model (our choice, stated): the CrystalSample configurations (harmonic lattice, 300 K,
10 configurations, the `speckleflow run ptycho` supercell for the scan), projected onto
columns (:func:`~speckleflow.services.lattice.truth.truth_reference`), each column a
Gaussian phase peak of σ = 0.25 Å and 0.35 rad per atom in the column (abTEM's projected
phase of one hBN layer sampled at the 0.25 Å object pixel peaks at 0.33 rad); the
forward model of the fit (:func:`~speckleflow.services.ptycho.model.simulate`), 200 kV,
25 mrad, 64 × 64 detector to 50 mrad. No abTEM multislice: seconds, not minutes. The
time column is the forward model time, the baseline the first row (ratio).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchtable import print_table

PHASE_PER_ATOM_RAD = 0.35
SIGMA_A = 0.25


def _phases(columns: np.ndarray, grid, peak: float) -> np.ndarray:
    h, w = grid.shape
    y = grid.origin_A[0] + np.arange(h)[:, None] * grid.pixel_A
    x = grid.origin_A[1] + np.arange(w)[None, :] * grid.pixel_A
    out = np.zeros((columns.shape[0], h, w))
    for n, conf in enumerate(columns):
        for cy, cx in conf:
            out[n] += peak * np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * SIGMA_A**2))
    return out


def chi2_case(layers: int, nx: int, step: float, seed: int) -> tuple[float, float, float, int, float]:
    """χ² per incident electron per pattern: (correlated vs shuffled, vibrating vs static), seconds."""
    from speckleflow.services.lattice.truth import truth_reference
    from speckleflow.services.ptycho import aperture_probe, object_grid, real_space_pixel_A
    from speckleflow.services.ptycho.model import simulate
    from speckleflow.services.run_ptycho import PtychoRunOptions, build_sample

    opts = PtychoRunOptions(crystal=f"hBN-{layers}L", phonon_model="correlated", configurations=10,
                            nx=nx, ny=nx, step=step, seed=seed)
    sample = build_sample(opts)
    p = sample.params
    conf = sample.configurations()
    ref = truth_reference(conf, sample.atoms.get_positions())
    cols = ref.positions_A - sample.scan_origin  # (n_conf, n_columns, 2), scan frame
    pos = sample.scan_positions() - sample.scan_origin
    q = p.detector_shape[0]
    grid = object_grid(pos, real_space_pixel_A(p.energy_eV, q, p.angular_sampling_mrad[0]), q)
    rng = np.random.default_rng(seed + 1)
    shuffled = np.stack([cols[rng.permutation(len(cols)), i] for i in range(cols.shape[1])], axis=1)
    probe = aperture_probe((q, q), p.energy_eV, p.semiangle_mrad, p.angular_sampling_mrad[0],
                           total_intensity=1.0)[None]
    top_left, frac = grid.split(pos)
    peak = PHASE_PER_ATOM_RAD * layers
    t0 = time.perf_counter()
    corr, shuf, static = (simulate(np.exp(1j * _phases(c, grid, peak))[:, None], probe, top_left, frac)
                          for c in (cols, shuffled, cols.mean(axis=0, keepdims=True)))
    seconds = time.perf_counter() - t0
    floor = 1e-9

    def chi2(a: np.ndarray, b: np.ndarray) -> float:
        return float(((a.astype(np.float64) - b) ** 2 / np.maximum(b, floor)).sum())

    u_rms = float(np.sqrt(np.mean((cols - cols.mean(axis=0)) ** 2)))
    return chi2(corr, shuf), chi2(corr, static), seconds, cols.shape[1], u_rms


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--plain", action="store_true")
    ap.add_argument("--nx", type=int, default=16, help="scan positions per side")
    ap.add_argument("--step", type=float, default=0.3, help="scan step, Å")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="a 6×6 scan (smoke test)")
    args = ap.parse_args(argv)
    if args.quick:
        args.nx = 6
    doses = (1e5, 1e6, 1e7)  # e/Å²; per pattern × step²
    rows, base = [], None
    for layers in (1, 3):
        c_pair, c_static, sec, n_col, u_rms = chi2_case(layers, args.nx, args.step, args.seed)
        base = base or sec
        for dose in doses:
            e = dose * args.step**2
            rows.append([f"hBN-{layers}L", f"{dose:.0e}", f"{e:.0f}", str(n_col), f"{u_rms:.3f}",
                         f"{c_pair * e:.3g}", f"{c_static * e:.3g}", f"{100 / c_pair / args.step**2:.2g}",
                         f"{sec:.2f}", f"{sec / base:.2f}"])
    print_table(["sample", "dose e/Å²", "e/pattern", "columns", "u rms Å", "χ² corr vs shuffled",
                 "χ² vib vs static", "dose for χ²=100", "s", "ratio"], rows,
                f"information on neighbour correlations, {args.nx}×{args.nx} scan, step {args.step} Å",
                plain=args.plain, right=range(1, 10))


if __name__ == "__main__":
    main()
