"""Full k-resolved ECM of a 5D-STEM data set: τ(r, k) and everything derived from it.

The steps (Huang & Voyles, 5D-STEM ECM; ``ARCHITECTURE.md`` §3):

1. **virtual ADF per repeat** — the first-ring annular dark field of every frame
   (:class:`.virtual.VirtualDetectors`), read in chunks of whole rasters;
2. **drift registration** — the ADF image of every repeat against the reference repeat
   (:func:`.registration.estimate_drift`), then the field of view every repeat covers
   (:func:`.registration.crop_to_common_field`);
3. **polar binning** — the first-ring strip cut into (k_r, k_φ) bins
   (:func:`.polar.polar_binning`, each camera pixel wholly in one bin);
4. **per-(r, k_p) g2 over repeats and KWW fits** — in blocks of scan rows, each block
   reading every repeat of its rows at the registered positions
   (:func:`.blocks.correlate_block`); the time per lag is the repeat period
   N_x·N_y/f plus flyback; blocks run on Dask (an in-process ``LocalCluster`` by
   default, a scheduler address, or a plain loop);
5. **statistics** — τ histograms with log-normal fits per k_φ, median τ vs k_r, the
   dynamic domain size ξ_τ (:mod:`.domains`), the ensemble g2 per k_r bin with its KWW
   fit and the ensemble two-time correlation G(t1, t2) per k_r bin.

Memory is bounded by one chunk of rasters (step 1) and one block of rows × all repeats
× strip pixels (step 4) per worker thread, plus the result maps.

References
----------
Huang & Voyles, k-resolved electron correlation microscopy by 5D-STEM.
L. He et al., Microsc. Microanal. 21, 1026 (2015); P. Zhang et al., Nat. Commun. 9, 1129
(2018) — ECM: per-pixel g2, KWW fits, log-normal τ, dynamic domains.
"""

from __future__ import annotations

import contextlib
import math
import time as _time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
from threadpoolctl import threadpool_limits

from ..cluster import dask_client
from .blocks import BlockResult, StripLayout, correlate_block, strip_layout, two_time_binning
from .domains import (
    DomainSize,
    LognormalFit,
    TauVsKr,
    domain_size,
    lognormal_fit,
    median_tau_vs_k_r,
    tau_histograms,
)
from .finite_run import estimator_kernel
from .geometry import DetectorGeometry
from .kww import KWWResult, fit_kww
from .polar import PolarBinning, polar_binning
from .registration import CommonField, DriftEstimate, crop_to_common_field, estimate_drift
from .virtual import VirtualDetectors

__all__ = [
    "ArrayFrames",
    "ECMOptions",
    "ECMResult",
    "FrameReader",
    "ScanInfo",
    "dask_client",
    "raster_table",
    "run_ecm",
    "steps",
]

ProgressCallback = Callable[[str, int, int], None]

ALGORITHM = (
    "k-resolved ECM: ADF drift registration, exact (k_r, k_φ) binning, per-(r, k_p) multi-tau "
    "g2 over scan repeats, KWW fits (Huang & Voyles, 5D-STEM ECM)"
)


def steps() -> tuple[str, ...]:
    """Every step :func:`run_ecm` reports to ``progress(step, done, total)``, in order."""
    return ("virtual ADF", "registration", "g2 + KWW", "statistics")


@runtime_checkable
class FrameReader(Protocol):
    """Where the frames are: anything that reads a contiguous range of frames.

    ``shape`` is (n_frames, det_ny, det_nx); ``read(start, stop)`` returns frames
    ``start … stop − 1`` as an array (k, det_ny, det_nx) of counts. The frames may live in
    an HDF5 file, in Tiled, or in memory (:class:`ArrayFrames`). With a distributed Dask
    scheduler the reader must be picklable.

    A reader may also have ``read_ranges(ranges)``, yielding ``(index, frames)`` for every
    ``(start, stop)`` of ``ranges`` in any order: a g2 block reads every repeat of its rows
    through it, so a remote reader can fetch several repeats per request.
    """

    @property
    def shape(self) -> tuple[int, int, int]: ...

    def read(self, start: int, stop: int) -> np.ndarray: ...


class ArrayFrames:
    """A :class:`FrameReader` over an array of frames (numpy, h5py dataset, dask array).

    Parameters
    ----------
    frames : array-like, shape (n_frames, det_ny, det_nx)
        Frames in recording order; only the ranges asked for are read.

    Raises
    ------
    ValueError
        If ``frames`` is not 3-D.
    """

    def __init__(self, frames: Any) -> None:
        if len(getattr(frames, "shape", ())) != 3:
            raise ValueError(
                f"frames must be (n_frames, det_ny, det_nx), got shape {getattr(frames, 'shape', None)}"
            )
        self.frames = frames

    @property
    def shape(self) -> tuple[int, int, int]:
        s = self.frames.shape
        return int(s[0]), int(s[1]), int(s[2])

    def read(self, start: int, stop: int) -> np.ndarray:
        return np.asarray(self.frames[int(start) : int(stop)])


@dataclass(frozen=True)
class ScanInfo:
    """The repeated raster of the acquisition.

    Attributes
    ----------
    nx, ny : int
        Positions per row (fast axis) and rows.
    repeats : int
        N_t.
    repeat_period : float
        Time between two visits of a position, s: N_x·N_y/f plus line and frame
        flyback (the start document's ``time_sampling_s``).
    scan_step_nm : float or None
        Distance between scan positions, nm (domain size in nm).
    """

    nx: int
    ny: int
    repeats: int
    repeat_period: float
    scan_step_nm: float | None = None

    def __post_init__(self) -> None:
        for name in ("nx", "ny", "repeats"):
            v = getattr(self, name)
            if isinstance(v, bool) or int(v) != v or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if self.repeats < 5:
            raise ValueError(f"repeats must be >= 5 for a KWW fit of g2 over repeats, got {self.repeats}")
        if not (math.isfinite(self.repeat_period) and self.repeat_period > 0):
            raise ValueError(f"repeat_period must be > 0 s, got {self.repeat_period!r}")
        if self.scan_step_nm is not None and not self.scan_step_nm > 0:
            raise ValueError(f"scan_step_nm must be > 0 nm, got {self.scan_step_nm!r}")


@dataclass
class ECMOptions:
    """Parameters of :func:`run_ecm` (all recorded with the results).

    Attributes
    ----------
    n_r : int or None
        k_r bins across the strip (None: one per camera pixel of strip width).
    n_phi : int or None
        k_φ bins over 2π (None: the fewest no wider than the probe convergence).
    k_r_range : tuple of float or None
        (k_min, k_max) of the strip, Å⁻¹ (None: k₁ ∓ ring width/2).
    phi_offset : float
        k_φ of the first bin edge, rad.
    n_buffers : int
        Multi-tau buffers per level (even, ≥ 2).
    register : bool
        Register the repeats on their ADF images (False: no drift correction).
    drift_reference : int
        Repeat the others are registered to.
    smooth_sigma : float
        Gaussian prefilter of the ADF images for registration, scan steps.
    drift_window : int
        Consecutive repeats whose ADF images are averaged before registration (drift
        is slow; one repeat of a small raster is noisy); every repeat of a window gets
        the window's shift.
    rows_per_block : int
        Scan rows per g2 block (memory: rows·nx·repeats·strip pixels·2 bytes).
    repeats_per_read : int
        Rasters read per chunk for the virtual ADF.
    two_time_max : int
        Frames of the two-time correlation at most (consecutive repeats summed beyond).
    histogram_bins : int
        Bins of the τ histograms.
    keep_g2 : bool
        Keep the per-(position, bin) g2 in the result (n_lags·ny·nx·n_r·n_phi floats).
    finite_run : bool
        Fit the expected value of the multi-tau estimator over the run
        (:mod:`.finite_run`) rather than the process g2, which removes the bias toward
        short τ of runs only ~10 τ long (False: the plain KWW model).
    flat_field : bool
        Weight pixels and positions by their inverse mean intensity before pooling them
        into a bin or the ensemble (:func:`.blocks.flat_field_weights`), so that the ring
        profile and thickness contrast do not raise the pooled g2's baseline.
    shared_contrast : bool
        Hold the KWW contrast A of each (k_r, k_φ) bin at its median over the block's
        positions and refit τ and β (:func:`.blocks.correlate_block`).
    scheduler : str or None
        ``"local"``: an in-process Dask ``LocalCluster``; ``"tcp://host:port"``: that
        scheduler; None: blocks one after the other in this thread.
    """

    n_r: int | None = None
    n_phi: int | None = None
    k_r_range: tuple[float, float] | None = None
    phi_offset: float = 0.0
    n_buffers: int = 16
    register: bool = True
    drift_reference: int = 0
    smooth_sigma: float = 1.0
    drift_window: int = 8
    rows_per_block: int = 4
    repeats_per_read: int = 8
    two_time_max: int = 512
    histogram_bins: int = 30
    keep_g2: bool = False
    finite_run: bool = True
    flat_field: bool = True
    shared_contrast: bool = True
    scheduler: str | None = "local"

    def validate(self) -> None:
        """Raise ValueError naming the first bad option."""
        for name in ("rows_per_block", "repeats_per_read", "histogram_bins", "drift_window"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        if isinstance(self.n_buffers, bool) or not isinstance(self.n_buffers, int) or self.n_buffers < 2 or self.n_buffers % 2:
            raise ValueError(f"n_buffers must be an even integer >= 2, got {self.n_buffers!r}")
        if not isinstance(self.two_time_max, int) or self.two_time_max < 2:
            raise ValueError(f"two_time_max must be an integer >= 2, got {self.two_time_max!r}")
        if self.smooth_sigma < 0:
            raise ValueError(f"smooth_sigma must be >= 0 scan steps, got {self.smooth_sigma!r}")
        if self.scheduler is not None and self.scheduler != "local" and "://" not in self.scheduler:
            raise ValueError(
                f"scheduler must be 'local', a scheduler address like tcp://host:8786, or None; got {self.scheduler!r}"
            )

    def parameters(self) -> dict[str, Any]:
        d = asdict(self)
        d["k_r_range"] = None if self.k_r_range is None else list(self.k_r_range)
        return d


@dataclass
class ECMResult:
    """Everything :func:`run_ecm` measured.

    Attributes
    ----------
    tau, beta, contrast : ndarray, shape (ny', nx', n_r, n_phi), float64
        KWW τ (s), β and A per registered scan position and (k_r, k_φ) bin; NaN where
        nothing was fitted. (ny', nx') is the common field of view.
    sigma_tau, sigma_beta, sigma_contrast : ndarray, same shape, float64
        One-standard-deviation uncertainties (s, 1, 1).
    flags : ndarray, same shape, int64
        :class:`.kww.KWWFlag` bits (0: good fit).
    chi2_reduced : ndarray, same shape, float64
        Reduced χ² of each fit (unit weights).
    lags : ndarray, shape (n_lags,), float64
        Lags of every g2, s (lag 0 first).
    lag_repeats : ndarray, shape (n_lags,), int64
        The same in scan repeats.
    g2_ensemble : ndarray, shape (n_r, n_lags), float64
        Ensemble g2 of every k_r bin (all positions, k_φ and pixels).
    ensemble_fit : KWWResult
        KWW fit of ``g2_ensemble``, arrays shape (n_r,).
    two_time : ndarray, shape (n_r, n_t, n_t), float64
        Ensemble two-time correlation per k_r bin.
    two_time_repeats : int
        Repeats summed per two-time frame (time per frame = that × repeat_period).
    g2 : ndarray or None, shape (n_lags, ny', nx', n_r, n_phi)
        Per-(position, bin) g2 when ``keep_g2``.
    adf : ndarray, shape (n_repeats, ny, nx), float64
        Virtual ADF image of every repeat (before registration).
    drift : DriftEstimate
        Drift of every repeat, scan steps.
    field : CommonField
        Registered field of view in the reference repeat's grid.
    polar : PolarBinning
        The (k_r, k_φ) bins.
    histograms : tuple of ndarray
        (counts (n_phi, bins) int64, edges (bins + 1,) s) of good-fit τ.
    lognormal : list of LognormalFit or None
        Log-normal fit of good-fit τ per k_φ bin (None where too few values).
    lognormal_all : LognormalFit or None
        The same over every bin.
    tau_vs_k_r : TauVsKr
        Median τ and quartiles per k_r bin (good fits).
    domain : DomainSize or None
        Dynamic domain size ξ_τ from the autocorrelation of the good-fit ln τ maps.
    median_tau : float
        Median of the good-fit τ, s (NaN if none).
    good_fraction : float
        Fraction of fitted (position, bin) with no flag.
    mean_counts : float
        Mean counts per strip pixel per frame (the measured I_s/(f·N_d)).
    scan : ScanInfo
    parameters : dict
    timings : dict
        Seconds per step.
    """

    tau: np.ndarray
    beta: np.ndarray
    contrast: np.ndarray
    sigma_tau: np.ndarray
    sigma_beta: np.ndarray
    sigma_contrast: np.ndarray
    flags: np.ndarray
    chi2_reduced: np.ndarray
    lags: np.ndarray
    lag_repeats: np.ndarray
    g2_ensemble: np.ndarray
    ensemble_fit: KWWResult
    two_time: np.ndarray
    two_time_repeats: int
    g2: np.ndarray | None
    adf: np.ndarray
    drift: DriftEstimate
    field: CommonField
    polar: PolarBinning
    histograms: tuple[np.ndarray, np.ndarray]
    lognormal: list[LognormalFit | None]
    lognormal_all: LognormalFit | None
    tau_vs_k_r: TauVsKr
    domain: DomainSize | None
    median_tau: float
    good_fraction: float
    mean_counts: float
    scan: ScanInfo
    parameters: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)

    def good_tau(self) -> np.ndarray:
        """τ where the fit has no flag, NaN elsewhere, shape of ``tau``."""
        return np.where(self.flags == 0, self.tau, np.nan)


def raster_table(
    scan: ScanInfo,
    n_frames: int,
    ix: np.ndarray | None = None,
    iy: np.ndarray | None = None,
    repeat: np.ndarray | None = None,
) -> np.ndarray:
    """Frame row of every (repeat, iy, ix).

    Parameters
    ----------
    scan : ScanInfo
    n_frames : int
        Frames recorded.
    ix, iy, repeat : ndarray, shape (n_frames,), int, optional
        Scan position and repeat of every frame (the camera's per-frame columns);
        None: raster order (x fastest, then y, then repeat).

    Returns
    -------
    ndarray, shape (repeats, ny, nx), int64

    Raises
    ------
    ValueError
        If a (repeat, position) has no frame or more than one, or a position lies
        outside the raster.
    """
    R, ny, nx = scan.repeats, scan.ny, scan.nx
    if ix is None and iy is None and repeat is None:
        if n_frames < R * ny * nx:
            raise ValueError(f"{n_frames} frames recorded, the {R}×{ny}×{nx} raster needs {R * ny * nx}")
        return np.arange(R * ny * nx, dtype=np.int64).reshape(R, ny, nx)
    if ix is None or iy is None or repeat is None:
        raise ValueError("give all of ix, iy and repeat, or none")
    ix, iy, repeat = (np.asarray(a, np.int64).ravel() for a in (ix, iy, repeat))
    if not ix.size == iy.size == repeat.size == n_frames:
        raise ValueError(
            f"ix, iy, repeat must have one entry per frame ({n_frames}), got {ix.size}, {iy.size}, {repeat.size}"
        )
    bad = (ix < 0) | (ix >= nx) | (iy < 0) | (iy >= ny) | (repeat < 0)
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        raise ValueError(f"frame {k} at (ix, iy, repeat) = ({ix[k]}, {iy[k]}, {repeat[k]}) is outside the raster")
    keep = repeat < R
    table = np.full((R, ny, nx), -1, np.int64)
    flat = (repeat[keep] * ny + iy[keep]) * nx + ix[keep]
    if np.unique(flat).size != flat.size:
        raise ValueError("some (repeat, position) was recorded more than once")
    table.ravel()[flat] = np.flatnonzero(keep)
    missing = int((table < 0).sum())
    if missing:
        raise ValueError(f"{missing} of {table.size} (repeat, position) pairs have no frame: incomplete raster")
    return table


def _read_rows(reader: FrameReader, rows: np.ndarray) -> np.ndarray:
    """Frames at ``rows`` (any shape of int rows) with one contiguous read."""
    flat = rows.ravel()
    lo, hi = int(flat.min()), int(flat.max()) + 1
    block = np.asarray(reader.read(lo, hi))
    return block[flat - lo].reshape(*rows.shape, *block.shape[1:])


def _iter_ranges(reader: FrameReader, ranges: list[tuple[int, int]]) -> Iterator[tuple[int, np.ndarray]]:
    """(index, frames) of every range: the reader's ``read_ranges`` (merged requests) when
    it has one, else one ``read`` per range."""
    read_ranges = getattr(reader, "read_ranges", None)
    if read_ranges is not None:
        yield from read_ranges(ranges)
        return
    for i, (a, b) in enumerate(ranges):
        yield i, reader.read(a, b)


def _adf_task(
    reader: FrameReader, weights: np.ndarray, strip: np.ndarray, rows: np.ndarray
) -> tuple[np.ndarray, np.ndarray, int]:
    """ADF image of some rasters, plus the counts of every strip pixel (dose, flat field)."""
    frames = _read_rows(reader, rows)
    flat = frames.reshape(-1, frames.shape[-2] * frames.shape[-1])
    with threadpool_limits(limits=1, user_api="blas"):  # see run_ecm: Dask's threads are the parallelism
        adf = (flat.astype(np.float64) @ weights).reshape(rows.shape)
    counts = flat[:, strip].sum(axis=0, dtype=np.float64)
    return adf, counts, int(flat.shape[0] * strip.size)


def _block_task(
    reader: FrameReader,
    table: np.ndarray,
    shift: np.ndarray,
    rows: tuple[int, int],
    cols: tuple[int, int],
    layout: StripLayout,
    repeat_period: float,
    n_buffers: int,
    two_time_max: int,
    finite_run: bool = True,
    flat_field: bool = True,
    shared_contrast: bool = True,
    profile: np.ndarray | None = None,
) -> BlockResult:
    """Read every repeat of registered rows ``rows`` (cols ``cols``), strip pixels only, and correlate.

    Output position q of repeat r is input position q − d_r, as in
    :func:`.registration.crop_to_common_field`.
    """
    R = table.shape[0]
    b, w = rows[1] - rows[0], cols[1] - cols[0]
    idx = [table[r, rows[0] - int(shift[r, 0]) : rows[1] - int(shift[r, 0]),
                 cols[0] - int(shift[r, 1]) : cols[1] - int(shift[r, 1])].ravel() for r in range(R)]
    ranges = [(int(i.min()), int(i.max()) + 1) for i in idx]
    strip = None
    for r, block in _iter_ranges(reader, ranges):
        part = np.asarray(block)[idx[r] - ranges[r][0]].reshape(b, w, -1)[:, :, layout.pixels]
        if strip is None:
            strip = np.empty((R, b, w, layout.n_strip), dtype=part.dtype)
        strip[r] = part
    assert strip is not None
    with threadpool_limits(limits=1, user_api="blas"):  # see run_ecm: Dask's threads are the parallelism
        return correlate_block(
            strip, layout, repeat_period=repeat_period, rows=rows, n_buffers=n_buffers, two_time_max=two_time_max,
            finite_run=finite_run, flat_field=flat_field, shared_contrast=shared_contrast, profile=profile,
        )


def _run_tasks(
    client: Any,
    func: Callable[..., Any],
    args_list: list[tuple[Any, ...]],
    shared: tuple[Any, ...],
    step: str,
    report: ProgressCallback,
) -> list[Any]:
    """``func(*shared, *args)`` for every args, on Dask when a client is given; in order."""
    n = len(args_list)
    report(step, 0, n)
    out: list[Any] = [None] * n
    if client is None:
        for i, args in enumerate(args_list):
            out[i] = func(*shared, *args)
            report(step, i + 1, n)
        return out
    from dask.distributed import as_completed

    # hash=False: the same object scattered by an earlier step would map to the same key,
    # which that step's release can drop under this one ("lost dependencies").
    remote = [client.scatter(s, broadcast=True, hash=False) if isinstance(s, np.ndarray) or hasattr(s, "read") else s
              for s in shared]
    futures = [client.submit(func, *remote, *args, pure=False) for args in args_list]
    index = {f.key: i for i, f in enumerate(futures)}
    for done, fut in enumerate(as_completed(futures), start=1):
        out[index[fut.key]] = fut.result()
        report(step, done, n)
    return out


def run_ecm(
    frames: np.ndarray | FrameReader,
    geometry: DetectorGeometry,
    scan: ScanInfo,
    options: ECMOptions | None = None,
    *,
    ix: np.ndarray | None = None,
    iy: np.ndarray | None = None,
    repeat: np.ndarray | None = None,
    client: Any = None,
    progress: ProgressCallback | None = None,
) -> ECMResult:
    """k-resolved ECM of a 5D-STEM data set: τ(r, k_r, k_φ), β, A and their statistics.

    Parameters
    ----------
    frames : ndarray or FrameReader
        A 5-D array (n_repeats, ny, nx, det_ny, det_nx) of counts, or a reader of the
        frames in recording order, (n_frames, det_ny, det_nx) (:class:`ArrayFrames`
        wraps an h5py dataset or an array).
    geometry : DetectorGeometry
        Camera geometry (centre, k-calibration, first ring, probe convergence).
    scan : ScanInfo
        The raster: nx, ny, repeats and the repeat period (s).
    options : ECMOptions, optional
    ix, iy, repeat : ndarray, shape (n_frames,), int, optional
        Scan position and repeat of every frame (default: raster order).
    client : distributed.Client, optional
        Run the tasks on it; without one, ``options.scheduler`` decides.
    progress : callable, optional
        ``progress(step, done, total)``, ``step`` in :func:`steps`.

    Returns
    -------
    ECMResult

    Raises
    ------
    ValueError
        For a frame array of the wrong shape, a camera shape that is not the geometry's,
        bad options, an incomplete raster, or a drift that leaves no common field.
    TypeError
        If ``geometry`` is not a DetectorGeometry.
    """
    if not isinstance(geometry, DetectorGeometry):
        raise TypeError(f"geometry must be a DetectorGeometry, got {type(geometry).__name__}")
    opts = options or ECMOptions()
    opts.validate()

    def report(step: str, done: int, total: int) -> None:
        if progress is not None:
            progress(step, done, total)

    if isinstance(frames, np.ndarray):
        if frames.ndim != 5 or frames.shape[:3] != (scan.repeats, scan.ny, scan.nx):
            raise ValueError(
                f"a frame array must be (repeats, ny, nx, det_ny, det_nx) = ({scan.repeats}, {scan.ny}, "
                f"{scan.nx}, …), got shape {frames.shape}"
            )
        reader: FrameReader = ArrayFrames(frames.reshape(-1, *frames.shape[3:]))
    elif isinstance(frames, FrameReader):
        reader = frames
    else:
        raise TypeError(f"frames must be a 5-D ndarray or a FrameReader, got {type(frames).__name__}")
    n_frames, det_ny, det_nx = reader.shape
    if (det_ny, det_nx) != geometry.shape:
        raise ValueError(f"frames are {det_ny}×{det_nx} pixels, the geometry says {geometry.shape}")
    table = raster_table(scan, n_frames, ix, iy, repeat)

    polar = polar_binning(geometry, n_r=opts.n_r, n_phi=opts.n_phi, k_r_range=opts.k_r_range,
                          phi_offset=opts.phi_offset)
    layout = strip_layout(polar.labels, polar.n_r, polar.n_phi)
    detectors = VirtualDetectors(geometry)
    adf_weights = detectors.adf_mask.ravel().astype(np.float64)
    timings: dict[str, float] = {}

    with contextlib.ExitStack() as stack:
        # One BLAS thread per task: the tasks themselves run in parallel (Dask threads), and
        # BLAS threads on top of them oversubscribe the cores. The KWW fits and two-time
        # products are many small matrix products, for which OpenBLAS' spinning threads on
        # a loaded 2-core machine cost ≈ 10× (measured: one 4-row block of the default run,
        # 18 s → 8 s; the model products of the fits 3.3 s → 0.3 s). The limit is
        # process-wide (it covers the in-process LocalCluster's threads) and restored on exit.
        stack.enter_context(threadpool_limits(limits=1, user_api="blas"))
        if client is None:
            client = stack.enter_context(dask_client(opts.scheduler))

        # 1. virtual ADF per repeat, in chunks of whole rasters
        t0 = _time.perf_counter()
        R = scan.repeats
        chunks = [(table[r0 : r0 + opts.repeats_per_read],) for r0 in range(0, R, opts.repeats_per_read)]
        parts = _run_tasks(client, _adf_task, chunks, (reader, adf_weights, layout.pixels), "virtual ADF", report)
        adf = np.concatenate([p[0] for p in parts]) if parts else np.zeros((0, scan.ny, scan.nx))
        strip_counts = np.sum([p[1] for p in parts], axis=0)
        mean_counts = float(strip_counts.sum()) / max(sum(p[2] for p in parts), 1)
        timings["virtual ADF"] = _time.perf_counter() - t0

        # 2. drift registration and the common field
        t0 = _time.perf_counter()
        report("registration", 0, 1)
        w = opts.drift_window
        n_win = R // w
        if opts.register and n_win > 1:
            mean_adf = adf[: n_win * w].reshape(n_win, w, scan.ny, scan.nx).mean(axis=1)
            win = estimate_drift(mean_adf, reference=opts.drift_reference // w if opts.drift_reference >= 0
                                 else opts.drift_reference, smooth_sigma=opts.smooth_sigma,
                                 scan_step_nm=scan.scan_step_nm)
            win = _accept_significant(mean_adf, win, opts.smooth_sigma)
            win = _least_squares_shift(mean_adf, win)
            of = np.minimum(np.arange(R) // w, n_win - 1)
            step = scan.scan_step_nm
            drift = DriftEstimate(win.shift[of], None if step is None else win.shift[of] * step,
                                  win.correlation[of], int(opts.drift_reference % R), win.upsample_factor,
                                  win.chained)
        else:
            drift = DriftEstimate(np.zeros((R, 2)), None if scan.scan_step_nm is None else np.zeros((R, 2)),
                                  np.ones(R), 0, 1, False)
        shift = drift.integer_shift()
        _, fov = crop_to_common_field(adf, shift)
        report("registration", 1, 1)
        timings["registration"] = _time.perf_counter() - t0

        # 3 + 4. blocks of registered rows: strip pixels of every repeat → g2 → KWW
        t0 = _time.perf_counter()
        y0, y1 = fov.rows.start, fov.rows.stop
        cols = (fov.cols.start, fov.cols.stop)
        blocks = [((a, min(a + opts.rows_per_block, y1)), cols) for a in range(y0, y1, opts.rows_per_block)]
        results: list[BlockResult] = _run_tasks(
            client, _block_task_args, blocks,
            (reader, table, shift, layout, scan.repeat_period, opts.n_buffers, opts.two_time_max, opts.finite_run,
             opts.flat_field, opts.shared_contrast, strip_counts),
            "g2 + KWW", report,
        )
        timings["g2 + KWW"] = _time.perf_counter() - t0

    # 5. assemble and derive the statistics
    t0 = _time.perf_counter()
    report("statistics", 0, 1)
    out = _assemble(results, fov, layout, polar, scan, opts, adf, drift, mean_counts, timings)
    report("statistics", 1, 1)
    timings["statistics"] = _time.perf_counter() - t0
    return out


def _least_squares_shift(images: np.ndarray, est: DriftEstimate, min_overlap: float = 0.5) -> DriftEstimate:
    """Whole-step shift of every image that minimises the mean squared difference to the
    reference over an overlap of at least ``min_overlap`` of the field.

    A normalised cross-correlation is blind along the gradient of a smooth image: on a
    field of a few domain sizes the mass-thickness contrast is close to a ramp, and every
    shift along it correlates at ≈ 0.98 (measured on an 8×8 raster: shifts of 4–5 steps
    for a true 2). The squared difference is not (a ramp shifted by d − d' differs by the
    constant g·(d − d')), provided both images keep one intensity scale (a constant
    probe current; normalising each by its own mean would bring the ambiguity back).
    Every repeat is searched exhaustively (the fields of ECM rasters are small), on the
    unsmoothed images: a Gaussian prefilter's edge handling moved the optimum by a step on
    an 8×8 field, and the mean over the overlap already averages the noise.
    """
    imgs = np.asarray(images, np.float64)
    ref = imgs[est.reference]
    imgs = imgs / max(float(ref.mean()), 1e-300)  # one scale: the dose per position is constant
    ref = imgs[est.reference]
    ny, nx = ref.shape
    shift = est.shift.copy()
    corr = est.correlation.copy()
    reach_y, reach_x = int(ny * (1 - min_overlap)), int(nx * (1 - min_overlap))
    for r in range(imgs.shape[0]):
        if r == est.reference:
            continue
        best, best_d = np.inf, (0, 0)
        for dy in range(-reach_y, reach_y + 1):
            for dx in range(-reach_x, reach_x + 1):
                # image_r(p) ≈ ref(p + d): overlap of p and p + d inside the field
                y0, y1 = max(0, -dy), min(ny, ny - dy)
                x0, x1 = max(0, -dx), min(nx, nx - dx)
                if (y1 - y0) * (x1 - x0) < min_overlap * ny * nx:
                    continue
                diff = imgs[r, y0:y1, x0:x1] - ref[y0 + dy : y1 + dy, x0 + dx : x1 + dx]
                ssd = float(np.mean(diff * diff))
                if ssd < best - 1e-15 or (abs(ssd - best) <= 1e-15 and abs(dy) + abs(dx) < sum(map(abs, best_d))):
                    best, best_d = ssd, (dy, dx)
        # No drift is the null hypothesis: a shift is taken only when its squared
        # difference beats no shift by more than 3 standard errors of the mean squared
        # difference (≈ ssd·√(2/n) for n Gaussian differences); otherwise the noise of an
        # 8×8 field alone picked shifts of 1–2 steps on a sample that does not drift.
        if best_d != (0, 0):
            d0 = imgs[r] - ref
            ssd0 = float(np.mean(d0 * d0))
            n_best = (min(ny, ny - best_d[0]) - max(0, -best_d[0])) * (min(nx, nx - best_d[1]) - max(0, -best_d[1]))
            if ssd0 - best <= 3.0 * ssd0 * np.sqrt(2.0 / n_best):
                best_d = (0, 0)
        if tuple(np.rint(shift[r]).astype(int)) != best_d:
            shift[r] = best_d
            y0, y1 = max(0, -best_d[0]), min(ny, ny - best_d[0])
            x0, x1 = max(0, -best_d[1]), min(nx, nx - best_d[1])
            a = imgs[r, y0:y1, x0:x1].ravel()
            b = ref[y0 + best_d[0] : y1 + best_d[0], x0 + best_d[1] : x1 + best_d[1]].ravel()
            corr[r] = float(np.corrcoef(a, b)[0, 1]) if a.size > 1 else np.nan
    return DriftEstimate(shift, None, corr, est.reference, est.upsample_factor, est.chained)


def _accept_significant(images: np.ndarray, est: DriftEstimate, smooth_sigma: float) -> DriftEstimate:
    """Keep a non-zero shift only where it correlates the images better than no shift.

    On a small, nearly featureless field (a few nm of smooth mass-thickness contrast)
    the masked cross-correlation peak can sit on noise; a false shift would splice the
    speckle of different sample points into one time series and shorten τ.
    """
    from scipy import ndimage

    ref = ndimage.gaussian_filter(images[est.reference], smooth_sigma) if smooth_sigma else images[est.reference]
    shift = est.shift.copy()
    corr = est.correlation.copy()
    for r in range(images.shape[0]):
        if r == est.reference or not np.any(shift[r]):
            continue
        mov = ndimage.gaussian_filter(images[r], smooth_sigma) if smooth_sigma else images[r]
        zero = float(np.corrcoef(ref.ravel(), mov.ravel())[0, 1])
        if not corr[r] > zero + 0.05:
            shift[r] = 0.0
            corr[r] = zero
    return DriftEstimate(shift, None, corr, est.reference, est.upsample_factor, est.chained)


def _block_task_args(
    reader: FrameReader, table: np.ndarray, shift: np.ndarray, layout: StripLayout, repeat_period: float,
    n_buffers: int, two_time_max: int, finite_run: bool, flat_field: bool, shared_contrast: bool,
    profile: np.ndarray, rows: tuple[int, int], cols: tuple[int, int],
) -> BlockResult:  # fmt: skip
    return _block_task(reader, table, shift, rows, cols, layout, repeat_period, n_buffers, two_time_max,
                       finite_run, flat_field, shared_contrast, profile)


def _assemble(
    results: list[BlockResult],
    fov: CommonField,
    layout: StripLayout,
    polar: PolarBinning,
    scan: ScanInfo,
    opts: ECMOptions,
    adf: np.ndarray,
    drift: DriftEstimate,
    mean_counts: float,
    timings: dict[str, float],
) -> ECMResult:
    ny, nx = fov.shape
    shape = (ny, nx, polar.n_r, polar.n_phi)
    names = ("tau", "beta", "A", "sigma_tau", "sigma_beta", "sigma_A", "chi2_reduced")
    maps = {k: np.full(shape, np.nan) for k in names}
    flags = np.zeros(shape, np.int64)
    first = results[0]
    L = first.lags.size
    g2_all = np.full((L, *shape), np.nan) if opts.keep_g2 else None
    kr_G = np.zeros((L, polar.n_r))
    kr_P = np.zeros_like(kr_G)
    kr_F = np.zeros_like(kr_G)
    kr_n = np.zeros(polar.n_r, np.int64)
    tt_P = np.zeros_like(first.tt_products)
    tt_S = np.zeros_like(first.tt_sums)
    y0 = fov.rows.start
    for res in results:
        a, b = res.rows[0] - y0, res.rows[1] - y0
        for k in names:
            maps[k][a:b] = getattr(res.fit, k)
        flags[a:b] = res.fit.flags
        if g2_all is not None:
            g2_all[:, a:b] = res.g2
        kr_G += res.kr_products
        kr_P += res.kr_past
        kr_F += res.kr_future
        kr_n += res.kr_pixels
        tt_P += res.tt_products
        tt_S += res.tt_sums
    with np.errstate(divide="ignore", invalid="ignore"):
        g2_ens = (first.n_pairs[:, None] * kr_n[None, :] * kr_G / (kr_P * kr_F)).T
        two_time = tt_P * kr_n[:, None, None] / (tt_S[:, :, None] * tt_S[:, None, :])
    g2_ens[~np.isfinite(g2_ens)] = np.nan
    two_time[~np.isfinite(two_time)] = np.nan
    ens_sigma = np.broadcast_to((1.0 / np.sqrt(np.maximum(first.n_pairs, 1)))[:, None], g2_ens.T.shape)
    kernel = estimator_kernel(first.lags, first.level, first.n_pairs) if opts.finite_run else None
    ens_fit = fit_kww(first.lags, g2_ens.T, time_per_lag=scan.repeat_period, sigma=ens_sigma, kernel=kernel,
                      pooled=np.maximum(kr_n, 1).astype(float))

    fitted = np.isfinite(maps["tau"])
    good = fitted & (flags == 0)
    tau_good = np.where(good, maps["tau"], np.nan)
    n_good = int(good.sum())
    median_tau = float(np.nanmedian(tau_good)) if n_good else math.nan
    try:
        hist = tau_histograms(tau_good.reshape(-1, polar.n_phi), bins=opts.histogram_bins)
    except ValueError:
        hist = (np.zeros((polar.n_phi, opts.histogram_bins), np.int64), np.full(opts.histogram_bins + 1, np.nan))
    lognormal: list[LognormalFit | None] = []
    for j in range(polar.n_phi):
        try:
            lognormal.append(lognormal_fit(tau_good[..., j]))
        except ValueError:
            lognormal.append(None)
    try:
        lognormal_all = lognormal_fit(tau_good)
    except ValueError:
        lognormal_all = None
    tau_vs_kr = median_tau_vs_k_r(tau_good, k_r_axis=-2)
    try:
        domain = domain_size(tau_good.reshape(ny, nx, -1), scan_step_nm=scan.scan_step_nm)
    except (ValueError, RuntimeError):
        domain = None
    params = {**opts.parameters(), "n_r": polar.n_r, "n_phi": polar.n_phi,
              "k_r_edges": polar.k_r_edges.tolist(), "k_phi_edges": polar.k_phi_edges.tolist(),
              "repeat_period_s": scan.repeat_period, "scan": asdict(scan)}
    return ECMResult(
        tau=maps["tau"], beta=maps["beta"], contrast=maps["A"],
        sigma_tau=maps["sigma_tau"], sigma_beta=maps["sigma_beta"], sigma_contrast=maps["sigma_A"],
        flags=flags, chi2_reduced=maps["chi2_reduced"],
        lags=first.lags * scan.repeat_period, lag_repeats=first.lags,
        g2_ensemble=g2_ens, ensemble_fit=ens_fit,
        two_time=two_time, two_time_repeats=two_time_binning(scan.repeats, opts.two_time_max),
        g2=g2_all, adf=adf, drift=drift, field=fov, polar=polar,
        histograms=hist, lognormal=lognormal, lognormal_all=lognormal_all, tau_vs_k_r=tau_vs_kr,
        domain=domain, median_tau=median_tau,
        good_fraction=n_good / max(int(fitted.sum()), 1), mean_counts=float(mean_counts),
        scan=scan, parameters=params, timings=timings,
    )
