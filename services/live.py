"""The live session: every process of a run, started together and stopped together.

:class:`LiveSession` owns, for one ``speckleflow run``:

* the Tiled server (embedded child process, or an existing one given by URI and key);
* the ZeroMQ proxy (child process; publishers → XSUB, XPUB → workers);
* the online workers (one child process each: ``speckleflow worker <kind>``);
* a status collector (PULL socket) the workers report to;
* in this process: the RunEngine, the bus publisher subscribed to it, TiledWriter
  subscribed to it (the raw record, independent of the live path), and the devices.

Start-up waits until every worker has seen a heartbeat on the bus (so none misses the
start document); shutdown waits (bounded) for the workers to finish the run, then
stops the children in reverse order.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from speckleflow.streaming import BusPublisher, CurveConfig, StatusCollector

from .layout import RAW, ensure_layout, provenance
from .processes import ChildProcess, free_tcp_port, wait_until
from .tiled_app import KEY_ENV
from .tiled_server import DataDirectory, EmbeddedTiled

log = logging.getLogger(__name__)

WORKER_KEY_ENV = "SPECKLEFLOW_API_KEY"


@dataclass
class WorkerHandle:
    kind: str
    process: ChildProcess
    status: dict[str, Any] = field(default_factory=dict)
    last_report: float = 0.0

    @property
    def ready(self) -> bool:
        return bool(self.status.get("ready"))


#: Seconds a Ctrl-C'd or aborted run waits for the workers' last results before stopping
#: them (they still flush on SIGTERM): the user asked to get out, not for every preview.
ABORTED_RUN_WORKER_WAIT_S = 10.0


class LiveSession:
    """Start, watch and stop every process of a live run.

    Parameters
    ----------
    data_dir : DataDirectory
        Catalog, detector files, logs.
    workers : sequence of str
        Online worker kinds to start (``"fth"``).
    tiled_uri, api_key : str, optional
        Use this existing Tiled server (the key must allow writes). The detector
        directory must then lie inside that server's readable storage.
    host : str
        Bind interface (127.0.0.1 by default).
    worker_args : dict, optional
        Extra command-line arguments per worker kind (e.g. ``--rcvhwm``).
    bus_hwm : int, optional
        High-water mark of the proxy's sockets, in messages (default the proxy's):
        how much the proxy queues for a slow worker before ZeroMQ drops.
    bus_sndbuf : int, optional
        Kernel send buffer of the proxy's connection to each worker, bytes (default the
        OS's, autotuned to megabytes).
    """

    def __init__(
        self,
        data_dir: DataDirectory,
        *,
        workers: tuple[str, ...] = ("fth",),
        tiled_uri: str | None = None,
        api_key: str | None = None,
        host: str = "127.0.0.1",
        worker_args: dict[str, list[str]] | None = None,
        bus_hwm: int | None = None,
        bus_sndbuf: int | None = None,
    ) -> None:
        if tiled_uri and not api_key:
            raise ValueError("--tiled-uri needs --api-key (a key that may write)")
        self.data_dir = data_dir
        self.host = host
        self.worker_kinds = tuple(workers)
        self.worker_args = worker_args or {}
        if bus_hwm is not None and bus_hwm < 1:
            raise ValueError(f"bus_hwm must be >= 1 message, got {bus_hwm}")
        self.bus_hwm = bus_hwm
        if bus_sndbuf is not None and bus_sndbuf < 1:
            raise ValueError(f"bus_sndbuf must be >= 1 byte, got {bus_sndbuf}")
        self.bus_sndbuf = bus_sndbuf
        self.external_uri = tiled_uri
        self.api_key = api_key or data_dir.api_key()
        self.tiled: EmbeddedTiled | None = None
        self.proxy: ChildProcess | None = None
        self.workers: dict[str, WorkerHandle] = {}
        self.publisher: BusPublisher | None = None
        self.collector: StatusCollector | None = None
        self._collector_lock = threading.Lock()
        self.client: Any = None
        self.frontend = ""
        self.backend = ""
        self.status_address = ""
        #: Status reports that decoded but did not name a worker (counted, ignored).
        self.status_rejected = 0

    # -- start --------------------------------------------------------------------------
    @property
    def tiled_uri(self) -> str:
        if self.external_uri:
            return self.external_uri
        assert self.tiled is not None
        return self.tiled.uri

    def start(self, progress: Callable[[str], None] = lambda s: None, timeout: float = 90.0) -> None:
        """Start Tiled, the proxy and the workers; return when the workers are ready."""
        from tiled.client import from_uri

        if self.external_uri is None:
            progress("starting Tiled server")
            self.tiled = EmbeddedTiled(self.data_dir, self.api_key, host=self.host).start(timeout)
        self.client = from_uri(self.tiled_uri, api_key=self.api_key)
        ensure_layout(self.client)

        progress("starting ZeroMQ proxy")
        fport, bport = free_tcp_port(self.host), free_tcp_port(self.host)
        self.frontend = f"tcp://{self.host}:{fport}"
        self.backend = f"tcp://{self.host}:{bport}"
        self.proxy = ChildProcess(
            "proxy",
            [sys.executable, "-m", "speckleflow.streaming.proxy", "--frontend", self.frontend, "--backend", self.backend,
             *(["--hwm", str(self.bus_hwm)] if self.bus_hwm else []),
             *(["--sndbuf", str(self.bus_sndbuf)] if self.bus_sndbuf else [])],
            self.data_dir.logs / "proxy.log",
        ).start()

        # CURVE only when the environment configures it (the children inherit it).
        curve = CurveConfig.from_env()
        self.collector = StatusCollector(f"tcp://{self.host}:*", curve=curve)
        self.status_address = self.collector.address
        self.publisher = BusPublisher(self.frontend, curve=curve)

        for kind in self.worker_kinds:
            self.start_worker(kind)
        progress(f"waiting for workers {', '.join(self.worker_kinds)}")
        self.wait_workers_ready(timeout)

    def start_worker(self, kind: str) -> WorkerHandle:
        """Start (or restart) the worker of ``kind``."""
        argv = [
            sys.executable,
            "-m",
            "speckleflow.services.cli.main",
            "worker",
            kind,
            "--bus",
            self.backend,
            "--status",
            self.status_address,
            "--tiled-uri",
            self.tiled_uri,
            *self.worker_args.get(kind, []),
        ]
        proc = ChildProcess(
            f"worker {kind}",
            argv,
            self.data_dir.logs / f"worker-{kind}.log",
            env={WORKER_KEY_ENV: self.api_key},
        ).start()
        handle = WorkerHandle(kind, proc)
        self.workers[kind] = handle
        return handle

    def wait_workers_ready(self, timeout: float) -> None:
        """Send heartbeats until every live worker reports it has seen one."""

        def all_ready() -> bool:
            assert self.publisher is not None
            self.publisher.heartbeat()
            self.poll_status()
            return all(h.ready for h in self.workers.values() if h.process.alive())

        def died() -> str | None:
            for h in self.workers.values():
                if not h.process.alive():
                    return f"worker {h.kind} exited with code {h.process.returncode}:\n{h.process.tail()}"
            if self.proxy is not None and not self.proxy.alive():
                return f"proxy exited with code {self.proxy.returncode}:\n{self.proxy.tail()}"
            return None

        wait_until(all_ready, timeout, interval=0.1, what="workers to subscribe", abort=died)

    def poll_status(self, timeout_ms: int = 0) -> None:
        """Read pending worker status reports (thread-safe)."""
        if self.collector is None:
            return
        with self._collector_lock:
            reports = self.collector.poll(timeout_ms)
        now = time.time()
        for report in reports:
            worker = report.get("worker", "")
            if type(worker) is not str:  # a decodable but nonsensical report: count, skip
                self.status_rejected += 1
                log.warning("ignoring a status report with worker %r", worker)
                continue
            handle = self.workers.get(worker)
            if handle is not None and report.get("pid") == handle.process.pid:
                handle.status = report
                handle.last_report = now

    # -- after a run --------------------------------------------------------------------
    def wait_workers_done(self, run_uid: str, timeout: float = 30.0, *, exit_status: str = "success") -> None:
        """Wait (bounded) until every live worker reports the run stopped and its results flushed.

        A run that did not end in ``"success"`` (Ctrl-C, abort) waits at most
        :data:`ABORTED_RUN_WORKER_WAIT_S`.
        """
        if exit_status != "success":
            timeout = min(timeout, ABORTED_RUN_WORKER_WAIT_S)

        def done() -> bool:
            self.poll_status(50)
            for h in self.workers.values():
                if not h.process.alive():
                    continue
                s = h.status
                if s.get("run_uid") != run_uid or not str(s.get("run_state", "")).startswith("stopped"):
                    return False
                if s.get("results", {}).get("pending", 0):
                    return False
            return True

        try:
            wait_until(done, timeout, interval=0.1, what="workers to finish the run")
        except TimeoutError:
            log.warning("workers did not report the end of run %s within %s s", run_uid, timeout)

    def mark_dead_workers(self, run_uid: str, frames_acquired: int) -> list[dict[str, Any]]:
        """For each worker that died, mark its analysis node failed and return the gap."""
        gaps = []
        for h in self.workers.values():
            if h.process.alive():
                continue
            processed = int(h.status.get("frames_processed", 0))
            reason = (
                f"worker {h.kind} (pid {h.process.pid}) exited with code "
                f"{h.process.returncode} during the run; processed {processed} of "
                f"{frames_acquired} frames"
            )
            gap = {"worker": h.kind, "processed": processed, "missing": frames_acquired - processed, "reason": reason}
            gaps.append(gap)
            try:
                from .layout import analysis_container

                node = analysis_container(self.client, run_uid, h.kind)
                md = provenance(run_uid, h.kind, "online worker", {}, status="failed", reason=reason)
                md["frames_missing"] = gap["missing"]
                node.update_metadata(metadata=md)
            except Exception:  # noqa: BLE001
                log.exception("could not mark analysis/%s/%s failed", run_uid, h.kind)
        return gaps

    def raw_frame_count(self, run_uid: str, key: str) -> int:
        """Frames the raw record in Tiled holds for data key ``key`` of ``primary``."""
        run = self.client[RAW][run_uid]
        return int(run["primary"][key].shape[0])

    # -- stop ---------------------------------------------------------------------------
    def stop(self, keep_tiled: bool = False) -> None:
        """Stop workers, proxy and (unless ``keep_tiled``) the embedded Tiled server."""
        for h in self.workers.values():  # all flush their last results at once
            h.process.terminate()
        for h in self.workers.values():
            h.process.stop(timeout=15)
        if self.publisher is not None:
            self.publisher.close()
            self.publisher = None
        if self.collector is not None:
            with self._collector_lock:
                self.collector.close()
            self.collector = None
        if self.proxy is not None:
            self.proxy.stop()
        if self.tiled is not None and not keep_tiled:
            self.tiled.stop()

    def children(self) -> list[ChildProcess]:
        procs = [h.process for h in self.workers.values()]
        if self.proxy is not None:
            procs.append(self.proxy)
        if self.tiled is not None and self.tiled.process is not None:
            procs.append(self.tiled.process)
        return procs

    def __enter__(self) -> LiveSession:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


__all__ = ["KEY_ENV", "LiveSession", "WorkerHandle"]
