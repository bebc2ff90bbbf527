"""redis-server on 127.0.0.1: the queue server's store (queue, history, plan lists).

One private server per ``speckleflow serve``, on a free port, keeping its snapshot in
the data directory so the queue and its history survive a restart of the service.
"""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

from ..processes import ChildProcess, free_tcp_port, wait_until


class RedisServer:
    """Start and stop ``redis-server`` bound to ``host`` (127.0.0.1 by default).

    Parameters
    ----------
    directory : Path
        Working directory of the server (its ``dump.rdb`` snapshot).
    log_path : Path
        The server's log file.
    host : str
        Bind address.
    port : int, optional
        TCP port; a free one is chosen when omitted.
    executable : str
        The ``redis-server`` program (looked up on ``PATH``).

    Raises
    ------
    FileNotFoundError
        At :meth:`start`, if ``redis-server`` is not installed (Debian: ``apt-get install
        redis-server``).
    """

    def __init__(
        self,
        directory: Path,
        log_path: Path,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        executable: str = "redis-server",
    ) -> None:
        self.directory = Path(directory)
        self.log_path = Path(log_path)
        self.host = host
        self.port = port or free_tcp_port(host)
        self.executable = executable
        self.process: ChildProcess | None = None

    @property
    def address(self) -> str:
        """``host:port``, as ``start-re-manager --redis-addr`` expects it."""
        return f"{self.host}:{self.port}"

    def argv(self) -> list[str]:
        path = shutil.which(self.executable)
        if path is None:
            raise FileNotFoundError(
                f"{self.executable!r} not found on PATH; install it (Debian/Ubuntu: "
                f"`apt-get install -y redis-server`)"
            )
        return [
            path,
            "--bind", self.host,
            "--port", str(self.port),
            "--dir", str(self.directory),
            "--protected-mode", "yes",
            "--appendonly", "no",
            "--daemonize", "no",
        ]

    def ping(self) -> bool:
        """True if the server answers ``PING`` with ``+PONG``."""
        try:
            with socket.create_connection((self.host, self.port), timeout=1.0) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def start(self, timeout: float = 20.0) -> RedisServer:
        """Start the server and wait until it answers.

        Raises
        ------
        RuntimeError
            If it exits during start-up (log tail included).
        TimeoutError
            If it does not answer within ``timeout`` seconds.
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process = ChildProcess("redis", self.argv(), self.log_path).start()

        def exited() -> str | None:
            if self.process is not None and not self.process.alive():
                return f"redis-server exited with code {self.process.returncode}:\n{self.process.tail()}"
            return None

        wait_until(self.ping, timeout, what=f"redis-server at {self.address}", abort=exited)
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
