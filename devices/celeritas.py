"""A DE-Celeritas-like fast pixelated camera for 4D/5D-STEM, flown by Bluesky.

The camera samples a :class:`~.liquid.LiquidSample` at the probe positions a
:class:`~.scan.ScanController` emits (its trigger input) and behaves like a fast
detector under Bluesky — flown, not stepped:

* ``stage()`` opens its own HDF5 file (SWMR) with ``/entry/data/data`` (frames,
  ``(n, rows, cols)`` uint16, one chunk per frame, compressed) and per-frame
  ``scan_ix``, ``scan_iy``, ``repeat`` (int32) and ``sim_time`` (float64, s);
* ``kickoff()`` arms it: a thread records one frame per scan point in batches of
  ``batch_size`` frames (simulated time, as fast as the model generates), applies the
  detector response (dark offset, gain, read noise; dark/gain correction; counting
  threshold), appends each batch to the file and publishes it on the data bus with
  ``scan_position`` ([ix, iy]), ``repeat``, ``frame_index`` and ``sim_time`` per frame
  in the header fields;
* ``complete()`` returns a status that finishes when the last frame is written;
* ``describe_collect()`` / ``collect_asset_docs()`` give the ``STREAM:`` data keys and
  the StreamResource/StreamDatum documents covering what was written since the last
  collect, so TiledWriter registers the frames and positions from the camera's file.
  The raw record never depends on the bus.

The ground truth of the sample (τ and β maps, contrast, k-calibration, drift track) is
in the ``truth`` sub-device, which plans read into the ``truth`` stream.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from event_model import StreamRange, compose_stream_resource
from ophyd import Component as Cpt
from ophyd import Device
from ophyd.status import Status

from .helicity_ccd import FramePublisher
from .liquid import LiquidSample
from .scan import ScanController, ScanPoints
from .signals import SoftSignal

__all__ = ["MAX_FRAME_RATE", "Celeritas", "CeleritasTruth", "DetectorResponse"]

log = logging.getLogger(__name__)

#: Highest frame rate the camera accepts, Hz.
MAX_FRAME_RATE = 100_000.0

DATASET = "/entry/data/data"
#: Per-frame datasets beside the frames: (suffix of the data key, dataset, dtype).
POSITION_DATASETS = (
    ("scan_ix", "/entry/data/scan_ix", "<i4"),
    ("scan_iy", "/entry/data/scan_iy", "<i4"),
    ("repeat", "/entry/data/repeat", "<i4"),
    ("sim_time", "/entry/data/sim_time", "<f8"),
)


class DetectorResponse:
    """Pixel response of the sensor: dark offset, gain, read noise, correction, counting.

    Raw signal in ADU: ``dark + gain·adu_per_electron·n + read_noise·N(0, 1)`` with
    per-pixel ``dark`` (mean ``dark_level``, rms ``dark_sd``) and ``gain`` (mean 1, rms
    ``gain_sd``) fixed-pattern maps.

    Parameters
    ----------
    shape : tuple of int
        (rows, cols).
    adu_per_electron : float
        Mean signal of one electron, ADU (> 0).
    dark_level, dark_sd : float
        Dark offset map, ADU.
    gain_sd : float
        Relative rms of the gain map, in [0, 0.5].
    read_noise : float
        Gaussian read noise, ADU rms (≥ 0; 0 skips it).
    seed : int
        Seeds the fixed-pattern maps and the read noise.
    """

    def __init__(
        self,
        shape: tuple[int, int],
        *,
        adu_per_electron: float = 20.0,
        dark_level: float = 100.0,
        dark_sd: float = 5.0,
        gain_sd: float = 0.05,
        read_noise: float = 2.0,
        seed: int = 0,
    ) -> None:
        if not adu_per_electron > 0:
            raise ValueError(f"adu_per_electron must be > 0, got {adu_per_electron!r}")
        if read_noise < 0 or dark_sd < 0 or dark_level < 0:
            raise ValueError("read_noise, dark_level and dark_sd must be >= 0 ADU")
        if not 0 <= gain_sd <= 0.5:
            raise ValueError(f"gain_sd must be in [0, 0.5], got {gain_sd!r}")
        self.shape = (int(shape[0]), int(shape[1]))
        self.adu_per_electron = float(adu_per_electron)
        self.read_noise = float(read_noise)
        self.rng = np.random.default_rng([seed, 0xCE1E])
        self.dark = (dark_level + dark_sd * self.rng.standard_normal(self.shape)).astype(np.float32)
        self.gain = np.clip(1.0 + gain_sd * self.rng.standard_normal(self.shape), 0.5, 1.5).astype(np.float32)
        self._inv_gain = (1.0 / self.gain).astype(np.float32)
        self._scale = (self.gain * self.adu_per_electron).astype(np.float32)

    def raw(self, electrons: np.ndarray) -> np.ndarray:
        """Raw signal, ADU, float32 of the shape of ``electrons`` ((n, rows, cols))."""
        signal = electrons.astype(np.float32) * self._scale + self.dark
        if self.read_noise > 0:
            signal += self.read_noise * self.rng.standard_normal(signal.shape, dtype=np.float32)
        return signal

    def process(
        self,
        electrons: np.ndarray,
        *,
        dark_correction: bool = True,
        gain_correction: bool = True,
        counting: bool = True,
        threshold: float = 0.5,
    ) -> np.ndarray:
        """Frames as the camera outputs them.

        Parameters
        ----------
        electrons : ndarray, shape (n, rows, cols), int
            Electrons per pixel.
        dark_correction, gain_correction : bool
            Subtract the dark map; divide by the gain map.
        counting : bool
            Output electron counts: a pixel whose signal reaches ``threshold``
            electrons counts max(1, round(signal/adu_per_electron)) electrons, others
            0. Without counting the output is ADU.
        threshold : float
            Counting threshold, electrons (≥ 0).

        Returns
        -------
        ndarray, shape (n, rows, cols), uint16
            Counts (electrons) or ADU, clipped to [0, 65535].
        """
        if threshold < 0:
            raise ValueError(f"threshold must be >= 0 electrons, got {threshold!r}")
        signal = self.raw(electrons)
        if dark_correction:
            signal -= self.dark
        if gain_correction:
            signal *= self._inv_gain
        if counting:
            signal *= np.float32(1.0 / self.adu_per_electron)
            hit = signal >= threshold
            np.rint(signal, out=signal)
            np.maximum(signal, np.float32(1.0), out=signal, where=hit)
            signal[~hit] = 0.0
        else:
            np.rint(signal, out=signal)
        np.clip(signal, 0, 65535, out=signal)
        return signal.astype(np.uint16)


class CeleritasTruth(Device):
    """Ground truth of the sample the camera looked at, read into the ``truth`` stream.

    ``tau``/``beta``: (ny, nx, n_phi_bins) maps at the scan positions (s, −);
    ``contrast``: speckle contrast A per detector pixel; ``phi_bin``: k_φ bin per
    detector pixel (−1 off the dynamic ring); ``drift``: (repeats, 3) simulated time (s)
    and displacement (dy, dx) (nm) at the first frame of each repeat; ``drift_shift``:
    (repeats, 2) the integer site shift (scan positions) then.
    """

    tau = Cpt(SoftSignal, value=np.zeros((1, 1, 1)), kind="hinted", units="s")
    beta = Cpt(SoftSignal, value=np.zeros((1, 1, 1)), kind="normal")
    ensemble_tau = Cpt(SoftSignal, value=0.0, kind="hinted", units="s")
    contrast = Cpt(SoftSignal, value=np.zeros((1, 1), np.float32), kind="normal")
    phi_bin = Cpt(SoftSignal, value=np.zeros((1, 1), np.int16), kind="normal")
    k_per_pixel = Cpt(SoftSignal, value=0.0, kind="normal", units="1/angstrom")
    ring_radius = Cpt(SoftSignal, value=0.0, kind="normal", units="1/angstrom")
    ring_radius_px = Cpt(SoftSignal, value=0.0, kind="normal", units="pixel")
    domain_size = Cpt(SoftSignal, value=0.0, kind="normal", units="nm")
    drift = Cpt(SoftSignal, value=np.zeros((0, 3)), kind="normal")
    drift_shift = Cpt(SoftSignal, value=np.zeros((0, 2), np.int32), kind="normal")

    def load(self, sample: LiquidSample) -> None:
        """Set the static maps from the sample's truth."""
        t = sample.truth()
        self.tau.put(t.tau)
        self.beta.put(t.beta)
        self.ensemble_tau.put(t.ensemble_tau)
        self.contrast.put(t.contrast)
        self.phi_bin.put(t.phi_bin)
        self.k_per_pixel.put(t.k_per_pixel)
        self.ring_radius.put(t.ring_radius)
        self.ring_radius_px.put(t.ring_radius_px)
        self.domain_size.put(t.domain_size_nm)


class Celeritas(Device):
    """Simulated DE-Celeritas-like camera (Flyable, Collectable, Stageable, Configurable).

    Parameters
    ----------
    sample : LiquidSample
        The physics the camera samples; its ``detector_shape`` is the readout area.
    scan : ScanController
        The scan generator whose points trigger the frames.
    directory : str or Path
        Where the camera writes its HDF5 files (readable by the Tiled server).
    publisher : FramePublisher, optional
        Bus publisher; frames go out as stream ``name`` in batches of ``batch_size``.
    response : DetectorResponse, optional
        Sensor response; a default one seeded from the sample's seed.
    batch_size : int
        Frames per write, per bus message and per ``next_points`` request.
    compression : str
        HDF5 filter of the frames: ``"gzip"`` (level ``compression_opts``), ``"lzf"`` or
        ``"none"``.
    compression_opts : int, optional
        gzip level (default 1).
    start_timeout : float
        Longest wait, s (wall clock), for the scan to start after kickoff.
    name : str
        ophyd name; data keys are ``<name>_image``, ``<name>_scan_ix`` …

    Notes
    -----
    Configuration signals: ``frame_rate`` (Hz, must equal 1/dwell of the scan),
    ``dose`` (electrons per pixel on the first ring per frame), ``counting``,
    ``counting_threshold`` (electrons), ``dark_correction``, ``gain_correction`` and
    ``geometry`` (JSON: detector shape, k-calibration, ring radius, N_d, convergence …;
    workers read it from the descriptor).
    """

    frame_rate = Cpt(SoftSignal, value=10_000.0, kind="config", units="Hz")
    dose = Cpt(SoftSignal, value=1.0, kind="config", units="electrons/pixel/frame")
    counting = Cpt(SoftSignal, value=True, kind="config")
    counting_threshold = Cpt(SoftSignal, value=0.5, kind="config", units="electrons")
    dark_correction = Cpt(SoftSignal, value=True, kind="config")
    gain_correction = Cpt(SoftSignal, value=True, kind="config")
    geometry = Cpt(SoftSignal, value="{}", kind="config")
    frames_written = Cpt(SoftSignal, value=0, kind="normal")
    truth = Cpt(CeleritasTruth, kind="omitted")

    def __init__(
        self,
        sample: LiquidSample,
        scan: ScanController,
        directory: str | Path,
        *,
        publisher: FramePublisher | None = None,
        response: DetectorResponse | None = None,
        batch_size: int = 64,
        compression: str = "gzip",
        compression_opts: int | None = None,
        start_timeout: float = 60.0,
        name: str = "celeritas",
        **kwargs: Any,
    ) -> None:
        super().__init__(name=name, **kwargs)
        if int(batch_size) != batch_size or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if compression not in ("gzip", "lzf", "none"):
            raise ValueError(f"compression must be 'gzip', 'lzf' or 'none', got {compression!r}")
        self.sample = sample
        self.scan = scan
        self.directory = Path(directory).resolve()
        self.publisher = publisher
        self.response = response or DetectorResponse(sample.detector_shape, seed=sample.seed)
        self.batch_size = int(batch_size)
        self.compression = None if compression == "none" else compression
        self.compression_opts = (compression_opts if compression_opts is not None else 1) if compression == "gzip" else None
        self.start_timeout = float(start_timeout)
        self.geometry.put(json.dumps(sample.geometry()))
        self._lock = threading.Lock()
        self._file: h5py.File | None = None
        self._datasets: dict[str, h5py.Dataset] = {}
        self._bundles: dict[str, Any] = {}
        self._pending_resources: list[dict] = []
        self._written = 0
        self._collected = 0
        self._thread: threading.Thread | None = None
        self._status: Status | None = None
        self._abort = threading.Event()
        self._time_offset = 0.0
        self._drift: list[tuple[float, float, float]] = []
        self._drift_shift: list[tuple[int, int]] = []
        self.publish_errors = 0
        self.file_path: Path | None = None

    @property
    def image_key(self) -> str:
        return f"{self.name}_image"

    @property
    def frame_shape(self) -> tuple[int, int]:
        return self.sample.detector_shape

    def _key(self, suffix: str) -> str:
        return f"{self.name}_{suffix}"

    # -- Stageable --------------------------------------------------------------------
    def stage(self) -> list[Any]:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.file_path = self.directory / f"{self.name}_{uuid.uuid4()}.h5"
        rows, cols = self.frame_shape
        f = h5py.File(self.file_path, "w", libver="latest")
        uri = f"file://localhost{self.file_path}"
        self._datasets = {
            self.image_key: f.create_dataset(
                DATASET, shape=(0, rows, cols), maxshape=(None, rows, cols), dtype="<u2",
                chunks=(1, rows, cols), compression=self.compression, compression_opts=self.compression_opts,
            )
        }
        self._bundles = {
            self.image_key: compose_stream_resource(
                mimetype="application/x-hdf5", uri=uri, data_key=self.image_key,
                parameters={"dataset": DATASET, "chunk_shape": [1, rows, cols], "swmr": True},
            )
        }
        chunk = max(self.batch_size, 256)
        for suffix, path, dtype in POSITION_DATASETS:
            key = self._key(suffix)
            self._datasets[key] = f.create_dataset(path, shape=(0,), maxshape=(None,), dtype=dtype, chunks=(chunk,))
            self._bundles[key] = compose_stream_resource(
                mimetype="application/x-hdf5", uri=uri, data_key=key,
                parameters={"dataset": path, "chunk_shape": [chunk], "swmr": True},
            )
        f.swmr_mode = True
        self._file = f
        self._written = 0
        self._collected = 0
        self._pending_resources = [dict(b.stream_resource_doc) for b in self._bundles.values()]
        self.frames_written.put(0)
        self.truth.load(self.sample)
        return super().stage()

    def unstage(self) -> list[Any]:
        self._stop_thread("unstaged")
        with self._lock:
            if self._file is not None:
                self._file.close()
            self._file = None
            self._datasets = {}
        return super().unstage()

    def stop(self, *, success: bool = False) -> None:
        if not success:
            self._stop_thread("stopped")

    def _stop_thread(self, reason: str) -> None:
        thread = self._thread
        if thread is not None and thread.is_alive():
            self._abort.set()
            thread.join(timeout=30)
        self._thread = None
        status = self._status
        if status is not None and not status.done:
            status.set_exception(RuntimeError(f"{self.name}: acquisition {reason}"))

    # -- Flyable ----------------------------------------------------------------------
    def kickoff(self) -> Status:
        """Arm the camera: frames follow the scan's points once it is kicked off.

        Raises
        ------
        RuntimeError
            If not staged or already acquiring.
        ValueError
            If ``frame_rate`` is out of range or the scan's dwell is not 1/frame_rate,
            or the scan is larger than the sample model's field.
        """
        if self._file is None:
            raise RuntimeError(f"{self.name} is not staged: stage() opens its HDF5 file")
        if self._thread is not None and self._thread.is_alive():
            raise RuntimeError(f"{self.name} is already acquiring")
        rate = float(self.frame_rate.get())
        if not (math.isfinite(rate) and 0 < rate <= MAX_FRAME_RATE):
            raise ValueError(f"frame_rate must be in (0, {MAX_FRAME_RATE:g}] Hz, got {rate!r}")
        raster = self.scan.raster()
        if abs(raster.dwell * rate - 1.0) > 1e-6:
            raise ValueError(
                f"{self.name}: frame_rate {rate:g} Hz does not match the scan dwell {raster.dwell:g} s "
                f"(needs dwell = 1/f = {1 / rate:g} s)"
            )
        ny, nx = self.sample.scan_shape
        if raster.nx > nx or raster.ny > ny:
            raise ValueError(
                f"{self.name}: the scan ({raster.nx}×{raster.ny}) is larger than the sample model's "
                f"field ({nx}×{ny} positions)"
            )
        self.sample.dose = float(self.dose.get())
        settings = {
            "dark_correction": bool(self.dark_correction.get()),
            "gain_correction": bool(self.gain_correction.get()),
            "counting": bool(self.counting.get()),
            "threshold": float(self.counting_threshold.get()),
        }
        self._abort.clear()
        self._drift, self._drift_shift = [], []
        self._status = Status(obj=self)
        self._thread = threading.Thread(
            target=self._acquire, args=(settings,), name=f"{self.name}-acquire", daemon=True
        )
        self._thread.start()
        status = Status(obj=self)
        status.set_finished()
        return status

    def complete(self) -> Status:
        """Status that finishes when every frame of the scan is written."""
        if self._status is None:
            raise RuntimeError(f"{self.name}: complete() before kickoff()")
        return self._status

    def _acquire(self, settings: dict[str, Any]) -> None:
        status = self._status
        assert status is not None
        try:
            raster = self.scan.wait_started(self.start_timeout)
            if raster is None:
                raise TimeoutError(f"{self.name}: the scan did not start within {self.start_timeout} s")
            t0 = self._time_offset
            end = t0
            while not self._abort.is_set():
                pts = self.scan.next_points(self.batch_size)
                if pts is None:
                    break
                times = pts.time + t0
                frames = self.response.process(self.sample.electrons(pts.ix, pts.iy, times), **settings)
                self._write(frames, pts, times)
                self._note_drift(pts, times)
                self._publish(frames, pts, times, raster.nx, raster.ny, raster.repeats)
                end = float(times[-1]) + raster.dwell
            self._time_offset = end + raster.repeat_period
            self.truth.drift.put(np.asarray(self._drift, float).reshape(-1, 3))
            self.truth.drift_shift.put(np.asarray(self._drift_shift, np.int32).reshape(-1, 2))
            if self._abort.is_set():
                raise RuntimeError(f"{self.name}: acquisition aborted after {self._written} frames")
        except Exception as exc:
            log.exception("%s: acquisition failed", self.name)
            self.scan.abort("camera failed")
            if not status.done:
                status.set_exception(exc)
            return
        if not status.done:
            status.set_finished()

    def _write(self, frames: np.ndarray, pts: ScanPoints, times: np.ndarray) -> None:
        n = len(pts)
        with self._lock:
            if self._file is None:
                raise RuntimeError(f"{self.name}: file closed during acquisition")
            i = self._written
            columns = {
                self.image_key: frames,
                self._key("scan_ix"): pts.ix,
                self._key("scan_iy"): pts.iy,
                self._key("repeat"): pts.repeat,
                self._key("sim_time"): times,
            }
            for key, data in columns.items():
                ds = self._datasets[key]
                ds.resize(i + n, axis=0)
                ds[i : i + n] = data
            for ds in self._datasets.values():
                ds.flush()
            self._written = i + n
        self.frames_written.put(i + n)

    def _note_drift(self, pts: ScanPoints, times: np.ndarray) -> None:
        first = np.flatnonzero((pts.ix == 0) & (pts.iy == 0))
        for j in first:
            d = self.sample.drift(times[j])
            s = self.sample.site_shift(times[j])
            self._drift.append((float(times[j]), float(d[0]), float(d[1])))
            self._drift_shift.append((int(s[0]), int(s[1])))

    def _publish(self, frames: np.ndarray, pts: ScanPoints, times: np.ndarray, nx: int, ny: int, repeats: int) -> None:
        """Put a batch on the live bus; a failure here never touches the raw record."""
        if self.publisher is None:
            return
        run_uid = self.publisher.current_run_uid
        if run_uid is None:
            return
        try:
            self.publisher.publish_frames(
                run_uid,
                self.name,
                frames,
                scan_position=np.stack([pts.ix, pts.iy], axis=1).tolist(),
                repeat=pts.repeat.tolist(),
                frame_index=pts.frame_index.tolist(),
                sim_time=times.tolist(),
                scan_nx=int(nx),
                scan_ny=int(ny),
                repeats=int(repeats),
            )
        except Exception:
            self.publish_errors += 1
            log.exception("%s: publishing frames %d… on the bus failed", self.name, int(pts.frame_index[0]))

    # -- Collectable / WritesStreamAssets ------------------------------------------------
    def describe_collect(self) -> dict[str, dict[str, Any]]:
        rows, cols = self.frame_shape
        source = f"SIM:{self.name}:hdf5"
        units = "electrons" if self.counting.get() else "ADU"
        desc: dict[str, dict[str, Any]] = {
            self.image_key: {
                "source": source, "dtype": "array", "shape": [rows, cols], "dtype_numpy": "<u2",
                "external": "STREAM:", "units": units,
            }
        }
        for suffix, _, dtype in POSITION_DATASETS:
            desc[self._key(suffix)] = {
                "source": source, "dtype": "number" if dtype == "<f8" else "integer", "shape": [],
                "dtype_numpy": dtype, "external": "STREAM:", **({"units": "s"} if suffix == "sim_time" else {}),
            }
        return desc

    def get_index(self) -> int:
        """Frames written so far."""
        return self._written

    def collect_asset_docs(self, index: int | None = None) -> Iterator[tuple[str, dict]]:
        """StreamResources (once) and one StreamDatum per data key for the new frames."""
        for doc in self._pending_resources:
            yield "stream_resource", doc
        self._pending_resources = []
        with self._lock:
            stop = self._written if index is None else min(int(index), self._written)
        start = self._collected
        if stop <= start:
            return
        for bundle in self._bundles.values():
            yield "stream_datum", dict(bundle.compose_stream_datum(indices=StreamRange(start=start, stop=stop)))
        self._collected = stop
