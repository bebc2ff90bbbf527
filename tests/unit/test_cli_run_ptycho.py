"""`speckleflow run ptycho` refuses bad options (exit 2) before simulating or starting anything."""

from __future__ import annotations

import pytest
from speckleflow.services.cli.main import app
from typer.testing import CliRunner

pytest.importorskip("ase")


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--crystal", "graphene"], ["crystal", "graphene"]),
        (["--dose", "0"], ["--dose"]),
        (["--max-angle", "10"], ["max_angle_mrad", "semiangle_mrad"]),
    ],
)
def test_bad_options_exit_2_naming_them(tmp_path, args, words):
    result = CliRunner().invoke(app, ["run", "ptycho", *args, "--data-dir", str(tmp_path / "d"),
                                      "--cache-dir", str(tmp_path / "c")])  # fmt: skip
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    for word in words:
        assert word in text
    assert not (tmp_path / "c").exists()  # nothing simulated
