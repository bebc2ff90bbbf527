"""Plans for coherent correlation imaging (Klose et al., Nature 614, 256 (2023))."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
from bluesky.utils import MsgGenerator

HELICITIES = (+1, -1)


def one_helicity_frame(ccd: Any, helicity: int) -> MsgGenerator:
    """Set the helicity, take one frame into ``primary``, record the truth if there is one.

    The default ``per_frame`` hook of :func:`cci_series`.
    """
    yield from bps.mv(ccd.helicity, helicity)
    yield from bps.trigger_and_read([ccd])
    truth = getattr(ccd, "truth", None)
    if truth is not None:
        yield from bps.create("truth")
        yield from bps.read(truth)
        yield from bps.save()


def cci_series(
    ccd: Any,
    num_pairs: int,
    exposure: float,
    *,
    per_frame: Callable[[Any, int], MsgGenerator] | None = None,
    md: dict[str, Any] | None = None,
) -> MsgGenerator:
    """Record ``num_pairs`` helicity pairs (+1 then −1) of FTH frames.

    Parameters
    ----------
    ccd : HelicityCCD-like device
        Readable, Triggerable, Stageable, with signals ``helicity`` (±1) and
        ``exposure_time`` (s); an optional ``truth`` sub-device (simulators) is read
        into the ``truth`` stream after every frame.
    num_pairs : int
        Number of + / − pairs (2·num_pairs frames), ≥ 1.
    exposure : float
        Exposure time per frame, s (> 0).
    per_frame : callable, optional
        ``per_frame(ccd, helicity)`` plan for one frame; :func:`one_helicity_frame`
        by default.
    md : dict, optional
        Extra start-document metadata.

    Yields
    ------
    Msg
        Messages for the RunEngine. A checkpoint precedes every pair, so a pause
        resumes at a pair boundary.

    Raises
    ------
    ValueError
        ``num_pairs`` < 1 or ``exposure`` ≤ 0.
    """
    if int(num_pairs) != num_pairs or num_pairs < 1:
        raise ValueError(f"num_pairs must be a positive integer, got {num_pairs!r}")
    if not exposure > 0:
        raise ValueError(f"exposure must be > 0 s, got {exposure!r}")
    _md = cci_metadata(
        ccd,
        "cci_series",
        {"ccd": repr(ccd), "num_pairs": int(num_pairs), "exposure": float(exposure)},
        num_pairs=int(num_pairs),
        exposure=exposure,
    )
    _md.update(md or {})

    @bpp.stage_decorator([ccd])
    @bpp.run_decorator(md=_md)
    def inner() -> MsgGenerator:
        yield from bps.mv(ccd.exposure_time, float(exposure))
        for _ in range(int(num_pairs)):
            yield from helicity_pair(ccd, per_frame)

    return (yield from inner())


def helicity_pair(
    ccd: Any, per_frame: Callable[[Any, int], MsgGenerator] | None = None
) -> MsgGenerator:
    """One helicity pair: a checkpoint, then a +1 and a −1 frame.

    The step shared by :func:`cci_series` and
    :func:`~speckleflow.plans.adaptive.cci_until_covered`; a pause resumes at the
    checkpoint, i.e. at a pair boundary.

    Parameters
    ----------
    ccd : HelicityCCD-like device
        As in :func:`cci_series`.
    per_frame : callable, optional
        ``per_frame(ccd, helicity)`` plan for one frame; :func:`one_helicity_frame`
        by default.
    """
    per_frame = per_frame or one_helicity_frame
    yield from bps.checkpoint()
    for helicity in HELICITIES:
        yield from per_frame(ccd, helicity)


def cci_metadata(
    ccd: Any,
    plan_name: str,
    plan_args: dict[str, Any],
    *,
    num_pairs: int,
    exposure: float,
) -> dict[str, Any]:
    """Start-document metadata common to the CCI plans (``num_pairs`` = planned, or the cap)."""
    return {
        "detectors": [ccd.name],
        "num_pairs": int(num_pairs),
        "num_points": 2 * int(num_pairs),
        "exposure_s": float(exposure),
        "plan_name": plan_name,
        "plan_args": plan_args,
        "plan_pattern": "helicity pairs",
        "technique": "cci",
        "hints": {"dimensions": [(["time"], "primary")]},
    }
