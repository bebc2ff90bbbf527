"""5D-STEM k-resolved electron correlation microscopy (Huang & Voyles).

A repeated raster of N_x × N_y probe positions, one camera frame per position at frame
rate f, repeated N_t times without interruption, records I(r, k, t). Two conditions make
the per-pixel g2 meaningful (``ARCHITECTURE.md`` §3):

* **time sampling** — a position is revisited every N_x·N_y/f seconds; this must be
  shorter than 0.05·τ, or the fast part of g2 is not sampled and τ is overestimated;
* **counts** — the electrons per pixel on the first diffraction ring per frame,
  I_s/(f·N_d) (I_s the electron rate scattered onto the ring, N_d its pixels), must be
  ≥ 1, or photon (electron) noise biases the fitted τ low.

:func:`ecm_5d` checks both before acquiring and refuses with
:class:`AcquisitionConstraintError`, saying which fails and which frame rate or scan
size would satisfy it; ``override=True`` records the violation in the start document
and acquires anyway.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
from bluesky.utils import MsgGenerator

__all__ = [
    "TIME_SAMPLING_FRACTION",
    "AcquisitionConstraintError",
    "ConstraintCheck",
    "check_ecm_constraints",
    "ecm_5d",
    "ecm_metadata",
    "fly_raster",
]

#: N_x·N_y/f must be below this fraction of τ.
TIME_SAMPLING_FRACTION = 0.05
#: Minimum electrons per pixel on the first ring per frame.
MIN_COUNTS = 1.0


class AcquisitionConstraintError(ValueError):
    """An ECM acquisition would violate the time-sampling or counts constraint.

    Attributes
    ----------
    checks : list of ConstraintCheck
        All checks, failing and passing.
    """

    def __init__(self, message: str, checks: list[ConstraintCheck]) -> None:
        super().__init__(message)
        self.checks = checks

    @property
    def failing(self) -> list[str]:
        """Names of the failing constraints."""
        return [c.name for c in self.checks if c.satisfied is False]


@dataclass(frozen=True)
class ConstraintCheck:
    """Outcome of one acquisition constraint.

    Attributes
    ----------
    name : str
        ``"time_sampling"`` or ``"counts"``.
    value : float or None
        N_x·N_y/f (s) or I_s/(f·N_d) (electrons/pixel/frame); None if not checkable.
    limit : float or None
        0.05·τ (s, value must be below) or 1 (value must be at least).
    satisfied : bool or None
        None when the input it needs (``expected_tau`` / ``dose``) was not given.
    message : str
        What was checked and, when it fails, what would satisfy it.
    """

    name: str
    value: float | None
    limit: float | None
    satisfied: bool | None
    message: str


def _positions_below(limit: float) -> int:
    """Largest integer N with N < limit."""
    return max(0, math.ceil(limit) - 1)


def check_ecm_constraints(
    nx: int,
    ny: int,
    frame_rate: float,
    *,
    expected_tau: float | None = None,
    dose: float | None = None,
) -> list[ConstraintCheck]:
    """Check the 5D-STEM ECM acquisition constraints (pure; no Bluesky).

    Parameters
    ----------
    nx, ny : int
        Scan positions per row and rows.
    frame_rate : float
        Camera frame rate f = 1/dwell, Hz.
    expected_tau : float, optional
        Expected structural relaxation time τ, s; without it the time sampling is not
        checked.
    dose : float, optional
        Electrons per pixel on the first ring per frame at ``frame_rate``,
        I_s/(f·N_d); without it the counts are not checked.

    Returns
    -------
    list of ConstraintCheck
        ``[time_sampling, counts]``.

    Raises
    ------
    ValueError
        For non-positive sizes, frame rate, τ or dose.
    """
    for label, value in (("nx", nx), ("ny", ny)):
        if int(value) != value or value < 1:
            raise ValueError(f"{label} must be a positive integer, got {value!r}")
    if not (math.isfinite(frame_rate) and frame_rate > 0):
        raise ValueError(f"frame_rate must be > 0 Hz, got {frame_rate!r}")
    if expected_tau is not None and not (math.isfinite(expected_tau) and expected_tau > 0):
        raise ValueError(f"expected_tau must be > 0 s, got {expected_tau!r}")
    if dose is not None and not (math.isfinite(dose) and dose > 0):
        raise ValueError(f"dose must be > 0 electrons/pixel/frame, got {dose!r}")
    n = int(nx) * int(ny)
    f = float(frame_rate)
    # Highest frame rate that keeps ≥ 1 e/pixel at the same beam current: I_s/N_d = dose·f.
    f_max_counts = None if dose is None else dose * f

    if expected_tau is None:
        time_check = ConstraintCheck(
            "time_sampling", n / f, None, None,
            "time sampling not checked: no expected_tau given",
        )
    else:
        limit = TIME_SAMPLING_FRACTION * expected_tau
        dt = n / f
        f_min = n / limit
        ok = dt < limit
        text = (
            f"time sampling N_x·N_y/f = {nx}·{ny}/{f:g} Hz = {dt:.4g} s "
            f"{'<' if ok else '≥'} 0.05·τ = {limit:.4g} s (τ = {expected_tau:g} s)"
        )
        if not ok:
            n_max = _positions_below(limit * f)
            side = math.isqrt(n_max)
            text += (
                f"; needs a frame rate f > {f_min:.4g} Hz at {nx}×{ny} positions, or at most "
                f"{n_max} positions (e.g. {side}×{side}) at {f:g} Hz"
            )
            if f_max_counts is not None and f_min >= f_max_counts:
                text += (
                    f"; but the counts allow at most {f_max_counts:.4g} Hz, so reduce the scan to "
                    f"fewer than {limit * f_max_counts:.4g} positions"
                )
        time_check = ConstraintCheck("time_sampling", dt, limit, ok, text)

    if dose is None:
        counts_check = ConstraintCheck("counts", None, MIN_COUNTS, None, "counts not checked: no dose given")
    else:
        ok = dose >= MIN_COUNTS
        text = (
            f"counts I_s/(f·N_d) = {dose:.4g} electrons per pixel on the first ring per frame at "
            f"f = {f:g} Hz {'≥' if ok else '<'} {MIN_COUNTS:g}"
        )
        if not ok:
            assert f_max_counts is not None
            text += (
                f"; at the same beam current a frame rate f ≤ {f_max_counts:.4g} Hz gives ≥ 1 "
                f"electron per pixel (or raise the probe current by {MIN_COUNTS / dose:.3g}×)"
            )
            if expected_tau is not None:
                limit = TIME_SAMPLING_FRACTION * expected_tau
                n_max = _positions_below(limit * f_max_counts)
                side = math.isqrt(n_max)
                text += (
                    f"; at {f_max_counts:.4g} Hz the time sampling allows at most {n_max} positions"
                    f" (e.g. {side}×{side})"
                )
        counts_check = ConstraintCheck("counts", float(dose), MIN_COUNTS, ok, text)
    return [time_check, counts_check]


def ecm_5d(
    camera: Any,
    scan: Any,
    nx: int,
    ny: int,
    repeats: int,
    frame_rate: float,
    *,
    expected_tau: float | None = None,
    dose: float | None = None,
    line_flyback: float = 0.0,
    frame_flyback: float = 0.0,
    flush_period: float = 0.5,
    override: bool = False,
    md: dict[str, Any] | None = None,
) -> MsgGenerator:
    """Acquire a 5D-STEM ECM data set: ``repeats`` rasters of ``nx``×``ny`` frames.

    Parameters
    ----------
    camera : Celeritas-like device
        Flyable, Collectable (``describe_collect``/``collect_asset_docs``), Stageable,
        with config signals ``frame_rate`` (Hz) and ``dose`` (electrons/pixel/frame on
        the first ring); an optional ``truth`` sub-device (simulators) is read into the
        ``truth`` stream after the acquisition.
    scan : ScanController-like device
        Flyable, with signals ``nx``, ``ny``, ``repeats``, ``dwell`` (s),
        ``line_flyback`` and ``frame_flyback`` (s); its points trigger the camera.
    nx, ny : int
        Scan positions per row (fast axis) and rows, ≥ 1.
    repeats : int
        N_t, rasters without interruption, ≥ 2.
    frame_rate : float
        f, Hz; the dwell is 1/f.
    expected_tau : float, optional
        Expected τ, s, for the time-sampling check.
    dose : float, optional
        Electrons per pixel on the first ring per frame at ``frame_rate``
        (I_s/(f·N_d)), for the counts check; also set on the camera.
    line_flyback, frame_flyback : float
        Scan dead times after each row / raster, s.
    flush_period : float
        Wall-clock interval, s, between collections while the scan runs (frames are
        registered in the run as they are written).
    override : bool
        Acquire even if a constraint fails; the start document records it.
    md : dict, optional
        Extra start-document metadata.

    Yields
    ------
    Msg
        Messages for the RunEngine: configure, stage, one run with the ``primary``
        stream (frames and positions, registered from the camera's file) and the
        ``truth`` stream, unstage.

    Raises
    ------
    AcquisitionConstraintError
        Before any message, when a constraint fails and ``override`` is false; the
        message names the failing constraint(s) and the frame rate or scan size that
        would satisfy them.
    ValueError
        For invalid sizes, frame rate, τ or dose.
    """
    if int(repeats) != repeats or repeats < 2:
        raise ValueError(f"repeats must be an integer >= 2 (g2 needs two visits), got {repeats!r}")
    if not flush_period > 0:
        raise ValueError(f"flush_period must be > 0 s, got {flush_period!r}")
    checks = check_ecm_constraints(nx, ny, frame_rate, expected_tau=expected_tau, dose=dose)
    failing = [c for c in checks if c.satisfied is False]
    if failing and not override:
        names = " and ".join(c.name for c in failing)
        detail = "\n".join(f"- {c.message}" for c in failing)
        raise AcquisitionConstraintError(
            f"ECM acquisition refused: the {names} constraint{'s' if len(failing) > 1 else ''} "
            f"fail{'' if len(failing) > 1 else 's'} (Huang & Voyles; override=True acquires anyway)\n{detail}",
            checks,
        )
    nx, ny, repeats, f = int(nx), int(ny), int(repeats), float(frame_rate)
    _md = ecm_metadata(
        camera, scan, nx, ny, repeats, f, checks,
        plan_args={
            "camera": repr(camera), "scan": repr(scan), "nx": nx, "ny": ny, "repeats": repeats,
            "frame_rate": f, "expected_tau": expected_tau, "dose": dose, "line_flyback": line_flyback,
            "frame_flyback": frame_flyback, "override": bool(override),
        },
        line_flyback=line_flyback, frame_flyback=frame_flyback, override=bool(override and failing),
    )  # fmt: skip
    _md.update(md or {})

    @bpp.stage_decorator([camera, scan])
    @bpp.run_decorator(md=_md)
    def inner() -> MsgGenerator:
        yield from fly_raster(
            camera, scan, nx, ny, repeats, f, dose=dose, line_flyback=line_flyback,
            frame_flyback=frame_flyback, flush_period=flush_period,
        )  # fmt: skip

    return (yield from inner())


def ecm_metadata(
    camera: Any,
    scan: Any,
    nx: int,
    ny: int,
    repeats: int,
    frame_rate: float,
    checks: list[ConstraintCheck],
    *,
    plan_args: dict[str, Any],
    plan_name: str = "ecm_5d",
    line_flyback: float = 0.0,
    frame_flyback: float = 0.0,
    override: bool = False,
) -> dict[str, Any]:
    """Start-document metadata of a 5D-STEM raster run (what the g2 worker and TiledWriter read).

    ``plan_name`` stays ``"ecm_5d"`` for every run that is one repeated raster (the
    online g2 worker reads the raster shape from such runs); ``shape`` is
    ``[repeats, ny, nx]``, ``time_sampling_s`` is N_x·N_y/f plus the flyback times (s).
    """
    n_frames = nx * ny * repeats
    f = float(frame_rate)
    return {
        "detectors": [camera.name],
        "motors": [scan.name],
        "num_points": n_frames,
        "num_intervals": n_frames - 1,
        "plan_name": plan_name,
        "plan_args": plan_args,
        "plan_pattern": "repeated raster",
        "plan_pattern_args": {"nx": nx, "ny": ny, "repeats": repeats},
        "shape": [repeats, ny, nx],
        "extents": [[0, repeats - 1], [0, ny - 1], [0, nx - 1]],
        "technique": "ecm",
        "frame_rate": f,
        "dwell_s": 1.0 / f,
        "time_sampling_s": nx * ny / f + ny * line_flyback + frame_flyback,
        "ecm_constraints": {c.name: asdict(c) for c in checks},
        "constraint_override": bool(override),
        "hints": {"dimensions": [(["time"], "primary")]},
    }


def fly_raster(
    camera: Any,
    scan: Any,
    nx: int,
    ny: int,
    repeats: int,
    frame_rate: float,
    *,
    dose: float | None = None,
    line_flyback: float = 0.0,
    frame_flyback: float = 0.0,
    flush_period: float = 0.5,
) -> MsgGenerator:
    """The inside of an open 5D-STEM run: configure, fly the raster, collect, read the truth.

    Used by :func:`ecm_5d` and the adaptive plan
    (:func:`speckleflow.plans.adaptive.ecm_adaptive`); the caller opens the run and
    stages ``camera`` and ``scan``. Arguments as in :func:`ecm_5d`; ``dose``, when
    given, is set on the camera (electrons per pixel on the first ring per frame).
    """
    f = float(frame_rate)
    settings: list[Any] = [
        scan.nx, int(nx), scan.ny, int(ny), scan.repeats, int(repeats), scan.dwell, 1.0 / f,
        scan.line_flyback, float(line_flyback), scan.frame_flyback, float(frame_flyback),
        camera.frame_rate, f,
    ]
    if dose is not None:
        settings += [camera.dose, float(dose)]
    yield from bps.mv(*settings)
    yield from bps.declare_stream(camera, name="primary", collect=True)
    yield from bps.kickoff(camera, wait=True)
    yield from bps.kickoff(scan, wait=True)
    yield from bps.collect_while_completing(
        [scan, camera], [camera], flush_period=flush_period, stream_name="primary"
    )
    truth = getattr(camera, "truth", None)
    if truth is not None:
        yield from bps.create("truth")
        yield from bps.read(truth)
        yield from bps.save()
