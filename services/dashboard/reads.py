"""What the dashboard reads from Tiled, as compact JSON-able dicts.

Every function takes a Tiled client of the server root and reads only the nodes it
needs (ARCHITECTURE.md § Where things are in Tiled):

``raw/<uid>``                              run metadata ``start`` / ``stop`` (TiledWriter)
``analysis/<uid>/fth/preview``             (update, y, x) float32, grown along axis 0
``analysis/<uid>/fth/updates``             table update, first_pair, last_pair, pairs_total, time
``analysis/<uid>/cci/assignments``         table pair, time, state, …; metadata ``state_counts``,
                                           ``n_templates``, ``current_state``, ``latency_ms``
``analysis/<uid>/cci/labels``              full processing: table pair, time, state, …
``analysis/<uid>/cci/figures/<name>``      (y, x, rgba) uint8, e.g. ``transition_network``
``analysis/<uid>/workers/<kind>``          container whose metadata is the worker's live
                                           status for the run (frames_seen, frames_processed,
                                           missed, gaps, decode_errors, dropped, lag_s, …)
``analysis/<uid>/g2/…``                    g2 results (see :data:`G2_ENSEMBLE`, :data:`G2_FIT`)

g2 (issue 5) is not published yet; the dashboard reads it when these nodes appear:

``analysis/<uid>/g2/ensemble``  array (k_r, lag) float64, dims ``["k_r", "lag"]``: the
                                ensemble-averaged g2(k_r, Δt) per k_r bin. Metadata
                                ``lag`` (list, Δt in s, length = n_lag) and ``k_r``
                                (list, bin centres in Å⁻¹, length = n_k_r); a sibling
                                array ``lag`` / ``k_r`` is used instead when present.
``analysis/<uid>/g2/fit``       table, one row per k_r bin: ``k_r`` (Å⁻¹), ``tau`` (s),
                                ``beta``, ``contrast`` (A) of the KWW fit
                                g2 = 1 + A·exp(−2(Δt/τ)^β); ``beta`` and ``contrast``
                                optional.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..layout import ANALYSIS, RAW

G2_ENSEMBLE = "ensemble"
G2_FIT = "fit"
MAX_TIMELINE_POINTS = 5000


def _child(node: Any, *keys: str) -> Any | None:
    """``node["k1/k2/…"]`` (one request) or ``None`` if it is missing."""
    if node is None:
        return None
    try:
        return node["/".join(keys)]
    except KeyError:
        return None


def _children(node: Any | None) -> dict[str, Any]:
    """All children of a container with their metadata, in one paginated request."""
    return {} if node is None else dict(node.items())


def _json(value: Any) -> Any:
    """NaN/inf → None and numpy scalars → Python, recursively (strict JSON)."""
    if isinstance(value, dict):
        return {str(k): _json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def list_runs(client: Any, limit: int = 50) -> list[dict[str, Any]]:
    """The newest ``limit`` runs under ``raw/``, newest first.

    Parameters
    ----------
    client : tiled.client.container.Container
        The server root.
    limit : int
        Most runs returned (≥ 1).

    Returns
    -------
    list of dict
        ``uid``, ``time`` (start, s since the epoch), ``plan_name``, ``exit_status``
        (``None`` while the run goes on), ``num_points`` (planned frames or pairs).

    Raises
    ------
    ValueError
        If ``limit`` < 1.
    """
    if limit < 1:
        raise ValueError(f"limit must be ≥ 1, got {limit!r}")
    raw = _child(client, RAW)
    if raw is None:
        return []
    # Keys come in insertion order; the newest runs are the last ones.
    n = len(raw)
    runs = []
    for uid, node in raw.items()[max(0, n - limit):n]:
        md = node.metadata
        start, stop = md.get("start") or {}, md.get("stop") or {}
        runs.append({
            "uid": uid,
            "time": start.get("time"),
            "plan_name": start.get("plan_name"),
            "exit_status": stop.get("exit_status"),
            "num_points": start.get("num_points"),
        })
    runs.sort(key=lambda r: r["time"] or 0.0, reverse=True)
    return _json(runs)


def run_summary(client: Any, uid: str) -> dict[str, Any]:
    """Everything the page shows for run ``uid`` except the images.

    Returns
    -------
    dict
        ``uid``, ``run`` (start/stop summary), ``fth``, ``cci``, ``g2``, ``workers``;
        a section is ``None`` when the run has no such results (yet).

    Raises
    ------
    KeyError
        If neither ``raw/<uid>`` nor ``analysis/<uid>`` exists.
    """
    raw = _child(client, RAW, uid)
    analysis = _child(client, ANALYSIS, uid)
    if raw is None and analysis is None:
        raise KeyError(f"no run {uid!r} in raw/ or analysis/")
    techniques = _children(analysis)
    return _json({
        "uid": uid,
        "run": _run_info(raw),
        "fth": _fth(techniques.get("fth")),
        "cci": _cci(techniques.get("cci")),
        "g2": g2_summary(techniques.get("g2")),
        "workers": _workers(techniques.get("workers")),
    })


def _run_info(raw: Any | None) -> dict[str, Any] | None:
    if raw is None:
        return None
    md = raw.metadata
    start, stop = md.get("start") or {}, md.get("stop") or {}
    return {
        "time": start.get("time"),
        "plan_name": start.get("plan_name"),
        "num_points": start.get("num_points"),
        "sample": start.get("sample"),
        "exit_status": stop.get("exit_status"),
        "reason": stop.get("reason"),
        "stop_time": stop.get("time"),
    }


def _fth(fth: Any | None) -> dict[str, Any] | None:
    preview = _children(fth).get("preview")
    if preview is None:
        return None
    md = preview.metadata
    shape = list(preview.shape)
    return {
        "updates": shape[0],
        "shape": shape[1:],
        "pair_range": md.get("pair_range"),
        "pairs_total": md.get("pairs_total"),
        "status": md.get("status"),
        "n_rolling": (md.get("parameters") or {}).get("n_rolling"),
    }


def _current_states(table: Any) -> tuple[np.ndarray, np.ndarray]:
    """(pair, state) with the last row of every pair, sorted by pair."""
    df = table.read(["pair", "state"])
    if len(df) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    last = df.groupby("pair", sort=True)["state"].last()
    return last.index.to_numpy(np.int64), last.to_numpy(np.int64)


def _timeline(pair: np.ndarray, state: np.ndarray) -> dict[str, Any]:
    step = max(1, math.ceil(len(pair) / MAX_TIMELINE_POINTS))
    return {"pair": pair[::step].tolist(), "state": state[::step].tolist(), "step": step}


def _cci(cci: Any | None) -> dict[str, Any] | None:
    if cci is None:
        return None
    out: dict[str, Any] = {"online": None, "full": None, "figures": []}
    children = _children(cci)
    assignments = children.get("assignments")
    if assignments is not None:
        md = assignments.metadata
        pair, state = _current_states(assignments)
        out["online"] = {
            "status": md.get("status"),
            "state_counts": md.get("state_counts", []),
            "n_templates": md.get("n_templates", 0),
            "current_state": md.get("current_state", -1),
            "pairs_total": md.get("pairs_total", len(pair)),
            "unassigned": md.get("unassigned", int(np.sum(state < 0))),
            "latency_ms": md.get("latency_ms"),
            "timeline": _timeline(pair, state),
        }
    labels = children.get("labels")
    if labels is not None:
        pair, state = _current_states(labels)
        assigned = state[state >= 0]
        summary = (cci.metadata.get("full_processing") or {}).get("summary") or {}
        out["full"] = {
            "status": labels.metadata.get("status"),
            "state_counts": np.bincount(assigned).tolist() if assigned.size else [],
            "pairs_total": len(pair),
            "unassigned": int(np.sum(state < 0)),
            "timeline": _timeline(pair, state),
            "summary": {k: v for k, v in summary.items() if isinstance(v, int | float | str)},
        }
    figures = children.get("figures")
    if figures is not None:
        out["figures"] = sorted(figures)
    return out


def _workers(workers: Any | None) -> dict[str, Any]:
    keep = ("status", "run_state", "frames_seen", "frames_processed", "missed", "gaps",
            "decode_errors", "dropped", "dropped_total", "lag_s", "updated", "results", "reason")
    return {kind: {k: node.metadata.get(k) for k in keep} for kind, node in _children(workers).items()}


def _axis(nodes: dict[str, Any], md: dict[str, Any], name: str, n: int) -> list[float]:
    node = nodes.get(name)
    values = np.asarray(node.read(), float) if node is not None else np.asarray(md.get(name, []), float)
    if values.shape != (n,):
        raise ValueError(
            f"analysis/…/g2/{G2_ENSEMBLE}: {name} has shape {values.shape}, expected ({n},)"
        )
    return values.tolist()


def g2_summary(g2: Any | None) -> dict[str, Any] | None:
    """g2 curves and τ estimates of a run, or ``None`` when it has none.

    ``g2`` is the client of ``analysis/<uid>/g2`` (or ``None``). Reads ``g2/ensemble``
    (k_r, lag) with its ``lag`` (s) and ``k_r`` (Å⁻¹) axes and, when present, the KWW
    fit table ``g2/fit`` (see the module docstring).

    Returns
    -------
    dict or None
        ``k_r`` (n_k_r,), ``lag`` (n_lag,), ``g2`` (n_k_r × n_lag nested lists),
        ``fit`` (list of row dicts k_r, tau, beta, contrast) or ``None``, ``status``,
        ``error`` (a message when the nodes are malformed, then the curves are empty).
    """
    if g2 is None:
        return None
    out: dict[str, Any] = {"k_r": [], "lag": [], "g2": [], "fit": None, "status": None, "error": None}
    nodes = _children(g2)
    ensemble = nodes.get(G2_ENSEMBLE)
    try:
        if ensemble is not None:
            md = ensemble.metadata
            curves = np.asarray(ensemble.read(), float)
            if curves.ndim != 2:
                raise ValueError(f"analysis/…/g2/{G2_ENSEMBLE} has shape {curves.shape}, expected (k_r, lag)")
            out["lag"] = _axis(nodes, md, "lag", curves.shape[1])
            out["k_r"] = _axis(nodes, md, "k_r", curves.shape[0])
            out["g2"] = curves.tolist()
            out["status"] = md.get("status")
        fit = nodes.get(G2_FIT)
        if fit is not None:
            df = fit.read()
            cols = [c for c in ("k_r", "tau", "beta", "contrast") if c in df.columns]
            out["fit"] = df[cols].to_dict(orient="records")
            out["status"] = out["status"] or fit.metadata.get("status")
    except ValueError as exc:
        out.update(k_r=[], lag=[], g2=[], error=str(exc))
    return out


def latest_preview(client: Any, uid: str, index: int = -1) -> np.ndarray:
    """One FTH preview image, ``analysis/<uid>/fth/preview[index]``.

    Returns
    -------
    ndarray, shape (y, x), float32
        Rolling-sum FTH preview (arbitrary units ∝ mz).

    Raises
    ------
    KeyError
        If the run has no preview (yet).
    IndexError
        If ``index`` is outside the updates published so far.
    """
    node = _child(client, ANALYSIS, uid, "fth", "preview")
    if node is None:
        raise KeyError(f"analysis/{uid}/fth/preview does not exist (yet)")
    n = node.shape[0]
    i = index + n if index < 0 else index
    if not 0 <= i < n:
        raise IndexError(f"preview update {index} out of range: {n} updates so far")
    return np.asarray(node[i])


def figure(client: Any, uid: str, name: str) -> np.ndarray:
    """The RGBA figure ``analysis/<uid>/cci/figures/<name>``, shape (y, x, 4) uint8.

    Raises
    ------
    KeyError
        If there is no such figure (full processing has not run, or another name).
    """
    node = _child(client, ANALYSIS, uid, "cci", "figures", name)
    if node is None:
        raise KeyError(f"analysis/{uid}/cci/figures/{name} does not exist")
    return np.asarray(node.read())
