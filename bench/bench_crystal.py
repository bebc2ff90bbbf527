"""Seconds per frozen-phonon configuration of the abTEM crystal model vs scan size, and the cache.

For each scan size N×N (1-layer hBN along [0001], 200 kV, 25 mrad, 64×64 detector,
0.08 Å sampling, correlated phonons) a :class:`CrystalSample` is simulated with
``--configurations`` configurations in a fresh cache directory (each configuration is
timed by the progress callback), then a second sample with the same parameters loads
from the cache. Columns: seconds per configuration, per scan position, the ratio to
the smallest scan in the same run, the cache load time and the cache speed-up
(simulation time / load time), and the hit ratio over the whole run (loads served by
the cache / loads). The first configuration of the run also pays abTEM's numba
compilation; it is reported apart ("warm-up") and excluded from the per-configuration
figures.

Run ``python bench/bench_crystal.py`` (a few minutes on 2 shared cores) or ``--quick``
(4×4 and 8×8, 1 configuration). ``--layers 3 --sizes 16 --configurations 10`` is the
issue's measurement (16×16, 10 configurations, 3-layer hBN; ~110 s there).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchtable import print_table
from speckleflow.devices.crystal import CrystalSpec, supercell_for_scan
from speckleflow.devices.crystal_sample import CrystalSample, SimulationParams


def params(n: int, layers: int, configurations: int, step: float) -> SimulationParams:
    repeats = supercell_for_scan("hBN", (n - 1) * step, 5.0)
    return SimulationParams(
        CrystalSpec("hBN", layers=layers, repeats=repeats), scan_shape=(n, n), step_A=step,
        detector_shape=(64, 64), n_configurations=configurations, sampling_A=0.08,
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="4×4 and 8×8, one configuration")
    parser.add_argument("--plain", action="store_true", help="plain-text table")
    parser.add_argument("--sizes", type=int, nargs="+", default=[4, 8, 16], help="scan sizes N (N×N)")
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--configurations", type=int, default=2)
    parser.add_argument("--step", type=float, default=0.3, help="scan step, Å")
    args = parser.parse_args()
    sizes = [4, 8] if args.quick else sorted(args.sizes)
    configurations = 1 if args.quick else args.configurations

    # warm-up: abTEM import and numba compilation, on the smallest problem
    with tempfile.TemporaryDirectory() as cache:
        t0 = time.perf_counter()
        CrystalSample(params(2, 1, 1, args.step), cache_dir=cache).simulate()
        warmup = time.perf_counter() - t0

    rows, base, loads, hits = [], None, 0, 0
    for n in sizes:
        with tempfile.TemporaryDirectory() as cache:
            p = params(n, args.layers, configurations, args.step)
            times: list[float] = []
            last = [time.perf_counter()]

            def tick(done: int, total: int, msg: str, times: list[float] = times, last: list[float] = last) -> None:
                now = time.perf_counter()
                times.append(now - last[0])
                last[0] = now

            sample = CrystalSample(p, cache_dir=cache)
            sample.simulate(progress=tick)
            loads += 1
            hits += sample.from_cache
            per_config = sum(times) / len(times)
            again = CrystalSample(p, cache_dir=cache)
            again.simulate()
            loads += 1
            hits += again.from_cache
            load = again.simulation_seconds
            base = base or per_config
            rows.append([
                f"{n}×{n}", str(len(sample.atoms)), f"{per_config:.2f}", f"{1e3 * per_config / (n * n):.1f}",
                f"{per_config / base:.2f}", f"{load * 1e3:.1f}", f"{sample.simulation_seconds / max(load, 1e-9):.0f}",
            ])  # fmt: skip
    print_table(
        ["scan", "atoms", "s/config", "ms/position", "× smallest", "cache load ms", "cache speed-up"],
        rows,
        f"abTEM crystal model: hBN-{args.layers}L, 200 kV, 64×64 detector, {configurations} configuration(s); "
        f"warm-up (import + numba) {warmup:.1f} s; cache hit ratio {hits}/{loads}",
        plain=args.plain,
        right=range(1, 7),
    )


if __name__ == "__main__":
    main()
