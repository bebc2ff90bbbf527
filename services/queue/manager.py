"""``start-re-manager`` (bluesky-queueserver) as a child process with speckleflow's profile.

The manager keeps the queue and history in redis, loads the startup directory
:data:`STARTUP_DIR` into its RunEngine worker when the environment is opened, and takes
requests on its 0MQ control address (``qserver``, ``bluesky_queueserver_api``).
Everything binds to 127.0.0.1 by default.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import sys
from pathlib import Path
from typing import Any

from ..processes import ChildProcess, free_tcp_port, wait_until

log = logging.getLogger(__name__)

STARTUP_DIR = Path(__file__).with_name("startup")
"""The startup directory shipped with speckleflow (startup script, user group permissions)."""


class REManagerProcess:
    """Start, open, and stop a bluesky-queueserver RE Manager.

    Parameters
    ----------
    work_dir : Path
        Where the generated ``existing_plans_and_devices.yaml`` is written (the shipped
        startup directory stays read-only).
    log_path : Path
        The manager's log file (its console output, including the RunEngine worker's).
    redis_addr : str
        ``host:port`` of the redis server.
    env : dict
        ``SPECKLEFLOW_*`` variables for the startup script (the API key among them:
        it goes through the environment, never the command line).
    host : str
        Interface of the 0MQ control and info sockets.
    startup_dir : Path
        The startup directory (default :data:`STARTUP_DIR`).
    """

    def __init__(
        self,
        work_dir: Path,
        log_path: Path,
        *,
        redis_addr: str,
        env: dict[str, str],
        host: str = "127.0.0.1",
        startup_dir: Path = STARTUP_DIR,
    ) -> None:
        self.work_dir = Path(work_dir)
        self.log_path = Path(log_path)
        self.redis_addr = redis_addr
        self.env = dict(env)
        self.host = host
        self.startup_dir = Path(startup_dir)
        self.control_addr = f"tcp://{host}:{free_tcp_port(host)}"
        self.info_addr = f"tcp://{host}:{free_tcp_port(host)}"
        self.process: ChildProcess | None = None
        self._api: Any = None

    @property
    def existing_plans_devices(self) -> Path:
        return self.work_dir / "existing_plans_and_devices.yaml"

    def argv(self) -> list[str]:
        exe = shutil.which("start-re-manager", path=str(Path(sys.executable).parent)) or shutil.which(
            "start-re-manager"
        )
        if exe is None:
            raise FileNotFoundError("start-re-manager not found: pip install bluesky-queueserver")
        return [
            exe,
            "--startup-dir", str(self.startup_dir),
            "--existing-plans-devices", str(self.existing_plans_devices),
            "--update-existing-plans-devices", "ENVIRONMENT_OPEN",
            "--user-group-permissions", str(self.startup_dir / "user_group_permissions.yaml"),
            "--redis-addr", self.redis_addr,
            "--redis-name-prefix", "speckleflow",
            "--zmq-control-addr", self.control_addr,
            "--zmq-info-addr", self.info_addr,
            "--zmq-publish-console", "ON",
        ]

    def api(self) -> Any:
        """A ``bluesky_queueserver_api.zmq.REManagerAPI`` on the control address (cached)."""
        if self._api is None:
            from bluesky_queueserver_api.zmq import REManagerAPI

            self._api = REManagerAPI(zmq_control_addr=self.control_addr, timeout_recv=5.0)
        return self._api

    def _answers(self) -> bool:
        try:
            self.api().status(reload=True)
        except Exception:  # noqa: BLE001 — not up yet
            return False
        return True

    def _exited(self) -> str | None:
        if self.process is not None and not self.process.alive():
            return (
                f"start-re-manager exited with code {self.process.returncode}; "
                f"log {self.process.log_path}:\n{self.process.tail()}"
            )
        return None

    def start(self, timeout: float = 60.0) -> REManagerProcess:
        """Start the manager and wait until it answers on its control address.

        Raises
        ------
        RuntimeError
            If it exits during start-up (log tail included).
        TimeoutError
            If it does not answer within ``timeout`` seconds.
        """
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.process = ChildProcess(
            "re-manager", self.argv(), self.log_path, env=self.env, group=True
        ).start()
        wait_until(self._answers, timeout, interval=0.2, what=f"RE Manager at {self.control_addr}",
                   abort=self._exited)
        return self

    def open_environment(self, timeout: float = 120.0) -> None:
        """Open the RunEngine environment (runs the startup script) and wait until it is ready.

        Raises
        ------
        RuntimeError
            If the manager refuses, or the environment does not come up (the startup
            script failed: see the manager's log).
        """
        api = self.api()
        if api.status(reload=True).get("worker_environment_exists"):
            return
        api.environment_open()

        def opened() -> bool:
            status = api.status(reload=True)
            return bool(status.get("worker_environment_exists")) and status.get("manager_state") == "idle"

        def failed() -> str | None:
            status = api.status(reload=True)
            if status.get("manager_state") == "idle" and not status.get("worker_environment_exists"):
                return f"the RunEngine environment did not open; log {self.log_path}:\n{self.process.tail(40) if self.process else ''}"
            return self._exited()

        wait_until(opened, timeout, interval=0.2, what="the RunEngine environment to open", abort=failed)

    def stop(self, timeout: float = 15.0) -> None:
        """Abort a running plan, close the environment, then stop the manager and its processes.

        A plan still running is paused and aborted through the RunEngine, so its run
        ends with a stop document (``exit_status`` ``abort``) in Tiled and on the bus;
        only if that fails is the environment destroyed.
        """
        if self.process is None:
            return
        if self.process.alive():
            try:
                api = self.api()
                status = api.status(reload=True)
                if status.get("re_state") in ("running", "paused", "pausing"):
                    self._abort_plan(api, timeout)
                    status = api.status(reload=True)
                if status.get("worker_environment_exists"):
                    if status.get("manager_state") == "idle":
                        api.environment_close()
                    else:
                        api.environment_destroy()
                    wait_until(
                        lambda: not api.status(reload=True).get("worker_environment_exists"),
                        timeout, interval=0.2, what="the RunEngine environment to close",
                    )
            except Exception as exc:  # noqa: BLE001 — the process group is stopped below anyway
                log.warning("RE Manager did not close its environment cleanly: %s", exc)
        if self._api is not None:
            with contextlib.suppress(Exception):
                self._api.close()
            self._api = None
        self.process.stop(timeout=timeout)

    @staticmethod
    def _abort_plan(api: Any, timeout: float) -> None:
        """Pause the running plan now and abort it (the run is closed with ``abort``)."""
        if api.status(reload=True).get("re_state") == "running":
            api.re_pause(option="immediate")
            api.wait_for_idle_or_paused(timeout=timeout)
        if api.status(reload=True).get("re_state") == "paused":
            api.re_abort()
        api.wait_for_idle(timeout=timeout)
