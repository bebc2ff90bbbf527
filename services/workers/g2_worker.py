"""Online rolling g2 of a 5D-STEM ECM run (k-resolved electron correlation microscopy).

The algorithm is :class:`speckleflow.services.ecm.online.OnlineECM` (polar bin sums per
scan position, one multi-tau "frame" per scan repeat, two-time window, virtual images,
count rate); this module feeds it the camera's frame batches from the bus, reads the
geometry from the run's documents and publishes (Huang & Voyles, 5D-STEM ECM).

The camera geometry (k-calibration, ring, convergence) comes from the descriptor's
configuration ``<camera>_geometry``; the raster shape from the start document
(``shape`` = [repeats, ny, nx] of ``ecm_5d``) or, failing that, from the frame headers
(``scan_nx``, ``scan_ny``); the time sampling from the start document
(``time_sampling_s``) and, measured, from the frames' ``sim_time``.

Published under ``analysis/<run uid>/g2/`` at most ``rate_hz`` (≤ 1) times a second:

``ensemble``     array (k_r, lag) float64, dims ``["k_r", "lag"]``: ensemble g2 per k_r
                 bin; metadata ``lag`` (s), ``lag_repeats``, ``k_r`` (Å⁻¹), ``ring`` (g2
                 over the whole first-ring strip), ``time_sampling_s``, ``count_rate``.
``fit``          table, one row per k_r bin: ``k_r`` (Å⁻¹), ``tau`` (s), ``beta``,
                 ``contrast``, ``sigma_tau`` (s), ``flags`` (KWW fit, the live τ); metadata
                 ``tau_ring`` etc. (the fit over the whole strip).
``count_rate``   appendable table: ``time``, ``frames``, ``repeats_done``, ``count_rate``
                 (mean electrons per pixel per frame on the first ring, I_s/(f·N_d)).
``two_time``     array (k_r, t1, t2): two-time correlation over the last repeats.
``virtual/adf``, ``virtual/bf``  arrays (repeat, y, x), grown by one image per repeat.

The ``g2`` container's metadata carries the latest ``time_sampling_s`` (N_x·N_y/f),
``count_rate``, ``tau_estimate_s`` and ``repeats_done`` — what an adaptive plan needs to
check the acquisition constraints.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import numpy as np

from ..ecm.geometry import DetectorGeometry
from ..ecm.online import OnlineECM
from ..layout import provenance
from ..results import ResultsPublisher
from .pairing import detector_geometry

log = logging.getLogger(__name__)

ALGORITHM = (
    "rolling k-resolved ECM: multi-tau g2 of exact polar (k_r, k_φ) bin sums per scan "
    "position, one frame per scan repeat; KWW fit (Huang & Voyles, 5D-STEM ECM)"
)
#: Frames kept while the geometry or raster is unknown.
MAX_EARLY_FRAMES = 4096


class G2Unit:
    """Rolling g2 of a 5D-STEM ECM run (an :class:`~.base.OnlineUnit`).

    Parameters
    ----------
    results : ResultsPublisher
        Where results go.
    rate_hz : float
        Maximum publish rate, updates per second, in (0, 1].
    detector : str
        Name of the camera whose frames are used (bus stream name).
    n_r, n_phi : int, optional
        (k_r, k_φ) bins of the first-ring strip (defaults: see :class:`OnlineECM`).
    n_buffers : int
        Multi-tau buffers.
    two_time_window : int
        Repeats in the rolling two-time correlation.
    """

    kind = "g2"

    def __init__(
        self,
        results: ResultsPublisher,
        *,
        rate_hz: float = 1.0,
        detector: str = "celeritas",
        n_r: int | None = None,
        n_phi: int | None = None,
        n_buffers: int = 16,
        two_time_window: int = 64,
    ) -> None:
        if not 0 < rate_hz <= 1:
            raise ValueError(f"rate_hz must be in (0, 1] updates per second, got {rate_hz!r}")
        self.results = results
        self.min_interval = 1.0 / rate_hz
        self.detector = detector
        self.options = {"n_r": n_r, "n_phi": n_phi, "n_buffers": n_buffers, "two_time_window": two_time_window}
        self._reset()

    def _reset(self) -> None:
        self.run_uid: str | None = None
        self.geometry: dict[str, Any] | None = None
        self.scan_shape: tuple[int, int] | None = None
        self.repeats: int | None = None
        self.nominal_time_sampling: float | None = None
        self.ecm: OnlineECM | None = None
        self.early: list[Any] = []
        self.updates = 0
        self.published_repeats = 0
        self.tau: float = math.nan
        self.last_count_rate: float = math.nan
        self.estimate_frames = 0  # frames behind tau and last_count_rate
        self.dirty = False
        self.last_publish = 0.0

    # -- OnlineUnit -------------------------------------------------------------------
    def start_run(self, run_uid: str, start: dict[str, Any]) -> None:
        self._reset()
        self.run_uid = run_uid
        shape = start.get("shape")
        if start.get("plan_name") == "ecm_5d" and isinstance(shape, list) and len(shape) == 3:
            self.repeats, ny, nx = (int(v) for v in shape)
            self.scan_shape = (ny, nx)
        ts = start.get("time_sampling_s")
        self.nominal_time_sampling = float(ts) if isinstance(ts, (int, float)) and ts > 0 else None

    def descriptor(self, doc: dict[str, Any]) -> None:
        geometry = detector_geometry(doc, self.detector)
        if geometry:
            self.geometry = geometry
            self._build()

    def _build(self) -> None:
        if self.ecm is not None or self.geometry is None or self.scan_shape is None:
            return
        self.ecm = OnlineECM(DetectorGeometry.from_mapping(self.geometry), self.scan_shape, **self.options)
        for w in self.ecm.warnings:
            log.warning("g2: %s", w)
        early, self.early = self.early, []
        for msg in early:
            self._process(msg)

    def frames(self, msg: Any) -> int:
        if msg.header.stream != self.detector:
            return 0
        if self.scan_shape is None and "scan_nx" in msg.header.fields:
            self.scan_shape = (int(msg.header.fields["scan_ny"]), int(msg.header.fields["scan_nx"]))
            self.repeats = int(msg.header.fields.get("repeats", 0)) or None
            self._build()
        if self.ecm is None:
            if sum(m.n for m in self.early) + msg.n > MAX_EARLY_FRAMES:
                return 0
            self.early.append(msg)
            return msg.n
        return self._process(msg)

    def _process(self, msg: Any) -> int:
        assert self.ecm is not None
        pos = np.asarray(msg.per_frame("scan_position"), np.int64).reshape(-1, 2)
        times = np.asarray(msg.per_frame("sim_time"), float) if "sim_time" in msg.header.fields else None
        used = self.ecm.process(msg.frames, pos[:, 0], pos[:, 1], np.asarray(msg.per_frame("repeat")), times)
        self.dirty = self.dirty or used > 0
        return used

    def tick(self, now: float) -> None:
        if self.dirty and now - self.last_publish >= self.min_interval:
            self.publish(now)

    def stop_run(self, stop: dict[str, Any]) -> None:
        if self.run_uid is None:
            return
        exit_status = stop.get("exit_status", "unknown")
        if self.ecm is None:
            reason = "no frame of the camera with a known geometry received"
            self.results.update_metadata(
                (self.run_uid, "g2"), self._metadata("failed", reason=reason, run_exit_status=exit_status)
            )
            return
        self.ecm.finish()
        self.publish(status="final", run_exit_status=exit_status)

    def status(self) -> dict[str, Any]:
        e = self.ecm
        return {
            "repeats_done": 0 if e is None else e.repeats_done,
            "repeats": self.repeats,
            "tau_s": None if math.isnan(self.tau) else round(self.tau, 6),
            "count_rate": None if math.isnan(self.last_count_rate) else round(self.last_count_rate, 4),
            "estimate_frames": self.estimate_frames,
            "updates": self.updates,
            "filled_positions": 0 if e is None else e.filled_positions,
            "late_frames": 0 if e is None else e.late_frames,
        }

    # -- publishing -------------------------------------------------------------------
    @property
    def time_sampling(self) -> float | None:
        """Seconds per repeat: measured from ``sim_time`` when possible, else the plan's."""
        measured = None if self.ecm is None else self.ecm.repeat_period
        return measured if measured and measured > 0 else self.nominal_time_sampling

    def publish(self, now: float | None = None, *, status: str = "live", **extra: Any) -> None:
        """Publish everything computed so far (non-blocking)."""
        if self.run_uid is None or self.ecm is None:
            return
        now = time.time() if now is None else now
        uid, e = self.run_uid, self.ecm
        self.last_count_rate = e.count_rate()
        dt = self.time_sampling
        summary = {
            "repeats_done": e.repeats_done,
            "frames": e.frames,
            "count_rate": _finite(self.last_count_rate),
            "time_sampling_s": dt,
            "time_sampling_nominal_s": self.nominal_time_sampling,
            "filled_positions": e.filled_positions,
            "late_frames": e.late_frames,
        }
        if e.repeats_done >= 2 and dt:
            ens = e.ensemble()
            lag_s = (ens.lags * dt).tolist()
            md = self._metadata(
                status, lag=lag_s, lag_repeats=ens.lags.tolist(), k_r=ens.k_r.tolist(),
                ring=[_finite(v) for v in ens.ring], units={"lag": "s", "k_r": "1/angstrom", "g2": "1"},
                **summary,
            )
            self.results.replace_array((uid, "g2", "ensemble"), ens.g2, dims=["k_r", "lag"], metadata=md)
            per, ring = e.fit(ens, dt)
            self.tau = float(ring.tau) if int(ring.flags) == 0 else math.nan
            self.results.replace_table(
                (uid, "g2", "fit"),
                {
                    "k_r": ens.k_r, "tau": per.tau, "beta": per.beta, "contrast": per.A,
                    "sigma_tau": per.sigma_tau, "flags": per.flags.astype(np.int64),
                },
                metadata=self._metadata(
                    status, tau_ring=_finite(float(ring.tau)), beta_ring=_finite(float(ring.beta)),
                    contrast_ring=_finite(float(ring.A)), flags_ring=int(ring.flags),
                    units={"k_r": "1/angstrom", "tau": "s", "sigma_tau": "s"},
                    model="g2 = 1 + A·exp(−2(Δt/τ)^β)", **summary,
                ),
            )
            index, G, k_r = e.two_time_result()
            self.results.replace_array(
                (uid, "g2", "two_time"), G, dims=["k_r", "t1", "t2"],
                metadata=self._metadata(status, repeats=index.tolist(), k_r=k_r.tolist(), **summary),
            )
        self.results.append_table(
            (uid, "g2", "count_rate"),
            {"time": [now], "frames": [e.frames], "repeats_done": [e.repeats_done],
             "count_rate": [self.last_count_rate]},
            metadata=self._metadata(status, units={"count_rate": "electrons/pixel/frame on the first ring"}),
        )
        self._publish_virtual(status)
        self.estimate_frames = e.frames
        self.results.update_metadata(
            (uid, "g2"), self._metadata(status, tau_estimate_s=_finite(self.tau), **summary, **extra)
        )
        self.updates += 1
        self.dirty = False
        self.last_publish = now

    def _publish_virtual(self, status: str) -> None:
        """Virtual images of the repeats completed since the last publish."""
        assert self.ecm is not None and self.run_uid is not None
        done = self.ecm.repeats_done
        if done <= self.published_repeats:
            return
        new = range(self.published_repeats, done)
        seen = set(self.ecm.virtual.repeats)
        blank = np.full(self.ecm.scan_shape, np.nan)  # a repeat whose frames were all lost
        for kind in ("adf", "bf"):
            stack = np.stack([getattr(self.ecm.virtual.images(r), kind) if r in seen else blank for r in new])
            self.results.extend_array(
                (self.run_uid, "g2", "virtual", kind), stack, dims=["repeat", "y", "x"],
                metadata=self._metadata(status, repeats_published=done, units="electrons per scan position"),
            )
        self.published_repeats = done

    def _metadata(self, status: str, *, reason: str | None = None, **extra: Any) -> dict[str, Any]:
        assert self.run_uid is not None
        params: dict[str, Any] = {"detector": self.detector, "scan_shape": self.scan_shape, **self.options}
        if self.ecm is not None:
            params |= {"n_r": self.ecm.polar.n_r, "n_phi": self.ecm.polar.n_phi,
                       "ensemble": "mean of per-(position, k_φ bin) normalised g2"}
        return provenance(self.run_uid, "g2", ALGORITHM, params, status=status,  # type: ignore[arg-type]
                          reason=reason, **extra)


def _finite(value: float) -> float | None:
    """JSON-safe float: None for NaN/inf."""
    return float(value) if math.isfinite(value) else None
