"""Soft signals that describe themselves with units, as bluesky consumers expect."""

from __future__ import annotations

from typing import Any

from ophyd import Signal


class SoftSignal(Signal):
    """An ophyd soft :class:`~ophyd.Signal` whose ``describe()`` carries ``units``.

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
        return desc
