"""The package layout stays as ARCHITECTURE.md draws it."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MAPPED = {"devices", "plans", "streaming", "services"}


def test_every_package_folder_is_installed():
    """pyproject lists packages explicitly (folder mapping); no folder may be forgotten."""
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = set()
    for top in MAPPED:
        for init in (ROOT / top).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT).parts
            found.add(".".join(("speckleflow", *rel)))
    assert found == listed, f"missing from pyproject: {found - listed}; listed but absent: {listed - found}"


def test_import_contracts_hold():
    """services → plans/devices → streaming, never the reverse; algorithms stay pure."""
    exe = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))
    proc = subprocess.run([exe, "--config", str(ROOT / "pyproject.toml")], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_cli_entry_point_imports_fast():
    """`speckleflow --help` must not import the heavy stack (tiled server, bluesky, scipy)."""
    code = (
        "import sys, speckleflow.services.cli.main as m; "
        "heavy = [x for x in ('bluesky', 'tiled.server', 'scipy', 'h5py', 'zmq') if x in sys.modules]; "
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"heavy modules imported by the CLI entry point: {out.stdout}"


def test_help_explains_units():
    out = subprocess.run([sys.executable, "-m", "speckleflow.services.cli.main", "run", "cci", "--help"],
                         capture_output=True, text=True, timeout=60, env={"COLUMNS": "200", "PATH": ""})
    assert out.returncode == 0, out.stderr
    for words in ("--pairs", "--exposure", "seconds", "--states-file", "--tiled-uri", "--data-dir", "--seed", "K"):
        assert words in out.stdout, words
