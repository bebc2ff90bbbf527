"""Adaptive acquisitions: CCI until every state is covered; 5D-STEM at a frame rate chosen live.

Coherent correlation imaging reconstructs each metastable state from the average of
its pairs (Klose et al., Nature 614, 256 (2023)); a state's image is only as good as
the number of pairs assigned to it. :func:`cci_until_covered` therefore keeps
acquiring until the online CCI worker (which assigns every pair to a state while the
run goes on) reports at least ``min_pairs_per_state`` pairs in every state it has
found, or until a cap on the number of pairs.

The plan does no I/O itself and imports neither devices nor Tiled: the per-state
counts come through a callable the caller supplies (the service passes one that reads
``analysis/<uid>/cci/assignments`` metadata from Tiled, see
:func:`speckleflow.services.queue.counts.tiled_state_counts`).

5D-STEM ECM is valid only if N_x·N_y/f < 0.05·τ and I_s/(f·N_d) ≥ 1 (Huang & Voyles),
and τ is what the experiment is there to measure. :func:`ecm_adaptive` therefore takes
a short probe at the requested frame rate, reads the online g2 worker's live τ and
first-ring count rate for it (through ``read_g2``, normally
:func:`speckleflow.services.queue.counts.tiled_g2_estimates`), chooses the frame rate
that satisfies both (:func:`choose_frame_rate`) or says that none does, and acquires.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
from bluesky.utils import MsgGenerator, RunEngineControlException

from .cci import cci_metadata, helicity_pair
from .ecm import MIN_COUNTS, TIME_SAMPLING_FRACTION, check_ecm_constraints, ecm_metadata, fly_raster

DECISION_STREAM = "decision"

CountsReader = Callable[[str], "Sequence[int] | None"]


@dataclass(frozen=True)
class CoverageDecision:
    """Why an adaptive CCI run stopped.

    Attributes
    ----------
    covered : bool
        True if every discovered state had ≥ ``min_pairs_per_state`` pairs.
    reason : str
        Human-readable reason (also the stop document's ``reason``).
    pairs_taken : int
        Helicity pairs acquired by the plan.
    state_counts : list of int
        Pairs per state at the last check (the worker's numbering), ``[]`` if none.
    """

    covered: bool
    reason: str
    pairs_taken: int
    state_counts: list[int]


def is_covered(
    state_counts: Sequence[int] | None, min_pairs_per_state: int, min_states: int = 1
) -> bool:
    """True if ≥ ``min_states`` states exist and every one has ≥ ``min_pairs_per_state`` pairs.

    Parameters
    ----------
    state_counts : sequence of int or None
        Pairs assigned to each discovered state; ``None`` when no counts exist yet.
    min_pairs_per_state : int
        Required pairs per state, ≥ 1.
    min_states : int, optional
        Required number of discovered states, ≥ 1.
    """
    if not state_counts or len(state_counts) < min_states:
        return False
    return min(int(c) for c in state_counts) >= min_pairs_per_state


class _DecisionReading:
    """A Readable of a decision, so that it travels as an event of the ``decision`` stream.

    ``values`` maps data keys to bool, int, float or str (a float NaN stands for "not
    known"); ``source`` names the plan.
    """

    parent = None

    def __init__(self, values: dict[str, Any], source: str) -> None:
        self.name = "decision"
        self._values = values
        self._source = source
        self._time = time.time()

    def describe(self) -> dict[str, dict[str, Any]]:
        kinds = {bool: "boolean", int: "integer", float: "number", str: "string"}
        return {
            k: {"source": f"plan:{self._source}", "dtype": kinds[type(v)], "shape": []}
            for k, v in self._values.items()
        }

    def read(self) -> dict[str, dict[str, Any]]:
        return {k: {"value": v, "timestamp": self._time} for k, v in self._values.items()}


def _coverage_values(decision: CoverageDecision, min_pairs_per_state: int) -> dict[str, Any]:
    return {
        "decision_covered": decision.covered,
        "decision_reason": decision.reason,
        "decision_pairs_taken": decision.pairs_taken,
        "decision_n_states": len(decision.state_counts),
        "decision_min_pairs_per_state": int(min_pairs_per_state),
        # A JSON-able list in a string column: the number of states varies between
        # runs, and a table column of varying-length arrays is not portable.
        "decision_state_counts": ",".join(str(c) for c in decision.state_counts),
    }


def cci_until_covered(
    ccd: Any,
    min_pairs_per_state: int,
    max_pairs: int,
    exposure: float,
    *,
    read_counts: CountsReader,
    check_every: int = 10,
    min_states: int = 1,
    per_frame: Callable[[Any, int], MsgGenerator] | None = None,
    md: dict[str, Any] | None = None,
) -> MsgGenerator:
    """Acquire helicity pairs until every discovered state has enough pairs.

    Pairs are taken as in :func:`~speckleflow.plans.cci.cci_series` (same step,
    :func:`~speckleflow.plans.cci.helicity_pair`). After every ``check_every`` pairs
    the plan calls ``read_counts(run_uid)`` for the online CCI worker's per-state pair
    counts and stops when at least ``min_states`` states exist and every state has
    ≥ ``min_pairs_per_state`` pairs, or when ``max_pairs`` pairs have been taken.

    The counts lag the acquisition by the worker's latency (typically < 1 s), so the
    run may take a few pairs more than strictly needed; it never takes more than
    ``max_pairs``.

    Parameters
    ----------
    ccd : HelicityCCD-like device
        As in :func:`~speckleflow.plans.cci.cci_series`.
    min_pairs_per_state : int
        Pairs required in every state, ≥ 1.
    max_pairs : int
        Cap on the number of pairs (2·max_pairs frames), ≥ 1.
    exposure : float
        Exposure time per frame, s (> 0).
    read_counts : callable
        ``read_counts(run_uid) -> list[int] | None``: pairs per state as currently
        assigned online (``None`` or ``[]`` while nothing is known). An exception it
        raises counts as "not known yet" (a live-path hiccup must not stop the
        acquisition); the number of such failures is in the decision reason.
    check_every : int, optional
        Pairs between two checks, ≥ 1.
    min_states : int, optional
        Do not stop before this many states have been found (≥ 1; default 1, i.e. any).
        A sample seen in a single state so far may not have shown its others yet.
    per_frame : callable, optional
        ``per_frame(ccd, helicity)`` plan for one frame.
    md : dict, optional
        Extra start-document metadata.

    Yields
    ------
    Msg
        Messages for the RunEngine. The decision is recorded in the run's documents:
        one event in the ``decision`` stream (``decision_covered``,
        ``decision_reason``, ``decision_pairs_taken``, ``decision_n_states``,
        ``decision_min_pairs_per_state``, ``decision_state_counts`` as comma-separated
        integers) and the stop document's ``reason``.

    Returns
    -------
    CoverageDecision
        The decision (as the plan's return value).

    Raises
    ------
    ValueError
        If ``min_pairs_per_state``, ``max_pairs``, ``check_every`` or ``min_states`` is
        not a positive integer, or ``exposure`` ≤ 0.
    TypeError
        If ``read_counts`` is not callable.
    """
    for name, value in (
        ("min_pairs_per_state", min_pairs_per_state),
        ("max_pairs", max_pairs),
        ("check_every", check_every),
        ("min_states", min_states),
    ):
        if isinstance(value, bool) or int(value) != value or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if not exposure > 0:
        raise ValueError(f"exposure must be > 0 s, got {exposure!r}")
    if not callable(read_counts):
        raise TypeError(f"read_counts must be callable, got {read_counts!r}")
    min_pairs, cap, every, n_min = int(min_pairs_per_state), int(max_pairs), int(check_every), int(min_states)

    _md = cci_metadata(
        ccd,
        "cci_until_covered",
        {
            "ccd": repr(ccd),
            "min_pairs_per_state": min_pairs,
            "max_pairs": cap,
            "exposure": float(exposure),
            "check_every": every,
            "min_states": n_min,
        },
        num_pairs=cap,
        exposure=exposure,
    )
    _md["adaptive"] = {
        "criterion": "min pairs per discovered state",
        "min_pairs_per_state": min_pairs,
        "min_states": n_min,
    }
    _md.update(md or {})
    outcome: list[CoverageDecision] = []

    def acquire(run_uid: str) -> MsgGenerator:
        yield from bps.mv(ccd.exposure_time, float(exposure))
        counts: list[int] = []
        failures = 0
        taken = 0
        covered = False
        while taken < cap and not covered:
            for _ in range(min(every, cap - taken)):
                yield from helicity_pair(ccd, per_frame)
                taken += 1
            try:
                latest = read_counts(run_uid)
            except Exception:  # noqa: BLE001 — see the docstring: "not known yet"
                failures += 1
                latest = None
            if latest:
                counts = [int(c) for c in latest]
            covered = is_covered(counts, min_pairs, n_min)
        if covered:
            reason = (
                f"coverage reached: all {len(counts)} states have >= {min_pairs} pairs "
                f"(min {min(counts)}) after {taken} pairs"
            )
        else:
            reason = (
                f"max_pairs reached: {taken} pairs taken, {len(counts)} states known "
                f"(>= {n_min} wanted), fewest pairs in a state {min(counts) if counts else 0} "
                f"(>= {min_pairs} wanted)"
            )
        if failures:
            reason += f"; {failures} count reads failed"
        decision = CoverageDecision(covered, reason, taken, counts)
        outcome.append(decision)
        yield from bps.create(DECISION_STREAM)
        yield from bps.read(_DecisionReading(_coverage_values(decision, min_pairs), "cci_until_covered"))
        yield from bps.save()

    def close_with_reason() -> MsgGenerator:
        yield from bps.close_run(reason=outcome[-1].reason if outcome else None)

    def close_after_error(e: BaseException) -> MsgGenerator:
        # As bluesky.preprocessors.run_wrapper does.
        if isinstance(e, RunEngineControlException):
            yield from bps.close_run(exit_status=e.exit_status)
        else:
            yield from bps.close_run(exit_status="fail", reason=str(e))

    @bpp.stage_decorator([ccd])
    def inner() -> MsgGenerator:
        # open_run returns the run uid, which read_counts needs (run_decorator hides it).
        run_uid = yield from bps.open_run(md=_md)
        yield from bpp.contingency_wrapper(
            acquire(run_uid), except_plan=close_after_error, else_plan=close_with_reason
        )
        return outcome[-1]

    return (yield from inner())


# -- 5D-STEM ECM: choose the frame rate from a probe's live τ and count rate ------------

#: ``read_g2(run_uid)`` → the online g2 worker's latest estimates for that run:
#: ``frames`` (frames behind them), ``tau_estimate_s`` (s), ``count_rate``
#: (electrons/pixel/frame on the first ring), or None while there are none.
G2Reader = Callable[[str], "Mapping[str, Any] | None"]


@dataclass(frozen=True)
class FrameRateDecision:
    """The frame rate an adaptive 5D-STEM run chose, and why.

    Attributes
    ----------
    feasible : bool
        True if a frame rate satisfies both acquisition constraints at this scan size.
    reason : str
        Human-readable reason (also the runs' stop ``reason``).
    probe_uid : str
        The probe run the estimates come from.
    probe_frame_rate : float
        f₀ of the probe, Hz.
    tau_s : float or None
        The g2 worker's whole-ring KWW τ of the probe, s.
    count_rate : float or None
        Electrons per pixel on the first ring per frame at f₀ (I_s/(f₀·N_d)).
    frame_rate : float or None
        The chosen f, Hz (None when infeasible).
    dose : float or None
        Predicted electrons per pixel on the first ring per frame at ``frame_rate``
        (same probe current): count_rate·f₀/f.
    f_min : float or None
        N_x·N_y/(0.05·τ), Hz: the frame rate must exceed it.
    f_max : float or None
        min(count_rate·f₀, max_frame_rate), Hz: the frame rate must not exceed it.
    acquisition_uid : str or None
        The acquisition run, once opened.
    """

    feasible: bool
    reason: str
    probe_uid: str
    probe_frame_rate: float
    tau_s: float | None
    count_rate: float | None
    frame_rate: float | None = None
    dose: float | None = None
    f_min: float | None = None
    f_max: float | None = None
    acquisition_uid: str | None = None

    def values(self) -> dict[str, Any]:
        """The decision as event data (NaN for what is not known)."""

        def num(v: float | None) -> float:
            return math.nan if v is None else float(v)

        return {
            "decision_feasible": self.feasible,
            "decision_reason": self.reason,
            "decision_probe_uid": self.probe_uid,
            "decision_probe_frame_rate": float(self.probe_frame_rate),
            "decision_tau_s": num(self.tau_s),
            "decision_count_rate": num(self.count_rate),
            "decision_frame_rate": num(self.frame_rate),
            "decision_dose": num(self.dose),
            "decision_f_min": num(self.f_min),
            "decision_f_max": num(self.f_max),
        }


def choose_frame_rate(
    nx: int,
    ny: int,
    probe_frame_rate: float,
    tau_s: float,
    count_rate: float,
    *,
    margin: float = 2.0,
    max_frame_rate: float = 100_000.0,
) -> tuple[float | None, str, float, float]:
    """The frame rate that satisfies the 5D-STEM ECM constraints, from probe estimates (pure).

    Time sampling needs N_x·N_y/f < 0.05·τ, i.e. f > f_min = N_x·N_y/(0.05·τ); the counts
    need I_s/(f·N_d) ≥ 1 where I_s/N_d = count_rate·f₀ at the same probe current, i.e.
    f ≤ count_rate·f₀ (Huang & Voyles; ``ARCHITECTURE.md`` §3). A probe's τ is an
    estimate (an undersampled decay biases it high, a probe of few τ low), so the lower
    bound carries a safety ``margin``:
    the wanted band is [margin·f_min, f_max] with f_max = min(count_rate·f₀,
    ``max_frame_rate``). f₀ is kept if it lies in the band, else the nearest band edge is
    taken (whole Hz, rounded into the band); if the band is empty but (f_min, f_max] is
    not, f_max (less margin than wanted, said in the reason); otherwise none.

    Parameters
    ----------
    nx, ny : int
        Scan positions per row and rows, ≥ 1.
    probe_frame_rate : float
        f₀, Hz (> 0).
    tau_s : float
        Estimated τ, s (> 0).
    count_rate : float
        Electrons per pixel on the first ring per frame measured at f₀ (> 0).
    margin : float
        Safety factor on the time-sampling bound, ≥ 1.
    max_frame_rate : float
        The camera's highest frame rate, Hz (> 0).

    Returns
    -------
    frame_rate : float or None
        The chosen f, Hz; None if no frame rate satisfies both constraints.
    reason : str
        Why (numbers included; when none fits, the largest scan that would).
    f_min, f_max : float
        The bounds above, Hz.

    Raises
    ------
    ValueError
        For non-positive or non-finite inputs, or ``margin`` < 1.
    """
    for name, value in (("probe_frame_rate", probe_frame_rate), ("tau_s", tau_s),
                        ("count_rate", count_rate), ("max_frame_rate", max_frame_rate)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    if not (math.isfinite(margin) and margin >= 1):
        raise ValueError(f"margin must be >= 1, got {margin!r}")
    if int(nx) != nx or int(ny) != ny or nx < 1 or ny < 1:
        raise ValueError(f"nx, ny must be positive integers, got {nx!r}, {ny!r}")
    n = int(nx) * int(ny)
    f0 = float(probe_frame_rate)
    limit = TIME_SAMPLING_FRACTION * tau_s
    f_min = n / limit
    f_counts = count_rate * f0 / MIN_COUNTS
    f_max = min(f_counts, float(max_frame_rate))
    bound = "counts" if f_counts <= max_frame_rate else "camera's maximum frame rate"
    f_lo, f_hi = math.ceil(margin * f_min), math.floor(f_max)
    head = (
        f"τ = {tau_s:.4g} s and {count_rate:.4g} e/px/frame at f₀ = {f0:g} Hz: time sampling needs "
        f"f > {f_min:.4g} Hz ({n} positions, 0.05·τ = {limit:.4g} s), the {bound} allow f ≤ {f_max:.4g} Hz"
    )
    if f_lo <= f_hi:
        f = float(min(max(f0, f_lo), f_hi))
        if f == f0:
            return f, f"{head}; f₀ = {f0:g} Hz is within [{margin:g}·f_min, f_max]: kept", f_min, f_max
        if f0 < f_lo:
            how = f"raised to the time-sampling bound ({margin:g}·f_min)"
        else:
            how = "lowered to the counts bound" if bound == "counts" else "lowered to the camera's maximum"
        return f, f"{head}; frame rate {how}: f = {f:g} Hz", f_min, f_max
    if f_min < f_hi:
        return (
            float(f_hi),
            f"{head}; f = {f_hi:g} Hz satisfies both, with less than the wanted {margin:g}× time-sampling margin",
            f_min,
            f_max,
        )
    n_max = max(0, math.ceil(limit * f_max) - 1)
    side = math.isqrt(n_max)
    reason = (
        f"{head}; no frame rate satisfies both at {nx}×{ny} positions: reduce the scan to at most "
        f"{n_max} positions (e.g. {side}×{side}) or raise the probe current"
    )
    return None, reason, f_min, f_max


def _opt_float(value: Any) -> float | None:
    """A finite positive float, else None (metadata may hold None or NaN)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) and value > 0 else None


def ecm_adaptive(
    camera: Any,
    scan: Any,
    nx: int,
    ny: int,
    repeats: int,
    frame_rate: float,
    *,
    read_g2: G2Reader,
    probe_repeats: int = 100,
    margin: float = 2.0,
    max_frame_rate: float = 100_000.0,
    set_dose: bool = True,
    wait_timeout: float = 30.0,
    poll_interval: float = 0.2,
    flush_period: float = 0.5,
    md: dict[str, Any] | None = None,
) -> MsgGenerator:
    """5D-STEM ECM that chooses its frame rate from a probe's live τ and count rate.

    1. **Probe run**: ``probe_repeats`` rasters of ``nx``×``ny`` at ``frame_rate`` (f₀)
       (:func:`~speckleflow.plans.ecm.fly_raster`). While the run is still open the plan
       polls ``read_g2(probe_uid)`` (every ``poll_interval`` s, at most
       ``wait_timeout`` s) until the online g2 worker's estimates cover all its frames,
       then takes its whole-ring τ (``tau_estimate_s``) and count rate (``count_rate``,
       electrons per pixel on the first ring per frame).
    2. **Decision** (:func:`choose_frame_rate`): the frame rate f with
       N_x·N_y/f < 0.05·τ and I_s/(f·N_d) ≥ 1, recorded as one event of the probe run's
       ``decision`` stream and as its stop ``reason``. Without an estimate, or when no
       frame rate satisfies both, the plan stops here and says why.
    3. **Acquisition run**: ``repeats`` rasters at f, its start document carrying
       ``adaptive`` (the decision, the probe uid) and ``ecm_constraints`` checked with
       the estimated τ and predicted counts, its ``decision`` stream the same event,
       its stop ``reason`` the decision's.

    Both runs are ordinary ``ecm_5d`` runs for the workers and processing
    (``plan_name`` ``"ecm_5d"``, ``adaptive.role`` ``"probe"`` / ``"acquisition"``).

    Parameters
    ----------
    camera, scan : devices
        As in :func:`~speckleflow.plans.ecm.ecm_5d`.
    nx, ny : int
        Scan positions per row and rows, ≥ 1.
    repeats : int
        Rasters of the acquisition run, ≥ 2.
    frame_rate : float
        f₀ of the probe, Hz (> 0); kept if it satisfies the constraints.
    read_g2 : callable
        ``read_g2(run_uid) -> mapping | None`` (see :data:`G2Reader`; the service reads
        the g2 worker's status in ``analysis/<uid>/workers/g2`` from Tiled). An
        exception it raises counts as "not known yet" (the number of failures is in
        the reason).
    probe_repeats : int
        Rasters of the probe run, ≥ 3. The probe must last many τ and sample the decay:
        g2 is normalised per pixel over the probe, so a probe of a few τ estimates τ
        low (measured: 200 repeats over ~20 τ gave 0.84·τ), and one whose repeats are
        longer than ~τ/10 often gives no fit at all (then the plan says so and stops).
    margin : float
        Safety factor on the time-sampling bound (≥ 1), see :func:`choose_frame_rate`.
    max_frame_rate : float
        The camera's highest frame rate, Hz.
    set_dose : bool
        Set the camera's ``dose`` signal to the predicted count rate at f: what the
        same probe current gives, for a simulated camera whose dose is a setting.
        Pass False for a camera without one.
    wait_timeout, poll_interval : float
        Longest wait for the worker's estimate and interval between reads, s.
    flush_period : float
        As in :func:`~speckleflow.plans.ecm.ecm_5d`, s.
    md : dict, optional
        Extra start-document metadata of both runs.

    Yields
    ------
    Msg
        Messages for the RunEngine (two staged runs, or one when the decision is "none").

    Returns
    -------
    FrameRateDecision
        The decision, with ``acquisition_uid`` once the acquisition run was opened.

    Raises
    ------
    ValueError
        For invalid sizes, repeats, rates, margin or times (before any message).
    TypeError
        If ``read_g2`` is not callable.
    """
    for name, value, low in (("nx", nx, 1), ("ny", ny, 1), ("repeats", repeats, 2), ("probe_repeats", probe_repeats, 3)):
        if isinstance(value, bool) or int(value) != value or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    for name, value in (("frame_rate", frame_rate), ("max_frame_rate", max_frame_rate),
                        ("wait_timeout", wait_timeout), ("poll_interval", poll_interval),
                        ("flush_period", flush_period)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    if not (math.isfinite(margin) and margin >= 1):
        raise ValueError(f"margin must be >= 1, got {margin!r}")
    if not callable(read_g2):
        raise TypeError(f"read_g2 must be callable, got {read_g2!r}")
    nx, ny, repeats, probe_repeats, f0 = int(nx), int(ny), int(repeats), int(probe_repeats), float(frame_rate)
    plan_args = {
        "camera": repr(camera), "scan": repr(scan), "nx": nx, "ny": ny, "repeats": repeats,
        "frame_rate": f0, "probe_repeats": probe_repeats, "margin": float(margin),
        "max_frame_rate": float(max_frame_rate), "set_dose": bool(set_dose),
    }  # fmt: skip
    adaptive = {
        "plan": "ecm_adaptive",
        "criterion": "N_x·N_y/f < 0.05·τ and I_s/(f·N_d) >= 1 from the probe's live g2 (Huang & Voyles)",
        "margin": float(margin),
    }
    outcome: list[FrameRateDecision] = []

    def close_with_reason() -> MsgGenerator:
        yield from bps.close_run(reason=outcome[-1].reason if outcome else None)

    def close_after_error(e: BaseException) -> MsgGenerator:
        if isinstance(e, RunEngineControlException):
            yield from bps.close_run(exit_status=e.exit_status)
        else:
            yield from bps.close_run(exit_status="fail", reason=str(e))

    def record(decision: FrameRateDecision) -> MsgGenerator:
        yield from bps.create(DECISION_STREAM)
        yield from bps.read(_DecisionReading(decision.values(), "ecm_adaptive"))
        yield from bps.save()

    def probe_body(uid: str) -> MsgGenerator:
        yield from fly_raster(camera, scan, nx, ny, probe_repeats, f0, flush_period=flush_period)
        n_frames = nx * ny * probe_repeats
        latest: Mapping[str, Any] | None = None
        failures = 0
        began = time.monotonic()
        deadline = began + wait_timeout
        while True:
            try:
                got = read_g2(uid)
            except Exception:  # noqa: BLE001 — see the docstring: "not known yet"
                failures += 1
                got = None
            if got:
                latest = got
            if latest and int(latest.get("frames") or 0) >= n_frames:
                break
            if time.monotonic() >= deadline:
                break
            yield from bps.sleep(poll_interval)
        tau = _opt_float(latest.get("tau_estimate_s")) if latest else None
        rate = _opt_float(latest.get("count_rate")) if latest else None
        seen = int(latest.get("frames") or 0) if latest else 0
        note = f" ({failures} g2 reads failed)" if failures else ""
        if tau is None or rate is None:
            missing = " and ".join(n for n, v in (("τ", tau), ("count rate", rate)) if v is None)
            decision = FrameRateDecision(
                False,
                f"no live {missing} estimate from the g2 worker for the probe run after "
                f"{time.monotonic() - began:.3g} s ({seen} of {n_frames} probe frames behind its estimates)"
                f"{note}: not acquiring (a τ fit fails when the probe undersamples g2 — raise frame_rate — "
                f"or lasts too few τ — raise probe_repeats)",
                uid, f0, tau, rate,
            )  # fmt: skip
        else:
            f, reason, f_min, f_max = choose_frame_rate(
                nx, ny, f0, tau, rate, margin=margin, max_frame_rate=max_frame_rate
            )
            if seen < n_frames:
                note += f" (estimate from {seen} of {n_frames} probe frames)"
            decision = FrameRateDecision(
                f is not None, reason + note, uid, f0, tau, rate, f,
                None if f is None else rate * f0 / f, f_min, f_max,
            )  # fmt: skip
        outcome.append(decision)
        yield from record(decision)

    @bpp.stage_decorator([camera, scan])
    def probe() -> MsgGenerator:
        _md = ecm_metadata(
            camera, scan, nx, ny, probe_repeats, f0, [], plan_args=plan_args,
        )
        _md["adaptive"] = {**adaptive, "role": "probe"}
        _md.update(md or {})
        uid = yield from bps.open_run(md=_md)
        yield from bpp.contingency_wrapper(
            probe_body(uid), except_plan=close_after_error, else_plan=close_with_reason
        )

    def acquisition_body(decision: FrameRateDecision) -> MsgGenerator:
        assert decision.frame_rate is not None
        yield from fly_raster(
            camera, scan, nx, ny, repeats, decision.frame_rate,
            dose=decision.dose if set_dose else None, flush_period=flush_period,
        )  # fmt: skip
        yield from record(decision)

    @bpp.stage_decorator([camera, scan])
    def acquisition(decision: FrameRateDecision) -> MsgGenerator:
        assert decision.frame_rate is not None
        checks = check_ecm_constraints(nx, ny, decision.frame_rate, expected_tau=decision.tau_s, dose=decision.dose)
        _md = ecm_metadata(camera, scan, nx, ny, repeats, decision.frame_rate, checks, plan_args=plan_args)
        _md["adaptive"] = {**adaptive, "role": "acquisition", "probe_uid": decision.probe_uid,
                           "decision": asdict(decision)}
        _md.update(md or {})
        uid = yield from bps.open_run(md=_md)
        outcome[-1] = replace(decision, acquisition_uid=uid)
        yield from bpp.contingency_wrapper(
            acquisition_body(decision), except_plan=close_after_error, else_plan=close_with_reason
        )

    yield from probe()
    if not outcome:  # the probe ended without a decision (it raised)
        raise RuntimeError("ecm_adaptive: the probe run ended without a decision")
    if outcome[-1].feasible:
        yield from acquisition(outcome[-1])
    return outcome[-1]
