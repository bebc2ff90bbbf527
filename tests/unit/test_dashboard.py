"""The dashboard's JSON and PNG endpoints against a real Tiled server, with nodes
written the way the workers and the full processing write them."""

from __future__ import annotations

import io
import time
import uuid

import numpy as np
import pandas as pd
import pytest
from speckleflow.services.dashboard import create_app
from speckleflow.services.dashboard.png import image_png
from speckleflow.services.layout import analysis_container, provenance
from speckleflow.services.results import ResultsPublisher
from speckleflow.services.workers.base import Worker
from speckleflow.services.workers.cci_worker import COLUMNS
from tiled.client import from_uri

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def api(tiled_client):
    from fastapi.testclient import TestClient

    return TestClient(create_app(tiled_client))


@pytest.fixture
def publisher(tiled_server):
    pub = ResultsPublisher(lambda: from_uri(tiled_server.uri, api_key=tiled_server.api_key))
    yield pub
    pub.close()


def _raw_run(client, *, t0: float, stopped: bool, n_pairs: int = 40) -> str:
    """A run node as TiledWriter makes it: metadata ``start`` and (at the end) ``stop``."""
    uid = str(uuid.uuid4())
    start = {"uid": uid, "time": t0, "plan_name": "cci_series", "num_points": 2 * n_pairs}
    stop = {"run_start": uid, "time": t0 + 5, "exit_status": "success"} if stopped else None
    client["raw"].create_container(uid, metadata={"start": start, "stop": stop})
    return uid


def _png(content: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(content)))


def test_runs_are_listed_newest_first_with_live_ones_marked(api, tiled_client):
    t = time.time()
    old = _raw_run(tiled_client, t0=t - 100, stopped=True)
    new = _raw_run(tiled_client, t0=t, stopped=False)
    runs = api.get("/api/runs").json()["runs"]
    ours = [r for r in runs if r["uid"] in (old, new)]
    assert [r["uid"] for r in ours] == [new, old]
    assert ours[0]["exit_status"] is None and ours[1]["exit_status"] == "success"
    assert ours[0]["plan_name"] == "cci_series" and ours[0]["num_points"] == 80
    times = [r["time"] for r in runs]
    assert times == sorted(times, reverse=True)
    assert api.get("/api/runs?limit=0").status_code == 422


def _publish_live(publisher: ResultsPublisher, uid: str, rng) -> tuple[np.ndarray, pd.DataFrame]:
    """What the fth and cci workers publish during a run (same calls, same metadata keys)."""
    previews = rng.normal(size=(3, 16, 16)).astype(np.float32)
    for i, image in enumerate(previews):  # one update per tick
        md = provenance(uid, "fth", "test", {"n_rolling": 20}, pair_range=[0, 10 * (i + 1)],
                        pairs_total=10 * (i + 1))
        publisher.extend_array((uid, "fth", "preview"), image[np.newaxis], dims=["update", "y", "x"],
                               metadata=md)
    # Assignments: pairs 0..29, state i // 10 except the buffer; pair 3 first unassigned,
    # then re-decided (its last row is its state).
    rows = pd.DataFrame({
        "pair": list(range(30)) + [3],
        "time": np.arange(31, dtype=float),
        "state": [-1 if p == 3 else p // 10 for p in range(30)] + [0],
        "score": np.full(31, 0.5),
        "runner_up": np.full(31, 0.1),
        "n_templates": np.full(31, 3),
    })[list(COLUMNS)]
    for chunk in (rows.iloc[:20], rows.iloc[20:]):
        publisher.append_table((uid, "cci", "assignments"), {c: chunk[c].to_numpy() for c in COLUMNS},
                               metadata=provenance(uid, "cci", "test", {}))
    summary = {"status": "live", "state_counts": [10, 10, 10], "n_templates": 3, "current_state": 2,
               "pairs_total": 30, "unassigned": 0, "latency_ms": {"p50": 1.0, "p99": 3.0, "max": 4.0}}
    publisher.update_metadata((uid, "cci", "assignments"), summary)
    assert publisher.flush(30)
    return previews, rows


class _Unit:
    kind = "cci"

    def start_run(self, run_uid: str, start: dict) -> None:
        pass

    def status(self) -> dict:
        return {"pairs": 30}


def test_live_run_summary_preview_and_worker_counters(api, tiled_client, tiled_server, publisher):
    rng = np.random.default_rng(1)
    uid = _raw_run(tiled_client, t0=time.time(), stopped=False)
    previews, rows = _publish_live(publisher, uid, rng)

    # The worker's own status publishing (services/workers/base.py), counted from the start.
    worker = Worker(_Unit(), "tcp://127.0.0.1:1", results=publisher)  # nothing to receive
    try:
        worker.frames_seen, worker.frames_processed = 4, 4  # before this run: not counted
        worker.dropped["not used by unit"] = 1
        worker._document(type("M", (), {"name": "start", "doc": {"uid": uid}})())
        worker.frames_seen, worker.frames_processed, worker.lag_s = 64, 60, 0.25
        worker.dropped["not used by unit"] += 4
        worker.publish_run_status(final=True)
        assert publisher.flush(30)
    finally:
        worker.receiver.close()

    s = api.get(f"/api/runs/{uid}").json()
    assert s["uid"] == uid and s["run"]["exit_status"] is None
    assert s["fth"]["updates"] == 3 and s["fth"]["shape"] == [16, 16]
    assert s["fth"]["pair_range"] == [0, 30] and s["fth"]["n_rolling"] == 20
    online = s["cci"]["online"]
    assert online["state_counts"] == [10, 10, 10] and online["current_state"] == 2
    assert online["latency_ms"]["p99"] == 3.0
    # The timeline holds the last decision of every pair: pair 3 is in state 0, not −1.
    current = rows.groupby("pair")["state"].last()
    assert online["timeline"]["pair"] == list(range(30))
    assert online["timeline"]["state"] == current.tolist()
    assert s["cci"]["full"] is None and s["cci"]["figures"] == []
    assert s["g2"] is None
    w = s["workers"]["cci"]
    assert (w["frames_seen"], w["frames_processed"], w["dropped_total"]) == (60, 56, 4)
    assert w["lag_s"] == 0.25 and w["status"] == "final" and w["results"]["written"] > 0

    # Latest preview = the last update, rendered symmetric about zero (red +, blue −).
    latest = _png(api.get(f"/api/runs/{uid}/fth/preview.png").content)
    assert latest.shape == (16, 16, 4)
    assert np.array_equal(latest, _png(image_png(previews[-1])))
    hi, lo = np.unravel_index(previews[-1].argmax(), (16, 16)), np.unravel_index(previews[-1].argmin(), (16, 16))
    assert latest[hi][0] > latest[hi][2] and latest[lo][2] > latest[lo][0]
    first = _png(api.get(f"/api/runs/{uid}/fth/preview.png?index=0").content)
    assert np.array_equal(first, _png(image_png(previews[0])))
    assert api.get(f"/api/runs/{uid}/fth/preview.png?index=3").status_code == 404


def test_full_processing_labels_and_transition_network(api, tiled_client):
    uid = _raw_run(tiled_client, t0=time.time(), stopped=True)
    node = analysis_container(tiled_client, uid, "cci")
    states = np.array([0, 0, 1, -1, 1, 1, 2, 0])
    labels = pd.DataFrame({"pair": np.arange(8), "time": np.arange(8.0), "state": states,
                           "internal_mode": states, "score": np.ones(8)})
    node.write_table(labels, key="labels", metadata=provenance(uid, "cci", "test", {}, status="final"))
    rgba = np.random.default_rng(2).integers(0, 256, size=(30, 40, 4), dtype=np.uint8)
    figs = node.create_container("figures", metadata={})
    figs.write_array(rgba, key="transition_network", metadata={})
    node.update_metadata(metadata={"full_processing": {"summary": {"n_states": 3, "nested": {"x": 1}}}})

    s = api.get(f"/api/runs/{uid}").json()
    full = s["cci"]["full"]
    assert full["state_counts"] == [3, 3, 1] and full["unassigned"] == 1 and full["pairs_total"] == 8
    assert full["timeline"]["state"] == states.tolist()
    assert full["summary"] == {"n_states": 3}
    assert s["cci"]["online"] is None and s["cci"]["figures"] == ["transition_network"]
    png = api.get(f"/api/runs/{uid}/cci/figures/transition_network.png")
    assert png.headers["content-type"] == "image/png"
    assert np.array_equal(_png(png.content), rgba)  # lossless
    assert api.get(f"/api/runs/{uid}/cci/figures/nope.png").status_code == 404


def test_g2_curves_and_tau_when_present(api, tiled_client):
    uid = _raw_run(tiled_client, t0=time.time(), stopped=True)
    lag = np.geomspace(1e-4, 1.0, 12)
    k_r = np.array([0.2, 0.3])
    tau, beta = np.array([0.01, 0.003]), np.array([0.8, 0.7])
    g2 = 1 + 0.2 * np.exp(-2 * (lag[None] / tau[:, None]) ** beta[:, None])
    node = analysis_container(tiled_client, uid, "g2")
    node.write_array(g2, key="ensemble", metadata=provenance(
        uid, "g2", "test", {}, status="final", lag=lag.tolist(), k_r=k_r.tolist()), dims=["k_r", "lag"])
    node.write_table(pd.DataFrame({"k_r": k_r, "tau": tau, "beta": beta, "contrast": [0.2, 0.2]}), key="fit",
                     metadata=provenance(uid, "g2", "test", {}, status="final"))

    out = api.get(f"/api/runs/{uid}").json()["g2"]
    assert out["error"] is None and out["status"] == "final"
    np.testing.assert_allclose(out["lag"], lag)
    np.testing.assert_allclose(out["k_r"], k_r)
    np.testing.assert_allclose(out["g2"], g2)
    assert [r["tau"] for r in out["fit"]] == tau.tolist()


def test_malformed_g2_is_reported_not_raised(api, tiled_client):
    uid = _raw_run(tiled_client, t0=time.time(), stopped=True)
    node = analysis_container(tiled_client, uid, "g2")
    node.write_array(np.ones((2, 5)), key="ensemble", metadata={"lag": [1.0, 2.0], "k_r": [0.1, 0.2]})
    out = api.get(f"/api/runs/{uid}").json()["g2"]
    assert out["g2"] == [] and "lag has shape (2,), expected (5,)" in out["error"]


def test_page_and_errors_never_show_the_key(api, tiled_server):
    page = api.get("/")
    assert page.status_code == 200 and "<canvas" in page.text and "__POLL_MS__" not in page.text
    assert "const POLL_MS = 1000;" in page.text
    assert "http://" not in page.text and "https://" not in page.text  # nothing fetched from elsewhere
    missing = api.get("/api/runs/no-such-run")
    assert missing.status_code == 404 and "no-such-run" in missing.json()["detail"]
    for response in (page, missing, api.get("/api/runs")):
        assert tiled_server.api_key not in response.text


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="poll_interval_s"):
        create_app(object(), poll_interval_s=0)
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        image_png(np.zeros(3))


def test_cli_refuses_a_data_dir_without_catalog(tmp_path):
    from speckleflow.services.cli.main import app
    from typer.testing import CliRunner

    result = CliRunner().invoke(app, ["dashboard", "--data-dir", str(tmp_path / "nothing")])
    assert result.exit_code == 2
    assert "holds no Tiled catalog" in " ".join(result.output.split())  # rich wraps lines
