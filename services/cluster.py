"""The Dask client full processing runs on (ARCHITECTURE.md: a local cluster by default,
any ``distributed`` scheduler address when given)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def dask_client(scheduler: str | None) -> Iterator[Any]:
    """A ``distributed.Client`` for ``scheduler``, closed (with its cluster) on exit.

    Parameters
    ----------
    scheduler : str or None
        ``"local"``: an in-process LocalCluster of one worker with two threads (no
        copies of large arrays between processes; dashboard on a free port); a
        ``tcp://host:port`` address: that scheduler (30 s connect timeout); None: no
        Dask (yields None).
    """
    if scheduler is None:
        yield None
        return
    from dask.distributed import Client, LocalCluster

    if scheduler == "local":
        with (
            LocalCluster(processes=False, n_workers=1, threads_per_worker=2, dashboard_address=":0") as cluster,
            Client(cluster) as client,
        ):
            yield client
    else:
        with Client(scheduler, timeout="30s") as client:
            yield client
