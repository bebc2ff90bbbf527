"""Time and memory of the CCI clustering pipeline at the paper's scale (28 800 pairs).

Runs the steps of :func:`speckleflow.services.cci.states.run_cci_clustering` one by one
on synthetic feature vectors and reports, per step, the wall time and the peak resident
memory of the process during the step (Linux ``VmHWM``, reset before each step through
``/proc/self/clear_refs``):

- **baseline**: the bare float32 product ``X @ X.T`` (dense n × n result) — the floor
  for the correlation step, which must also write float64 distances into the condensed
  vector;
- **correlation** (blocked, straight into the condensed float64 vector), **linkage**
  (fastcluster average, in place), **modes** (natural divisions of the tree),
  **refine** (preliminary misassignment + leave-one-out reassignment),
  **misassignment**, **states**, **assignment**, **view** (1024² correlation view).

Synthetic data (no holograms at this scale): ``--states`` random centred unit "state"
vectors in M dimensions; each state holds one or more of ``--modes`` mode vectors
u_m ∝ u_state + η·w_m (w_m random; η = ``--eta``); every pair is
x = √r0·u_m + √(1 − r0)·(unit noise), centred and normalised — two pairs of one mode
correlate at r ≈ r0 = 0.2, as the simulated holograms do. Mode sizes are uneven
(Dirichlet). The found modes and states are compared with the planted modes (adjusted
Rand index).

Goals: correlation ≤ 1.5 × baseline; total (correlation … view) < 180 s; peak < 8 GB.

Run ``python bench/bench_cci.py`` (n = 28 800, M = 4 096: about 2–3 minutes, ~5 GB) or
``--quick`` (n = 4 000, a few seconds).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from benchtable import print_table
from speckleflow.services.cci.agreement import adjusted_rand_index
from speckleflow.services.cci.clustering import average_linkage, natural_modes
from speckleflow.services.cci.correlation import downsampled_matrix, pearson_distance_condensed
from speckleflow.services.cci.states import (
    PIPELINE_STEPS,
    assign_frames,
    group_states,
    misassignment_matrix,
    mode_templates,
    refine_modes,
)

GOAL_RATIO = 1.5
GOAL_TOTAL_S = 180.0
GOAL_PEAK_GB = 8.0

HEADERS = ["step", "time s", "peak RSS GB", "note"]


def synthetic_features(
    n: int,
    m: int,
    *,
    n_states: int = 32,
    n_modes: int = 72,
    r0: float = 0.2,
    eta: float = 0.3,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Noisy pairs of planted modes; see the module docstring.

    Returns
    -------
    X : ndarray, shape (n, m), float32 — centred unit-norm rows;
    mode : ndarray, shape (n,), int64 — planted mode of every row;
    state_of_mode : ndarray, shape (n_modes,), int64.
    """
    rng = np.random.default_rng(seed)

    def unit(v: np.ndarray) -> np.ndarray:
        v = v - v.mean(axis=-1, keepdims=True)
        return v / np.linalg.norm(v, axis=-1, keepdims=True)

    states = unit(rng.standard_normal((n_states, m)))
    # every state gets one mode, the rest are spread at random
    state_of_mode = np.concatenate(
        [np.arange(n_states), rng.integers(0, n_states, max(0, n_modes - n_states))]
    )
    modes = unit(states[state_of_mode] + eta * unit(rng.standard_normal((n_modes, m))))
    weights = rng.dirichlet(np.full(n_modes, 5.0))
    mode = rng.choice(n_modes, size=n, p=weights)
    X = np.empty((n, m), dtype=np.float32)
    step = 2048
    a, b = np.float32(np.sqrt(r0)), np.float32(np.sqrt(1.0 - r0))
    for c in range(0, n, step):
        noise = rng.standard_normal((min(step, n - c), m), dtype=np.float32)
        noise -= noise.mean(axis=1, keepdims=True)
        noise /= np.linalg.norm(noise, axis=1, keepdims=True)
        x = a * modes[mode[c : c + step]].astype(np.float32) + b * noise
        x -= x.mean(axis=1, keepdims=True)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        X[c : c + step] = x
    return X, mode, state_of_mode


def _peak_rss_gb() -> float:
    """Peak resident set size since the last reset, GB (nan where unavailable)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024 / 1e9
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS counter to the current RSS (Linux ≥ 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class Steps:
    """Runs and records steps: (name, seconds, peak GB, note)."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, float, float, str]] = []
        self.resettable = True

    def run(self, name: str, fn: Callable[[], Any], note: str = "") -> Any:
        self.resettable = _reset_peak() and self.resettable
        start = time.perf_counter()
        out = fn()
        elapsed = time.perf_counter() - start
        self.rows.append((name, elapsed, _peak_rss_gb(), note))
        return out

    def time_of(self, name: str) -> float:
        return next(t for n, t, _, _ in self.rows if n == name)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the table.

    Parameters
    ----------
    argv : list of str, optional
        ``--quick`` (n = 4 000), ``--n``, ``--m`` (sizes), ``--block-rows``,
        ``--states``, ``--modes``, ``--eta``, ``--seed``, ``--plain`` (no rich).

    Returns
    -------
    int
        0.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="n = 4 000 smoke run")
    parser.add_argument("--n", type=int, default=None, help="pairs (default 28 800)")
    parser.add_argument("--m", type=int, default=4096, help="pixels per feature vector")
    parser.add_argument("--block-rows", type=int, default=2048, help="rows per block product")
    parser.add_argument("--states", type=int, default=32, help="planted state vectors")
    parser.add_argument("--modes", type=int, default=72, help="planted modes")
    parser.add_argument("--eta", type=float, default=0.3, help="mode offset within a state")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plain", action="store_true", help="plain-text table")
    args = parser.parse_args(argv)
    n = args.n if args.n is not None else (4000 if args.quick else 28_800)

    steps = Steps()
    X, planted, planted_state = steps.run(
        "synthetic data",
        lambda: synthetic_features(
            n, args.m, n_states=args.states, n_modes=args.modes, eta=args.eta, seed=args.seed
        ),
        f"{n:,} × {args.m:,} float32, {_features_gb(n, args.m):.2f} GB",
    )

    def baseline() -> None:
        product = X @ X.T
        del product

    steps.run("baseline X @ X.T", baseline, f"dense {n:,}² float32, {4 * n * n / 1e9:.1f} GB")
    condensed = steps.run(
        "correlation",
        lambda: pearson_distance_condensed(X, block_rows=args.block_rows),
        f"condensed float64 {8 * n * (n - 1) / 2 / 1e9:.1f} GB",
    )
    scratch = {"condensed": condensed}  # handed over: linkage uses it as scratch space
    del condensed
    Z = steps.run(
        "linkage", lambda: average_linkage(scratch.pop("condensed")), "fastcluster, in place"
    )
    modes = steps.run("modes", lambda: natural_modes(Z, X))

    def refine() -> np.ndarray:
        if modes.n_modes < 2:
            return modes.labels
        prelim = misassignment_matrix(X, modes.labels)
        return refine_modes(X, modes.labels, groups=group_states(prelim.P))[0]

    labels = steps.run("refine", refine)
    mis = steps.run("misassignment", lambda: misassignment_matrix(X, labels))
    state_of_mode = steps.run("states", lambda: group_states(mis.P))

    def assign() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        templates = mode_templates(X, labels, state_of_mode.size)
        return assign_frames(X, templates, state_of_mode, member_of=labels)

    state, mode, _ = steps.run("assignment", assign)
    steps.run("view", lambda: downsampled_matrix(X, 1024), "1024² block means")

    pipeline = PIPELINE_STEPS
    total = sum(steps.time_of(s) for s in pipeline)
    peak = max(p for name, _, p, _ in steps.rows if name in pipeline)
    ratio = steps.time_of("correlation") / steps.time_of("baseline X @ X.T")
    assigned = state >= 0
    ari_modes = adjusted_rand_index(mode[assigned], planted[assigned])
    ari_states = adjusted_rand_index(state[assigned], planted_state[planted[assigned]])
    rows = []
    for name, seconds, peak_gb, note in steps.rows:
        if name == "correlation":
            note = f"{note}; {ratio:.2f} × baseline"
        if name == "modes":
            note = (
                f"{modes.n_modes} modes, {modes.outliers.size} outliers, {len(modes.splits)} tests"
            )
        if name == "states":
            note = f"{int(state_of_mode.max()) + 1} states"
        if name == "assignment":
            note = f"{assigned.mean():.2%} assigned"
        rows.append([name, f"{seconds:.2f}", f"{peak_gb:.2f}", note])
    rows.append(["total (correlation … view)", f"{total:.1f}", f"{peak:.2f}", ""])
    title = (
        f"CCI clustering, n = {n:,} pairs, M = {args.m:,} ({os.cpu_count()} cores, "
        f"numpy {np.__version__}; peak RSS per step"
        f"{'' if steps.resettable else ' (not resettable here: running maximum)'})"
    )
    print_table(HEADERS, rows, title, plain=args.plain, right=(1, 2))
    print(
        f"planted {args.modes} modes in {args.states} states: found {modes.n_modes} modes, "
        f"{int(state_of_mode.max()) + 1} states; ARI (assigned pairs) vs planted modes "
        f"{ari_modes:.4f}, found states vs planted states {ari_states:.4f}"
    )
    verdict = [
        f"correlation/baseline {ratio:.2f} ({'ok' if ratio <= GOAL_RATIO else 'MISSED'} ≤ 1.5)",
        f"total {total:.0f} s ({'ok' if total < GOAL_TOTAL_S else 'MISSED'} < {GOAL_TOTAL_S:.0f})",
        f"peak {peak:.1f} GB ({'ok' if peak < GOAL_PEAK_GB else 'MISSED'} < {GOAL_PEAK_GB:.0f})",
    ]
    print("goals: " + "; ".join(verdict))
    return 0


def _features_gb(n: int, m: int) -> float:
    """Size of the feature matrix, GB."""
    return 4 * n * m / 1e9


if __name__ == "__main__":
    sys.exit(main())
