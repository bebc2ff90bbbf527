"""KWW fits per second of the full ECM's per-(position, k-bin) g2 curves (issue 5).

The default ``speckleflow run ecm`` fits 64 scan positions × 48 k_φ bins of g2 over 300
scan repeats, twice per block (free contrast, then A held at the bin's median,
:func:`speckleflow.services.ecm.blocks.correlate_block`), with the model of what the
multi-tau estimator measures over a finite run (:mod:`speckleflow.services.ecm.finite_run`).
Here the curves are synthetic — that expected g2 for log-normal τ (median 25 repeats,
σ_lnτ 0.4), β 0.6 ± 0.08, A 0.1, plus Gaussian noise of 0.02/√(pairs) — on the lags of
300 repeats with 16 buffers, and two blocks of 32 positions × 48 bins are fitted at
once in two threads, as the pipeline's in-process Dask LocalCluster does. Rows:

- reference **scipy least_squares per curve**: the same model and Jacobian, one
  ``scipy.optimize.least_squares`` (method "lm") per curve (both passes; a subset of the
  curves, rate extrapolated);
- baseline **batched LM, BLAS default threads, pass 2 cold**: :func:`fit_kww` as the
  pipeline ran it before (OpenBLAS' own threads inside each Dask thread; the second
  pass starts again from the linearised estimate);
- **batched LM, 1 BLAS thread, pass 2 cold**;
- **batched LM, 1 BLAS thread, pass 2 warm** (the pipeline now): pass 2 starts from
  pass 1 (``fit_kww(..., start=)``).

Ratios are fits per second over the baseline's, measured in the same run. Also printed:
the largest difference of the warm-started τ from the cold-started one, in units of σ_τ.
Run ``python bench/bench_ecm_fit.py`` (≈ 1 min on a loaded 2-core machine) or ``--quick``.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchtable import print_table
from speckleflow.services.ecm.finite_run import estimator_kernel
from speckleflow.services.ecm.kww import KWWResult, fit_kww
from speckleflow.services.g2.multitau import MultiTauCorrelator

N_BINS = 48  # k_φ bins of the default run (one k_r bin, bins no wider than the convergence)
POOLED = 25  # strip pixels per bin


def _block(rng: np.random.Generator, kernel, lags: np.ndarray, n_pairs: np.ndarray, n_pos: int):
    n = n_pos * N_BINS
    tau = 25.0 * np.exp(0.4 * rng.standard_normal(n))
    beta = np.clip(0.6 + 0.08 * rng.standard_normal(n), 0.3, 1.0)
    c = 0.1 * np.exp(-2.0 * (kernel.s[None, :] / tau[:, None]) ** beta[:, None])
    g2 = kernel.expected_g2(c, pooled=POOLED).T  # (n_lags, n)
    sigma = np.broadcast_to((1.0 / np.sqrt(np.maximum(n_pairs, 1)))[:, None], g2.shape)
    g2 = g2 + 0.02 * sigma * rng.standard_normal(g2.shape)
    return g2.reshape(lags.size, n_pos, N_BINS), sigma.reshape(lags.size, n_pos, N_BINS)


def _two_pass(lags, g2, sigma, kernel, warm: bool) -> tuple[KWWResult, KWWResult]:
    """What correlate_block does: free fit, then A held at each bin's median of good fits."""
    kw = {"time_per_lag": 1.0, "sigma": sigma, "kernel": kernel, "pooled": float(POOLED)}
    first = fit_kww(lags, g2, **kw)
    good_A = np.where(first.flags == 0, first.A, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        A_bin = np.nanmedian(good_A, axis=0)
    second = fit_kww(lags, g2, **kw, contrast=np.broadcast_to(A_bin, first.A.shape), start=first if warm else None)
    return first, second


def _batched(blocks, lags, kernel, blas_threads: int | None, warm: bool) -> tuple[float, list[KWWResult]]:
    def one(b):
        return _two_pass(lags, b[0], b[1], kernel, warm)[1]

    limit = threadpool_limits(limits=blas_threads, user_api="blas") if blas_threads else None
    try:
        t0 = time.perf_counter()
        with ThreadPoolExecutor(2) as pool:  # two Dask threads
            out = list(pool.map(one, blocks))
        return time.perf_counter() - t0, out
    finally:
        if limit is not None:
            limit.restore_original_limits()


def _scipy_per_curve(g2: np.ndarray, sigma: np.ndarray, lags: np.ndarray, kernel, n_curves: int) -> float:
    """Seconds for ``n_curves`` curves, two least_squares per curve (free, then A fixed)."""
    from scipy.optimize import least_squares

    keep = lags > 0
    t = lags[keep].astype(float)
    K = np.concatenate([kernel.signal[keep].T, kernel.mean[keep].T / POOLED], axis=1)
    K0, K = K[0], K[1:]
    s = kernel.s[1:]
    m = int(keep.sum())

    def expected(A, lntau, beta, jac):
        x = np.log(s) - lntau
        sb = np.exp(beta * x)
        e = np.exp(-2.0 * sb)
        out = e @ K + K0
        F = out[:m] - out[m:]
        if not jac:
            return 1.0 + A * F, None
        d_lt = 2.0 * beta * sb * e @ K
        d_b = -2.0 * sb * x * e @ K
        return 1.0 + A * F, np.stack([F, A * (d_lt[:m] - d_lt[m:]), A * (d_b[:m] - d_b[m:])], axis=1)

    Y = g2.reshape(lags.size, -1)[keep].T
    S = sigma.reshape(lags.size, -1)[keep].T
    t0 = time.perf_counter()
    for y, sg in zip(Y[:n_curves], S[:n_curves], strict=True):
        res = least_squares(lambda p, y=y, sg=sg: (expected(*p, False)[0] - y) / sg,
                            [0.1, np.log(25.0), 0.6], jac=lambda p, sg=sg: expected(*p, True)[1] / sg[:, None],
                            method="lm")
        A = res.x[0]
        least_squares(lambda q, y=y, sg=sg, A=A: (expected(A, *q, False)[0] - y) / sg, res.x[1:],
                      jac=lambda q, sg=sg, A=A: expected(A, *q, True)[1][:, 1:] / sg[:, None], method="lm")
    _ = t
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="8 positions per block, fewer scipy curves")
    ap.add_argument("--plain", action="store_true", help="plain-text table")
    ap.add_argument("--repeat", type=int, default=2, help="timings per row (best is kept)")
    args = ap.parse_args()
    n_pos = 8 if args.quick else 32
    n_scipy = 40 if args.quick else 150

    corr = MultiTauCorrelator(1, n_buffers=16, min_block=300)
    corr.process(np.zeros((300, 1), np.uint16))
    sums = corr.sums()
    lags, kernel = sums.lags, estimator_kernel(sums.lags, sums.level, sums.n_pairs)
    rng = np.random.default_rng(0)
    blocks = [_block(rng, kernel, lags, sums.n_pairs, n_pos) for _ in range(2)]
    n_fits = 2 * n_pos * N_BINS  # curves; each fitted twice

    blas = [i for i in threadpool_info() if i.get("user_api") == "blas"]
    default_threads = max((i["num_threads"] for i in blas), default=1)
    rows_spec = [
        (f"batched LM, BLAS default ({default_threads} threads), pass 2 cold", None, False),
        ("batched LM, 1 BLAS thread, pass 2 cold", 1, False),
        ("batched LM, 1 BLAS thread, pass 2 warm (pipeline)", 1, True),
    ]
    times: dict[str, float] = {}
    results: dict[str, list[KWWResult]] = {}
    for name, threads, warm in rows_spec:
        best = np.inf
        for _ in range(args.repeat):
            dt, out = _batched(blocks, lags, kernel, threads, warm)
            best = min(best, dt)
        times[name] = best
        results[name] = out
    with threadpool_limits(limits=1, user_api="blas"):
        t_sp = _scipy_per_curve(*blocks[0], lags, kernel, n_scipy)
    base = times[rows_spec[0][0]]
    rate_base = n_fits / base
    rows = [["scipy least_squares per curve (reference)", f"{n_scipy}", f"{t_sp:.3f}", f"{n_scipy / t_sp:.0f}",
             f"{(n_scipy / t_sp) / rate_base:.2f}"]]
    for name, _t, _w in rows_spec:
        rows.append([name, f"{n_fits}", f"{times[name]:.3f}", f"{n_fits / times[name]:.0f}",
                     f"{base / times[name]:.2f}"])
    print_table(["fit", "curves", "time s", "curves/s (2 passes)", "× baseline"], rows,
                f"KWW fits of {n_fits} g2 curves ({lags.size} lags, finite-run model), two threads",
                plain=args.plain, right=(1, 2, 3, 4))
    cold, warm = results[rows_spec[1][0]], results[rows_spec[2][0]]
    dev = max(float(np.nanmax(np.abs(w.tau - c.tau) / c.sigma_tau)) for c, w in zip(cold, warm, strict=True))
    same = all(np.array_equal(c.flags, w.flags) for c, w in zip(cold, warm, strict=True))
    print(f"warm vs cold pass 2: max |Δτ|/σ_τ = {dev:.2e}, flags identical: {same}")


if __name__ == "__main__":
    main()
