"""Serve a persistent, writable Tiled catalog; the process the embedded server runs.

Equivalent to ``tiled serve catalog DB --init -w FILES -w duckdb:///TABULAR -r DETECTOR``
but the single-user API key comes from the environment variable
``SPECKLEFLOW_TILED_API_KEY`` and is never printed (``tiled serve`` prints it, and a
key on the command line is visible to every user of the machine in ``ps``).

Run as ``python -m speckleflow.services.tiled_app --data-dir DIR --port N``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

KEY_ENV = "SPECKLEFLOW_TILED_API_KEY"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True, type=Path)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument(
        "--read", action="append", default=[], type=Path, help="extra readable directory"
    )
    args = parser.parse_args(argv)

    api_key = os.environ.get(KEY_ENV)
    if not api_key:
        print(f"error: {KEY_ENV} is not set; refusing to serve without an API key", file=sys.stderr)
        return 2

    import uvicorn
    from tiled.catalog import from_uri
    from tiled.config import Authentication
    from tiled.server.app import build_app

    d = args.data_dir.resolve()
    readable = [d / "detector", *(p.resolve() for p in args.read)]
    tree = from_uri(
        f"sqlite:///{d / 'catalog.db'}",
        writable_storage=[str(d / "files"), f"duckdb:///{d / 'tabular.duckdb'}"],
        readable_storage=[str(p) for p in readable],
        init_if_not_exists=True,
    )
    app = build_app(tree, Authentication(single_user_api_key=api_key))
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
