"""``speckleflow process cci <run uid>``: the full CCI pipeline on a run stored in Tiled.

Reads the helicity pairs of ``raw/<uid>`` back from Tiled in bounded chunks, computes
the pair features, clusters them (:func:`speckleflow.services.cci.states.run_cci_clustering`,
the correlation on Dask when asked), averages the raw holograms of every state and
internal mode in Fourier space, reconstructs them, analyses the dynamics and the pinning
landscape (:mod:`speckleflow.services.cci.products`), and publishes everything under
``analysis/<uid>/cci/`` with provenance metadata:

==========================  =====================================================
``labels``                  table: ``pair``, ``time`` (s), ``state`` (−1
                            unassigned), ``internal_mode``, ``score``
``state_holograms``         (state, helicity, y, x) mean photons per frame
``state_images``            (state, y, x) FTH images ∝ mz (NaN outside aperture)
``mode_images``             (mode, y, x) the same per internal mode
``correlation``             (pair_bin, pair_bin) block-mean Pearson r, recording order
``correlation_sorted``      the same, pairs sorted by state then mode
``linkage``                 (merge, 4) average-linkage tree (scipy format)
``misassignment``           (mode, mode) expected single-frame misassignment rate
``state_distance``          (state, state) Pearson distance of the state means
``transitions``             table: ``from_state``, ``to_state``, ``count``
``dwell``                   table: ``state``, ``start_time``, ``end_time``, …
``wall_occupancy``          (y, x) time-weighted domain-wall occupancy
``figures/<name>``          (y, x, rgba) uint8 renderings: state_timeline,
                            dendrogram, transition_network, state_images, pinning
==========================  =====================================================

The ``cci`` container's metadata carries the summary (states, modes, assigned
fraction, network, pinning sites, timings). The online worker's ``assignments`` table
in the same container is left as it is.
"""

from __future__ import annotations

import time as _time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .cluster import dask_client
from .layout import analysis_container, ensure_layout, provenance
from .raw_runs import (
    RunContentError,
    iter_frames,
    json_config,
    open_run,
    read_column,
    stream_configuration,
)

ProgressCallback = Callable[[str, int, int], None]

ALGORITHM = "CCI: Pearson correlation, average-linkage natural modes, misassignment grouping (Klose et al., Nature 614, 256 (2023))"

def steps() -> tuple[str, ...]:
    """Every step reported to ``progress(step, done, total)``, in order."""
    from .cci.products import PRODUCT_STEPS
    from .cci.states import PIPELINE_STEPS

    return ("features", *PIPELINE_STEPS, "averaging", *PRODUCT_STEPS, "publishing")


@dataclass
class CCIProcessOptions:
    """Parameters of ``speckleflow process cci`` (all recorded in the results' metadata).

    Attributes
    ----------
    detector : str
        ophyd name of the helicity CCD in the run (data keys ``<detector>_image``, …).
    threshold : float
        Misassignment rate above which internal modes are one state (Klose et al.: 1 %).
    min_mode_size, z_threshold : int or float, optional
        Natural-division criterion of the tree (library defaults when None).
    q_min_px, q_max_px : float, optional
        Feature annulus in detector pixels from q = 0 (defaults of
        :func:`~speckleflow.services.cci.features.feature_mask`).
    reference_filter : bool
        Patterson-map filter of the features.
    chunk_pairs : int
        Pairs read from Tiled per request (memory: 2·chunk_pairs frames).
    scheduler : str or None
        ``"local"``: an in-process Dask cluster for the correlation; a
        ``tcp://host:port`` address: that Dask scheduler; None: no Dask.
    figures_dir : Path or None
        Also write the figures there as PNG files.
    max_gap_pairs : int or None
        Transitions across longer unassigned gaps are not counted.
    """

    detector: str = "ccd"
    threshold: float = 0.01
    min_mode_size: int | None = None
    z_threshold: float | None = None
    q_min_px: float | None = None
    q_max_px: float | None = None
    reference_filter: bool = False
    chunk_pairs: int = 128
    scheduler: str | None = "local"
    figures_dir: Path | None = None
    max_gap_pairs: int | None = 10

    def validate(self) -> None:
        """Raise ValueError naming the first bad option."""
        if not 0 <= self.threshold < 1:
            raise ValueError(f"--threshold must be in [0, 1), got {self.threshold}")
        if self.chunk_pairs < 1:
            raise ValueError(f"--chunk-pairs must be >= 1, got {self.chunk_pairs}")
        if self.min_mode_size is not None and self.min_mode_size < 3:
            raise ValueError(f"--min-mode-size must be >= 3, got {self.min_mode_size}")

    def parameters(self) -> dict[str, Any]:
        d = asdict(self)
        d["figures_dir"] = None if self.figures_dir is None else str(self.figures_dir)
        return d


@dataclass
class StoredPairs:
    """Where the helicity pairs of a stored run are.

    Attributes
    ----------
    uid : str
    geometry : dict
        FTH mask geometry from the detector's configuration.
    image_key : str
    plus_rows, minus_rows : ndarray, shape (n_pairs,), int64
        Rows of ``primary`` holding each pair's + and − frame.
    time : ndarray, shape (n_pairs,), float64
        Time of each pair (its − frame), s from the first frame.
    time_base : str
        Which clock ``time`` is.
    unpaired : int
        Frames that belong to no (+, −) pair.
    """

    uid: str
    geometry: dict[str, Any]
    image_key: str
    plus_rows: np.ndarray
    minus_rows: np.ndarray
    time: np.ndarray
    time_base: str
    unpaired: int

    @property
    def n_pairs(self) -> int:
        return int(self.plus_rows.size)


def pair_rows(helicity: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """(+, −) pairs of consecutive frames, scanning the helicity sequence once.

    Parameters
    ----------
    helicity : ndarray, shape (n_frames,), int
        +1 / −1 per frame, in recording order.

    Returns
    -------
    plus_rows, minus_rows : ndarray, shape (n_pairs,), int64
    unpaired : int
        Frames left out (a + not followed by a −, a − not preceded by a +).
    """
    h = np.asarray(helicity).astype(np.int64)
    plus: list[int] = []
    i = 0
    while i < h.size - 1:
        if h[i] == 1 and h[i + 1] == -1:
            plus.append(i)
            i += 2
        else:
            i += 1
    p = np.asarray(plus, dtype=np.int64)
    return p, p + 1, int(h.size - 2 * p.size)


def index_stored_pairs(run: Any, detector: str = "ccd") -> StoredPairs:
    """Find the helicity pairs, geometry and clock of a stored CCI run.

    The time base is the simulator's clock (``truth`` stream, ``<detector>_truth_sim_time``)
    when the run has one — the simulated sample evolves in simulated seconds while the
    event time stamps record how fast the simulation ran — and the event time stamps of
    ``primary`` otherwise (a real detector).

    Raises
    ------
    RunContentError
        If the run has no ``primary`` stream, no helicity/image key, no geometry, or no
        complete pair.
    """
    uid = run.item["id"]
    config = stream_configuration(run, "primary", detector)
    geometry = json_config(config, f"{detector}_geometry")
    image_key = f"{detector}_image"
    helicity = read_column(run, "primary", f"{detector}_helicity")
    if image_key not in run["primary"]:
        raise RunContentError(f"stream 'primary' of run {uid} has no {image_key!r}")
    plus, minus, unpaired = pair_rows(helicity)
    if plus.size == 0:
        raise RunContentError(f"run {uid} holds no (+, −) helicity pair in {helicity.size} frames")
    sim_key = f"{detector}_truth_sim_time"
    if "truth" in run and sim_key in run["truth"]:
        clock = read_column(run, "truth", sim_key).astype(np.float64)
        time_base = f"simulator clock (truth/{sim_key})"
    else:
        clock = read_column(run, "primary", "time").astype(np.float64)
        time_base = "event time stamps (primary/time)"
    if clock.size < helicity.size:
        raise RunContentError(f"run {uid}: {clock.size} time stamps for {helicity.size} frames")
    t = clock[minus] - clock[0]
    return StoredPairs(uid, geometry, image_key, plus, minus, np.maximum.accumulate(t), time_base, unpaired)


def iter_pairs(run: Any, stored: StoredPairs, chunk_pairs: int):
    """Yield ``(pair_indices, plus, minus)`` chunks, frames as stored (uint16 counts)."""
    rows = np.empty(2 * stored.n_pairs, dtype=np.int64)
    rows[0::2], rows[1::2] = stored.plus_rows, stored.minus_rows
    first = 0
    for chunk in iter_frames(run, "primary", stored.image_key, rows, chunk_frames=2 * chunk_pairs):
        k = chunk.rows.size // 2
        yield np.arange(first, first + k), chunk.frames[0::2], chunk.frames[1::2]
        first += k


@dataclass
class CCIProcessResult:
    """What :func:`process_cci` did."""

    uid: str
    n_pairs: int
    n_states: int
    n_modes: int
    assigned_fraction: float
    state_counts: list[int]
    published: list[str]
    timings: dict[str, float]
    summary: dict[str, Any] = field(default_factory=dict)


def process_cci(
    client: Any,
    uid: str,
    opts: CCIProcessOptions | None = None,
    *,
    progress: ProgressCallback | None = None,
) -> CCIProcessResult:
    """Run the full CCI pipeline on ``raw/<uid>`` and publish under ``analysis/<uid>/cci``.

    Parameters
    ----------
    client : tiled.client container
        Root of a Tiled server with write access.
    uid : str
        Run uid (or a unique prefix of ≥ 8 characters).
    opts : CCIProcessOptions
    progress : callable, optional
        ``progress(step, done, total)``, ``step`` in :func:`steps`.

    Returns
    -------
    CCIProcessResult

    Raises
    ------
    UnknownRunError
        If there is no such run.
    RunContentError
        If the run is not a CCI series (no helicity pairs, no geometry).
    ValueError
        For bad options, or a series too short to cluster.
    """
    from .cci.features import feature_mask, pair_features
    from .cci.products import HologramSums, build_products
    from .cci.states import run_cci_clustering

    opts = opts or CCIProcessOptions()
    opts.validate()

    def report(step: str, done: int, total: int) -> None:
        if progress is not None:
            progress(step, done, total)

    timings: dict[str, float] = {}
    run = open_run(client, uid)
    stored = index_stored_pairs(run, opts.detector)
    uid = stored.uid
    mask = feature_mask(
        stored.geometry,
        q_min_px=opts.q_min_px,
        q_max_px=opts.q_max_px,
        reference_filter=opts.reference_filter,
    )
    n = stored.n_pairs

    t0 = _time.perf_counter()
    X = np.empty((n, mask.n_pixels), dtype=np.float32)
    report("features", 0, n)
    for idx, plus, minus in iter_pairs(run, stored, opts.chunk_pairs):
        X[idx] = pair_features(plus, minus, mask)
        report("features", int(idx[-1]) + 1, n)
    timings["features"] = _time.perf_counter() - t0

    with dask_client(opts.scheduler) as dask:
        result = run_cci_clustering(
            X,
            threshold=opts.threshold,
            min_mode_size=opts.min_mode_size,
            z_threshold=opts.z_threshold,
            client=dask,
            progress=progress,
        )
    timings.update(result.timings)

    t0 = _time.perf_counter()
    shape = tuple(int(v) for v in mask.shape)
    sums = HologramSums(shape, result.state, np.where(result.state >= 0, result.internal_mode, -1),
                        result.n_states, result.n_modes)
    report("averaging", 0, n)
    for idx, plus, minus in iter_pairs(run, stored, opts.chunk_pairs):
        sums.add(idx, plus, minus)
        report("averaging", int(idx[-1]) + 1, n)
    timings["averaging"] = _time.perf_counter() - t0

    t0 = _time.perf_counter()
    pixel_size = stored.geometry.get("pixel_size_nm")
    products = build_products(
        result, X, sums, stored.time, stored.geometry,
        max_gap_pairs=opts.max_gap_pairs, pixel_size_nm=pixel_size, progress=progress,
    )
    timings["products"] = _time.perf_counter() - t0

    t0 = _time.perf_counter()
    published = _publish(client, stored, opts, result, sums, products, timings, report)
    timings["publishing"] = _time.perf_counter() - t0
    if opts.figures_dir is not None:
        _save_pngs(opts.figures_dir / uid, products.figures)
    return CCIProcessResult(
        uid=uid,
        n_pairs=n,
        n_states=result.n_states,
        n_modes=result.n_modes,
        assigned_fraction=result.assigned_fraction,
        state_counts=[int(c) for c in result.state_counts],
        published=published,
        timings=timings,
        summary=_summary(stored, result, products, timings),
    )


def _summary(stored: StoredPairs, result: Any, products: Any, timings: dict[str, float]) -> dict[str, Any]:
    land = products.pinning
    return {
        "n_pairs": stored.n_pairs,
        "unpaired_frames": stored.unpaired,
        "time_base": stored.time_base,
        "n_states": result.n_states,
        "n_modes": result.n_modes,
        "assigned_fraction": result.assigned_fraction,
        "state_counts": [int(c) for c in result.state_counts],
        "mode_counts": [int(c) for c in result.mode_counts],
        "state_of_mode": [int(s) for s in result.state_of_mode],
        "n_transitions": int(products.transitions.sum()),
        "mean_dwell_s": [None if not np.isfinite(v) else float(v) for v in products.dwell.mean_s],
        "agglomerates": [sorted(int(s) for s in g) for g in products.agglomerates],
        "network": products.network_summary,
        "pinning": {
            "attractive_sites_yx": land.attractive_xy.round(2).tolist(),
            "n_repulsive_regions": int(land.repulsive_area_px.size),
            "parameters": land.parameters,
        },
        "timings_s": {k: round(float(v), 3) for k, v in timings.items()},
    }


def _save_pngs(directory: Path, figures: dict[str, np.ndarray]) -> None:
    import matplotlib.image

    directory.mkdir(parents=True, exist_ok=True)
    for name, rgba in figures.items():
        matplotlib.image.imsave(directory / f"{name}.png", rgba)


def _publish(client, stored, opts, result, sums, products, timings, report) -> list[str]:
    """Write the products under analysis/<uid>/cci (replacing an earlier processing)."""
    import pandas as pd

    from .cci.dynamics import transition_table

    ensure_layout(client)
    node = analysis_container(client, stored.uid, "cci")
    params = {**opts.parameters(), **result.parameters, "time_base": stored.time_base}

    def md(name: str, dims: list[str], units: str | None = None, **extra: Any) -> dict[str, Any]:
        m = provenance(stored.uid, "cci", ALGORITHM, params, status="final", dims=dims, **extra)
        if units:
            m["units"] = units
        m["name"] = name
        return m

    labels = pd.DataFrame({
        "pair": np.arange(stored.n_pairs, dtype=np.int64),
        "time": stored.time,
        "state": result.state.astype(np.int64),
        "internal_mode": result.internal_mode.astype(np.int64),
        "score": result.score.astype(np.float64),
    })
    dwell = pd.DataFrame({k: np.asarray(v) for k, v in products.timeline.as_columns().items()})
    arrays: dict[str, tuple[np.ndarray, list[str], str | None]] = {
        "state_holograms": (sums.state_means(), ["state", "helicity", "y", "x"], "photons per frame"),
        "state_images": (products.state_images, ["state", "y", "x"], "arbitrary (∝ mz)"),
        "mode_images": (products.mode_images, ["mode", "y", "x"], "arbitrary (∝ mz)"),
        "correlation": (result.correlation_view, ["pair_bin", "pair_bin"], "Pearson r"),
        "correlation_sorted": (result.correlation_view_sorted, ["pair_bin", "pair_bin"], "Pearson r"),
        "linkage": (result.linkage, ["merge", "column"], None),
        "misassignment": (result.misassignment.P, ["mode", "mode"], "probability"),
        "state_distance": (products.state_distance, ["state", "state"], "Pearson distance 1 − r"),
        "wall_occupancy": (products.wall_occupancy, ["y", "x"], "fraction of time"),
    }
    tables = {
        "labels": (labels, "one row per helicity pair; state −1 = unassigned; time in s"),
        "transitions": (pd.DataFrame(transition_table(products.transitions)), "state i → j counts"),
        "dwell": (dwell, "run-length segments of the state timeline; times in s"),
    }
    names = list(arrays) + list(tables) + [f"figures/{k}" for k in products.figures]
    old = [k for k in names if "/" not in k and k in node]
    if old:
        node.delete_contents(old, external_only=False)
    if "figures" in node:
        node.delete_contents(["figures"], recursive=True, external_only=False)
    total = len(names) + 1
    done = 0
    report("publishing", done, total)
    for key, (arr, dims, units) in arrays.items():
        node.write_array(np.ascontiguousarray(arr), key=key, metadata=md(key, dims, units))
        done += 1
        report("publishing", done, total)
    for key, (df, description) in tables.items():
        node.write_table(df, key=key, metadata=md(key, list(df.columns), description=description))
        done += 1
        report("publishing", done, total)
    figs = node.create_container("figures", metadata=md("figures", []))
    for key, rgba in products.figures.items():
        figs.write_array(rgba, key=key, metadata=md(key, ["y", "x", "rgba"], "uint8 RGBA"))
        done += 1
        report("publishing", done, total)
    summary = _summary(stored, result, products, timings)
    node.update_metadata(
        metadata={"full_processing": {**provenance(stored.uid, "cci", ALGORITHM, params, status="final"),
                                      "summary": summary}},
        drop_revision=True,
    )
    report("publishing", total, total)
    return names


def print_cci_processing(result: CCIProcessResult, where: str, console: Any) -> None:
    """Summary table of a CCI processing (shared by `process cci` and `run cci`)."""
    from rich.table import Table

    table = Table(title=f"CCI of run {result.uid}")
    table.add_column("quantity")
    table.add_column("value", justify="right")
    table.add_row("helicity pairs", str(result.n_pairs))
    table.add_row("assigned", f"{100 * result.assigned_fraction:.1f} %")
    table.add_row("states (internal modes)", f"{result.n_states} ({result.n_modes})")
    table.add_row("pairs per state", ", ".join(map(str, result.state_counts)))
    table.add_row("transitions", str(result.summary.get("n_transitions", "—")))
    table.add_row("agglomerates", str(len(result.summary.get("agglomerates", []))))
    table.add_row("attractive pinning sites", str(len(result.summary.get("pinning", {}).get("attractive_sites_yx", []))))
    table.add_row("time", f"{sum(result.timings.values()):.1f} s")
    console.print(table)
    console.print(
        f"results in {where}: analysis/{result.uid}/cci/ — {', '.join(result.published)}"
    )
