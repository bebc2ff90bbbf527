"""Child processes the service starts, and how it makes sure they all stop.

Every process speckleflow starts (Tiled server, proxy, online workers) is started
through :class:`ChildProcess`: in its own session (so a Ctrl-C in the terminal reaches
only the orchestrator, which then shuts the children down in order), with the Linux
parent-death signal set (so a child never outlives an orchestrator that was killed
outright), and with its output captured to a log file under the data directory.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """Ask the kernel to send SIGTERM to this (child) process when its parent dies.

    The kernel means the parent *thread*: a child started from a thread that then ends
    is terminated with it. Start children from the main thread or a thread that lives
    as long as they should.
    """
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        except OSError:
            pass


def free_tcp_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that was free on ``host`` a moment ago.

    There is a short race between this call and the child binding the port; the
    callers retry a start that fails on ``EADDRINUSE``.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class ChildProcess:
    """A named child process with a log file and an orderly stop.

    Parameters
    ----------
    name : str
        Short name shown to the user (``"tiled"``, ``"proxy"``, ``"worker fth"``).
    argv : sequence of str
        Command line.
    log_path : Path
        File receiving the child's stdout and stderr.
    env : dict, optional
        Extra environment variables (e.g. API keys, never on the command line).
    group : bool, optional
        Signal the child's whole process group (it leads one, being started in its own
        session) on :meth:`stop` and :meth:`kill`: for programs that start helper
        processes of their own (e.g. ``start-re-manager`` and its RunEngine worker), so
        that none outlives the stop.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        env: dict[str, str] | None = None,
        *,
        group: bool = False,
    ) -> None:
        self.name = name
        self.group = group
        self.argv = list(argv)
        self.log_path = Path(log_path)
        self.env = {**os.environ, **(env or {})}
        self.popen: subprocess.Popen | None = None

    def start(self) -> ChildProcess:
        """Start the process (idempotent only in the sense that a second call raises)."""
        if self.popen is not None:
            raise RuntimeError(f"{self.name} already started (pid {self.popen.pid})")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child
        try:
            self.popen = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        finally:
            log.close()
        return self

    @property
    def pid(self) -> int | None:
        return None if self.popen is None else self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self.popen is None else self.popen.poll()

    def tail(self, n_lines: int = 20) -> str:
        """Last lines of the child's log, to show the user why it failed."""
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n_lines:])

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, wait up to ``timeout`` s, then SIGKILL. Returns the exit code.

        With ``group``, the signals go to the whole process group, and members left
        behind by the leader are killed too.
        """
        if self.popen is None:
            return None
        if self.popen.poll() is None:
            self.terminate()
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        if self.group:
            self._reap_group(timeout)
        return self.popen.returncode

    def terminate(self) -> None:
        """SIGTERM now without waiting (``stop`` then waits), so that several children stop in parallel."""
        if self.popen is not None and self.popen.poll() is None:
            try:
                self._signal(signal.SIGTERM)
            except ProcessLookupError:
                pass

    def kill(self) -> None:
        """SIGKILL now (used by fault-injection tests and by ``stop`` as a last resort)."""
        if self.popen is not None and self.popen.poll() is None:
            self._signal(signal.SIGKILL)
            self.popen.wait(5)

    def _signal(self, sig: int) -> None:
        assert self.popen is not None
        if self.group:
            try:
                os.killpg(self.popen.pid, sig)
                return
            except ProcessLookupError:
                pass
        self.popen.send_signal(sig)

    def _reap_group(self, timeout: float) -> None:
        """SIGTERM, then SIGKILL, whatever is left in the process group after the leader."""
        assert self.popen is not None
        pgid = self.popen.pid

        def group_empty() -> bool:
            return not live_group_members(pgid)

        for sig in (signal.SIGTERM, signal.SIGKILL):
            if group_empty():
                return
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                return
            try:
                wait_until(group_empty, timeout, interval=0.05, what=f"process group of {self.name}")
            except TimeoutError:
                continue


def live_group_members(pgid: int) -> list[int]:
    """Pids of the live (not zombie) processes in process group ``pgid`` (Linux ``/proc``).

    Elsewhere, ``[pgid]`` if the group can still be signalled, else ``[]``.
    """
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return []
        return [pgid]
    members = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # fields after the parenthesised command: state ppid pgrp ...
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            members.append(int(entry.name))
    return members


def wait_until(
    predicate: Callable[[], bool],
    timeout: float,
    *,
    interval: float = 0.05,
    what: str = "condition",
    abort: Callable[[], str | None] | None = None,
) -> None:
    """Poll ``predicate`` until it is true, or raise ``TimeoutError`` naming ``what``.

    ``abort`` is polled too; a non-empty string it returns ends the wait with a
    ``RuntimeError`` carrying that message (e.g. "tiled exited with code 1").
    """
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return
        if abort is not None and (why := abort()):
            raise RuntimeError(why)
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)
