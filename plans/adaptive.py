"""Adaptive CCI acquisition: take helicity pairs until every state is sampled enough.

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
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
from bluesky.utils import MsgGenerator, RunEngineControlException

from .cci import cci_metadata, helicity_pair

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
    """A Readable of the decision, so that it travels as an event of the ``decision`` stream."""

    parent = None

    def __init__(self, decision: CoverageDecision, min_pairs_per_state: int) -> None:
        self.name = "decision"
        self._values: dict[str, Any] = {
            "decision_covered": decision.covered,
            "decision_reason": decision.reason,
            "decision_pairs_taken": decision.pairs_taken,
            "decision_n_states": len(decision.state_counts),
            "decision_min_pairs_per_state": int(min_pairs_per_state),
            # A JSON-able list in a string column: the number of states varies between
            # runs, and a table column of varying-length arrays is not portable.
            "decision_state_counts": ",".join(str(c) for c in decision.state_counts),
        }
        self._time = time.time()

    def describe(self) -> dict[str, dict[str, Any]]:
        kinds = {bool: "boolean", int: "integer", str: "string"}
        return {
            k: {"source": "plan:cci_until_covered", "dtype": kinds[type(v)], "shape": []}
            for k, v in self._values.items()
        }

    def read(self) -> dict[str, dict[str, Any]]:
        return {k: {"value": v, "timestamp": self._time} for k, v in self._values.items()}


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
        yield from bps.read(_DecisionReading(decision, min_pairs))
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
