"""The 5D-STEM ECM plan: acquisition constraints, refusal messages, message structure."""

from __future__ import annotations

import pytest
from plan_doubles import CameraDouble as _Camera
from plan_doubles import ScanDouble as _Scan
from plan_doubles import messages
from speckleflow.plans import AcquisitionConstraintError, check_ecm_constraints, ecm_5d


def test_constraints_pass_for_a_valid_acquisition():
    time_check, counts_check = check_ecm_constraints(8, 8, 2000.0, expected_tau=1.0, dose=1.5)
    assert time_check.satisfied and counts_check.satisfied
    assert time_check.value == pytest.approx(64 / 2000) and time_check.limit == pytest.approx(0.05)
    assert counts_check.value == 1.5 and counts_check.limit == 1.0


def test_unchecked_constraints_say_so():
    time_check, counts_check = check_ecm_constraints(8, 8, 2000.0)
    assert time_check.satisfied is None and "not checked" in time_check.message
    assert counts_check.satisfied is None and "not checked" in counts_check.message


def test_time_sampling_failure_names_the_constraint_and_the_fix():
    with pytest.raises(AcquisitionConstraintError) as info:
        list(ecm_5d(_Camera(name="cam"), _Scan(name="scan"), 32, 32, 100, 1000.0, expected_tau=0.5))
    err = info.value
    assert isinstance(err, ValueError) and err.failing == ["time_sampling"]
    text = str(err)
    assert "time sampling" in text and "1.024 s" in text and "0.025 s" in text
    # 32·32/f < 0.025 s needs f > 40 960 Hz; at 1 kHz at most 24 positions (4×4).
    assert "f > 4.096e+04 Hz" in text and "at most 24 positions (e.g. 4×4)" in text
    assert "counts" not in text.split("\n", 1)[1]


def test_counts_failure_names_the_constraint_and_the_frame_rate_that_fixes_it():
    with pytest.raises(AcquisitionConstraintError) as info:
        list(ecm_5d(_Camera(name="cam"), _Scan(name="scan"), 8, 8, 50, 10_000.0, expected_tau=1.0, dose=0.1))
    err = info.value
    assert err.failing == ["counts"]
    text = str(err)
    assert "counts I_s/(f·N_d) = 0.1 electrons per pixel" in text
    assert "f ≤ 1000 Hz" in text  # same beam current: I_s/N_d = 0.1·10 kHz
    assert "at most 49 positions (e.g. 7×7)" in text  # 0.05 s · 1000 Hz = 50 → < 50


def test_both_failing_and_incompatible_says_reduce_the_scan():
    checks = check_ecm_constraints(32, 32, 5000.0, expected_tau=1.0, dose=0.2)
    time_check, counts_check = checks
    assert time_check.satisfied is False and counts_check.satisfied is False
    # counts allow f ≤ 1000 Hz; time sampling needs f > 20 480 Hz: no frame rate does both.
    assert "the counts allow at most 1000 Hz" in time_check.message
    assert "fewer than 50 positions" in time_check.message
    with pytest.raises(AcquisitionConstraintError, match="time_sampling and counts constraints fail"):
        list(ecm_5d(_Camera(name="cam"), _Scan(name="scan"), 32, 32, 10, 5000.0, expected_tau=1.0, dose=0.2))


def test_override_acquires_and_records_the_violation():
    cam, scan = _Camera(name="cam"), _Scan(name="scan")
    msgs = messages(ecm_5d(cam, scan, 8, 8, 50, 10_000.0, expected_tau=1.0, dose=0.1, override=True,
                           md={"sample": "test"}))
    open_run = next(m for m in msgs if m.command == "open_run")
    md = open_run.kwargs
    assert md["constraint_override"] is True and md["sample"] == "test"
    assert md["ecm_constraints"]["counts"]["satisfied"] is False
    assert md["ecm_constraints"]["counts"]["value"] == pytest.approx(0.1)
    assert md["ecm_constraints"]["time_sampling"]["satisfied"] is True
    assert md["plan_args"]["override"] is True


def test_plan_messages_configure_fly_collect_and_read_truth_stream():
    cam, scan = _Camera(name="cam"), _Scan(name="scan")
    msgs = messages(ecm_5d(cam, scan, 4, 3, 20, 2000.0, expected_tau=1.0, dose=2.0, frame_flyback=1e-3))
    commands = [m.command for m in msgs]
    assert commands[:3] == ["stage", "stage", "open_run"]
    assert commands[-3:] == ["close_run", "unstage", "unstage"]
    sets = {m.obj.name: m.args[0] for m in msgs if m.command == "set"}
    assert sets == {"scan_nx": 4, "scan_ny": 3, "scan_repeats": 20, "scan_dwell": 1 / 2000.0,
                    "scan_line_flyback": 0.0, "scan_frame_flyback": 1e-3,
                    "cam_frame_rate": 2000.0, "cam_dose": 2.0}
    i_decl = commands.index("declare_stream")
    kick = [m.obj for m in msgs if m.command == "kickoff"]
    assert kick == [cam, scan] and commands.index("kickoff") > i_decl  # camera armed first
    assert {m.obj for m in msgs if m.command == "complete"} == {cam, scan}
    collects = [m for m in msgs if m.command == "collect"]
    assert collects and all(m.obj is cam and m.kwargs["name"] == "primary" for m in collects)
    md = next(m for m in msgs if m.command == "open_run").kwargs
    assert md["plan_name"] == "ecm_5d" and md["num_points"] == 240 and md["shape"] == [20, 3, 4]
    assert md["time_sampling_s"] == pytest.approx(12 / 2000 + 1e-3)
    assert md["constraint_override"] is False


@pytest.mark.parametrize(
    "args, kwargs, match",
    [((4, 4, 1, 1000.0), {}, "repeats"), ((0, 4, 5, 1000.0), {}, "nx"), ((4, 4, 5, 0.0), {}, "frame_rate"),
     ((4, 4, 5, 1000.0), {"expected_tau": -1.0}, "expected_tau"), ((4, 4, 5, 1000.0), {"dose": 0.0}, "dose")],
)
def test_bad_arguments_are_refused(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        list(ecm_5d(_Camera(name="cam"), _Scan(name="scan"), *args, **kwargs))
