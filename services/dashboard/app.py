"""``speckleflow dashboard``: a live web page of the runs in Tiled.

A FastAPI app (served by uvicorn) reads Tiled with its own client and gives the browser
compact JSON and PNG images, so the browser needs no Tiled key and no build step: the
page is one static HTML file with plain JavaScript that polls these endpoints.

==========================================  ==============================================
``GET /``                                   the page (``static/index.html``)
``GET /api/runs?limit=50``                  runs under ``raw/``, newest first
``GET /api/runs/{uid}``                     summary of a run: start/stop, FTH preview
                                            info, CCI counts and timeline (online and
                                            full processing), g2 curves and τ, workers
``GET /api/runs/{uid}/fth/preview.png``     latest FTH preview (``?index=i`` for update i)
``GET /api/runs/{uid}/cci/figures/{name}.png``  a full-processing figure, e.g.
                                            ``transition_network``
==========================================  ==============================================

What is read where is in :mod:`speckleflow.services.dashboard.reads`.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from importlib.resources import files
from typing import Any

from . import png, reads

STATIC = files("speckleflow.services.dashboard") / "static"
POLL_INTERVAL_S = 1.0


def create_app(client: Any, *, poll_interval_s: float = POLL_INTERVAL_S) -> Any:
    """The dashboard's FastAPI application.

    Parameters
    ----------
    client : tiled.client.container.Container
        Tiled client of the server root (a read-only key is enough). Requests are
        served one at a time through it.
    poll_interval_s : float
        How often the page polls, seconds (> 0).

    Returns
    -------
    fastapi.FastAPI

    Raises
    ------
    ValueError
        If ``poll_interval_s`` is not positive.
    """
    from fastapi import FastAPI, HTTPException, Query
    from fastapi.responses import HTMLResponse, JSONResponse, Response

    if not poll_interval_s > 0:
        raise ValueError(f"poll_interval_s must be > 0, got {poll_interval_s!r}")
    app = FastAPI(title="speckleflow dashboard", docs_url=None, redoc_url=None, openapi_url=None)
    lock = threading.Lock()  # one Tiled request at a time: bounded load on the server
    no_store = {"Cache-Control": "no-store"}

    def tiled(fn, *args: Any) -> Any:
        try:
            with lock:
                return fn(*args)
        except KeyError as exc:
            raise HTTPException(404, str(exc.args[0]) if exc.args else "not found") from exc
        except IndexError as exc:
            raise HTTPException(404, str(exc)) from exc

    @app.get("/", response_class=HTMLResponse)
    def index() -> HTMLResponse:
        html = (STATIC / "index.html").read_text(encoding="utf-8")
        return HTMLResponse(html.replace("__POLL_MS__", str(int(poll_interval_s * 1000))), headers=no_store)

    @app.get("/api/runs")
    def runs(limit: int = Query(50, ge=1, le=1000)) -> JSONResponse:
        return JSONResponse({"runs": tiled(reads.list_runs, client, limit)}, headers=no_store)

    @app.get("/api/runs/{uid}")
    def run(uid: str) -> JSONResponse:
        return JSONResponse(tiled(reads.run_summary, client, uid), headers=no_store)

    @app.get("/api/runs/{uid}/fth/preview.png")
    def preview(uid: str, index: int = -1) -> Response:
        image = tiled(reads.latest_preview, client, uid, index)
        # A given update never changes; "latest" does.
        cache = {"Cache-Control": "max-age=3600"} if index >= 0 else no_store
        return Response(png.image_png(image), media_type="image/png", headers=cache)

    @app.get("/api/runs/{uid}/cci/figures/{name}.png")
    def figure(uid: str, name: str) -> Response:
        rgba = tiled(reads.figure, client, uid, name)
        return Response(png.rgba_png(rgba), media_type="image/png", headers=no_store)

    return app


@contextlib.contextmanager
def serve_in_thread(app: Any, host: str = "127.0.0.1", port: int | None = None,
                    timeout: float = 30.0) -> Iterator[str]:
    """Serve ``app`` with uvicorn in a background thread; yields its base URL.

    Raises
    ------
    TimeoutError
        If the server has not started within ``timeout`` seconds.
    """
    import uvicorn

    from ..processes import free_tcp_port

    port = port or free_tcp_port(host)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="dashboard", daemon=True)
    thread.start()
    try:
        from ..processes import wait_until

        wait_until(lambda: server.started, timeout, interval=0.05, what=f"dashboard on {host}:{port}",
                   abort=lambda: None if thread.is_alive() else "the dashboard server exited")
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout)


def serve(client: Any, host: str = "127.0.0.1", port: int = 8060,
          poll_interval_s: float = POLL_INTERVAL_S) -> None:
    """Serve the dashboard until interrupted (Ctrl-C)."""
    import uvicorn

    uvicorn.run(create_app(client, poll_interval_s=poll_interval_s), host=host, port=port,
                log_level="warning")
