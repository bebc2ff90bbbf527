"""Shared fixtures: a real Tiled server (subprocess on a free port) and data directories."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# One BLAS/FFT thread per process: the machines have 2 cores (see ARCHITECTURE.md).
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")

TEST_DATA = Path(__file__).parent / "data"
MAGNUMNP_STATES = TEST_DATA / "maze_states_magnumnp_128.npz"


@pytest.fixture(scope="session")
def tiled_server(tmp_path_factory):
    """A real Tiled server on 127.0.0.1 with a persistent writable catalog."""
    from speckleflow.services.tiled_server import DataDirectory, EmbeddedTiled

    data_dir = DataDirectory.create(tmp_path_factory.mktemp("tiled-data"))
    server = EmbeddedTiled(data_dir, data_dir.api_key()).start(timeout=120)
    yield server
    server.stop()


@pytest.fixture
def tiled_client(tiled_server):
    from tiled.client import from_uri

    from speckleflow.services.layout import ensure_layout

    client = from_uri(tiled_server.uri, api_key=tiled_server.api_key)
    ensure_layout(client)
    return client


@pytest.fixture
def artifacts_dir() -> Path:
    """Where tests leave files for a person to look at (screenshots, figures)."""
    path = Path(os.environ.get("SPECKLEFLOW_TEST_ARTIFACTS", "test-artifacts"))
    path.mkdir(parents=True, exist_ok=True)
    return path
