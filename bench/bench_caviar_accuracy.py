"""CAVIAR accuracy per case on abTEM-simulated data (issue 7): LSM / CSM / no-vibration.

One command:  python bench/bench_caviar_accuracy.py [--plain] [--cases coherent,correlated]
              [--dose 0] [--iterations 400] [--first-stage 100] [--states 10] [--threads 2]
(``--quick``: an 8×8 scan at 0.45 Å, 2 configurations, 3 states, 6 passes, three cases,
about half a minute: it shows the bench runs, not the accuracy.)

Each case is a `speckleflow run ptycho`-style sample (hBN-1L [0001], 200 kV, 25 mrad,
16×16 scan at 0.3 Å, 64×64 detector to 50 mrad, 300 K, 10 frozen-phonon configurations;
the abTEM simulation is cached on disk by its parameters, minutes the first time),
reconstructed by :func:`speckleflow.services.ptycho.fit.reconstruct` (one state and the
probe modes first, then ``--states`` object states) and analysed by
:func:`speckleflow.services.ptycho_lattice.lattice_products` against the truth
configurations twice: with the per-state centres of mass (the paper's reading) and with
the rotation-invariant mixed-state estimator (services/lattice/mixed_state.py, the
default of `process ptycho`).

Cases: ``coherent`` (one configuration: the states must show no vibration, u rms below
max(position error, 0.01 Å)), ``einstein`` (independent displacements: the neighbour
correlation must be consistent with none, p of the whitened test), ``correlated``
(harmonic lattice: CSM ≥ 0.9), ``partial`` (correlated and a Gaussian source of
``--fwhm`` Å averaged over 3×3 shifted probes, fitted with ``--modes-partial`` probe
modes: CSM ≥ 0.85). ``--dose 0`` (default) fits the noise-free intensities times the
electrons per pattern of 1e5 e/Å² — the information limit of the fit itself; a dose > 0
draws Poisson counts (``bench/bench_ptycho_information.py`` says how much dose the
correlations need: χ² = 100 at ≈ 5.6e6 e/Å² for hBN-1L).

The time column is the reconstruction's wall time; the ratio column compares it with
the first case of the same run (a shared, noisy machine: compare ratios).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchtable import print_table

CASES = {
    "coherent": {"phonon_model": "none", "configurations": 1},
    "einstein": {"phonon_model": "einstein"},
    "correlated": {"phonon_model": "correlated"},
    "partial": {"phonon_model": "correlated", "partial": True},
}


def load(case: dict, args: argparse.Namespace):
    """Patterns, truth dict and start metadata of one case (simulated or from the cache)."""
    from speckleflow.services.ptycho.result import PtychoData
    from speckleflow.services.run_ptycho import PtychoRunOptions, build_sample

    opts = PtychoRunOptions(crystal=args.crystal, phonon_model=case["phonon_model"],
                            configurations=case.get("configurations", args.configurations),
                            nx=args.scan, ny=args.scan, step=args.step,
                            source_fwhm=args.fwhm if case.get("partial") else 0.0,
                            dose=args.dose if args.dose > 0 else 1e5, seed=args.seed)
    sample = build_sample(opts)
    t0 = time.perf_counter()
    intensities = sample.simulate(progress=lambda done, total, msg: print(f"  {msg}", flush=True))
    print(f"  simulation {'cache hit' if sample.from_cache else 'computed'} in "
          f"{time.perf_counter() - t0:.1f} s", flush=True)
    ny, nx, q, _ = intensities.shape
    lam = intensities.reshape(ny * nx, q, q).astype(np.float64) * sample.electrons_per_pattern
    patterns = lam if args.dose <= 0 else np.random.default_rng(args.seed + 1).poisson(lam)
    md = sample.metadata()
    iy, ix = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
    positions = np.stack([iy.ravel(), ix.ravel()], axis=1) * float(opts.step)
    data = PtychoData(patterns.astype(np.float32), positions, md["energy_eV"], md["semiangle_mrad"],
                      md["angular_sampling_mrad"][0], defocus_A=md["defocus_A"])
    t = sample.truth()
    truth = {"atom_positions": t.atom_positions, "atom_equilibrium": t.atom_equilibrium,
             "greens_tensor_analytic": t.greens_tensor_analytic, "masses_amu": t.masses_amu,
             "temperature_K": np.asarray(t.temperature_K)}
    return data, truth, md


def run_case(name: str, args: argparse.Namespace) -> dict:
    from speckleflow.services.ptycho.fit import reconstruct
    from speckleflow.services.ptycho_lattice import lattice_products

    case = CASES[name]
    print(f"{name}:", flush=True)
    data, truth, md = load(case, args)
    modes = args.modes_partial if case.get("partial") else 1
    t0 = time.perf_counter()

    def progress(it: int, loss: float) -> None:
        if it % 50 == 0:
            print(f"  pass {it}/{args.iterations} loss {loss:.4g} ({time.perf_counter() - t0:.0f} s)", flush=True)

    result = reconstruct(data, n_states=args.states, n_modes=modes, iterations=args.iterations,
                         first_stage_iterations=args.first_stage, lr_final_fraction=0.1,
                         state_perturbation_rad=args.perturbation, threads=args.threads,
                         seed=args.seed, progress=progress)
    seconds = time.perf_counter() - t0
    mixed = lattice_products(result, truth, md).summary
    com_view = SimpleNamespace(**{k: getattr(result, k) for k in
                                  ("object_phase", "pixel_size_A", "object_origin_A", "positions_A",
                                   "state_weights")}, object=None)
    com = lattice_products(com_view, truth, md).summary
    return {"case": name, "modes": modes, "seconds": seconds, "loss": float(result.loss[-1]),
            "mixed": mixed, "com": com}


def _fmt(v, spec: str = ".3f") -> str:
    return "—" if v is None or (isinstance(v, float) and not np.isfinite(v)) else format(v, spec)


def _verdict(name: str, s: dict) -> str:
    if name == "coherent":
        found = s.get("vibration_found")
        return "—" if found is None else ("no vibration ✓" if not found else "vibration ✗")
    if name == "einstein":
        p = s.get("neighbour_correlation_p_value")
        return "—" if p is None else f"p {p:.2f} {'✓' if p > 0.01 else '✗'}"
    target = 0.85 if name == "partial" else 0.9
    csm = s.get("csm")
    return "—" if csm is None else f"CSM {'≥' if csm >= target else '<'} {target} {'✓' if csm >= target else '✗'}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cases", default="coherent,einstein,correlated,partial")
    p.add_argument("--crystal", default="hBN-1L")
    p.add_argument("--scan", type=int, default=16)
    p.add_argument("--step", type=float, default=0.3)
    p.add_argument("--configurations", type=int, default=10)
    p.add_argument("--dose", type=float, default=0.0, help="e/Å²; 0: noise-free")
    p.add_argument("--iterations", type=int, default=400)
    p.add_argument("--first-stage", type=int, default=100)
    p.add_argument("--states", type=int, default=10)
    p.add_argument("--perturbation", type=float, default=0.02, help="rad, second-stage state perturbation")
    p.add_argument("--fwhm", type=float, default=0.4, help="source FWHM of the partial case, Å")
    p.add_argument("--modes-partial", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--plain", action="store_true")
    p.add_argument("--quick", action="store_true", help="seconds: tiny scan and fit (smoke test)")
    args = p.parse_args(argv)
    if args.quick:
        args.cases, args.scan, args.step, args.configurations = "coherent,einstein,correlated", 8, 0.45, 2
        args.iterations, args.first_stage, args.states, args.threads = 6, 3, 3, 1
    names = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in names if c not in CASES]
    if unknown:
        p.error(f"unknown case(s) {unknown}; choose from {sorted(CASES)}")
    results = [run_case(n, args) for n in names]
    base = results[0]["seconds"]
    rows = []
    for r in results:
        for label, s in (("mixed-state", r["mixed"]), ("centre of mass", r["com"])):
            rows.append([r["case"], label, str(r["modes"]), _fmt(s.get("u_rms_A"), ".4f"),
                         _fmt(s.get("position_error_rms_A"), ".4f"), _fmt(s.get("lsm")), _fmt(s.get("csm")),
                         _fmt(s.get("bond_correlation_longitudinal")), _verdict(r["case"], s),
                         f"{r['seconds']:.0f}", f"{r['seconds'] / base:.2f}"])
    dose = "noise-free" if args.dose <= 0 else f"{args.dose:.3g} e/Å²"
    print_table(["case", "estimator", "modes", "u rms Å", "pos err Å", "LSM", "CSM", "ρ_L", "target",
                 "fit s", "ratio"], rows,
                f"CAVIAR accuracy, {args.crystal} {args.scan}×{args.scan}, {dose}, {args.states} states, "
                f"{args.iterations} passes ({args.first_stage} single-state)", plain=args.plain,
                right={3, 4, 5, 6, 7, 9, 10})
    return 0


if __name__ == "__main__":
    sys.exit(main())
