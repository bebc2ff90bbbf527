"""Serve a persistent, writable Tiled catalog; the process the embedded server runs.

Equivalent to ``tiled serve catalog DB --init -w FILES -w sqlite:///TABULAR -r DETECTOR``
with Tiled's multi-user access control: the writer key (environment variable
``SPECKLEFLOW_TILED_API_KEY``) and an optional read-only key
(``SPECKLEFLOW_TILED_READ_API_KEY``) are provisioned as scoped API keys in Tiled's
authentication database ``DIR/authn.db`` (see :mod:`speckleflow.services.tiled_auth`).
Keys come from the environment and are never printed (``tiled serve`` prints its key,
and a key on the command line is visible to every user of the machine in ``ps``).

Run as ``python -m speckleflow.services.tiled_app --data-dir DIR --port N``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

KEY_ENV = "SPECKLEFLOW_TILED_API_KEY"
READ_KEY_ENV = "SPECKLEFLOW_TILED_READ_API_KEY"

#: How long a table write waits for another writer's SQLite lock, ms.
SQLITE_BUSY_TIMEOUT_MS = 30_000


def _wait_for_sqlite_locks() -> None:
    """Give every pooled SQLite table-storage connection a busy timeout.

    Tiled's embedded SQL storage opens its SQLite connections without one, so a table
    append that meets another writer's lock fails at once ("database is locked", HTTP
    500) — and TiledWriter's retry of a failed append may duplicate rows of the raw
    run. With a busy timeout, concurrent appends (TiledWriter and the online workers)
    queue instead.
    """
    import functools

    import sqlalchemy
    from tiled.storage import SQLStorage

    original = SQLStorage.__dict__["_connection_pool"].func

    def set_busy_timeout(dbapi_connection, connection_record) -> None:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        finally:
            cursor.close()

    def pool_with_timeout(self):
        pool = original(self)
        if self.dialect == "sqlite":
            sqlalchemy.event.listen(pool, "connect", set_busy_timeout)
        return pool

    patched = functools.cached_property(pool_with_timeout)
    patched.__set_name__(SQLStorage, "_connection_pool")
    SQLStorage._connection_pool = patched


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True, type=Path)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument(
        "--read", action="append", default=[], type=Path, help="extra readable directory"
    )
    args = parser.parse_args(argv)

    from .settings import TiledServerSettings

    settings = TiledServerSettings()
    api_key = settings.tiled_api_key.get_secret_value() if settings.tiled_api_key else None
    if not api_key:
        print(f"error: {KEY_ENV} is not set; refusing to serve without an API key", file=sys.stderr)
        return 2

    from .tiled_auth import (
        READER,
        WRITER,
        authentication,
        cache_api_key_lookups,
        check_key,
        provision_api_keys,
    )

    read_key = settings.tiled_read_api_key.get_secret_value() if settings.tiled_read_api_key else None
    read_key = read_key or None
    try:
        check_key(api_key, KEY_ENV)
        if read_key is not None:
            check_key(read_key, READ_KEY_ENV)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    import uvicorn

    _wait_for_sqlite_locks()
    cache_api_key_lookups()
    from tiled.catalog import from_uri
    from tiled.config import Database
    from tiled.server.app import build_app

    d = args.data_dir.resolve()
    d.mkdir(parents=True, exist_ok=True)
    authn_uri = f"sqlite:///{d / 'authn.db'}"
    keys = {WRITER: api_key} | ({READER: read_key} if read_key else {})
    try:
        provision_api_keys(authn_uri, keys)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    readable = [d / "detector", *(p.resolve() for p in args.read)]
    tree = from_uri(
        f"sqlite:///{d / 'catalog.db'}",
        writable_storage=[str(d / "files"), f"sqlite:///{d / 'tabular.sqlite'}"],
        readable_storage=[str(p) for p in readable],
        init_if_not_exists=True,
    )
    app = build_app(
        tree,
        authentication(),
        server_settings={"database": Database(uri=authn_uri, init_if_not_exists=False)},
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
