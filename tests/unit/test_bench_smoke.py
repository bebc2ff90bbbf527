"""Every benchmark runs (``--quick``, seconds to a minute) and prints its table."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench_streaming.py"


def run_bench(script: Path, *args: str, timeout: float) -> subprocess.CompletedProcess:
    """Run a benchmark script as a user would (a subprocess: some spawn processes that
    re-import the main module, which must be the script, not pytest); fail with its stderr."""
    completed = subprocess.run(
        [sys.executable, str(script), *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    assert completed.returncode == 0, completed.stderr
    return completed


def table_header(lines: list[str], first_word: str, columns: tuple[str, ...]) -> str:
    """The table's header line (it starts with ``first_word``); it must name every column."""
    header = next(line for line in lines if line.startswith(first_word))
    for column in columns:
        assert column in header, (column, header)
    return header


@pytest.mark.timeout(90)
def test_streaming_benchmark_quick_prints_a_table() -> None:
    completed = run_bench(BENCH, "--quick", "--plain", timeout=80)
    lines = completed.stdout.splitlines()
    table_header(lines, "pattern", ("raw fps", "ours fps", "ours/raw", "delivered"))
    rows = [line for line in lines if line.startswith(("PUSH/PULL", "PUB/SUB"))]
    assert len(rows) == 6  # 3 patterns × 2 payloads over ipc
    assert "256×128 ×64" in completed.stdout


CCI_BENCH = BENCH.parent / "bench_cci.py"


@pytest.mark.timeout(60)
def test_cci_benchmark_quick_prints_a_table() -> None:
    completed = run_bench(CCI_BENCH, "--quick", "--plain", timeout=50)
    lines = completed.stdout.splitlines()
    table_header(lines, "step", ("time s", "peak RSS GB"))
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


CELERITAS_BENCH = BENCH.parent / "bench_celeritas.py"


@pytest.mark.timeout(120)
def test_celeritas_benchmark_quick_prints_a_table() -> None:
    completed = run_bench(CELERITAS_BENCH, "--quick", "--plain", timeout=110)
    lines = completed.stdout.splitlines()
    table_header(lines, "stage", ("frames/s", "ms/frame", "× camera"))
    stages = {line.split()[0] for line in lines[3:]}
    assert {"speckle", "poisson", "response", "write", "copy", "camera"} <= stages


PHOTONS_BENCH = BENCH.parent / "bench_cci_photons.py"


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_cci_photons_benchmark_quick_prints_a_table(tmp_path) -> None:
    plot = tmp_path / "photons.png"
    completed = run_bench(PHOTONS_BENCH, "--quick", "--plain", "--plot", str(plot), timeout=170)
    lines = completed.stdout.splitlines()
    table_header(
        lines, "photons/frame", ("oracle sibling %", "matched %", "ARI", "online after 20× %", "matched/oracle")
    )
    rows = [line.split() for line in lines if line.startswith(("1e+04", "2e+05"))]
    assert len(rows) == 2
    # More photons, better: the oracle's sibling accuracy rises with flux.
    assert float(rows[1][2]) > float(rows[0][2])
    assert plot.stat().st_size > 0


PHASE_BENCH = BENCH.parent / "bench_phase.py"


@pytest.mark.timeout(90)
def test_phase_benchmark_quick_prints_a_table() -> None:
    completed = run_bench(PHASE_BENCH, "--quick", "--plain", "--iterations", "5", timeout=80)
    lines = completed.stdout.splitlines()
    table_header(lines, "grid", ("backend", "2 FFTs ms", "it/s", "iteration / 2 FFTs"))
    rows = [line for line in lines if line.startswith(("256²", "512²"))]
    assert {r.split()[1] for r in rows} >= {"scipy", "numpy"}
    assert len(rows) % 2 == 0 and len(rows) >= 4
    assert any(line.startswith("goals:") for line in lines)
    assert "projected 32 states × 1000 iterations" in completed.stdout


ECM_BENCH = BENCH.parent / "bench_ecm.py"


@pytest.mark.timeout(90)
def test_ecm_benchmark_quick_prints_a_table() -> None:
    completed = run_bench(ECM_BENCH, "--quick", "--plain", timeout=80)
    lines = completed.stdout.splitlines()
    table_header(lines, "stage", ("frames/s", "ms/frame", "× copy"))
    for stage in ("copy (baseline)", "virtual (ours)", "virtual (masks)", "polar (ours)",
                  "polar (bincount)", "warp_polar (reference)"):
        assert any(line.startswith(stage) for line in lines), stage


G2_BENCH = BENCH.parent / "bench_g2.py"


@pytest.mark.timeout(300)
def test_g2_benchmark_quick_prints_a_table() -> None:
    # generous timeout: the first run compiles the numba kernel (cached afterwards)
    completed = run_bench(G2_BENCH, "--quick", "--plain", "--skbeam-frames", "16", timeout=280)
    lines = completed.stdout.splitlines()
    table_header(lines, "correlator", ("frames/s", "× boost f32", "× ours", "max |Δg2|"))
    ours = next(line for line in lines if line.startswith("ours n_buffers=16"))
    assert "exact" in ours
    numpy_row = next(line for line in lines if line.startswith("numpy batched"))
    assert float(numpy_row.split()[-1]) < 1e-9  # the baseline agrees with ours
    assert any(line.startswith("goals:") for line in lines)
    # correlators that are not installed are named, not silently dropped
    for name in ("scikit-beam", "boost_corr"):
        assert any(name in line for line in lines), name


PROCESS_ECM_BENCH = BENCH.parent / "bench_process_ecm.py"


@pytest.mark.timeout(240)
def test_process_ecm_benchmark_quick_prints_a_table() -> None:
    # Starts its own Tiled server and records a 4×4 × 8 run: ~40 s on an idle 2-core
    # machine (the server's start-up is most of it); generous timeout for a loaded one.
    completed = run_bench(PROCESS_ECM_BENCH, "--quick", "--plain", timeout=230)
    lines = completed.stdout.splitlines()
    header = table_header(lines, "reader", ("read s", "requests", "read ratio", "run_ecm s", "run_ecm ratio"))
    for reader in ("numpy (in memory)", "tiled per-repeat (old)", "tiled merged", "hdf5 direct"):
        assert any(line.startswith(reader) for line in lines), reader
    col = header.index("requests")

    def requests(reader: str) -> int:
        line = next(line for line in lines if line.startswith(reader))
        return int(line[col:].split()[0])

    assert requests("tiled merged") < requests("tiled per-repeat (old)")


PTYCHO_BENCH = BENCH.parent / "bench_ptycho.py"


@pytest.mark.timeout(120)
def test_ptycho_benchmark_quick_prints_a_table() -> None:
    pytest.importorskip("torch")
    completed = run_bench(PTYCHO_BENCH, "--quick", "--plain", timeout=110)
    lines = completed.stdout.splitlines()
    header = table_header(lines, "states", ("model window", "tilts/pixel", "s/iteration", "vs 1×1",
                                            "2-thread speedup", "peak RSS GB"))
    rows = [line.split() for line in lines[lines.index(header) + 2 :] if line.strip()]
    assert [(r[0], r[1], r[2]) for r in rows] == [
        ("1", "1", "1"), ("2", "1", "1"), ("2", "2", "1"), ("1", "1", "2"), ("2", "1", "2"), ("2", "2", "2"),
        ("2", "1", "1"), ("2", "1", "1"),
    ]
    # 32 + 2·20 mrad / 1 mrad: the default window; the 7th row fits on the detector grid,
    # the last samples pixel centres instead of 2 × 2 tilts per pixel
    assert [r[3] for r in rows] == ["72"] * 6 + ["32", "72"]
    assert [r[4] for r in rows] == ["4"] * 7 + ["1"]
    assert all(float(r[5]) > 0 for r in rows)


CRYSTAL_BENCH = BENCH.parent / "bench_crystal.py"


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_crystal_benchmark_quick_prints_a_table() -> None:
    pytest.importorskip("abtem")
    # ~45 s on 2 shared cores, most of it abTEM's import and numba compilation
    completed = run_bench(CRYSTAL_BENCH, "--quick", "--plain", timeout=280)
    lines = completed.stdout.splitlines()
    assert "cache hit ratio 2/4" in lines[0]
    table_header(lines, "scan", ("s/config", "ms/position", "× smallest", "cache load ms"))
    assert [line.split()[0] for line in lines[3:]] == ["4×4", "8×8"]


ECM_FIT_BENCH = BENCH.parent / "bench_ecm_fit.py"


@pytest.mark.timeout(120)
def test_ecm_fit_benchmark_quick_prints_a_table() -> None:
    # ~15 s on 2 shared cores (768 curves × 3 configurations + 40 scipy curves)
    completed = run_bench(ECM_FIT_BENCH, "--quick", "--plain", "--repeat", "1", timeout=110)
    lines = completed.stdout.splitlines()
    table_header(lines, "fit", ("curves/s (2 passes)", "× baseline"))
    assert any(line.startswith("scipy least_squares per curve") for line in lines)
    assert sum(line.startswith("batched LM") for line in lines) == 3
    warm = next(line for line in lines if line.startswith("warm vs cold"))
    assert "flags identical: True" in warm
    assert float(warm.split("=")[1].split(",")[0]) < 1e-3  # τ unchanged to well within σ_τ


PTYCHO_INFORMATION_BENCH = BENCH.parent / "bench_ptycho_information.py"


@pytest.mark.timeout(120)
def test_ptycho_information_benchmark_quick_prints_a_table() -> None:
    pytest.importorskip("torch")
    # ~15 s: the fit's forward model on a 6×6 scan, 1- and 3-layer hBN
    completed = run_bench(PTYCHO_INFORMATION_BENCH, "--quick", "--plain", timeout=110)
    lines = completed.stdout.splitlines()
    header = table_header(lines, "sample", ("χ² corr vs shuffled", "χ² vib vs static", "ratio"))
    rows = [line.split() for line in lines[lines.index(header) + 2 :] if line.strip()]
    assert [(r[0], r[1]) for r in rows] == [
        (f"hBN-{n}L", dose) for n in (1, 3) for dose in ("1e+05", "1e+06", "1e+07")
    ]
    for low, high in ((rows[0], rows[2]), (rows[3], rows[5])):  # 1e5 and 1e7 e/Å², per sample
        u_rms, pair, static = (float(v) for v in low[4:7])
        # χ² grows with the dose (Poisson: ∝ electrons): 100 × from 1e5 to 1e7 e/Å²
        assert float(high[5]) == pytest.approx(100 * pair, rel=0.02)
        # the vibration itself is worth more than the correlations between columns
        assert 0 < pair < static and u_rms > 0


CAVIAR_ACCURACY_BENCH = BENCH.parent / "bench_caviar_accuracy.py"


@pytest.mark.timeout(180)
def test_caviar_accuracy_benchmark_quick_prints_a_table(tmp_path, monkeypatch) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("abtem")
    # ~30 s: abTEM on an 8×8 scan (2 configurations, cached in tmp_path), 6-pass fits
    monkeypatch.setenv("SPECKLEFLOW_CACHE", str(tmp_path))
    completed = run_bench(CAVIAR_ACCURACY_BENCH, "--quick", "--plain", timeout=170)
    lines = completed.stdout.splitlines()
    header = table_header(lines, "case", ("estimator", "u rms Å", "CSM", "target", "ratio"))
    rows = [line.split() for line in lines[lines.index(header) + 2 :] if line.strip()]
    assert [r[0] for r in rows] == ["coherent"] * 2 + ["einstein"] * 2 + ["correlated"] * 2
    assert [r[1] for r in rows[:2]] == ["mixed-state", "centre"]
    u_mixed, u_com = float(rows[0][3]), float(rows[1][5])  # "centre of mass" is three words
    # the mixed-state fit reads column displacements only: a coherent crystal's states,
    # still carrying their random start perturbation, scatter less than by centre of mass
    assert 0 <= u_mixed < u_com
