"""Provenance metadata, the Tiled layout, and the results publisher against a real server."""

from __future__ import annotations

import uuid

import numpy as np
import pytest

from speckleflow.services.layout import analysis_container, provenance
from speckleflow.services.results import ResultsPublisher


def test_provenance_has_every_required_key():
    md = provenance("abc", "fth", "algo", {"n": 3})
    for key in ("source_run_uid", "technique", "algorithm", "parameters", "software_version", "created", "status"):
        assert key in md
    assert md["status"] == "live" and md["parameters"] == {"n": 3}


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"technique": "xyz"}, "unknown technique 'xyz'"),
        ({"status": "done"}, "unknown status 'done'"),
        ({"status": "failed"}, "needs a reason"),
    ],
)
def test_provenance_rejects_bad_values(kwargs, match):
    args = {"technique": "fth", **kwargs}
    technique = args.pop("technique")
    with pytest.raises(ValueError, match=match):
        provenance("abc", technique, "algo", {}, **args)


@pytest.mark.system
def test_results_publisher_grows_arrays_and_tables(tiled_server, tiled_client):
    from tiled.client import from_uri

    uid = str(uuid.uuid4())
    pub = ResultsPublisher(lambda: from_uri(tiled_server.uri, api_key=tiled_server.api_key))
    md = provenance(uid, "fth", "test", {})
    for i in range(3):
        pub.extend_array((uid, "fth", "preview"), np.full((1, 4, 5), i, np.float32), dims=["update", "y", "x"], metadata=md)
        pub.append_table((uid, "fth", "updates"), {"update": [i], "time": [float(i)]}, metadata=md)
    pub.update_metadata((uid, "fth"), {"status": "final"})
    assert pub.flush(30)
    pub.close()
    node = analysis_container(tiled_client, uid, "fth")
    arr = node["preview"].read()
    assert arr.shape == (3, 4, 5)
    assert [arr[i, 0, 0] for i in range(3)] == [0, 1, 2]
    assert node["preview"].dims == ("update", "y", "x") or list(node["preview"].dims) == ["update", "y", "x"]
    table = node["updates"].read()
    assert list(table["update"]) == [0, 1, 2]
    assert node.metadata["status"] == "final"
    assert pub.stats.failed == 0 and pub.stats.dropped == 0


def test_results_publisher_supersedes_queued_replacements(tiled_server, tiled_client):
    # Tiled slower than the worker: the publisher thread is held at its first
    # connection while 40 replacements of one node and 40 appends are queued. Only the
    # newest replacement is written; every append is.
    import threading

    from tiled.client import from_uri

    uid = str(uuid.uuid4())
    release, connecting = threading.Event(), threading.Event()

    def slow_connect():
        connecting.set()
        assert release.wait(30)
        return from_uri(tiled_server.uri, api_key=tiled_server.api_key)

    pub = ResultsPublisher(slow_connect)
    md = provenance(uid, "g2", "test", {})
    # the first replacement is in flight (held in slow_connect) before the others are
    # queued: were it still queued when the second arrived, it would be superseded at
    # once and the count below would depend on thread scheduling (ci19: 79 on a loaded machine)
    pub.replace_array((uid, "g2", "ensemble"), np.full((2, 3), 0, np.float64), dims=["k_r", "lag"], metadata=md)
    pub.append_table((uid, "g2", "history"), {"update": [0]}, metadata=md)
    assert connecting.wait(30)
    for i in range(1, 40):
        pub.replace_array((uid, "g2", "ensemble"), np.full((2, 3), i, np.float64), dims=["k_r", "lag"], metadata=md)
        pub.append_table((uid, "g2", "history"), {"update": [i]}, metadata=md)
    assert pub.pending == 80
    release.set()
    assert pub.flush(60)
    pub.close()
    node = analysis_container(tiled_client, uid, "g2")
    assert np.all(node["ensemble"].read() == 39)
    assert list(node["history"].read()["update"]) == list(range(40))
    # the first replacement was in flight, the newest is written, the 38 between superseded
    assert pub.stats.superseded == 38 and pub.stats.written == 42
    assert pub.stats.failed == 0 and pub.stats.dropped == 0
    assert pub.stats.as_dict()["superseded"] == pub.stats.superseded


@pytest.mark.system
def test_results_publisher_retries_until_server_is_back(tmp_path):
    """Tiled down at first: operations wait, then land when it comes up; intake never blocks."""
    from tiled.client import from_uri

    from speckleflow.services.tiled_server import DataDirectory, EmbeddedTiled

    data_dir = DataDirectory.create(tmp_path)
    server = EmbeddedTiled(data_dir, data_dir.api_key())
    uid = str(uuid.uuid4())
    pub = ResultsPublisher(lambda: from_uri(server.uri, api_key=server.api_key), max_attempts=60)
    accepted = pub.extend_array(
        (uid, "fth", "preview"), np.ones((1, 2, 2), np.float32), dims=["update", "y", "x"],
        metadata=provenance(uid, "fth", "t", {}),
    )
    assert accepted  # returned at once although no server is up
    try:
        server.start(timeout=120)
        assert pub.flush(90)
        # Written only once the server existed: either by the client's own connection
        # retries or by the publisher's.
        assert pub.stats.written == 1 and pub.stats.failed == 0
        client = from_uri(server.uri, api_key=server.api_key)
        assert client["analysis"][uid]["fth"]["preview"].shape == (1, 2, 2)
    finally:
        pub.close(5)
        server.stop()
