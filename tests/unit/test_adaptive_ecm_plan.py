"""The adaptive 5D-STEM plan: the frame-rate choice (pure) and the runs' message structure.

``read_g2`` here is a test double of the online g2 worker's summary in Tiled (the system
test ``tests/system/test_adaptive_ecm.py`` uses the real worker, bus and Tiled); it lets
these tests set exactly which τ and count rate the plan sees.
"""

from __future__ import annotations

import math

import pytest
from plan_doubles import CameraDouble as _Camera
from plan_doubles import ScanDouble as _Scan
from speckleflow.plans import check_ecm_constraints, choose_frame_rate, ecm_adaptive


def drive(plan):
    """Drive a plan as the RunEngine would: ``wait`` done, ``open_run`` answers run-1, run-2..."""
    msgs, reply, runs = [], None, 0
    try:
        while True:
            msg = plan.send(reply)
            msgs.append(msg)
            reply = None
            if msg.command == "wait":
                reply = True
            elif msg.command == "open_run":
                runs += 1
                reply = f"run-{runs}"
    except StopIteration as stop:
        return msgs, stop.value


# -- choose_frame_rate -----------------------------------------------------------------

def test_an_undersampling_frame_rate_is_raised_to_the_time_sampling_bound_with_margin():
    # 8×8 at 1 kHz: 0.064 s per repeat > 0.05·0.5 s. f_min = 64/0.025 = 2560 Hz.
    f, reason, f_min, f_max = choose_frame_rate(8, 8, 1000.0, 0.5, 8.0, margin=2.0)
    assert f_min == pytest.approx(2560.0) and f_max == pytest.approx(8000.0)
    assert f == 5120.0 and "raised to the time-sampling bound" in reason
    time_check, counts = check_ecm_constraints(8, 8, f, expected_tau=0.5, dose=8.0 * 1000.0 / f)
    assert time_check.satisfied and counts.satisfied


def test_a_frame_rate_in_the_band_is_kept_and_one_starving_the_counts_is_lowered():
    f, reason, _, _ = choose_frame_rate(4, 4, 2000.0, 1.0, 5.0)  # band [640, 10 000] Hz
    assert f == 2000.0 and "kept" in reason
    f, reason, _, f_max = choose_frame_rate(4, 4, 20_000.0, 1.0, 0.25)  # 0.25 e/px at 20 kHz: ≤ 5 kHz
    assert f == 5000.0 == f_max and "lowered to the counts bound" in reason


def test_less_margin_when_the_band_is_empty_and_none_when_nothing_fits():
    # f_min = 2560, 2·f_min = 5120 > f_max = 3000: 3000 Hz still satisfies, with less margin.
    f, reason, _, _ = choose_frame_rate(8, 8, 1000.0, 0.5, 3.0)
    assert f == 3000.0 and "less than the wanted 2×" in reason
    f, reason, _, _ = choose_frame_rate(8, 8, 1000.0, 0.5, 2.0)  # f_max 2000 < f_min 2560
    assert f is None
    # 0.05·τ·f_max = 50 positions: at most 49 (7×7).
    assert "no frame rate satisfies both at 8×8 positions" in reason and "at most 49 positions (e.g. 7×7)" in reason


def test_the_camera_maximum_caps_the_frame_rate():
    f, reason, _, f_max = choose_frame_rate(32, 32, 1000.0, 0.1, 1000.0, max_frame_rate=100_000.0)
    assert f_max == 100_000.0  # counts would allow 1 MHz
    assert f is None and "camera's maximum frame rate" in reason  # f_min = 204 800 Hz


@pytest.mark.parametrize(
    "args, match",
    [((8, 8, 0.0, 0.5, 1.0), "probe_frame_rate"), ((8, 8, 1e3, math.nan, 1.0), "tau_s"),
     ((8, 8, 1e3, 0.5, -1.0), "count_rate"), ((0, 8, 1e3, 0.5, 1.0), "nx")],
)
def test_bad_estimates_are_refused(args, match):
    with pytest.raises(ValueError, match=match):
        choose_frame_rate(*args)


# -- the plan ---------------------------------------------------------------------------

class _G2:
    """Stands in for the g2 worker's summary in Tiled: frames processed grow by ``step`` per read."""

    def __init__(self, total, tau, count_rate, step=None, fail_first=0):
        self.total, self.tau, self.count_rate = total, tau, count_rate
        self.step = step or total
        self.reads: list[str] = []
        self.fail_first = fail_first

    def __call__(self, uid):
        self.reads.append(uid)
        if len(self.reads) <= self.fail_first:
            raise ConnectionError("tiled unreachable")
        frames = min(self.total, self.step * (len(self.reads) - self.fail_first))
        return {"frames": frames, "tau_estimate_s": self.tau, "count_rate": self.count_rate}


def _runs(msgs):
    """[(open_run kwargs, [messages of the run], close_run kwargs)]."""
    out, current = [], None
    for m in msgs:
        if m.command == "open_run":
            current = (m.kwargs, [])
        elif m.command == "close_run":
            out.append((current[0], current[1], m.kwargs))
            current = None
        elif current is not None:
            current[1].append(m)
    return out


def test_probe_then_acquisition_at_the_chosen_rate_with_the_decision_in_both_runs():
    cam, scan = _Camera(name="cam"), _Scan(name="scan")
    g2 = _G2(8 * 8 * 10, tau=0.5, count_rate=8.0, step=200, fail_first=1)
    msgs, decision = drive(ecm_adaptive(cam, scan, 8, 8, 30, 1000.0, read_g2=g2, probe_repeats=10))
    assert decision.feasible and decision.frame_rate == 5120.0
    assert decision.dose == pytest.approx(8.0 * 1000 / 5120)
    assert decision.probe_uid == "run-1" and decision.acquisition_uid == "run-2"
    assert set(g2.reads) == {"run-1"} and len(g2.reads) == 1 + 4  # one failure, then 200, 400, 600, 640
    assert "1 g2 reads failed" in decision.reason
    (probe_md, probe, probe_stop), (acq_md, acq, acq_stop) = _runs(msgs)
    assert [m.command for m in probe].count("sleep") == 4  # polled while the worker caught up
    assert probe_md["adaptive"]["role"] == "probe" and probe_md["shape"] == [10, 8, 8]
    assert acq_md["adaptive"]["role"] == "acquisition" and acq_md["adaptive"]["probe_uid"] == "run-1"
    assert acq_md["adaptive"]["decision"]["frame_rate"] == 5120.0
    assert acq_md["frame_rate"] == 5120.0 and acq_md["shape"] == [30, 8, 8] and acq_md["plan_name"] == "ecm_5d"
    assert all(c["satisfied"] for c in acq_md["ecm_constraints"].values())
    assert probe_stop["reason"] == acq_stop["reason"] == decision.reason
    sets = {m.obj.name: m.args[0] for m in acq if m.command == "set"}
    assert sets["cam_frame_rate"] == 5120.0 and sets["cam_dose"] == pytest.approx(decision.dose)
    assert "cam_dose" not in {m.obj.name for m in probe if m.command == "set"}  # probe at the beam as it is
    for run in (probe, acq):
        creates = [m.kwargs.get("name") or m.args[0] for m in run if m.command == "create"]
        assert creates[-1] == "decision"
        reading = next(m.obj for m in run if m.command == "read" and m.obj.name == "decision").read()
        assert reading["decision_frame_rate"]["value"] == 5120.0
        assert reading["decision_reason"]["value"] == decision.reason
    commands = [m.command for m in msgs]
    assert commands.count("stage") == commands.count("unstage") == 4  # each run stages its own file


def test_no_frame_rate_fits_stops_after_the_probe_with_the_reason():
    cam, scan = _Camera(name="cam"), _Scan(name="scan")
    msgs, decision = drive(ecm_adaptive(cam, scan, 8, 8, 30, 1000.0, read_g2=_G2(640, 0.5, 2.0), probe_repeats=10))
    assert not decision.feasible and decision.frame_rate is None and decision.acquisition_uid is None
    ((_, probe, stop),) = _runs(msgs)
    assert stop["reason"] == decision.reason and "no frame rate satisfies both" in decision.reason
    reading = next(m.obj for m in probe if m.command == "read" and m.obj.name == "decision").read()
    assert reading["decision_feasible"]["value"] is False and math.isnan(reading["decision_frame_rate"]["value"])


def test_without_a_live_estimate_it_does_not_acquire():
    cam, scan = _Camera(name="cam"), _Scan(name="scan")
    g2 = _G2(640, None, 2.0)
    msgs, decision = drive(ecm_adaptive(cam, scan, 8, 8, 30, 1000.0, read_g2=g2, probe_repeats=10))
    assert not decision.feasible
    assert decision.reason.startswith("no live τ estimate from the g2 worker") and "640 of 640" in decision.reason
    assert "raise frame_rate" in decision.reason
    assert len(_runs(msgs)) == 1


@pytest.mark.parametrize(
    "kwargs, error",
    [({"repeats": 1}, ValueError), ({"probe_repeats": 2}, ValueError), ({"margin": 0.5}, ValueError),
     ({"frame_rate": 0.0}, ValueError), ({"read_g2": None}, TypeError)],
)
def test_bad_arguments_are_refused_before_any_message(kwargs, error):
    args = {"nx": 8, "ny": 8, "repeats": 30, "frame_rate": 1000.0, "read_g2": lambda uid: None} | kwargs
    with pytest.raises(error):
        next(ecm_adaptive(_Camera(name="cam"), _Scan(name="scan"), **args))
