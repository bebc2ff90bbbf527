"""The TiledWriter that records every run under ``raw/`` (one place for its settings).

bluesky-tiled-plugins' TiledWriter keeps an event's array values of at most
``max_array_size`` elements (default 16) as rows of the stream's SQL table and writes
larger ones as zarr arrays. The table rows go through ``pyarrow.Table.from_pylist``, which
refuses a multi-dimensional ndarray ("Can only convert 1-dimensional array values"): a
run whose device reads a small 2-D array failed at its stop document, e.g. the
Celeritas ``truth`` stream's per-repeat drift track (repeats, 3) of an ``ecm_5d`` run
with 2 repeats — (2, 3) is 6 ≤ 16 elements; with 20 repeats it is 60 and went to zarr.
Every array-valued data key is therefore written as an array node
(``max_array_size=0``): one layout whatever its size, read back with its shape.
"""

from __future__ import annotations

from typing import Any

#: Event arrays with more elements than this are arrays in Tiled; 0: every array.
MAX_ARRAY_SIZE = 0


def raw_run_writer(raw: Any, *, backup_directory: str | None = None, batch_size: int = 50) -> Any:
    """A TiledWriter for the runs under ``raw`` (subscribe it to the RunEngine).

    Parameters
    ----------
    raw : tiled.client container
        The ``raw`` container of the Tiled server (writable).
    backup_directory : str, optional
        TiledWriter's JSON-lines backup of a run it could not write.
    batch_size : int
        Event rows and StreamDatums cached before a write (≥ 1).

    Returns
    -------
    bluesky_tiled_plugins.TiledWriter

    Raises
    ------
    ValueError
        If ``batch_size`` < 1.
    """
    from bluesky_tiled_plugins import TiledWriter

    if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    return TiledWriter(raw, backup_directory=backup_directory, batch_size=int(batch_size),
                       max_array_size=MAX_ARRAY_SIZE)
