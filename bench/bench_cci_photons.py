"""Where CCI classification breaks down: accuracy against photons per frame.

For each photon count, the same simulated series (16-state maze of 8 families, each a
maze and a sibling that differs only in a few local domain-wall segments; 280 K, 0.5-s
frames, seed 0) is recorded with Poisson noise at that flux and classified by

- the **full pipeline** (``run_cci_clustering``, Klose et al. 2023): pairs assigned, matched
  accuracy and adjusted Rand index against the simulator's truth on hop-free pairs,
  states found vs true states present;
- the **online assigner** (``IncrementalAssigner``): fraction of hop-free pairs with the
  right state (after matching labels), over all pairs and after every state was seen
  20 times.

The table also gives the Pearson r of single-pair features within a state and between
a maze and its sibling (the signal the classification works with) and the baseline the
information limit sets: the per-pair accuracy of an oracle that knows the true mean
difference holograms of the two siblings and picks the closer one — no clustering can
beat it. Ratios are against that oracle, measured in the same run.

Run ``python bench/bench_cci_photons.py`` (a few minutes; ``--plot PATH`` writes the
figure) or ``--quick``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from benchtable import print_table
from speckleflow.devices.sample import MagneticSample
from speckleflow.services.cci.agreement import adjusted_rand_index, matched_accuracy
from speckleflow.services.cci.features import feature_mask, pair_features
from speckleflow.services.cci.online import IncrementalAssigner
from speckleflow.services.cci.states import run_cci_clustering

DEFAULT_PHOTONS = (3e3, 1e4, 3e4, 1e5, 2e5)


def _online_accuracy(X: np.ndarray, truth: np.ndarray, pure: np.ndarray) -> tuple[float, float]:
    assigner = IncrementalAssigner(X.shape[1])
    current = np.full(len(X), -1)
    for i, x in enumerate(X):
        for d in assigner.add(x, i, float(i)):
            current[d.pair] = d.state
        for d in assigner.maintain():
            current[d.pair] = d.state
    seen = np.zeros(truth.max() + 1, dtype=int)
    covered_at = len(X)
    for i, t in enumerate(truth):
        seen[t] += 1
        if np.all(seen[np.unique(truth)] >= 20):
            covered_at = i
            break
    ok = pure & (current >= 0)
    overall = matched_accuracy(current[ok], truth[ok]) * ok.sum() / pure.sum()
    late = ok & (np.arange(len(X)) >= covered_at)
    after = matched_accuracy(current[late], truth[late]) if late.any() else float("nan")
    return float(overall), float(after)


def _oracle_sibling_accuracy(sample: MagneticSample, X: np.ndarray, truth: np.ndarray, mask) -> float:
    """Nearest-true-template accuracy between each maze and its sibling (states 2f, 2f+1)."""
    hits = total = 0
    for f in range(sample.n_states // 2):
        a, b = 2 * f, 2 * f + 1
        rows = np.flatnonzero((truth == a) | (truth == b))
        if rows.size == 0:
            continue
        means = []
        for s in (a, b):
            d = sample.expected_intensity(s, +1) - sample.expected_intensity(s, -1)
            v = d[mask.pixels].astype(np.float64)
            v -= v.mean()
            means.append(v / np.linalg.norm(v))
        scores = X[rows] @ np.stack(means).T.astype(np.float32)
        guess = np.where(scores[:, 0] >= scores[:, 1], a, b)
        hits += int(np.sum(guess == truth[rows]))
        total += rows.size
    return hits / total if total else float("nan")


def _mean_within_state_r(X: np.ndarray, truth: np.ndarray, per_state: int = 50) -> float:
    """Mean Pearson r between different pairs of the same state (off-diagonal)."""
    values = []
    for s in np.unique(truth):
        rows = X[truth == s][:per_state]
        k = len(rows)
        if k >= 2:
            g = rows @ rows.T
            values.append((float(g.sum()) - float(np.trace(g))) / (k * (k - 1)))
    return float(np.mean(values))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=2000, help="pairs per series")
    parser.add_argument("--photons", type=float, nargs="+", default=list(DEFAULT_PHOTONS),
                        help="photons per frame to test")
    parser.add_argument("--quick", action="store_true", help="400 pairs at 1e4 and 2e5 photons")
    parser.add_argument("--plot", default=None, help="write the accuracy-vs-photons figure (PNG) here")
    parser.add_argument("--plain", action="store_true", help="plain-text table")
    args = parser.parse_args(argv)
    n, photons = (400, [1e4, 2e5]) if args.quick else (args.pairs, args.photons)

    sample = MagneticSample.from_options(seed=0, temperature_K=280.0)
    mask = feature_mask(sample.geometry.to_config())
    rows, curves = [], []
    for flux in photons:
        t0 = time.perf_counter()
        series = MagneticSample.from_options(seed=0, temperature_K=280.0).record_pairs(
            n, exposure_time=0.5, photons_per_frame=flux
        )
        X = pair_features(series.plus, series.minus, mask)
        truth, pure = series.state, series.purity >= 0.999
        result = run_cci_clustering(X)
        ok = pure & (result.state >= 0)
        assigned = float(np.mean(result.state >= 0))
        acc = matched_accuracy(result.state[ok], truth[ok]) if ok.any() else float("nan")
        ari = adjusted_rand_index(result.state[ok], truth[ok]) if ok.any() else float("nan")
        online, online_late = _online_accuracy(X, truth, pure)
        oracle = _oracle_sibling_accuracy(sample, X, truth, mask)
        r_same = _mean_within_state_r(X, truth)
        rows.append([
            f"{flux:.0e}", f"{r_same:.3f}", f"{100 * oracle:.1f}", f"{100 * assigned:.1f}",
            f"{100 * acc:.1f}", f"{ari:.3f}", f"{result.n_states}/{len(np.unique(truth))}",
            f"{100 * online:.1f}", f"{100 * online_late:.1f}", f"{acc / oracle:.2f}",
            f"{time.perf_counter() - t0:.0f}",
        ])
        curves.append((flux, oracle, acc, ari, online_late))
    print_table(
        ["photons/frame", "r (same state)", "oracle sibling %", "assigned %", "matched %", "ARI",
         "states found/true", "online %", "online after 20× %", "matched/oracle", "s"],
        rows,
        f"CCI accuracy vs flux, {n} pairs, 280 K, 0.5-s frames (hop-free pairs)",
        plain=args.plain,
        right=range(11),
    )
    if args.plot:
        _plot(curves, args.plot)
        print(f"figure: {args.plot}")
    return 0


def _plot(curves: list[tuple[float, ...]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c = np.asarray(curves)
    fig, ax = plt.subplots(figsize=(6, 4), layout="constrained")
    ax.semilogx(c[:, 0], 100 * c[:, 1], "k--", label="oracle (true templates), siblings")
    ax.semilogx(c[:, 0], 100 * c[:, 2], "o-", label="full pipeline, matched accuracy")
    ax.semilogx(c[:, 0], 100 * c[:, 3], "s-", label="full pipeline, ARI × 100")
    ax.semilogx(c[:, 0], 100 * c[:, 4], "^-", label="online, after 20 visits")
    ax.set_xlabel("photons per frame")
    ax.set_ylabel("%")
    ax.set_ylim(0, 101)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title("CCI classification vs flux")
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
