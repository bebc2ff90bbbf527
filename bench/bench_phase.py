"""Speed of the phase-retrieval iteration loop (RAAR, Fourier-modulus + support projections).

For each grid (256², 512²; the default FTH geometry with a maze state, noise-free) and
each FFT backend that imports (pyfftw, scipy.fft, numpy.fft; one thread each, complex64),
measures in the same run:

- **2 FFTs**: one forward and one unnormalised inverse 2-D FFT of the work array — the
  floor of one iteration (plus one rescaling pass every 4 round trips, against overflow);
- **iteration**: one RAAR iteration of :class:`speckleflow.services.phase.retrieval.Retriever`
  (both FFTs, modulus projection with free beamstop pixels, support projection, both
  error metrics) — iterations/s and the ratio to the 2 FFTs;

and projects 32 states × 1000 iterations at 512² with the fastest backend.

Goals: iteration ≤ 1.5 × 2 FFTs; 32 states × 1000 iterations at 512² < 180 s.

Run ``python bench/bench_phase.py`` (about a minute) or ``--quick`` (a few seconds).
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
from benchtable import print_table
from speckleflow.devices.fth import (
    default_geometry,
    embed_mz,
    hologram,
    mask_transmission,
    valid_pixel_mask,
)
from speckleflow.devices.maze import generate_maze_states
from speckleflow.services.phase.fftbackend import FFT2, available_backends
from speckleflow.services.phase.retrieval import Retriever

GOAL_RATIO = 1.5
GOAL_PROJECTED_S = 180.0
N_STATES, N_ITER = 32, 1000
HEADERS = ["grid", "backend", "2 FFTs ms", "iteration ms", "it/s", "iteration / 2 FFTs"]


def _best_of(fn, n: int, repeats: int = 3) -> float:
    """Best mean time per call (s) over ``repeats`` runs of ``n`` calls."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(n)
        best = min(best, (time.perf_counter() - t0) / n)
    return best


def measure(n_px: int, backend: str, n_iter: int, mz_small: np.ndarray) -> tuple[float, float]:
    """(seconds per 2 FFTs, seconds per RAAR iteration) on an n_px² grid."""
    geo = default_geometry((n_px, n_px))
    mz = embed_mz(geo, mz_small)
    intensity = np.fft.ifftshift(hologram(geo, mz, 1))
    valid = np.fft.ifftshift(valid_pixel_mask(geo))
    support = np.abs(mask_transmission(geo)) > 0
    fft = FFT2((n_px, n_px), backend)
    fft.array[...] = support

    scale = np.float32(1.0 / float(n_px * n_px) ** 4)

    def bare(k: int) -> None:
        for i in range(k):
            fft.forward()
            fft.inverse_raw()
            if i % 4 == 3:  # each round trip multiplies by N: rescale every 4 (N⁴ < 1e22)
                fft.array *= scale

    r = Retriever(intensity, valid, support, fft_backend=backend)
    r.x[...] = support * np.sqrt(intensity.sum() / (support.sum() * n_px * n_px))
    r.iterate(5, "RAAR")  # warm-up

    def loop(k: int) -> None:
        r.iterate(k, "RAAR", beta=(0.9, 0.9))

    t_fft = _best_of(bare, n_iter)
    t_it = _best_of(loop, n_iter)
    return t_fft, t_it


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the table.

    Parameters
    ----------
    argv : list of str, optional
        ``--quick`` (fewer iterations), ``--iterations``, ``--plain`` (no rich).

    Returns
    -------
    int
        0.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few iterations, smoke run")
    parser.add_argument("--iterations", type=int, default=None, help="timed iterations per run")
    parser.add_argument("--plain", action="store_true", help="plain-text table")
    args = parser.parse_args(argv)
    n_iter = args.iterations or (10 if args.quick else 100)
    mz_small = generate_maze_states(n_families=1, seed=0).mz[0]
    rows = []
    per_grid: dict[int, dict[str, tuple[float, float]]] = {}
    for n_px in (256, 512):
        for backend in available_backends():
            t_fft, t_it = measure(n_px, backend, n_iter, mz_small)
            per_grid.setdefault(n_px, {})[backend] = (t_fft, t_it)
            rows.append(
                [
                    f"{n_px}²",
                    backend,
                    f"{1e3 * t_fft:.2f}",
                    f"{1e3 * t_it:.2f}",
                    f"{1.0 / t_it:.0f}",
                    f"{t_it / t_fft:.2f}×",
                ]
            )
    print_table(
        HEADERS,
        rows,
        f"phase retrieval: RAAR iteration, {n_iter} iterations, one thread",
        plain=args.plain,
        right=(2, 3, 4, 5),
    )
    fastest = min(per_grid[512], key=lambda b: per_grid[512][b][1])
    t_fft, t_it = per_grid[512][fastest]
    projected = N_STATES * N_ITER * t_it
    ratio = t_it / t_fft
    print(
        f"fastest at 512²: {fastest}; projected {N_STATES} states × {N_ITER} iterations at "
        f"512²: {projected:.0f} s"
    )
    print(
        f"goals: iteration / 2 FFTs ≤ {GOAL_RATIO} ({fastest}: {ratio:.2f}, "
        f"{'met' if ratio <= GOAL_RATIO else 'missed'}); projected < {GOAL_PROJECTED_S:.0f} s "
        f"({'met' if projected < GOAL_PROJECTED_S else 'missed'})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
