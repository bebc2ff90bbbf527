"""speckleflow process ptycho end to end: a run in the contract's format (services/ptycho/CAVIAR_CONTRACT.md),
written by a real RunEngine + TiledWriter into the Tiled fixture, reconstructed and
published under analysis/<uid>/ptycho; the command line on the same run.

The acquisition plan (plans/ptycho.py, the Celeritas camera on a crystal) is built in
parallel; this test writes the contract's keys with a small plan of its own: frames as
``celeritas_image`` array data, scan positions as ``scan_y_A`` / ``scan_x_A``.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from scipy import ndimage

pytestmark = [pytest.mark.system, pytest.mark.timeout(180)]
torch = pytest.importorskip("torch")

E, ALPHA, DALPHA, DEFOCUS, Q, N, STEP = 200e3, 20.0, 2.0, 40.0, 32, 6, 1.0


def _write_run(tiled_client) -> tuple[str, np.ndarray]:
    import bluesky.plan_stubs as bps
    import bluesky.preprocessors as bpp
    from bluesky import RunEngine
    from bluesky_tiled_plugins import TiledWriter
    from ophyd import Signal
    from speckleflow.services.ptycho import aperture_probe, object_grid, real_space_pixel_A
    from speckleflow.services.ptycho.model import simulate

    rng = np.random.default_rng(0)
    iy, ix = np.meshgrid(np.arange(N), np.arange(N), indexing="ij")
    positions = np.stack([iy.ravel(), ix.ravel()], axis=1) * STEP
    grid = object_grid(positions, real_space_pixel_A(E, Q, DALPHA), Q)
    phase = ndimage.gaussian_filter(rng.normal(size=grid.shape), 2) * 3
    psi = aperture_probe((Q, Q), E, ALPHA, DALPHA, defocus_A=DEFOCUS, total_intensity=5e4)
    tl, fr = grid.split(positions)
    frames = rng.poisson(simulate(np.exp(1j * phase)[None, None], psi[None], tl, fr)).astype(np.uint16)

    image = Signal(name="celeritas_image", value=frames[0])
    sy, sx = Signal(name="scan_y_A", value=0.0), Signal(name="scan_x_A", value=0.0)
    md = {"technique": "ptycho", "energy_eV": E, "semiangle_mrad": ALPHA, "defocus_A": DEFOCUS,
          "scan_step_A": STEP, "scan_shape": [N, N], "detector_shape": [Q, Q],
          "angular_sampling_mrad": [DALPHA, DALPHA], "dose_e_per_A2": 5e4 / STEP**2,
          "crystal": "random phase object", "phonon_model": "none", "temperature_K": 0.0,
          "n_configurations": 1, "source_fwhm_A": 0.0, "sample_thickness_A": 2.0,
          "simulator": {"abtem": None, "ase": None}}

    @bpp.run_decorator(md=md)
    def plan():
        for j in range(N * N):
            yield from bps.mv(image, frames[j], sy, positions[j, 0], sx, positions[j, 1])
            yield from bps.trigger_and_read([image, sy, sx])

    RE = RunEngine({})
    RE.subscribe(TiledWriter(tiled_client["raw"], batch_size=64))
    (uid,) = RE(plan())
    return uid, phase


@pytest.fixture(scope="module")
def ptycho_run(tiled_server) -> str:
    """One stored run shared by the tests of this module (its uid)."""
    from speckleflow.services.layout import ensure_layout
    from tiled.client import from_uri

    client = from_uri(tiled_server.uri, api_key=tiled_server.api_key)
    ensure_layout(client)
    t0 = time.perf_counter()
    uid, _ = _write_run(client)
    print(f"run written in {time.perf_counter() - t0:.1f} s")
    return uid


def test_process_ptycho_publishes_object_probe_and_loss(tiled_client, ptycho_run):
    from speckleflow.services.process_ptycho import PtychoProcessOptions, process_ptycho, steps

    uid = ptycho_run
    seen: list[str] = []
    opts = PtychoProcessOptions(n_states=2, n_modes=2, n_slices=2, iterations=6, batch_size=12, threads=1)
    out = process_ptycho(tiled_client, uid[:12], opts, progress=lambda s, d, t: seen.append(s))
    assert out.uid == uid
    print("timings", {k: round(v, 2) for k, v in out.timings.items()})
    assert [s for s in steps() if s in seen] == list(steps())
    assert out.summary["positions_source"] == "data keys scan_y_A, scan_x_A"

    node = tiled_client["analysis"][uid]["ptycho"]
    phase = node["object_phase"]
    assert phase.metadata["dims"] == ["state", "slice", "y", "x"] and phase.metadata["units"] == "rad"
    assert phase.metadata["source_run_uid"] == uid and phase.metadata["status"] == "final"
    assert phase.metadata["parameters"]["n_states"] == 2
    assert phase.metadata["slice_thickness_A"] == pytest.approx(1.0)  # 2 Å sample / 2 slices
    values = phase.read()
    assert values.shape[:2] == (2, 2) and values.dtype == np.float32
    assert node["object_amplitude"].read().shape == values.shape
    probe = node["probe_modes"]
    window = Q + 2 * int(ALPHA / DALPHA)  # the default model window: detector + 2α/Δα
    assert probe.shape == (2, 2, window, window) and probe.metadata["part"] == ["real", "imag"]
    loss = node["loss"].read()
    assert loss.shape == (6,) and loss[-1] < loss[0]
    np.testing.assert_allclose(node["positions"].read(), out.result.positions_A)
    rec = node.metadata["reconstruction"]
    assert rec["summary"]["versions"]["torch"].startswith("2.13")
    assert rec["summary"]["pixel_size_A"] == pytest.approx(out.result.pixel_size_A)
    assert rec["summary"]["source"]["phonon_model"] == "none"


def test_process_ptycho_command_line(tiled_server, ptycho_run):
    from speckleflow.services.cli.main import app
    from tiled.client import from_uri
    from typer.testing import CliRunner

    uid = ptycho_run
    common = ["--tiled-uri", tiled_server.uri, "--api-key", tiled_server.api_key]
    result = CliRunner().invoke(app, ["process", "ptycho", uid, "--iterations", "2", "--modes", "2",
                                      "--states", "2", "--state-model", "displacement", "--threads", "1",
                                      "--pixel-quadrature", "3", *common])
    assert result.exit_code == 0, result.output
    assert f"analysis/{uid}/ptycho/" in result.output
    client = from_uri(tiled_server.uri, api_key=tiled_server.api_key)
    params = client["analysis"][uid]["ptycho"]["object_phase"].metadata["parameters"]
    assert params["state_model"] == "displacement" and params["n_states"] == 2
    assert params["pixel_quadrature"] == 3
    bad = CliRunner().invoke(app, ["process", "ptycho", "no-such-run", *common])
    assert bad.exit_code == 2 and "no run" in bad.output
    bad = CliRunner().invoke(app, ["process", "ptycho", uid, "--first-stage", "5", "--iterations", "2",
                                   "--states", "2", *common])
    assert bad.exit_code == 2 and "first_stage_iterations" in bad.output
