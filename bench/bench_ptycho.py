"""Seconds per iteration of mixed-object multislice ptychography (torch autograd, CPU).

One iteration is one pass of Adam minibatches (32 positions) over the whole scan: a
16×16 scan of 64×64 patterns, 4 slices, 10 object states with 1 and 5 probe modes,
with one and two torch threads (``torch.set_num_threads`` through ``reconstruct(threads=)``),
in the default model window (detector + 2α/Δα pixels: 104 for 64 here,
:func:`~speckleflow.services.ptycho.geometry.model_window`) with each detector pixel
integrated by 2 × 2 tilts (``pixel_quadrature=2``,
:func:`~speckleflow.services.ptycho.model.pixel_tilts`). Two more rows show what those
cost: one fits on the detector grid itself (``oversampling=1``), one samples the pixel
centres (``pixel_quadrature=1``).
Baseline: the same fit with 1 state, 1 mode and 1 thread in the same run; the
2-thread speedup column compares each case with its own 1-thread row. Peak memory: the maximum resident set size of a fresh
process per case (torch allocates outside Python, so tracemalloc would not see it).
Data: patterns of a random weak-phase object simulated by the model itself.

Run ``python bench/bench_ptycho.py`` (about two minutes on a loaded 2-core machine) or
``--quick`` (a few seconds: 4×4 scan, 32×32, 2 slices, 2 states, all cases in one process,
so its peak RSS column is a running maximum).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def run_case(scan: int, window: int, slices: int, states: int, modes: int, threads: int,
             iterations: int, oversampling: float | None = None, pixel_quadrature: int = 2) -> dict[str, float]:
    """One case in this process: simulate, fit, return timings and peak RSS."""
    import resource

    import numpy as np
    from scipy import ndimage
    from speckleflow.services.ptycho import (
        PtychoData,
        aperture_probe,
        electron_wavelength_A,
        fresnel_propagator,
        object_grid,
        real_space_pixel_A,
    )
    from speckleflow.services.ptycho.fit import reconstruct
    from speckleflow.services.ptycho.model import simulate

    energy, alpha, dalpha, defocus, step, dz = 200e3, 20.0, 1.0, 50.0, 1.0, 2.0
    rng = np.random.default_rng(0)
    pixel = real_space_pixel_A(energy, window, dalpha)
    iy, ix = np.meshgrid(np.arange(scan), np.arange(scan), indexing="ij")
    positions = np.stack([iy.ravel(), ix.ravel()], axis=1) * step
    grid = object_grid(positions, pixel, window)
    phase = ndimage.gaussian_filter(rng.normal(size=(slices, *grid.shape)), (0, 2, 2)) * 3
    psi = aperture_probe((window, window), energy, alpha, dalpha, defocus_A=defocus, total_intensity=1e5)
    tl, fr = grid.split(positions)
    prop = fresnel_propagator(window, pixel, electron_wavelength_A(energy), dz)
    patterns = rng.poisson(simulate(np.exp(1j * phase)[None], psi[None], tl, fr, propagator=prop))
    data = PtychoData(patterns.astype(np.float32), positions, energy, alpha, dalpha, defocus_A=defocus)
    result = reconstruct(data, n_slices=slices, slice_thickness_A=dz, n_states=states, n_modes=modes,
                         iterations=iterations, first_stage_iterations=0 if states > 1 else None,
                         batch_size=32, threads=threads, seed=0, oversampling=oversampling,
                         pixel_quadrature=pixel_quadrature)
    return {"s_per_iteration": result.params["seconds_per_iteration"], "model_window": result.params["window"],
            "peak_rss_GB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4×4 scan, 32×32, 2 slices, 2 states")
    parser.add_argument("--plain", action="store_true", help="plain-text table")
    parser.add_argument("--iterations", type=int, default=2)
    parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: JSON of one case
    args = parser.parse_args(argv)
    if args.case:
        print(json.dumps(run_case(**json.loads(args.case))))
        return 0
    from benchtable import print_table

    if args.quick:
        scan, window, slices, states, modes = 4, 32, 2, 2, (1, 2)
        iterations = 1
    else:
        scan, window, slices, states, modes = 16, 64, 4, 10, (1, 5)
        iterations = args.iterations
    cases = [(1, 1)] + [(states, m) for m in modes]
    runs = ([(n, m, threads, None, 2) for threads in (1, 2) for n, m in cases]
            + [(states, 1, 1, 1.0, 2), (states, 1, 1, None, 1)])
    results: dict[tuple[int, int, int, float | None, int], dict[str, float]] = {}
    env = {**os.environ, "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}
    for key in runs:
        n, m, threads, oversampling, quadrature = key
        case = {"scan": scan, "window": window, "slices": slices, "states": n, "modes": m,
                "threads": threads, "iterations": iterations, "oversampling": oversampling,
                "pixel_quadrature": quadrature}
        if args.quick:  # in this process: fast, but the peak RSS is the running maximum
            results[key] = run_case(**case)
            continue
        out = subprocess.run([sys.executable, __file__, "--case", json.dumps(case)],
                             capture_output=True, text=True, check=False, env=env)
        if out.returncode != 0:
            print(out.stderr, file=sys.stderr)
            return 1
        results[key] = json.loads(out.stdout.strip().splitlines()[-1])
    rows = []
    base = results[(1, 1, 1, None, 2)]["s_per_iteration"]  # the baseline: 1 state, 1 mode, 1 thread
    for key in runs:
        n, m, threads, oversampling, quadrature = key
        r = results[key]
        one_thread = results[(n, m, 1, oversampling, quadrature)]["s_per_iteration"]
        rows.append([f"{n}", f"{m}", f"{threads}", f"{r['model_window']:.0f}", f"{quadrature**2}",
                     f"{r['s_per_iteration']:.3f}",
                     f"{r['s_per_iteration'] / base:.1f}", f"{one_thread / r['s_per_iteration']:.2f}",
                     f"{scan * scan / r['s_per_iteration']:.0f}", f"{r['peak_rss_GB']:.2f}"])
    title = (f"ptychography: {scan}×{scan} scan, {window}×{window} patterns, {slices} slices, "
             f"{iterations} iteration(s) per case, Adam minibatch 32")
    print_table(["states", "modes", "threads", "model window", "tilts/pixel", "s/iteration", "vs 1×1×1 thread",
                 "2-thread speedup", "positions/s", "peak RSS GB"], rows, title, plain=args.plain,
                right=range(10))
    return 0


if __name__ == "__main__":
    sys.exit(main())
