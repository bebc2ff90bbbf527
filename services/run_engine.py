"""The RunEngine of a live ``speckleflow run``: bus publisher, run monitor and TiledWriter.

Every ``run`` command (``ecm``, ``ptycho``) drives its plan with one RunEngine subscribed
to the session's bus publisher (live workers), a :class:`RunMonitor` (the run uid and
exit status) and TiledWriter into ``raw/`` (the raw record, independent of the bus).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from bluesky.utils import DuringTask

from .live import LiveSession
from .tiled_server import DataDirectory

__all__ = ["InterruptibleWait", "RunMonitor", "live_run_engine"]


class InterruptibleWait(DuringTask):
    """The RunEngine's ``during_task``: the main thread waits for the plan in 0.1-s slices.

    bluesky's default waits on an Event without a timeout. Python runs signal handlers
    in the main thread only, and a process-directed SIGINT that the kernel hands to
    another thread (the RunEngine's event loop, TiledWriter, a worker thread) does not
    wake the main thread from an untimed lock wait: Ctrl-C then did nothing until the
    plan ended (seen in CI: 240 s with the main thread in ``DuringTask.block`` and the
    RunEngine's SIGINT handler installed; reproduced by sending SIGINT to the event-loop
    thread, tests/system/test_sigint_thread.py). Waking every 0.1 s lets the handler run.
    No Qt event loop is driven (nothing here uses matplotlib's Qt backend).
    """

    def block(self, blocking_event: Any) -> None:
        while not blocking_event.wait(0.1):
            pass


class RunMonitor:
    """RunEngine callback: the run uid and how it ended."""

    def __init__(self) -> None:
        self.uid: str | None = None
        self.exit_status = "not started"
        self.stop: dict[str, Any] | None = None

    def __call__(self, name: str, doc: dict[str, Any]) -> None:
        if name == "start":
            self.uid = doc["uid"]
            self.exit_status = "running"
            self.stop = None
        elif name == "stop":
            self.exit_status = doc.get("exit_status", "unknown")
            self.stop = dict(doc)


def live_run_engine(
    session: LiveSession,
    data_dir: DataDirectory,
    monitor: Callable[[str, dict[str, Any]], Any],
    *,
    batch_size: int = 50,
    callbacks: Sequence[Callable[[str, dict[str, Any]], Any]] = (),
) -> Any:
    """A RunEngine subscribed to the bus publisher, ``monitor``, the frames-published note and TiledWriter (raw/).

    Parameters
    ----------
    session : LiveSession
        Started (its publisher and Tiled client exist).
    data_dir : DataDirectory
        TiledWriter backs documents up in ``data_dir.backup``.
    monitor : callable (name, doc)
        A :class:`RunMonitor` or another document callback of the command.
    batch_size : int
        TiledWriter's event batch size.
    callbacks : sequence of callables (name, doc)
        Subscribed after ``monitor``, before the raw-record writers.

    Returns
    -------
    bluesky.RunEngine
    """
    from bluesky import RunEngine

    from .raw_record import FramesPublishedNote
    from .raw_writer import raw_run_writer

    if session.publisher is None or session.client is None:
        raise RuntimeError("live_run_engine needs a started LiveSession")
    RE = RunEngine({}, call_returns_result=False, during_task=InterruptibleWait())
    RE.subscribe(session.publisher)
    RE.subscribe(monitor)
    for callback in callbacks:
        RE.subscribe(callback)
    RE.subscribe(FramesPublishedNote(session.publisher, session.client))  # before TiledWriter writes the stop
    RE.subscribe(raw_run_writer(session.client["raw"], backup_directory=str(data_dir.backup), batch_size=batch_size))
    return RE
