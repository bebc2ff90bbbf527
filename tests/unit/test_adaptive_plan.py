"""The adaptive CCI plan: stopping logic with a RunEngine and a fake counts reader.

The counts reader is a test double of the online CCI worker (the system test
``tests/system/test_adaptive_cci.py`` uses the real worker and Tiled); it lets these
tests set exactly which counts the plan sees after how many pairs.
"""

from __future__ import annotations

import pytest
from bluesky import RunEngine
from ophyd import Component as Cpt
from ophyd import Device, Signal
from speckleflow.plans import CoverageDecision, cci_series, cci_until_covered, is_covered


class _Detector(Device):
    exposure_time = Cpt(Signal, value=1.0, kind="config")
    helicity = Cpt(Signal, value=1)


class _Counts:
    """Fake online worker: counts as a function of the pairs the detector has taken."""

    def __init__(self, det: _Detector, rule) -> None:
        self.det = det
        self.rule = rule
        self.calls: list[tuple[str, int]] = []
        self.frames = 0
        det.helicity.subscribe(self._count, run=False)

    def _count(self, value, **kwargs) -> None:
        if value == -1:
            self.frames += 1  # one pair = one −1 frame

    def __call__(self, run_uid: str):
        self.calls.append((run_uid, self.frames))
        return self.rule(self.frames)


def _run(det, plan):
    docs: list[tuple[str, dict]] = []
    RE = RunEngine({}, call_returns_result=True)
    RE.subscribe(lambda name, doc: docs.append((name, doc)))
    result = RE(plan)
    return result, docs


def _decision_event(docs):
    descriptor = next(d for n, d in docs if n == "descriptor" and d["name"] == "decision")
    events = [d for n, d in docs if n == "event" and d["descriptor"] == descriptor["uid"]]
    assert len(events) == 1
    return events[0]["data"]


def test_stops_when_every_state_has_enough_pairs():
    det = _Detector(name="det")
    # Two states after 10 pairs, growing by 3 and 1 per pair: covered (≥ 20 each) at 30 pairs.
    counts = _Counts(det, lambda pairs: [3 * pairs - 20, pairs - 10] if pairs >= 10 else None)
    result, docs = _run(det, cci_until_covered(det, 20, 200, 0.5, read_counts=counts, check_every=5))
    decision: CoverageDecision = result.plan_result
    assert decision.covered
    assert decision.pairs_taken == 30
    assert decision.state_counts == [70, 20]
    # Checked after every 5 pairs, with the run's own uid.
    start = next(d for n, d in docs if n == "start")
    assert [c for c in counts.calls] == [(start["uid"], p) for p in range(5, 35, 5)]
    assert start["plan_name"] == "cci_until_covered"
    assert start["plan_args"]["min_pairs_per_state"] == 20
    # The decision is in the run's documents: a `decision` event and the stop reason.
    stop = next(d for n, d in docs if n == "stop")
    assert stop["exit_status"] == "success"
    assert stop["reason"].startswith("coverage reached: all 2 states have >= 20 pairs")
    data = _decision_event(docs)
    assert data["decision_covered"] is True
    assert data["decision_pairs_taken"] == 30
    assert data["decision_n_states"] == 2
    assert data["decision_state_counts"] == "70,20"
    assert data["decision_reason"] == stop["reason"]
    primary = next(d for n, d in docs if n == "descriptor" and d["name"] == "primary")
    frames = [d for n, d in docs if n == "event" and d["descriptor"] == primary["uid"]]
    assert [f["data"]["det_helicity"] for f in frames] == [1, -1] * 30


def test_stops_at_max_pairs_when_a_state_stays_rare():
    det = _Detector(name="det")
    counts = _Counts(det, lambda pairs: [pairs - 1, 1])
    result, docs = _run(det, cci_until_covered(det, 5, 23, 0.5, read_counts=counts, check_every=10))
    decision = result.plan_result
    assert not decision.covered
    assert decision.pairs_taken == 23  # 10 + 10 + 3: never more than max_pairs
    assert [p for _, p in counts.calls] == [10, 20, 23]
    stop = next(d for n, d in docs if n == "stop")
    assert stop["exit_status"] == "success"
    assert stop["reason"].startswith("max_pairs reached: 23 pairs taken, 2 states known (>= 1 wanted)")
    assert _decision_event(docs)["decision_covered"] is False


def test_no_state_yet_is_not_coverage_and_read_failures_do_not_stop_the_run():
    det = _Detector(name="det")

    def flaky(pairs):
        if pairs == 4:
            raise ConnectionError("tiled unreachable")
        return []  # the worker has found no state yet

    counts = _Counts(det, flaky)
    result, docs = _run(det, cci_until_covered(det, 1, 8, 0.5, read_counts=counts, check_every=2))
    assert result.plan_result.pairs_taken == 8
    assert not result.plan_result.covered
    reason = next(d for n, d in docs if n == "stop")["reason"]
    assert "0 states known" in reason and "1 count reads failed" in reason


def test_same_step_as_cci_series():
    """cci_until_covered takes pairs exactly as cci_series does (shared helicity_pair step)."""
    plain = [(m.command, m.args) for m in cci_series(_Detector(name="a"), 4, 0.5)]
    adaptive = [
        (m.command, m.args)
        for m in cci_until_covered(_Detector(name="a"), 1, 4, 0.5, read_counts=lambda uid: None, check_every=4)
    ]
    first = plain.index(("checkpoint", ()))
    assert first == adaptive.index(("checkpoint", ()))
    n = plain.index(("close_run", ())) - first
    assert adaptive[first : first + n] == plain[first : first + n]
    assert adaptive[first + n][0] == "create"  # then the decision event


def test_failure_in_a_frame_closes_the_run_as_failed():
    det = _Detector(name="det")

    def broken_frame(ccd, helicity):
        raise RuntimeError("detector on fire")
        yield  # pragma: no cover

    docs: list[tuple[str, dict]] = []
    RE = RunEngine({})
    RE.subscribe(lambda name, doc: docs.append((name, doc)))
    with pytest.raises(RuntimeError, match="detector on fire"):
        RE(cci_until_covered(det, 1, 4, 0.5, read_counts=lambda uid: [5], per_frame=broken_frame))
    stop = next(d for n, d in docs if n == "stop")
    assert stop["exit_status"] == "fail" and "detector on fire" in stop["reason"]


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"min_pairs_per_state": 0}, ValueError, "min_pairs_per_state"),
        ({"max_pairs": 2.5}, ValueError, "max_pairs"),
        ({"check_every": 0}, ValueError, "check_every"),
        ({"min_states": 0}, ValueError, "min_states"),
        ({"exposure": 0.0}, ValueError, "exposure"),
        ({"read_counts": "tiled"}, TypeError, "read_counts"),
    ],
)
def test_rejects_bad_arguments(kwargs, error, match):
    args = {"min_pairs_per_state": 5, "max_pairs": 10, "exposure": 0.5, "read_counts": lambda uid: None}
    args.update(kwargs)
    with pytest.raises(error, match=match):
        list(cci_until_covered(_Detector(name="det"), **args))


@pytest.mark.parametrize(
    "counts, min_states, covered",
    [(None, 1, False), ([], 1, False), ([5, 4], 1, False), ([5, 5], 1, True), ([9], 1, True),
     ([9], 2, False), ([9, 5], 2, True)],
)
def test_is_covered(counts, min_states, covered):
    assert is_covered(counts, 5, min_states) is covered


def test_min_states_waits_for_a_second_state():
    det = _Detector(name="det")
    # One well-sampled state until pair 20, then a second one appears.
    counts = _Counts(det, lambda pairs: [pairs] if pairs < 20 else [pairs, pairs - 19])
    result, _ = _run(det, cci_until_covered(det, 5, 100, 0.5, read_counts=counts, check_every=4, min_states=2))
    assert result.plan_result.covered
    assert result.plan_result.pairs_taken == 24  # [24, 5] at the first check after pair 23
