"""4D-STEM ptychography acquisition: one flown raster with the fast camera (CAVIAR).

:func:`ptycho_scan` rasters the probe over N_x × N_y positions at a step of ``step`` Å
once, one camera frame per position, the camera flown (its own HDF5 file registered in
the run through StreamResource/StreamDatum), then reads the simulator's ground truth
into a ``truth`` stream. The start document carries what the reconstruction needs: the
probe (energy, convergence semi-angle, defocus), the scan (step, shape, origin), the
detector (shape, angular sampling) and the sample parameters — the keys fixed by
``services/ptycho/CAVIAR_CONTRACT.md``. Scan positions in Å are origin + (iy, ix)·step, with the
per-frame (ix, iy) in the primary stream's ``<camera>_scan_ix`` / ``<camera>_scan_iy``.

References
----------
Gladyshev et al. (2025), correlated atomic vibrations from mixed-object multislice
electron ptychography (CAVIAR).
"""

from __future__ import annotations

import math
from typing import Any

import bluesky.preprocessors as bpp
from bluesky.utils import MsgGenerator

from .ecm import fly_raster

__all__ = ["PROBE_KEYS", "ptycho_scan"]

#: Start-document keys the camera's ``ptycho_metadata()`` must provide (contract).
PROBE_KEYS = (
    "energy_eV",
    "semiangle_mrad",
    "defocus_A",
    "detector_shape",
    "angular_sampling_mrad",
    "scan_step_A",
)


def ptycho_scan(
    camera: Any,
    scan: Any,
    nx: int,
    ny: int,
    step: float,
    *,
    frame_rate: float = 1000.0,
    flush_period: float = 0.5,
    md: dict[str, Any] | None = None,
) -> MsgGenerator:
    """Acquire a 4D-STEM ptychography data set: one raster of ``nx``×``ny`` frames.

    Parameters
    ----------
    camera : Celeritas-like device
        Flyable, Collectable, Stageable, with config signal ``frame_rate`` (Hz) and a
        method ``ptycho_metadata() -> dict`` giving the probe, detector, scan-step and
        sample keys of the start document (:data:`PROBE_KEYS` at least; a simulated
        camera adds the sample's); an optional ``truth`` sub-device is read into the
        ``truth`` stream after the raster.
    scan : ScanController-like device
        Flyable, with signals ``nx``, ``ny``, ``repeats``, ``dwell`` (s),
        ``line_flyback``, ``frame_flyback`` (s); its points trigger the camera.
    nx, ny : int
        Scan positions per row (x, fast axis) and rows, ≥ 1.
    step : float
        Scan step, Å (> 0); must equal the camera's ``scan_step_A`` (the probe
        positions the microscope/simulator uses).
    frame_rate : float
        Camera frame rate, Hz (> 0); the dwell is 1/f.
    flush_period : float
        Wall-clock interval, s, between collections while the scan runs.
    md : dict, optional
        Extra start-document metadata (overrides the plan's keys).

    Yields
    ------
    Msg
        configure (scan size, dwell, frame rate), stage, one run with the ``primary``
        stream (frames ``<camera>_image`` (n_positions, qy, qx) uint16 counts in raster
        order index = iy·nx + ix, and per-frame ``scan_ix``/``scan_iy``) and the
        ``truth`` stream, unstage.

    Raises
    ------
    ValueError
        Before any message: for sizes < 1, step ≤ 0, frame_rate ≤ 0, or a step other
        than the camera's ``scan_step_A``.
    TypeError
        If the camera has no ``ptycho_metadata()`` or it lacks a :data:`PROBE_KEYS` key.
    """
    for label, value in (("nx", nx), ("ny", ny)):
        if int(value) != value or value < 1:
            raise ValueError(f"{label} must be a positive integer, got {value!r}")
    if not (math.isfinite(step) and step > 0):
        raise ValueError(f"step must be > 0 Å, got {step!r}")
    if not (math.isfinite(frame_rate) and frame_rate > 0):
        raise ValueError(f"frame_rate must be > 0 Hz, got {frame_rate!r}")
    if not flush_period > 0:
        raise ValueError(f"flush_period must be > 0 s, got {flush_period!r}")
    get_meta = getattr(camera, "ptycho_metadata", None)
    if not callable(get_meta):
        raise TypeError(f"camera {getattr(camera, 'name', camera)!r} has no ptycho_metadata() (probe parameters)")
    meta = dict(get_meta())
    missing = [k for k in PROBE_KEYS if k not in meta]
    if missing:
        raise TypeError(f"camera ptycho_metadata() lacks the start-document keys {missing}")
    if abs(float(meta["scan_step_A"]) - float(step)) > 1e-6 * max(1.0, float(step)):
        raise ValueError(
            f"step {step!r} Å differs from the camera's probe step {meta['scan_step_A']!r} Å "
            "(the simulated sample was computed at that step)"
        )
    nx, ny, f, step = int(nx), int(ny), float(frame_rate), float(step)
    n = nx * ny
    origin = meta.get("scan_origin_A", [0.0, 0.0])
    _md: dict[str, Any] = {
        "detectors": [camera.name],
        "motors": [scan.name],
        "num_points": n,
        "num_intervals": n - 1,
        "plan_name": "ptycho_scan",
        "plan_args": {
            "camera": repr(camera), "scan": repr(scan), "nx": nx, "ny": ny, "step": step,
            "frame_rate": f, "flush_period": flush_period,
        },
        "plan_pattern": "raster",
        "plan_pattern_args": {"nx": nx, "ny": ny, "step_A": step},
        "shape": [ny, nx],
        "extents": [
            [origin[0], origin[0] + (ny - 1) * step],
            [origin[1], origin[1] + (nx - 1) * step],
        ],
        "hints": {"dimensions": [(["scan_iy", "scan_ix"], "primary")]},
        "technique": "ptycho",
        "frame_rate": f,
        "dwell_s": 1.0 / f,
        **meta,
        "scan_step_A": step,
        "scan_shape": [ny, nx],
        "scan_origin_A": [float(origin[0]), float(origin[1])],
        "scan_positions": (
            "scan position (y, x) Å = scan_origin_A + (scan_iy, scan_ix)·scan_step_A, "
            f"from the primary stream's {camera.name}_scan_iy / {camera.name}_scan_ix; "
            "frames in raster order, index = iy·nx + ix"
        ),
    }
    _md.update(md or {})

    @bpp.stage_decorator([camera, scan])
    @bpp.run_decorator(md=_md)
    def inner() -> MsgGenerator:
        # one raster, no flyback: the 5D-STEM fly with N_t = 1
        yield from fly_raster(camera, scan, nx, ny, 1, f, flush_period=flush_period)

    return (yield from inner())
