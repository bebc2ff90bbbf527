"""Helicity pairing of a detector's frames, shared by the online workers that need pairs.

A helicity-switching CCD records + then − frames (``cci_series``); the FTH preview and
the CCI assignment both work on consecutive (+, −) pairs. The detector publishes its
first frames before the RunEngine emits the descriptor that carries the mask geometry,
so frames that arrive before it are kept (bounded) and replayed once it is known.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import numpy as np

#: Frames kept while waiting for the descriptor; beyond this they are not used.
MAX_EARLY_FRAMES = 256

#: ``on_pair(pair_index, plus, minus, message)``: plus/minus are (ny, nx) frames; the
#: message is the one carrying the minus frame (its header has the time stamp).
PairCallback = Callable[[int, np.ndarray, np.ndarray, Any], None]


def detector_geometry(doc: dict[str, Any], detector: str) -> dict[str, Any] | None:
    """The ``<detector>_geometry`` configuration (JSON) of a descriptor, or None if absent."""
    config = doc.get("configuration", {}).get(detector, {}).get("data", {})
    raw = config.get(f"{detector}_geometry")
    if not raw:
        return None
    return json.loads(raw) if isinstance(raw, str) else dict(raw)


class HelicityPairer:
    """Pairs frame ``2k`` (helicity +1) with frame ``2k + 1`` (helicity −1) of one stream.

    Parameters
    ----------
    detector : str
        Bus stream (detector name) whose frames are paired; its descriptor
        configuration carries ``<detector>_geometry`` (JSON).
    on_pair : callable
        Called for every complete pair, see :data:`PairCallback`.
    """

    def __init__(self, detector: str, on_pair: PairCallback) -> None:
        self.detector = detector
        self.on_pair = on_pair
        self.geometry: dict[str, Any] | None = None
        self.pending_plus: tuple[int, np.ndarray] | None = None
        self.unpaired = 0
        self.early: list[Any] = []

    def geometry_from(self, doc: dict[str, Any]) -> dict[str, Any] | None:
        """Read the mask geometry from a descriptor document (None if it has none)."""
        geometry = detector_geometry(doc, self.detector)
        if geometry is not None:
            self.geometry = geometry
        return geometry

    def replay_early(self) -> None:
        """Pair the frames kept while the geometry was unknown (call once it is known)."""
        early, self.early = self.early, []
        for msg in early:
            self.frames(msg)

    def frames(self, msg: Any) -> int:
        """Pair the frames of one bus message; returns the number of frames used.

        Frames of other streams are not used (0). Before the geometry is known, frames
        are kept — and counted as used — up to :data:`MAX_EARLY_FRAMES`. A + frame
        without its − successor, or a − frame without its + predecessor, is counted in
        ``unpaired`` and not used.
        """
        if msg.header.stream != self.detector:
            return 0
        if self.geometry is None:
            if sum(m.n for m in self.early) + msg.n > MAX_EARLY_FRAMES:
                return 0
            self.early.append(msg)
            return msg.n
        used = 0
        for frame, h, i in zip(msg.frames, msg.per_frame("helicity"), msg.per_frame("frame_index"), strict=True):
            if int(h) == 1:
                if self.pending_plus is not None:
                    self.unpaired += 1
                self.pending_plus = (int(i), frame)
                used += 1
            elif self.pending_plus is not None and self.pending_plus[0] == int(i) - 1:
                plus = self.pending_plus[1]
                self.pending_plus = None
                self.on_pair(int(i) // 2, plus, frame, msg)
                used += 1
            else:
                self.unpaired += 1
        return used
