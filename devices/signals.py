"""Soft signals that describe themselves with units, as bluesky consumers expect."""

from __future__ import annotations

from typing import Any

import numpy as np
from ophyd import Signal


class SoftSignal(Signal):
    """An ophyd soft :class:`~ophyd.Signal` whose ``describe()`` carries ``units``.

    An array value is also described with its ``dtype_numpy`` (e.g. ``"<f8"``), so
    consumers such as TiledWriter store it with its own dtype.

    Parameters
    ----------
    units : str, optional
        Physical unit of the value (``"s"``, ``"photons"``, …), reported in the
        descriptor so Tiled and plots show it.
    """

    def __init__(self, *args: Any, units: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._units = units

    def describe(self) -> dict[str, dict[str, Any]]:
        desc = super().describe()
        if self._units is not None:
            desc[self.name]["units"] = self._units
        value = self._readback
        if isinstance(value, np.ndarray):
            desc[self.name]["dtype_numpy"] = value.dtype.str
        return desc
