"""``speckleflow serve``: the long-running service, controlled through the Bluesky queue server.

Starts, together: the Tiled server (embedded, as ``speckleflow run`` does, or an
existing one), the ZeroMQ proxy and the online workers (all three through
:class:`~speckleflow.services.live.LiveSession`), a private redis-server and the
bluesky-queueserver RE Manager with speckleflow's startup directory, whose RunEngine
publishes on the bus and writes raw runs with TiledWriter. Plans are submitted with
``qserver`` or ``bluesky_queueserver_api``; Ctrl-C stops every process, in reverse order.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Self

from rich.console import Console

from .live import LiveSession
from .processes import ChildProcess
from .queue.manager import REManagerProcess
from .queue.redis import RedisServer
from .tiled_server import DataDirectory


@dataclass
class ServeOptions:
    """Options of ``speckleflow serve`` (see ``speckleflow serve --help``)."""

    data_dir: Path = Path("speckleflow-data")
    tiled_uri: str | None = None
    api_key: str | None = None
    host: str = "127.0.0.1"
    workers: tuple[str, ...] = ("fth", "cci", "g2")  # g2: the live τ ecm_adaptive reads
    detector_size: int = 256
    n_families: int = 8
    temperature: float = 300.0
    seed: int = 0
    states_file: Path | None = None
    open_environment: bool = True

    def validate(self) -> None:
        if self.detector_size < 64 or self.detector_size % 2:
            raise ValueError(f"--detector-size must be an even number ≥ 64 pixels, got {self.detector_size}")
        if self.n_families < 1:
            raise ValueError(f"--families must be ≥ 1, got {self.n_families}")
        if not self.temperature > 0:
            raise ValueError(f"--temperature must be > 0 K, got {self.temperature}")
        if self.states_file is not None and not Path(self.states_file).is_file():
            raise ValueError(f"--states-file {self.states_file} does not exist")


class Service:
    """Every process of ``speckleflow serve``, started together and stopped together.

    Parameters
    ----------
    opts : ServeOptions

    Attributes
    ----------
    session : LiveSession
        Tiled, proxy and online workers.
    redis : RedisServer
    manager : REManagerProcess
    """

    def __init__(self, opts: ServeOptions) -> None:
        opts.validate()
        self.opts = opts
        self.data_dir = DataDirectory.create(opts.data_dir)
        self.session = LiveSession(
            self.data_dir, workers=opts.workers, tiled_uri=opts.tiled_uri, api_key=opts.api_key, host=opts.host
        )
        self.redis = RedisServer(self.data_dir.root / "redis", self.data_dir.logs / "redis.log", host=opts.host)
        self.manager: REManagerProcess | None = None

    def profile_environment(self) -> dict[str, str]:
        """The ``SPECKLEFLOW_*`` variables the queue profile reads (the API key among them)."""
        o = self.opts
        env = {
            "SPECKLEFLOW_DATA_DIR": str(self.data_dir.root),
            "SPECKLEFLOW_TILED_URI": self.session.tiled_uri,
            "SPECKLEFLOW_API_KEY": self.session.api_key,
            "SPECKLEFLOW_BUS_FRONTEND": self.session.frontend,
            "SPECKLEFLOW_BUS_BACKEND": self.session.backend,
            "SPECKLEFLOW_DETECTOR_SIZE": str(o.detector_size),
            "SPECKLEFLOW_SAMPLE_FAMILIES": str(o.n_families),
            "SPECKLEFLOW_SAMPLE_TEMPERATURE_K": str(o.temperature),
            "SPECKLEFLOW_SAMPLE_SEED": str(o.seed),
        }
        if o.states_file is not None:
            env["SPECKLEFLOW_STATES_FILE"] = str(Path(o.states_file).resolve())
        return env

    def start(self, progress: Callable[[str], None] = lambda s: None, timeout: float = 120.0) -> None:
        """Start everything; on any failure, stop what was started and re-raise."""
        try:
            self.session.start(progress=progress, timeout=timeout)
            progress("starting redis-server")
            self.redis.start()
            progress("starting the queue server (RE Manager)")
            self.manager = REManagerProcess(
                self.data_dir.root / "queue",
                self.data_dir.logs / "re-manager.log",
                redis_addr=self.redis.address,
                env=self.profile_environment(),
                host=self.opts.host,
            ).start(timeout)
            if self.opts.open_environment:
                progress("opening the RunEngine environment (startup script)")
                self.manager.open_environment(timeout)
        except BaseException:
            self.stop()
            raise

    def children(self) -> list[ChildProcess]:
        """Every child process (for status displays and orphan checks)."""
        procs = list(self.session.children())
        if self.redis.process is not None:
            procs.append(self.redis.process)
        if self.manager is not None and self.manager.process is not None:
            procs.append(self.manager.process)
        return procs

    def stop(self) -> None:
        """Stop the queue server (and its RunEngine worker), redis, the workers, proxy and Tiled."""
        if self.manager is not None:
            self.manager.stop()
        self.redis.stop()
        self.session.stop()

    def describe(self) -> str:
        """Where everything is, and how to submit a plan (no secrets)."""
        assert self.manager is not None
        key_file = self.data_dir.root / ".api_key"
        key_hint = f"API key in {key_file}" if self.opts.api_key is None else "API key: the one you gave"
        ctrl = self.manager.control_addr
        return "\n".join([
            f"Tiled:          {self.session.tiled_uri}  ({key_hint})",
            f"queue server:   control {ctrl}   info {self.manager.info_addr}",
            f"redis:          {self.redis.address}",
            f"ZeroMQ bus:     {self.session.frontend} → {self.session.backend}",
            f"workers:        {', '.join(self.opts.workers)}   logs in {self.data_dir.logs}",
            (
                "plans:          cci_series(ccd, num_pairs, exposure), "
                "cci_until_covered(ccd, min_pairs_per_state, max_pairs, exposure, check_every=10, "
                "min_states=1), ecm_5d(celeritas, scan, nx, ny, repeats, frame_rate), "
                "ecm_adaptive(celeritas, scan, nx, ny, repeats, frame_rate, probe_repeats=100) on an 8×8 scan"
            ),
            "submit a plan:",
            (
                f"  qserver --zmq-control-addr {ctrl} queue add plan "
                "'{\"name\": \"cci_series\", \"args\": [\"ccd\", 50, 0.5]}'"
            ),
            f"  qserver --zmq-control-addr {ctrl} queue start",
            (
                "  or in Python:  from bluesky_queueserver_api import BPlan; "
                "from bluesky_queueserver_api.zmq import REManagerAPI"
            ),
            (
                f"                 RM = REManagerAPI(zmq_control_addr='{ctrl}'); "
                "RM.item_add(BPlan('cci_series', 'ccd', 50, 0.5)); RM.queue_start()"
            ),
            "results:        raw/<uid> and analysis/<uid>/fth, analysis/<uid>/cci in Tiled",
        ])

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve(
    opts: ServeOptions,
    console: Console | None = None,
    *,
    stop: threading.Event | None = None,
    on_ready: Callable[[Service], None] | None = None,
) -> None:
    """Run the service until Ctrl-C or SIGTERM (or until ``stop`` is set), then stop every process.

    ``on_ready(service)``, if given, is called once everything is up (tests use it to
    reach the queue server; the service keeps running meanwhile).

    Raises
    ------
    ValueError
        For invalid options.
    RuntimeError, TimeoutError
        If a process fails to start (everything started is stopped first).
    """
    console = console or Console()
    stop = stop or threading.Event()
    service = Service(opts)
    # SIGTERM (what systemd, `docker stop` and `kill` send) stops it like Ctrl-C does:
    # otherwise Python dies at once (exit -15) and nothing is stopped in order (the
    # children only get their parent-death signal; a running plan's run is not closed).
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        with console.status("starting services") as status:
            service.start(progress=lambda msg: status.update(msg))
        console.print(service.describe())
        console.print("Ctrl-C stops everything.")
        if on_ready is not None:
            on_ready(service)
        while not stop.wait(0.5):
            service.session.poll_status()
            dead = [p for p in service.children() if not p.alive()]
            if dead:
                p = dead[0]
                console.print(f"[red]{p.name} exited with code {p.returncode}; stopping.[/red]\n{p.tail()}")
                break
    except KeyboardInterrupt:
        console.print("stopping (Ctrl-C or SIGTERM)")
    finally:
        service.stop()
        console.print(f"stopped; data in {service.data_dir.root}")
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
