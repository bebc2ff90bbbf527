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
