"""The online CCI worker's per-state counts, read from Tiled for the adaptive plan."""

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
