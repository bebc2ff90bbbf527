"""Frames per second of the ECM per-frame reductions: virtual detectors and polar binning.

256×128 uint16 electron-count frames of the supercooled-liquid model (1 e/pixel on the
first ring), timed on the same frames, one thread:

- **virtual (ours)**: :meth:`VirtualDetectors.signals` — BF, ADF, total and the two COM
  moments in one float64 matrix product per chunk;
- baseline **virtual (masks)**: the obvious numpy code, ``frames[:, mask].sum`` per
  mask and ``(frames * k).sum`` per COM axis;
- **polar (ours)**: :meth:`PolarBinning.bin` — sparse pixel→bin sum, exact counts;
- baseline **polar (bincount)**: ``np.bincount`` of the label map frame by frame (the
  same exact sums);
- reference **warp_polar**: :func:`skimage.transform.warp_polar` per frame (interpolates,
  does not conserve counts — what the exact binning replaces);
- baseline **copy**: copying the frames (memory-traffic floor).

Ratios are against the frame copy in the same run. Run ``python bench/bench_ecm.py``
(about half a minute) or ``--quick``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchtable import print_table
from skimage.transform import warp_polar
from speckleflow.devices import LiquidSample
from speckleflow.services.ecm.geometry import DetectorGeometry
from speckleflow.services.ecm.polar import polar_binning
from speckleflow.services.ecm.virtual import VirtualDetectors

SHAPE = (128, 256)


def _best(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=4096)
    parser.add_argument("--quick", action="store_true", help="256 frames, warp_polar on 16")
    parser.add_argument("--plain", action="store_true", help="plain-text table")
    args = parser.parse_args(argv)
    n = 256 if args.quick else args.frames
    repeat = 2 if args.quick else 3

    sample = LiquidSample((16, 16), detector_shape=SHAPE, dose=1.0, seed=0)
    idx = np.arange(n)
    frames = sample.electrons(idx % 16, (idx // 16) % 16, idx * 1e-4).astype(np.uint16)
    geom = DetectorGeometry.from_mapping(sample.geometry())
    vd = VirtualDetectors(geom)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pb = polar_binning(geom, n_phi=48)
    rows_k, cols_k = np.mgrid[0 : SHAPE[0], 0 : SHAPE[1]]
    ky = (rows_k - geom.center[0]).astype(np.float64)
    kx = (cols_k - geom.center[1]).astype(np.float64)
    inside = pb.labels >= 0
    lab = pb.labels[inside]
    n_bins = pb.n_r * pb.n_phi

    def virtual_masks() -> np.ndarray:
        f = frames.astype(np.float64)
        return np.stack([f[:, vd.bf_mask].sum(1), f[:, vd.adf_mask].sum(1), f.sum((1, 2)),
                         (f * ky).sum((1, 2)), (f * kx).sum((1, 2))], 1)

    def polar_bincount() -> np.ndarray:
        return np.stack([np.bincount(lab, f[inside], n_bins) for f in frames])

    n_warp = 16 if args.quick else 128
    radius = (geom.ring_radius + geom.ring_width) / geom.k_per_pixel

    def warp() -> None:
        for f in frames[:n_warp]:
            warp_polar(f.astype(np.float64), center=geom.center, radius=radius, output_shape=(360, 64))

    # correctness first: ours equals the baselines
    np.testing.assert_allclose(vd.signals(frames), virtual_masks(), rtol=1e-12)
    np.testing.assert_array_equal(pb.bin(frames).reshape(n, -1), polar_bincount())

    stages: dict[str, tuple[float, int]] = {
        "copy (baseline)": (_best(lambda: frames.copy(), repeat), n),
        "virtual (ours)": (_best(lambda: vd.signals(frames), repeat), n),
        "virtual (masks)": (_best(virtual_masks, repeat), n),
        "polar (ours)": (_best(lambda: pb.bin(frames), repeat), n),
        "polar (bincount)": (_best(polar_bincount, repeat), n),
        "warp_polar (reference)": (_best(warp, 1), n_warp),
    }
    copy_fps = n / stages["copy (baseline)"][0]
    rows = []
    for label, (s, count) in stages.items():
        fps = count / s
        rows.append([label, f"{fps:,.0f}", f"{1e3 / fps:.3f}", f"{fps / copy_fps:.3f}"])
    print_table(
        ["stage", "frames/s", "ms/frame", "× copy"],
        rows,
        f"ECM per-frame reductions, {SHAPE[1]}×{SHAPE[0]} uint16, {n} frames, one thread, "
        f"{int(inside.sum())} strip pixels in {n_bins} (k_r, k_φ) bins",
        plain=args.plain,
        right=(1, 2, 3),
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
