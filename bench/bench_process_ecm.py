"""Reading a stored 5D-STEM run and the full ECM on it: Tiled vs the HDF5 file directly.

A run of the simulated Celeritas camera is recorded (real RunEngine, TiledWriter, an
embedded Tiled server on 127.0.0.1), then, on the same run, for each frame reader:

- **read**: every frame a g2 block needs, the way the pipeline reads it (every repeat
  of ``rows_per_block`` scan rows), for all blocks — seconds and requests;
- **run_ecm**: the full ECM (virtual ADF, registration, g2 + KWW, statistics), one
  thread (``scheduler=None``) — the compute is the same for every reader.

Readers: **numpy** (the frames in memory, the floor), **tiled per-repeat** (the old
reader: one HTTP request per repeat per block, the baseline of the ratios), **tiled
merged** (:class:`TiledFrames`: nearby repeats in one bounded request) and **hdf5 direct**
(:class:`HDF5Frames`: h5py on the camera's file). Ratios are baseline time / time
(> 1: faster than the old reader). Run ``python bench/bench_process_ecm.py`` (16×16
positions × 20 repeats of 128×256 frames; several minutes on a loaded 2-core machine)
or ``--quick``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchtable import print_table


class PerRepeatFrames:
    """The old reader: one request per ``read`` (no merging, no splitting)."""

    def __init__(self, tiled: Any) -> None:
        self.tiled = tiled
        self.requests = 0

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.tiled.shape

    def read(self, start: int, stop: int) -> np.ndarray:
        self.requests += 1
        return np.asarray(self.tiled.node[start:stop])


def _record(uri: str, api_key: str, detector_dir: Path, n: int, repeats: int, shape: tuple[int, int]) -> str:
    from bluesky import RunEngine
    from speckleflow.devices import Celeritas, LiquidSample, ScanController
    from speckleflow.plans import ecm_5d
    from speckleflow.services.layout import ensure_layout
    from speckleflow.services.raw_writer import raw_run_writer
    from tiled.client import from_uri

    client = from_uri(uri, api_key=api_key)
    ensure_layout(client)
    sample = LiquidSample((n, n), detector_shape=shape, tau_median=1.0, seed=5, n_components=4)
    scan = ScanController(name="scan")
    camera = Celeritas(sample, scan, detector_dir, batch_size=256, compression="lzf")
    RE = RunEngine({})
    RE.subscribe(raw_run_writer(client["raw"], batch_size=1024))
    (uid,) = RE(ecm_5d(camera, scan, n, n, repeats, 1600.0, dose=1.0, override=True, flush_period=0.5))
    return uid


def _read_blocks(reader: Any, table: np.ndarray, rows_per_block: int) -> int:
    """Read every g2 block's ranges as the pipeline does; frames read."""
    R, ny, _ = table.shape
    got = 0
    for y0 in range(0, ny, rows_per_block):
        y1 = min(y0 + rows_per_block, ny)
        ranges = [(int(table[r, y0:y1].min()), int(table[r, y0:y1].max()) + 1) for r in range(R)]
        if hasattr(reader, "read_ranges"):
            parts = reader.read_ranges(ranges)
        else:
            parts = ((i, reader.read(a, b)) for i, (a, b) in enumerate(ranges))
        for _, frames in parts:
            got += frames.shape[0]
    return got


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scan", type=int, default=16, help="scan positions per side")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--detector", type=int, nargs=2, default=(128, 256), metavar=("ROWS", "COLS"))
    parser.add_argument("--rows-per-block", type=int, default=4)
    parser.add_argument("--quick", action="store_true", help="4×4 × 8 repeats on 48×48 pixels")
    parser.add_argument("--plain", action="store_true", help="plain-text table")
    args = parser.parse_args(argv)
    if args.quick:
        args.scan, args.repeats, args.detector, args.rows_per_block = 4, 8, (48, 48), 2

    from speckleflow.services.ecm.geometry import DetectorGeometry
    from speckleflow.services.ecm.pipeline import ArrayFrames, ECMOptions, raster_table, run_ecm
    from speckleflow.services.process_ecm import index_stored_run
    from speckleflow.services.raw_runs import open_run
    from speckleflow.services.run_frames import HDF5Frames, TiledFrames, hdf5_location
    from speckleflow.services.tiled_server import DataDirectory, EmbeddedTiled
    from tiled.client import from_uri

    n, shape = args.scan, tuple(args.detector)
    with tempfile.TemporaryDirectory(prefix="bench-process-ecm-") as tmp:
        data_dir = DataDirectory.create(tmp)
        server = EmbeddedTiled(data_dir, data_dir.api_key()).start(timeout=120)
        try:
            t0 = time.perf_counter()
            uid = _record(server.uri, server.api_key, data_dir.detector, n, args.repeats, shape)
            t_record = time.perf_counter() - t0
            client = from_uri(server.uri, api_key=server.api_key)
            stored = index_stored_run(open_run(client, uid), source="tiled")
            node = stored.frames.node
            path, dataset = hdf5_location(node)
            geometry = DetectorGeometry.from_mapping(stored.geometry)
            table = raster_table(stored.scan, stored.frames.shape[0], stored.ix, stored.iy, stored.repeat)
            readers: dict[str, Any] = {
                "numpy (in memory)": ArrayFrames(HDF5Frames(path, dataset).read(0, stored.frames.shape[0])),
                "tiled per-repeat (old)": PerRepeatFrames(TiledFrames(node)),
                "tiled merged": TiledFrames(node),
                "hdf5 direct": HDF5Frames(path, dataset),
            }
            opts = ECMOptions(n_r=1, n_phi=8, rows_per_block=args.rows_per_block, scheduler=None)
            readers["tiled merged"].read(0, 1)  # the server's first open of the file, outside the timings
            times: dict[str, tuple[float, int, float]] = {}
            for name, reader in readers.items():
                t0 = time.perf_counter()
                got = _read_blocks(reader, table, args.rows_per_block)
                t_read = time.perf_counter() - t0
                assert got == table.size, (name, got)
                requests = getattr(reader, "requests", 0)
                t0 = time.perf_counter()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    run_ecm(reader, geometry, stored.scan, opts, ix=stored.ix, iy=stored.iy, repeat=stored.repeat)
                times[name] = (t_read, requests, time.perf_counter() - t0)
        finally:
            server.stop()

    base_read, _, base_ecm = times["tiled per-repeat (old)"]
    rows = [
        [name, f"{t_read:.3f}", "—" if name.startswith("numpy") else str(req), f"{base_read / t_read:.2f}",
         f"{t_ecm:.2f}", f"{base_ecm / t_ecm:.2f}"]
        for name, (t_read, req, t_ecm) in times.items()
    ]
    mb = table.size * int(np.prod(shape)) * 2 / 2**20
    title = (f"stored ECM run {n}×{n} × {args.repeats} repeats, {shape[0]}×{shape[1]} uint16 ({mb:.0f} MB; "
             f"recorded in {t_record:.1f} s); blocks of {args.rows_per_block} rows; ratios vs tiled per-repeat")
    headers = ["reader", "read s", "requests", "read ratio", "run_ecm s", "run_ecm ratio"]
    print_table(headers, rows, title, plain=args.plain, right=(1, 2, 3, 4, 5))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
