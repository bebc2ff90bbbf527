"""`speckleflow run ecm` refuses an acquisition that breaks the ECM constraints (exit 2)."""

from __future__ import annotations

from speckleflow.services.cli.main import app
from typer.testing import CliRunner


def test_refused_acquisition_exits_2_naming_the_constraint(tmp_path):
    # 32×32 positions at 1 kHz: a position is revisited every 1.02 s ≥ 0.05·τ = 0.05 s.
    result = CliRunner().invoke(
        app,
        ["run", "ecm", "--nx", "32", "--ny", "32", "--frame-rate", "1000", "--tau", "1",
         "--detector", "64", "128", "--data-dir", str(tmp_path / "data")],
    )
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert "ECM acquisition refused" in text and "time_sampling" in text
    assert "counts constraint" not in text  # 1 e/px passes; only the failing one is named


def test_low_dose_is_refused_with_the_counts_constraint(tmp_path):
    result = CliRunner().invoke(
        app,
        ["run", "ecm", "--nx", "4", "--ny", "4", "--frame-rate", "2000", "--dose", "0.1",
         "--detector", "64", "128", "--data-dir", str(tmp_path / "data")],
    )
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert "counts" in text and "ECM acquisition refused" in text


def test_defaults_meet_the_accuracy_conditions():
    """The defaults of `run ecm` (CLI and ECMRunOptions agree) observe ≥ 10 τ with a time
    sampling ≤ 0.05 τ at ≥ 1 e/pixel, and pass the plan's constraint check."""
    import inspect

    from speckleflow.plans.ecm import check_ecm_constraints
    from speckleflow.services.cli.main import run_ecm_command
    from speckleflow.services.run_ecm import ECMRunOptions

    opts = ECMRunOptions()
    cli = {k: p.default for k, p in inspect.signature(run_ecm_command).parameters.items()}
    for name in ("nx", "ny", "repeats", "frame_rate", "dose", "tau"):
        assert cli[name] == getattr(opts, name), name
    sampling = opts.nx * opts.ny / opts.frame_rate
    assert sampling <= 0.05 * opts.tau
    assert opts.repeats * sampling >= 10 * opts.tau
    assert opts.dose >= 1
    checks = check_ecm_constraints(opts.nx, opts.ny, opts.frame_rate, expected_tau=opts.tau, dose=opts.dose)
    assert all(c.satisfied for c in checks)
