"""Queue-server control: speckleflow's bluesky-queueserver profile and the processes around it.

Modules, one concept each:

- :mod:`.profile` — what the RunEngine worker of the queue server builds from the
  environment: devices, RunEngine, ZeroMQ publisher and TiledWriter subscriptions;
- :mod:`.counts` — the online CCI worker's per-state counts read from Tiled (what the
  adaptive plan decides on);
- :mod:`.redis` — redis-server on 127.0.0.1 (the queue server's store);
- :mod:`.manager` — ``start-re-manager`` as a child process, and its orderly stop;
- ``startup/`` — the startup directory handed to ``start-re-manager --startup-dir``.
"""

from .counts import tiled_state_counts
from .manager import STARTUP_DIR, REManagerProcess
from .redis import RedisServer

__all__ = ["STARTUP_DIR", "REManagerProcess", "RedisServer", "tiled_state_counts"]
