"""How many frames per second the simulated Celeritas camera generates and writes.

256×128 uint16 frames of the supercooled-liquid model (16×16 scan, default ring and
dose), in batches of 64 as the camera works. Stages, each timed alone on the same
frames:

- **speckle**: :meth:`LiquidSample.intensity` (KWW field update of the ring pixels,
  intensities);
- **poisson**: electron counting (``numpy.random.Generator.poisson``);
- **response**: dark/gain/read noise, corrections and the counting threshold;
- **write gzip-1 / lzf / none**: appending to a chunked (one frame per chunk) HDF5
  dataset with that filter, flushed per batch (SWMR), as the camera does;
- **camera**: the whole device flown without a RunEngine (kickoff → complete): all of
  the above with gzip-1 plus positions — the rate the camera model sustains;
- baseline **copy**: copying the frames (memory-traffic floor).

Ratios are against the camera end to end in the same run. Run
``python bench/bench_celeritas.py`` (about a minute) or ``--quick``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchtable import print_table
from speckleflow.devices import Celeritas, DetectorResponse, LiquidSample, ScanController

SHAPE = (128, 256)
BATCH = 64


def _write(path: Path, frames: list[np.ndarray], compression: str | None) -> float:
    with h5py.File(path, "w", libver="latest") as f:
        ds = f.create_dataset(
            "/entry/data/data", shape=(0, *SHAPE), maxshape=(None, *SHAPE), dtype="<u2",
            chunks=(1, *SHAPE), compression=compression, compression_opts=1 if compression == "gzip" else None,
        )
        f.swmr_mode = True
        t0 = time.perf_counter()
        i = 0
        for batch in frames:
            ds.resize(i + batch.shape[0], axis=0)
            ds[i : i + batch.shape[0]] = batch
            ds.flush()
            i += batch.shape[0]
        return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=4096, help="frames per stage (multiple of 64)")
    parser.add_argument("--quick", action="store_true", help="512 frames")
    parser.add_argument("--plain", action="store_true", help="plain-text table")
    args = parser.parse_args(argv)
    n = 512 if args.quick else max(BATCH, args.frames // BATCH * BATCH)
    nx = ny = 16
    ix = np.tile(np.arange(nx), ny)[:BATCH]
    iy = np.repeat(np.arange(ny), nx)[:BATCH]

    sample = LiquidSample((ny, nx), detector_shape=SHAPE, seed=0)
    response = DetectorResponse(SHAPE, seed=0)
    rng = np.random.default_rng(0)
    seconds: dict[str, float] = {}
    intensities, electrons, frames = [], [], []
    t = 0.0
    for b in range(n // BATCH):
        # Consecutive batches revisit the same 64 positions, one "repeat" apart.
        times = b * 0.1 + np.arange(BATCH) * 1e-4
        t0 = time.perf_counter()
        intensities.append(sample.intensity(ix, iy, times))
        t += time.perf_counter() - t0
    seconds["speckle"] = t
    t0 = time.perf_counter()
    for lam in intensities:
        electrons.append(rng.poisson(lam))
    seconds["poisson"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    for e in electrons:
        frames.append(response.process(e))
    seconds["response"] = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        for label, comp in (("write gzip-1", "gzip"), ("write lzf", "lzf"), ("write none", None)):
            seconds[label] = _write(Path(tmp) / f"{label.replace(' ', '_')}.h5", frames, comp)
        sizes = {}
        for label in ("write gzip-1", "write lzf", "write none"):
            sizes[label] = (Path(tmp) / f"{label.replace(' ', '_')}.h5").stat().st_size
        t0 = time.perf_counter()
        for batch in frames:
            batch.copy()
        seconds["copy (baseline)"] = time.perf_counter() - t0

        scan = ScanController(name="scan")
        cam_sample = LiquidSample((ny, nx), detector_shape=SHAPE, seed=1)
        camera = Celeritas(cam_sample, scan, tmp, batch_size=BATCH)
        repeats = n // (nx * ny)
        for sig, value in ((scan.nx, nx), (scan.ny, ny), (scan.repeats, max(1, repeats)), (scan.dwell, 1e-4)):
            sig.put(value)
        camera.frame_rate.put(1e4)
        camera.stage()
        scan.stage()
        try:
            t0 = time.perf_counter()
            camera.kickoff()
            scan.kickoff()
            camera.complete().wait(600)
            seconds["camera"] = time.perf_counter() - t0
            n_camera = camera.get_index()
        finally:
            scan.unstage()
            camera.unstage()

    camera_fps = n_camera / seconds["camera"]
    rows = []
    for label, s in seconds.items():
        count = n_camera if label == "camera" else n
        fps = count / s
        extra = f"{sizes[label] / (n * SHAPE[0] * SHAPE[1] * 2):.2f}" if label in sizes else ""
        rows.append([label, f"{fps:,.0f}", f"{1e3 / fps:.3f}", f"{fps / camera_fps:.2f}", extra])
    print_table(
        ["stage", "frames/s", "ms/frame", "× camera", "size ratio"],
        rows,
        f"Celeritas model, {SHAPE[1]}×{SHAPE[0]} uint16, {n} frames, batches of {BATCH}, "
        f"{cam_sample.field.n_pixels} dynamic ring pixels, dose {cam_sample.dose:g} e/px/frame",
        plain=args.plain,
        right=(1, 2, 3, 4),
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
