"""Online FTH preview: one FFT per helicity pair, published at a bounded rate.

For each + / − pair of frames the unit forms the difference hologram I+ − I−, which
keeps only the heterodyne (charge × magnetic) term (Battistelli et al., Optica 11, 234
(2024)); one inverse FFT gives its Patterson map, whose object ⊗ reference-hole cross
terms are images of mz blurred by the reference holes (Eisebitt et al., Nature 432, 885
(2004)). The algorithm is :mod:`speckleflow.services.fth.preview`; this module pairs
frames and publishes.

Published under ``analysis/<run uid>/fth/`` (at most ``rate_hz`` updates per second):

``preview``         (update, y, x) float32 — rolling sum of the last ``n_rolling`` pairs
``preview_single``  (update, y, x) float32 — the latest single pair
``updates``         table: update, first_pair, last_pair, pairs_total, time
``sum``             (y, x) float32 — all pairs of the run, written at the stop document
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from ..fth.preview import RollingPreview, preview_image
from ..layout import provenance
from ..results import ResultsPublisher
from .pairing import HelicityPairer

ALGORITHM = "FTH difference-hologram cross-correlation crop (Eisebitt 2004; Battistelli 2024)"


class FTHPreviewUnit:
    """Pairs helicity frames and publishes FTH previews (an :class:`OnlineUnit`).

    Parameters
    ----------
    results : ResultsPublisher
        Where previews go.
    n_rolling : int
        Pairs in the rolling sum.
    rate_hz : float
        Maximum publish rate, updates per second (≤ 2 by default).
    detector : str
        Name of the detector whose frames are paired (bus stream name).
    """

    kind = "fth"

    def __init__(
        self,
        results: ResultsPublisher,
        *,
        n_rolling: int = 20,
        rate_hz: float = 2.0,
        detector: str = "ccd",
    ) -> None:
        if n_rolling < 1:
            raise ValueError(f"n_rolling must be ≥ 1, got {n_rolling!r}")
        if not 0 < rate_hz <= 10:
            raise ValueError(f"rate_hz must be in (0, 10], got {rate_hz!r}")
        self.results = results
        self.n_rolling = int(n_rolling)
        self.min_interval = 1.0 / rate_hz
        self.detector = detector
        self._reset()

    def _reset(self) -> None:
        self.run_uid: str | None = None
        self.geometry: dict[str, Any] | None = None
        self.rolling: RollingPreview | None = None
        self.total: np.ndarray | None = None
        self.pairer = HelicityPairer(self.detector, self._on_pair)
        self.pairs = 0
        self.first_pair: int | None = None
        self.last_pair: int | None = None
        self.latest_single: np.ndarray | None = None
        self.updates = 0
        self.dirty = False
        self.last_publish = 0.0

    # -- OnlineUnit -------------------------------------------------------------------
    def start_run(self, run_uid: str, start: dict[str, Any]) -> None:
        self._reset()
        self.run_uid = run_uid

    def descriptor(self, doc: dict[str, Any]) -> None:
        geometry = self.pairer.geometry_from(doc)
        if geometry:
            self.geometry = geometry
            self.rolling = RollingPreview(geometry, n_pairs=self.n_rolling)
            self.pairer.replay_early()

    def frames(self, msg: Any) -> int:
        return self.pairer.frames(msg)

    def _on_pair(self, pair: int, plus: np.ndarray, minus: np.ndarray, msg: Any) -> None:
        self._pair(pair, plus.astype(np.float64) - minus.astype(np.float64))

    def _pair(self, pair: int, difference: np.ndarray) -> None:
        assert self.rolling is not None and self.geometry is not None
        self.rolling.add(pair, difference)
        self.total = difference.copy() if self.total is None else self.total + difference
        self.pairs += 1
        self.first_pair = pair if self.first_pair is None else self.first_pair
        self.last_pair = pair
        self.latest_single = difference
        self.dirty = True

    def tick(self, now: float) -> None:
        if self.dirty and now - self.last_publish >= self.min_interval:
            self.publish(now)

    def publish(self, now: float | None = None, *, status: str = "live") -> None:
        if self.run_uid is None or self.rolling is None or self.latest_single is None:
            return
        now = time.time() if now is None else now
        uid = self.run_uid
        first, last = self.rolling.pair_range
        md = self._metadata(status, pair_range=[int(first), int(last)])
        rolling = self.rolling.image()[np.newaxis]
        single = preview_image(self.latest_single, self.geometry)[np.newaxis]
        self.results.extend_array((uid, "fth", "preview"), rolling, dims=["update", "y", "x"], metadata=md)
        self.results.extend_array(
            (uid, "fth", "preview_single"),
            single,
            dims=["update", "y", "x"],
            metadata=self._metadata(status, pair_range=[int(self.last_pair), int(self.last_pair)]),
        )
        self.results.append_table(
            (uid, "fth", "updates"),
            {
                "update": [self.updates],
                "first_pair": [int(first)],
                "last_pair": [int(last)],
                "pairs_total": [self.pairs],
                "time": [now],
            },
            metadata=self._metadata(status),
        )
        self.updates += 1
        self.dirty = False
        self.last_publish = now

    def stop_run(self, stop: dict[str, Any]) -> None:
        if self.run_uid is None:
            return
        if self.dirty:
            self.publish()
        exit_status = stop.get("exit_status", "unknown")
        final = "final" if self.pairs else "failed"
        reason = None if self.pairs else "no complete helicity pair received"
        if self.total is not None and self.geometry is not None:
            image = preview_image(self.total, self.geometry)
            self.results.write_array(
                (self.run_uid, "fth", "sum"),
                image,
                dims=["y", "x"],
                metadata=self._metadata(
                    final, reason=reason, pair_range=[self.first_pair, self.last_pair]
                ),
            )
        for name in ("preview", "preview_single", "updates"):
            if self.updates:
                self.results.update_metadata(
                    (self.run_uid, "fth", name),
                    {"status": final, "run_exit_status": exit_status, "pairs_total": self.pairs},
                )
        self.results.update_metadata(
            (self.run_uid, "fth"),
            self._metadata(final, reason=reason, run_exit_status=exit_status),
        )

    def status(self) -> dict[str, Any]:
        return {
            "pairs": self.pairs,
            "updates": self.updates,
            "unpaired": self.pairer.unpaired,
            "last_pair": self.last_pair,
        }

    # -- helpers ----------------------------------------------------------------------
    def _metadata(self, status: str, *, reason: str | None = None, **extra: Any) -> dict[str, Any]:
        assert self.run_uid is not None
        return provenance(
            self.run_uid,
            "fth",
            ALGORITHM,
            {"n_rolling": self.n_rolling, "max_rate_hz": 1.0 / self.min_interval, "geometry": self.geometry},
            status=status,  # type: ignore[arg-type]
            reason=reason,
            pairs_total=self.pairs,
            units="arb. (∝ mz, up to sign and scale)",
            **extra,
        )
