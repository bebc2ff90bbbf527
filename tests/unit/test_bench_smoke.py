"""The streaming benchmark runs (``--quick``, a few seconds) and prints its table."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench_streaming.py"


@pytest.mark.timeout(90)
def test_streaming_benchmark_quick_prints_a_table() -> None:
    # A subprocess: the benchmark spawns its receiver process, which re-imports the
    # main module — that must be the benchmark script, not pytest.
    completed = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--plain"],
        capture_output=True,
        text=True,
        timeout=80,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    lines = completed.stdout.splitlines()
    header = next(line for line in lines if line.startswith("pattern"))
    for column in ("raw fps", "ours fps", "ours/raw", "delivered"):
        assert column in header
    rows = [line for line in lines if line.startswith(("PUSH/PULL", "PUB/SUB"))]
    assert len(rows) == 6  # 3 patterns × 2 payloads over ipc
    assert "256×128 ×64" in completed.stdout


CCI_BENCH = BENCH.parent / "bench_cci.py"


@pytest.mark.timeout(60)
def test_cci_benchmark_quick_prints_a_table() -> None:
    completed = subprocess.run(
        [sys.executable, str(CCI_BENCH), "--quick", "--plain"],
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    lines = completed.stdout.splitlines()
    header = next(line for line in lines if line.startswith("step"))
    for column in ("time s", "peak RSS GB"):
        assert column in header
    for step in (
        "baseline X @ X.T",
        "correlation",
        "linkage",
        "modes",
        "misassignment",
        "assignment",
        "total",
    ):
        assert any(line.startswith(step) for line in lines), step
    assert "× baseline" in completed.stdout
    assert any(line.startswith("goals:") for line in lines)


PHASE_BENCH = BENCH.parent / "bench_phase.py"


@pytest.mark.timeout(90)
def test_phase_benchmark_quick_prints_a_table() -> None:
    completed = subprocess.run(
        [sys.executable, str(PHASE_BENCH), "--quick", "--plain", "--iterations", "5"],
        capture_output=True,
        text=True,
        timeout=80,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    lines = completed.stdout.splitlines()
    header = next(line for line in lines if line.startswith("grid"))
    for column in ("backend", "2 FFTs ms", "it/s", "iteration / 2 FFTs"):
        assert column in header
    rows = [line for line in lines if line.startswith(("256²", "512²"))]
    assert {r.split()[1] for r in rows} >= {"scipy", "numpy"}
    assert len(rows) % 2 == 0 and len(rows) >= 4
    assert any(line.startswith("goals:") for line in lines)
    assert "projected 32 states × 1000 iterations" in completed.stdout
