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


G2_BENCH = BENCH.parent / "bench_g2.py"


@pytest.mark.timeout(300)
def test_g2_benchmark_quick_prints_a_table() -> None:
    # generous timeout: the first run compiles the numba kernel (cached afterwards)
    completed = subprocess.run(
        [sys.executable, str(G2_BENCH), "--quick", "--plain", "--skbeam-frames", "16"],
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    lines = completed.stdout.splitlines()
    header = next(line for line in lines if line.startswith("correlator"))
    for column in ("frames/s", "× boost f32", "× ours", "max |Δg2|"):
        assert column in header
    ours = next(line for line in lines if line.startswith("ours n_buffers=16"))
    assert "exact" in ours
    numpy_row = next(line for line in lines if line.startswith("numpy batched"))
    assert float(numpy_row.split()[-1]) < 1e-9  # the baseline agrees with ours
    assert any(line.startswith("goals:") for line in lines)
    # correlators that are not installed are named, not silently dropped
    for name in ("scikit-beam", "boost_corr"):
        assert any(name in line for line in lines), name
