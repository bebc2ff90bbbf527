"""Reading stored runs back from Tiled (``raw/<uid>``, as TiledWriter wrote them).

Full processing (``speckleflow process <technique> <uid>``) starts here: find the run,
read a device's configuration from its stream's descriptor, and read detector frames
in bounded chunks so that a run larger than memory can be streamed through.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from .layout import RAW


class UnknownRunError(LookupError):
    """No run with this uid (or uid prefix) under ``raw/`` in the Tiled server."""


class RunContentError(ValueError):
    """The run exists but lacks what the processing needs (stream, data key, config)."""


def open_run(client: Any, uid: str) -> Any:
    """The Tiled node ``raw/<uid>``; a unique uid prefix of ≥ 8 characters also works.

    Raises
    ------
    UnknownRunError
        If no run (or more than one run for a prefix) matches ``uid``; the message
        lists up to five of the newest runs that do exist.
    """
    if not isinstance(uid, str) or not uid.strip():
        raise UnknownRunError(f"run uid must be a non-empty string, got {uid!r}")
    uid = uid.strip()
    raw = client[RAW]
    if uid in raw:
        return raw[uid]
    keys = list(raw.keys())
    matches = [k for k in keys if len(uid) >= 8 and k.startswith(uid)]
    if len(matches) == 1:
        return raw[matches[0]]
    some = ", ".join(keys[-5:]) or "none"
    if len(matches) > 1:
        raise UnknownRunError(f"run uid prefix {uid!r} is ambiguous: {matches[:5]}")
    raise UnknownRunError(
        f"no run {uid!r} under {RAW}/ at {client.uri}; newest runs there: {some}"
    )


def stream_configuration(run: Any, stream: str, device: str) -> dict[str, Any]:
    """Configuration values of ``device`` in the descriptor of ``stream``.

    Returns
    -------
    dict
        ``{data key: value}`` (e.g. ``{"ccd_geometry": "...json..."}``).

    Raises
    ------
    RunContentError
        If the stream or the device's configuration is missing.
    """
    if stream not in run:
        raise RunContentError(f"run {run.item['id']} has no stream {stream!r}; it has {list(run)}")
    config = run[stream].metadata.get("configuration", {})
    if device not in config:
        raise RunContentError(
            f"stream {stream!r} of run {run.item['id']} has no configuration for device "
            f"{device!r}; devices configured: {sorted(config)}"
        )
    return dict(config[device].get("data", {}))


def json_config(config: dict[str, Any], key: str) -> dict[str, Any]:
    """A configuration value stored as JSON text (or already a dict), parsed.

    Raises
    ------
    RunContentError
        If ``key`` is missing or not a JSON object.
    """
    if key not in config:
        raise RunContentError(f"configuration has no {key!r}; it has {sorted(config)}")
    raw = config[key]
    try:
        value = json.loads(raw) if isinstance(raw, str) else dict(raw)
    except (TypeError, ValueError) as exc:
        raise RunContentError(f"configuration {key!r} is not a JSON object: {raw!r:.80}") from exc
    if not isinstance(value, dict):
        raise RunContentError(f"configuration {key!r} is not a JSON object: {raw!r:.80}")
    return value


def read_column(run: Any, stream: str, key: str) -> np.ndarray:
    """One scalar column (``time``, a data key) of a stream, as a numpy array.

    Raises
    ------
    RunContentError
        If the stream or key is missing.
    """
    if stream not in run:
        raise RunContentError(f"run {run.item['id']} has no stream {stream!r}; it has {list(run)}")
    node = run[stream]
    if key not in node:
        raise RunContentError(f"stream {stream!r} has no data key {key!r}; it has {list(node)}")
    return np.asarray(node[key].read())


@dataclass(frozen=True)
class FrameChunk:
    """Frames ``rows`` of a detector data key, read in one request."""

    rows: np.ndarray
    frames: np.ndarray


def iter_frames(
    run: Any, stream: str, key: str, rows: np.ndarray, *, chunk_frames: int = 256
) -> Iterator[FrameChunk]:
    """Read frames ``rows`` of an array data key in chunks of contiguous row ranges.

    Parameters
    ----------
    rows : ndarray, shape (n,), int
        Increasing row indices into the stream.
    chunk_frames : int
        Frames per request (memory bound: chunk_frames·ny·nx·itemsize).

    Yields
    ------
    FrameChunk
        ``rows`` (k,) int64 and ``frames`` (k, ny, nx) in the stored dtype.

    Raises
    ------
    RunContentError
        If the key is missing or is not an image stack.
    ValueError
        If ``rows`` is not increasing or ``chunk_frames`` < 1.
    """
    if chunk_frames < 1:
        raise ValueError(f"chunk_frames must be >= 1, got {chunk_frames}")
    rows = np.asarray(rows, dtype=np.int64)
    if rows.size and np.any(np.diff(rows) <= 0):
        raise ValueError("rows must be strictly increasing")
    node = run[stream]
    if key not in node:
        raise RunContentError(f"stream {stream!r} has no data key {key!r}; it has {list(node)}")
    array = node[key]
    if len(array.shape) != 3:
        raise RunContentError(f"{stream}/{key} has shape {array.shape}, expected (frames, ny, nx)")
    if rows.size and rows[-1] >= array.shape[0]:
        raise RunContentError(f"{stream}/{key} holds {array.shape[0]} frames, row {rows[-1]} asked")
    for start in range(0, rows.size, chunk_frames):
        sel = rows[start : start + chunk_frames]
        block = np.asarray(array[int(sel[0]) : int(sel[-1]) + 1])
        yield FrameChunk(rows=sel, frames=block[sel - sel[0]])
