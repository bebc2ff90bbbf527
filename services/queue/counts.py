"""What the adaptive plans read from Tiled: the online CCI worker's per-state counts, the g2 worker's τ."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from ..layout import ANALYSIS

log = logging.getLogger(__name__)


def tiled_state_counts(client: Any) -> Callable[[str], list[int] | None]:
    """A ``read_counts(run_uid)`` for :func:`speckleflow.plans.adaptive.cci_until_covered`.

    Parameters
    ----------
    client : tiled.client container
        The root of the Tiled server the online CCI worker writes to.

    Returns
    -------
    callable
        ``read_counts(run_uid) -> list[int] | None``: the ``state_counts`` metadata of
        ``analysis/<run_uid>/cci/assignments`` (pairs per state, the worker's
        numbering), or ``None`` while that node does not exist yet. Other errors
        (server unreachable) propagate; the plan counts them as "not known yet".
    """

    def read_counts(run_uid: str) -> list[int] | None:
        try:
            node = client[ANALYSIS][run_uid]["cci"]["assignments"]
        except KeyError:
            return None
        counts = node.metadata.get("state_counts")
        if counts is None:
            return None
        return [int(c) for c in counts]

    return read_counts


def tiled_g2_estimates(client: Any) -> Callable[[str], dict[str, Any] | None]:
    """A ``read_g2(run_uid)`` for :func:`speckleflow.plans.adaptive.ecm_adaptive`.

    Reads the online g2 worker's status node ``analysis/<run_uid>/workers/g2`` (one
    request): it is written on the worker's status path, never behind a backlog of
    results, whereas the ``analysis/<uid>/g2`` metadata waits behind the ensemble, fit
    and two-time writes of the same update (seen: an estimate minutes old on a loaded
    machine).

    Parameters
    ----------
    client : tiled.client container
        The root of the Tiled server the online g2 worker writes to.

    Returns
    -------
    callable
        ``read_g2(run_uid) -> dict | None``: ``frames`` (frames behind the estimate),
        ``tau_estimate_s`` (whole-ring KWW τ, s, or None), ``count_rate`` (electrons
        per pixel on the first ring per frame, or None), ``repeats_done``,
        ``frames_processed``, read afresh on every call; ``None`` while the node does not
        exist yet. Other errors propagate; the plan counts them as "not known yet".
    """

    def read_g2(run_uid: str) -> dict[str, Any] | None:
        try:
            node = client[f"{ANALYSIS}/{run_uid}/workers/g2"]
        except KeyError:
            return None
        md = node.metadata
        unit = md.get("unit") or {}
        return {
            "frames": unit.get("estimate_frames", 0),
            "tau_estimate_s": unit.get("tau_s"),
            "count_rate": unit.get("count_rate"),
            "repeats_done": unit.get("repeats_done"),
            "frames_processed": md.get("frames_processed"),
        }

    return read_g2
