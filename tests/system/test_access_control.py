"""Access control end to end: a live run writes with the writer key, the read-only key reads
raw/ and analysis/ but every write with it is refused, and no key reaches a log or the console."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import httpx
import numpy as np
import pytest
from speckleflow.services.tiled_server import DataDirectory, EmbeddedTiled
from tiled.client import from_uri

pytestmark = [pytest.mark.system, pytest.mark.slow, pytest.mark.timeout(600)]

PAIRS = 6


def test_live_run_with_scoped_keys_and_no_key_in_logs(tmp_path):
    data = DataDirectory.create(tmp_path / "data")
    writer_key, read_key = data.api_key(), data.read_api_key()
    assert writer_key != read_key
    for name in (".api_key", ".read_api_key"):
        assert stat.S_IMODE((data.root / name).stat().st_mode) == 0o600, name

    # A short live run through the real command line: embedded Tiled, proxy, FTH worker.
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPECKLEFLOW_")}
    proc = subprocess.run(
        [sys.executable, "-m", "speckleflow.services.cli.main", "run", "cci", "--pairs", str(PAIRS),
         "--detector-size", "128", "--no-process", "--no-phase", "--data-dir", str(data.root)],
        check=False, capture_output=True, text=True, timeout=400, env=env,
    )
    console = proc.stdout + proc.stderr
    print(console)
    assert proc.returncode == 0, console

    # No key material in the console output or any log file of any process.
    logs = sorted(p for p in data.logs.rglob("*") if p.is_file())
    assert {p.name for p in logs} >= {"tiled.log", "proxy.log", "worker-fth.log"}, logs
    for key in (writer_key, read_key):
        assert key not in console
        for path in logs:
            assert key not in path.read_text(errors="replace"), f"key found in {path}"
    # Tiled keeps only hashes of the keys.
    for db in ("authn.db", "catalog.db"):
        blob = (data.root / db).read_bytes()
        for key in (writer_key, read_key):
            assert key.encode() not in blob and bytes.fromhex(key) not in blob, db

    server = EmbeddedTiled(data, writer_key).start(timeout=120)
    try:
        reader = from_uri(server.uri, api_key=read_key)
        writer = from_uri(server.uri, api_key=writer_key)
        (uid,) = list(reader["raw"])
        # The read-only key reads the raw run (registered detector frames) and the results.
        frames = reader["raw"][uid]["primary"]["ccd_image"]
        assert frames.shape == (2 * PAIRS, 128, 128)
        np.testing.assert_array_equal(frames.read(), writer["raw"][uid]["primary"]["ccd_image"].read())
        assert "fth" in reader["analysis"][uid]
        assert reader["raw"][uid].metadata["stop"]["exit_status"] == "success"

        # Every kind of write with it is refused by Tiled's scope check.
        headers = {"Authorization": f"Apikey {read_key}"}
        api = f"{server.uri}/api/v1"
        attempts = {
            "create a node": httpx.post(
                f"{api}/metadata/analysis/{uid}", headers=headers,
                json={"data_sources": [], "metadata": {}, "specs": [], "structure_family": "container"},
            ),
            "update metadata": httpx.patch(
                f"{api}/metadata/raw/{uid}", headers=headers,
                json={"metadata": {"tampered": True}, "specs": None},
            ),
            "delete a node": httpx.delete(f"{api}/metadata/analysis/{uid}", headers=headers),
        }
        for what, response in attempts.items():
            assert response.status_code in (401, 403), (what, response.status_code, response.text)
        with pytest.raises(Exception, match="401|403"):
            reader["analysis"].write_array(np.zeros(3), key="forbidden")
        assert "forbidden" not in writer["analysis"]
        assert "tampered" not in writer["raw"][uid].metadata
        assert uid in writer["analysis"]
        # Without a key, or with a wrong one, nothing is readable.
        assert httpx.get(f"{api}/metadata/raw").status_code == 401
        assert httpx.get(f"{api}/metadata/raw", headers={"Authorization": f"Apikey {'ab' * 16}"}).status_code == 401
    finally:
        server.stop()
    assert read_key not in (data.logs / "tiled.log").read_text(errors="replace")
