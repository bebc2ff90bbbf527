"""STEM scan controller: a raster of N_x × N_y probe positions repeated N_t times.

The probe dwells ``dwell`` seconds (= 1/f, one camera frame) on each position, row by
row (x fastest), with a line flyback after each row and a frame flyback after each
raster; the raster repeats ``repeats`` times without interruption, so each position is
revisited every :attr:`RasterScan.repeat_period` = N_x·N_y·dwell + N_y·line_flyback +
frame_flyback seconds — the time sampling Δt of 5D-STEM ECM (Huang & Voyles).

:class:`RasterScan` is the pure timing model (positions and simulated timestamps, in
vectorised batches); :class:`ScanController` is the ophyd device a plan configures and
flies. Time is simulated: a camera wired to the controller (its trigger input) draws
positions as fast as it can generate frames (:meth:`ScanController.next_points`); the
timestamps are those the real scan would have.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from ophyd import Component as Cpt
from ophyd import Device
from ophyd.status import Status

from .signals import SoftSignal

__all__ = ["RasterScan", "ScanController", "ScanPoints"]


@dataclass(frozen=True)
class ScanPoints:
    """A batch of consecutive scan points.

    Attributes
    ----------
    frame_index : ndarray, shape (B,), int64
        Running index over the whole acquisition (0 … N_x·N_y·N_t − 1).
    ix, iy : ndarray, shape (B,), int64
        Scan position: column (fast axis) and row.
    repeat : ndarray, shape (B,), int64
        Raster repeat, 0 … N_t − 1.
    time : ndarray, shape (B,), float64
        Simulated start time of the dwell, s since the scan started.
    """

    frame_index: np.ndarray
    ix: np.ndarray
    iy: np.ndarray
    repeat: np.ndarray
    time: np.ndarray

    def __len__(self) -> int:
        return int(self.frame_index.size)


@dataclass(frozen=True)
class RasterScan:
    """Timing of a repeated raster (pure; no Bluesky).

    Parameters
    ----------
    nx, ny : int
        Positions per row (fast axis) and rows, ≥ 1.
    repeats : int
        N_t, ≥ 1.
    dwell : float
        Time per position, s (> 0); 1/f for a camera at frame rate f.
    line_flyback : float
        Dead time after each row, s (≥ 0).
    frame_flyback : float
        Dead time after each raster, s (≥ 0).

    Raises
    ------
    ValueError
        For non-positive sizes or dwell, or negative flyback times.
    """

    nx: int
    ny: int
    repeats: int
    dwell: float
    line_flyback: float = 0.0
    frame_flyback: float = 0.0

    def __post_init__(self) -> None:
        for name in ("nx", "ny", "repeats"):
            value = getattr(self, name)
            if int(value) != value or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not self.dwell > 0:
            raise ValueError(f"dwell must be > 0 s, got {self.dwell!r}")
        if self.line_flyback < 0 or self.frame_flyback < 0:
            raise ValueError(
                f"flyback times must be >= 0 s, got line {self.line_flyback!r}, frame {self.frame_flyback!r}"
            )

    @property
    def positions(self) -> int:
        """N_x·N_y."""
        return int(self.nx) * int(self.ny)

    @property
    def n_frames(self) -> int:
        """N_x·N_y·N_t: frames of the whole acquisition."""
        return self.positions * int(self.repeats)

    @property
    def line_period(self) -> float:
        """Time of one row including its flyback, s."""
        return self.nx * self.dwell + self.line_flyback

    @property
    def repeat_period(self) -> float:
        """Time between two visits of one position (the ECM time sampling Δt), s."""
        return self.ny * self.line_period + self.frame_flyback

    @property
    def duration(self) -> float:
        """Time of the whole acquisition, s."""
        return self.repeats * self.repeat_period

    def points(self, start: int = 0, stop: int | None = None) -> ScanPoints:
        """Points ``start`` … ``stop − 1`` (clipped to the acquisition).

        Raises
        ------
        ValueError
            If ``start`` is negative.
        """
        if start < 0:
            raise ValueError(f"start must be >= 0, got {start!r}")
        stop = self.n_frames if stop is None else min(int(stop), self.n_frames)
        k = np.arange(int(start), max(int(start), stop), dtype=np.int64)
        ix = k % self.nx
        row = k // self.nx
        iy = row % self.ny
        repeat = row // self.ny
        t = repeat * self.repeat_period + iy * self.line_period + ix * self.dwell
        return ScanPoints(k, ix, iy, repeat, t.astype(np.float64))

    def batches(self, size: int) -> Iterator[ScanPoints]:
        """All points in consecutive batches of at most ``size`` (≥ 1)."""
        if int(size) != size or size < 1:
            raise ValueError(f"size must be a positive integer, got {size!r}")
        for start in range(0, self.n_frames, int(size)):
            yield self.points(start, start + int(size))


class ScanController(Device):
    """Simulated STEM scan generator (Configurable, Readable, Stageable, Flyable).

    Configure ``nx``, ``ny``, ``repeats``, ``dwell`` (s), ``line_flyback`` and
    ``frame_flyback`` (s); :meth:`kickoff` starts the raster; a camera wired to this
    controller draws the points with :meth:`next_points` (the trigger line); the
    :meth:`complete` status finishes when the last point has been emitted.
    Readbacks ``ix``, ``iy``, ``repeat`` and ``sim_time`` follow the last point.

    Parameters
    ----------
    name : str
        ophyd name.
    """

    nx = Cpt(SoftSignal, value=16, kind="config")
    ny = Cpt(SoftSignal, value=16, kind="config")
    repeats = Cpt(SoftSignal, value=100, kind="config")
    dwell = Cpt(SoftSignal, value=1e-3, kind="config", units="s")
    line_flyback = Cpt(SoftSignal, value=0.0, kind="config", units="s")
    frame_flyback = Cpt(SoftSignal, value=0.0, kind="config", units="s")
    ix = Cpt(SoftSignal, value=0, kind="hinted")
    iy = Cpt(SoftSignal, value=0, kind="hinted")
    repeat = Cpt(SoftSignal, value=0, kind="normal")
    sim_time = Cpt(SoftSignal, value=0.0, kind="normal", units="s")

    def __init__(self, *, name: str = "scan", **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)
        self._lock = threading.Lock()
        self._started = threading.Event()
        self._raster: RasterScan | None = None
        self._next = 0
        self._status: Status | None = None

    def raster(self) -> RasterScan:
        """The raster the current configuration describes (validated)."""
        return RasterScan(
            nx=int(self.nx.get()),
            ny=int(self.ny.get()),
            repeats=int(self.repeats.get()),
            dwell=float(self.dwell.get()),
            line_flyback=float(self.line_flyback.get()),
            frame_flyback=float(self.frame_flyback.get()),
        )

    # -- Flyable ----------------------------------------------------------------------
    def kickoff(self) -> Status:
        """Start the raster from its first point; done at once."""
        raster = self.raster()  # raises ValueError on a bad configuration
        with self._lock:
            self._raster = raster
            self._next = 0
            self._status = Status(obj=self)
        self._started.set()
        status = Status(obj=self)
        status.set_finished()
        return status

    def complete(self) -> Status:
        """Status that finishes when every point has been emitted."""
        if self._status is None:
            raise RuntimeError(f"{self.name}: complete() before kickoff()")
        return self._status

    def wait_started(self, timeout: float | None = None) -> RasterScan | None:
        """Block until :meth:`kickoff` (or ``timeout`` s); the raster, or None on timeout."""
        if not self._started.wait(timeout):
            return None
        return self._raster

    def next_points(self, max_points: int) -> ScanPoints | None:
        """Emit up to ``max_points`` further points; None once the raster is finished.

        Raises
        ------
        RuntimeError
            If the scan was not kicked off.
        """
        with self._lock:
            if self._raster is None or self._status is None:
                raise RuntimeError(f"{self.name}: next_points() before kickoff()")
            raster = self._raster
            if self._next >= raster.n_frames:
                return None
            pts = raster.points(self._next, self._next + int(max_points))
            self._next += len(pts)
            finished = self._next >= raster.n_frames
        self.ix.put(int(pts.ix[-1]))
        self.iy.put(int(pts.iy[-1]))
        self.repeat.put(int(pts.repeat[-1]))
        self.sim_time.put(float(pts.time[-1]))
        if finished:
            self._started.clear()
            if not self._status.done:
                self._status.set_finished()
        return pts

    def abort(self, reason: str = "aborted") -> None:
        """Stop emitting points; a pending :meth:`complete` status fails."""
        with self._lock:
            if self._raster is not None:
                self._next = self._raster.n_frames
            status = self._status
        if status is not None and not status.done:
            status.set_exception(RuntimeError(f"{self.name}: scan {reason}"))

    def stop(self, *, success: bool = False) -> None:
        if not success:
            self.abort("stopped")

    def unstage(self) -> list[Any]:
        self.abort("unstaged")
        self._started.clear()
        return super().unstage()

    @property
    def emitted(self) -> int:
        """Points emitted since kickoff."""
        return self._next

