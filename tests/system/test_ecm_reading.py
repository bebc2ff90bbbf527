"""Reading stored 5D-STEM runs: the camera's HDF5 file directly or Tiled in merged
requests, picklable readers, ``process ecm`` on a real ``dask scheduler`` + ``dask worker``
pair, and TiledWriter on a run with very few repeats (issue 5).

Runs: a real RunEngine + :func:`raw_run_writer` (TiledWriter) into the session's Tiled
server, the simulated Celeritas camera writing its own HDF5 file.
"""

from __future__ import annotations

import os
import pickle
import sys

import h5py
import numpy as np
import pytest
from speckleflow.devices import Celeritas, LiquidSample, ScanController
from speckleflow.plans import ecm_5d

pytestmark = [pytest.mark.system, pytest.mark.timeout(300)]

N, REPEATS, RATE, DETECTOR = 6, 24, 1600.0, (48, 48)


def _record(tiled_server, client, n: int, repeats: int, seed: int = 3) -> str:
    from bluesky import RunEngine
    from speckleflow.services.raw_writer import raw_run_writer

    sample = LiquidSample((n, n), detector_shape=DETECTOR, tau_median=0.5, seed=seed, n_components=4)
    scan = ScanController(name="scan")
    camera = Celeritas(sample, scan, tiled_server.data_dir.detector, batch_size=64, compression="lzf")
    RE = RunEngine({})
    RE.subscribe(raw_run_writer(client["raw"], batch_size=1024))
    (uid,) = RE(ecm_5d(camera, scan, n, n, repeats, RATE, dose=1.0, override=True, flush_period=0.2))
    return uid


@pytest.fixture(scope="module")
def stored_run(tiled_server):
    """(client, uid) of a 6×6 × 24-repeat run on a 48×48 camera."""
    from speckleflow.services.layout import ensure_layout
    from tiled.client import from_uri

    client = from_uri(tiled_server.uri, api_key=tiled_server.api_key)
    ensure_layout(client)
    return client, _record(tiled_server, client, N, REPEATS)


def test_two_repeat_run_is_recorded_with_its_truth_arrays(tiled_server, tiled_client):
    # 4×4 × 2 repeats: the truth drift track is (2, 3) = 6 values; TiledWriter's default
    # put it in the SQL table and pyarrow refused the 2-D ndarray at the stop document.
    uid = _record(tiled_server, tiled_client, 4, 2)
    run = tiled_client["raw"][uid]
    assert run.metadata["stop"]["exit_status"] == "success"
    truth = run["truth"]
    assert truth["celeritas_truth_drift"].read().shape == (1, 2, 3)
    assert truth["celeritas_truth_drift_shift"].read().shape == (1, 2, 2)
    assert run["primary"]["celeritas_image"].shape == (4 * 4 * 2, *DETECTOR)


def test_hdf5_and_tiled_readers_give_the_file_frames(stored_run):
    from speckleflow.services.run_frames import HDF5Frames, TiledFrames, hdf5_location, open_frames

    client, uid = stored_run
    node = client["raw"][uid]["primary"]["celeritas_image"]
    path, dataset = hdf5_location(node)
    with h5py.File(path, "r") as f:
        truth = f[dataset][:]
    n = N * N * REPEATS
    assert truth.shape == (n, *DETECTOR)

    auto = open_frames(node)
    assert isinstance(auto, HDF5Frames) and auto.direct and auto.shape == truth.shape
    np.testing.assert_array_equal(auto.read(5, 90), truth[5:90])

    frame = int(np.prod(DETECTOR)) * 2
    tiled = open_frames(node, "tiled", max_request_bytes=100 * frame, max_gap_frames=30)
    assert isinstance(tiled, TiledFrames)
    # A g2 block of 2 rows: every repeat's 12 frames, 24 frames apart.
    ranges = [(r * N * N + 2 * N, r * N * N + 4 * N) for r in range(REPEATS)]
    got = dict(tiled.read_ranges(ranges))
    assert sorted(got) == list(range(REPEATS))
    for i, (a, b) in enumerate(ranges):
        np.testing.assert_array_equal(got[i], truth[a:b])
    # 12 + 24 gap frames per repeat → 3 repeats (84 frames) per ≤ 100-frame request.
    assert tiled.requests == REPEATS // 3
    # A large range is split into ≤ 100-frame requests.
    tiled.requests = 0
    np.testing.assert_array_equal(tiled.read(0, 350), truth[:350])
    assert tiled.requests == 4
    # Out of order and overlapping ranges.
    odd = [(300, 310), (2, 7), (305, 320), (2, 7)]
    for i, frames in tiled.read_ranges(odd):
        np.testing.assert_array_equal(frames, truth[odd[i][0] : odd[i][1]])


def test_readers_pickle_without_a_live_client_or_a_readable_key(stored_run, monkeypatch):
    from speckleflow.services.run_frames import API_KEY_ENV, HDF5Frames, TiledFrames

    client, uid = stored_run
    node = client["raw"][uid]["primary"]["celeritas_image"]
    key = client.context.api_key
    tiled = TiledFrames(node)
    assert key not in repr(tiled) and key not in repr(tiled.__dict__)
    clone = pickle.loads(pickle.dumps(tiled))
    np.testing.assert_array_equal(clone.read(0, 3), tiled.read(0, 3))

    # Without shipping the key, the worker side reads it from its environment.
    blob = pickle.dumps(TiledFrames(node, ship_api_key=False))
    assert key.encode() not in blob
    monkeypatch.setenv(API_KEY_ENV, key)
    np.testing.assert_array_equal(pickle.loads(blob).read(0, 3), tiled.read(0, 3))

    # Where the file is not reachable (another host), HDF5Frames reads through Tiled.
    from speckleflow.services.run_frames import hdf5_location

    path, dataset = hdf5_location(node)
    direct = HDF5Frames(path, dataset, fallback=tiled)
    state = pickle.loads(pickle.dumps(direct))
    state.path = path.with_name("elsewhere.h5")
    assert not state.direct
    np.testing.assert_array_equal(state.read(10, 20), direct.read(10, 20))


def _dask(*args: str, log, name: str):
    from speckleflow.services.processes import ChildProcess

    # One BLAS thread in the worker, like the test process.
    env = {v: "1" for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
    return ChildProcess(name, [sys.executable, "-m", *args], log, env=env).start()


def test_process_ecm_on_a_dask_scheduler_and_worker_matches_in_process(stored_run, tmp_path):
    from dask.distributed import Client
    from speckleflow.services.ecm.geometry import DetectorGeometry
    from speckleflow.services.ecm.pipeline import ECMOptions, run_ecm
    from speckleflow.services.process_ecm import ECMProcessOptions, index_stored_run, process_ecm
    from speckleflow.services.processes import free_tcp_port
    from speckleflow.services.raw_runs import open_run
    from speckleflow.services.run_frames import HDF5Frames

    client, uid = stored_run
    port = free_tcp_port()
    address = f"tcp://127.0.0.1:{port}"
    ecm = ECMOptions(n_r=1, n_phi=4, rows_per_block=2, scheduler=address)
    scheduler = _dask("distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", str(port),
                      "--no-dashboard", log=tmp_path / "scheduler.log", name="dask-scheduler")
    worker = None
    try:
        worker = _dask("distributed.cli.dask_worker", address, "--nthreads", "1", "--nworkers", "1",
                       "--no-dashboard", "--host", "127.0.0.1", "--local-directory", str(tmp_path),
                       log=tmp_path / "worker.log", name="dask-worker")
        with Client(address, timeout="60s") as probe:
            probe.wait_for_workers(1, timeout=60)
            (pid,) = probe.run(os.getpid).values()
            assert pid != os.getpid()  # the tasks run in the worker process
        # Tiled as the source: the pickled TiledFrames reconnects in the worker.
        with pytest.warns(UserWarning, match="wider than the probe"):
            remote = process_ecm(client, uid, ECMProcessOptions(source="tiled", ecm=ecm)).result
    finally:
        if worker is not None:
            worker.stop()
        scheduler.stop()

    # The same products in this process, from the camera's file, without Dask.
    stored = index_stored_run(open_run(client, uid), source="auto")
    assert isinstance(stored.frames, HDF5Frames) and stored.frames.direct
    geometry = DetectorGeometry.from_mapping(stored.geometry)
    ecm.scheduler = None
    with pytest.warns(UserWarning, match="wider than the probe"):
        local = run_ecm(stored.frames, geometry, stored.scan, ecm, ix=stored.ix, iy=stored.iy,
                        repeat=stored.repeat)
    assert np.isfinite(local.tau).any()
    for name in ("tau", "beta", "contrast", "flags", "g2_ensemble", "two_time", "adf"):
        np.testing.assert_array_equal(getattr(remote, name), getattr(local, name), err_msg=name)
    node = client["analysis"][uid]["ecm"]
    np.testing.assert_array_equal(node["tau"].read(), local.tau)
    assert node["tau"].metadata["parameters"]["source"] == "tiled"
    assert node["tau"].metadata["parameters"]["scheduler"] == address
