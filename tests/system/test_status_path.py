"""Worker status reaches Tiled on its own path while the results are held back.

A real :class:`Worker` on a real ZeroMQ bus (publisher → ProxyThread → worker) writes
into a real Tiled server. Its :class:`ResultsPublisher` cannot reach Tiled until the
test opens a gate in its ``connect`` (a Tiled that lags for the results); the status goes
through a :class:`StatusPublisher` with its own connection. The status in Tiled must keep
following the frames while every result waits, and the results must all land afterwards.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
import pytest
import zmq
from speckleflow.services.processes import wait_until
from speckleflow.services.results import ResultsPublisher
from speckleflow.services.status_publisher import StatusPublisher
from speckleflow.services.workers.base import Worker
from speckleflow.streaming import ProxyThread, encode_frames
from speckleflow.streaming.protocol import encode_document, encode_heartbeat

pytestmark = [pytest.mark.system, pytest.mark.timeout(180)]  # the session Tiled server may start within it


def raw_pub(proxy: ProxyThread) -> zmq.Socket:
    sock = zmq.Context.instance().socket(zmq.PUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(proxy.frontend_address)
    return sock


def join(send_heartbeat, worker: Worker, timeout: float = 10.0) -> None:
    """Heartbeat until the worker has seen one (PUB/SUB slow joiner)."""
    deadline = time.monotonic() + timeout
    while not worker.heartbeat_seen:
        assert time.monotonic() < deadline, "worker never saw a heartbeat"
        send_heartbeat()
        worker.stop_event.wait(0.02)  # pacing of the heartbeats, not synchronisation


class SummingUnit:
    """Publishes one result row (the frame's photon count) per frame batch."""

    kind = "probe"

    def __init__(self, results: ResultsPublisher) -> None:
        self.results = results
        self.run_uid: str | None = None

    def start_run(self, run_uid: str, start: dict[str, Any]) -> None:
        self.run_uid = run_uid

    def descriptor(self, doc: dict[str, Any]) -> None:
        pass

    def frames(self, msg: Any) -> int:
        assert self.run_uid is not None
        sums = msg.frames.sum(axis=(1, 2)).astype(np.int64)
        self.results.extend_array((self.run_uid, "probe", "sums"), sums, dims=["frame"])
        return msg.n

    def tick(self, now: float) -> None:
        pass

    def stop_run(self, stop: dict[str, Any]) -> None:
        pass

    def status(self) -> dict[str, Any]:
        return {}


def test_status_keeps_updating_while_results_are_held_back(tiled_server, tiled_client):
    from tiled.client import from_uri

    gate = threading.Event()

    def connect_results():
        if not gate.wait(120):  # results cannot reach Tiled until the gate opens
            raise ConnectionError("held back by the test")
        return from_uri(tiled_server.uri, api_key=tiled_server.api_key)

    results = ResultsPublisher(connect_results)
    status = StatusPublisher(lambda: from_uri(tiled_server.uri, api_key=tiled_server.api_key))
    unit = SummingUnit(results)
    run = "run-status-path"
    with ProxyThread() as proxy:
        worker = Worker(unit, proxy.backend_address, results=results, status_results=status,
                        status_interval=0.1, tiled_status_interval=0.1)
        thread = threading.Thread(target=worker.serve, daemon=True)
        thread.start()
        sock = raw_pub(proxy)
        try:
            join(lambda: sock.send_multipart(encode_heartbeat("test")), worker)
            sock.send_multipart(encode_document("start", {"uid": run}, run, 0))
            sent, seen_in_tiled = 0, []

            def tiled_status() -> dict[str, Any]:
                try:
                    return dict(tiled_client[f"analysis/{run}/workers/probe"].metadata)  # one request
                except KeyError:
                    return {}

            for batch in range(3):
                frames = np.full((4, 8, 8), batch + 1, np.uint16)
                sock.send_multipart(encode_frames(run, "ccd", sent, frames), copy=False)
                sent += 4
                wait_until(lambda n=sent: tiled_status().get("frames_seen") == n, 30, interval=0.1,
                           what=f"worker status in Tiled to show {sent} frames")
                md = tiled_status()
                waiting = md["results"]["submitted"] - md["results"]["written"]
                seen_in_tiled.append((md["frames_seen"], waiting, md["updated"]))
                # Every result is still waiting: the status did not go behind them.
                assert results.stats.written == 0 and results.stats.submitted >= batch + 1
            assert [s for s, _, _ in seen_in_tiled] == [4, 8, 12]
            assert all(p >= 1 for _, p, _ in seen_in_tiled)
            assert sorted(u for _, _, u in seen_in_tiled) == [u for _, _, u in seen_in_tiled]

            gate.set()  # Tiled reachable for the results again: everything lands
            sock.send_multipart(encode_document("stop", {"run_start": run, "exit_status": "success"}, run, 1))
            assert results.flush(30)
            wait_until(lambda: tiled_status().get("status") == "final", 10, interval=0.05,
                       what="the final worker status")
        finally:
            gate.set()
            sock.close()
            worker.stop_event.set()
            thread.join(20)
    sums = tiled_client["analysis"][run]["probe"]["sums"].read()
    assert sums.tolist() == [64 * (b + 1) for b in range(3) for _ in range(4)]
    final = tiled_status()
    assert final["frames_processed"] == 12 and final["frames_seen"] == 12
    print(f"\nstatus in Tiled while results held back (frames, results waiting): "
          f"{[(s, p) for s, p, _ in seen_in_tiled]}; status path {status.stats.as_dict()}; "
          f"results {results.stats.as_dict()}")
