"""Online CCI state assignment: pairs helicity frames, assigns states, publishes live.

The algorithm is :class:`speckleflow.services.cci.online.IncrementalAssigner` on the
features of :mod:`speckleflow.services.cci.features`; this module pairs frames, times
each decision and publishes (Klose et al., Nature 614, 256 (2023)).

Published under ``analysis/<run uid>/cci/`` (at most ``rate_hz`` times per second):

``assignments``  appendable table, one row per decision: ``pair``, ``time`` (s, the
                 pair's second frame as stamped by the detector), ``state`` (−1 while
                 unassigned), ``score`` and ``runner_up`` (Pearson r with the best and
                 second-best state templates), ``n_templates``. A pair gets a second row
                 when it leaves the unassigned buffer or its state is split: **the last
                 row of a pair is its current state.** The node's metadata carries the
                 live summary ``state_counts`` (pairs per state, by state index),
                 ``n_templates``, ``current_state``, ``pairs_total``, ``unassigned``.

Latency (second frame handed to the unit → the pair's decision) is measured per pair and
reported in the worker status and the final metadata (``latency_ms`` p50 / p99 / max).
Clustering the unassigned buffer (``discovery_ms``) runs right after the decision that
made it due, and the split test (``maintain_ms``) in the idle tick; both are reported
separately: they delay the *next* pairs (seen as worker lag), not the decision itself.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from ..cci.features import FeatureMask, feature_mask, pair_features
from ..cci.online import Assignment, IncrementalAssigner
from ..layout import provenance
from ..results import ResultsPublisher
from .pairing import HelicityPairer

ALGORITHM = (
    "incremental Pearson template assignment with buffer clustering "
    "(Klose et al., Nature 614, 256 (2023))"
)
COLUMNS = ("pair", "time", "state", "score", "runner_up", "n_templates")


class CCIAssignmentUnit:
    """Online state assignment of helicity pairs (an :class:`OnlineUnit`).

    Parameters
    ----------
    results : ResultsPublisher
        Where assignments go.
    rate_hz : float
        Maximum publish rate, updates per second.
    detector : str
        Name of the detector whose frames are paired (bus stream name).
    assigner_options : dict, optional
        Keyword arguments of :class:`IncrementalAssigner`.
    """

    kind = "cci"

    def __init__(
        self,
        results: ResultsPublisher,
        *,
        rate_hz: float = 2.0,
        detector: str = "ccd",
        assigner_options: dict[str, Any] | None = None,
    ) -> None:
        if not 0 < rate_hz <= 10:
            raise ValueError(f"rate_hz must be in (0, 10], got {rate_hz!r}")
        self.results = results
        self.min_interval = 1.0 / rate_hz
        self.detector = detector
        self.assigner_options = dict(assigner_options or {})
        self._reset()

    def _reset(self) -> None:
        self.run_uid: str | None = None
        self.geometry: dict[str, Any] | None = None
        self.mask: FeatureMask | None = None
        self.assigner: IncrementalAssigner | None = None
        self.pairer = HelicityPairer(self.detector, self._on_pair)
        self.arrived = 0.0  # perf_counter() when the current message reached the unit
        self.rows: list[Assignment] = []
        self.current: dict[int, int] = {}  # pair -> current state
        self.latencies_ms: list[float] = []
        self.discovery_ms: list[float] = []
        self.maintain_ms: list[float] = []
        self.pairs = 0
        self.published_rows = 0
        self.last_publish = 0.0
        self.last_state = -1

    # -- OnlineUnit -------------------------------------------------------------------
    def start_run(self, run_uid: str, start: dict[str, Any]) -> None:
        self._reset()
        self.run_uid = run_uid

    def descriptor(self, doc: dict[str, Any]) -> None:
        geometry = self.pairer.geometry_from(doc)
        if geometry:
            self.geometry = geometry
            self.mask = feature_mask(geometry)
            self.assigner = IncrementalAssigner(self.mask.n_pixels, **self.assigner_options)
            self.arrived = time.perf_counter()  # replayed pairs are timed from now
            self.pairer.replay_early()

    def frames(self, msg: Any) -> int:
        self.arrived = time.perf_counter()
        return self.pairer.frames(msg)

    def _on_pair(self, pair: int, plus: np.ndarray, minus: np.ndarray, msg: Any) -> None:
        assert self.assigner is not None and self.mask is not None
        x = pair_features(plus, minus, self.mask)[0]
        decisions = self.assigner.add(x, pair, float(msg.header.ts), discover=False)
        self.latencies_ms.append((time.perf_counter() - self.arrived) * 1e3)
        self.pairs += 1
        self._record(decisions)
        self.last_state = decisions[0].state
        if self.assigner.discovery_due:
            # After the pair's own decision: clustering the buffer re-decides up to
            # max_buffer pairs and must not count against (or delay) this decision.
            t0 = time.perf_counter()
            self._record(self.assigner.discover())
            self.discovery_ms.append((time.perf_counter() - t0) * 1e3)

    def _record(self, decisions: list[Assignment]) -> None:
        self.rows.extend(decisions)
        for d in decisions:
            self.current[d.pair] = d.state

    def tick(self, now: float) -> None:
        if self.assigner is not None:
            t0 = time.perf_counter()
            self._record(self.assigner.maintain())
            self.maintain_ms.append((time.perf_counter() - t0) * 1e3)
        if self.rows and now - self.last_publish >= self.min_interval:
            self.publish(now)

    def publish(self, now: float | None = None, *, status: str = "live") -> None:
        if self.run_uid is None or not self.rows:
            return
        now = time.time() if now is None else now
        rows, self.rows = self.rows, []
        table = {c: [getattr(r, c) for r in rows] for c in COLUMNS}
        self.results.append_table(
            (self.run_uid, "cci", "assignments"), table, metadata=self._metadata(status)
        )
        self.results.update_metadata((self.run_uid, "cci", "assignments"), self.summary(status))
        self.published_rows += len(rows)
        self.last_publish = now

    @property
    def unassigned(self) -> int:
        """Pairs whose current state is −1."""
        return sum(1 for s in self.current.values() if s < 0)

    def summary(self, status: str = "live") -> dict[str, Any]:
        """The live per-state summary (JSON-able), as published in metadata."""
        counts = self.assigner.state_counts() if self.assigner else []
        return {
            "status": status,
            "state_counts": counts,
            "n_templates": len(counts),
            "current_state": self.last_state,
            "pairs_total": self.pairs,
            "unassigned": self.unassigned,
        }

    def stop_run(self, stop: dict[str, Any]) -> None:
        if self.run_uid is None:
            return
        if self.assigner is not None:
            self._record(self.assigner.maintain())
        final = "final" if self.pairs else "failed"
        reason = None if self.pairs else "no complete helicity pair received"
        self.publish(status=final)
        exit_status = stop.get("exit_status", "unknown")
        if self.published_rows:
            self.results.update_metadata(
                (self.run_uid, "cci", "assignments"),
                {**self.summary(final), "run_exit_status": exit_status, **self._latency()},
            )
        self.results.update_metadata(
            (self.run_uid, "cci"), self._metadata(final, reason=reason, run_exit_status=exit_status)
        )

    def status(self) -> dict[str, Any]:
        counts = self.assigner.state_counts() if self.assigner else []
        return {
            "pairs": self.pairs,
            "unpaired": self.pairer.unpaired,
            "n_templates": len(counts),
            "current_state": self.last_state,
            "unassigned": self.unassigned,
            "latency_ms": _percentiles(self.latencies_ms),
        }

    # -- helpers ----------------------------------------------------------------------
    def _latency(self) -> dict[str, dict[str, float]]:
        """Decision latency per pair, and the buffer-discovery and split-test times."""
        return {
            "latency_ms": _percentiles(self.latencies_ms),
            "discovery_ms": _percentiles(self.discovery_ms),
            "maintain_ms": _percentiles(self.maintain_ms),
        }

    def _metadata(self, status: str, *, reason: str | None = None, **extra: Any) -> dict[str, Any]:
        assert self.run_uid is not None
        params: dict[str, Any] = {"geometry": self.geometry}
        if self.assigner is not None and self.mask is not None:
            params |= {"assigner": self.assigner.parameters(), "features": self.mask.parameters()}
        return provenance(
            self.run_uid, "cci", ALGORITHM, params, status=status,  # type: ignore[arg-type]
            reason=reason, pairs_total=self.pairs, **extra,
        )


def _percentiles(values_ms: list[float], last: int = 2000) -> dict[str, float]:
    """p50 / p99 / max of the last ``last`` values (ms); {} when there are none."""
    if not values_ms:
        return {}
    lat = np.asarray(values_ms[-last:])
    p50, p99 = np.percentile(lat, [50, 99])
    return {"p50": round(float(p50), 3), "p99": round(float(p99), 3), "max": round(float(lat.max()), 3)}
