"""A helicity-switching soft-X-ray CCD looking at a fluctuating magnetic sample.

The device samples :class:`~.sample.MagneticSample` (the physics) and behaves like a
real stepped area detector under Bluesky:

* ``stage()`` opens its own HDF5 file (SWMR, dataset ``/entry/data/data``,
  chunked one frame per chunk) in ``directory``;
* each ``trigger()`` exposes for ``exposure_time`` seconds of *simulated* sample
  dynamics at the current ``helicity``, appends the frame to the file, and publishes
  it on the ZeroMQ data bus (when a publisher is given);
* ``read()``/``describe()`` expose the image as an external ``STREAM:`` data key and
  ``collect_asset_docs()`` yields the StreamResource/StreamDatum documents, so that
  TiledWriter registers the frames from the detector's file. The raw record therefore
  never depends on the live bus.

The ground truth of each exposure (dominant state, fraction, simulated time) is in the
``truth`` sub-device, which plans read into the ``truth`` stream.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import h5py
import numpy as np
from event_model import StreamRange, compose_stream_resource
from ophyd import Component as Cpt
from ophyd import Device
from ophyd.status import Status

from .sample import DEFAULT_PHOTONS_PER_FRAME, MagneticSample
from .signals import SoftSignal

log = logging.getLogger(__name__)

DATASET = "/entry/data/data"


class FramePublisher(Protocol):
    """What the device needs from a bus publisher (``speckleflow.streaming.BusPublisher``)."""

    @property
    def current_run_uid(self) -> str | None: ...

    def publish_frames(self, run_uid: str, stream: str, frames: np.ndarray, **fields: Any) -> int: ...


class SampleTruth(Device):
    """Ground truth of the last exposure, read into the run's ``truth`` stream."""

    state = Cpt(SoftSignal, value=-1, kind="hinted")
    state_fraction = Cpt(SoftSignal, value=1.0, kind="normal")
    hops = Cpt(SoftSignal, value=0, kind="normal")
    sim_time = Cpt(SoftSignal, value=0.0, kind="normal", units="s")


class HelicityCCD(Device):
    """Simulated helicity-switching CCD (Readable, Triggerable, Configurable, Stageable).

    Parameters
    ----------
    sample : MagneticSample
        The physics the detector samples.
    directory : str or Path
        Where the detector writes its HDF5 files (must be readable by the Tiled server).
    publisher : FramePublisher, optional
        Bus publisher for the live path; frames are published as stream ``"ccd"`` with
        header fields ``helicity``, ``frame_index`` and ``exposure_time``.
    name : str
        ophyd name; data keys are ``<name>_image``, ``<name>_helicity`` …

    Notes
    -----
    Signals: ``exposure_time`` (s, config), ``photons_per_frame`` (photons, config),
    ``geometry`` (JSON of the FTH mask geometry, config — the online FTH worker reads it
    from the descriptor), ``helicity`` (+1/−1), ``frame_counter``.
    """

    exposure_time = Cpt(SoftSignal, value=1.0, kind="config", units="s")
    photons_per_frame = Cpt(
        SoftSignal, value=float(DEFAULT_PHOTONS_PER_FRAME), kind="config", units="photons"
    )
    geometry = Cpt(SoftSignal, value="{}", kind="config")
    helicity = Cpt(SoftSignal, value=1, kind="normal")
    frame_counter = Cpt(SoftSignal, value=0, kind="normal")
    truth = Cpt(SampleTruth, kind="omitted")

    def __init__(
        self,
        sample: MagneticSample,
        directory: str | Path,
        *,
        publisher: FramePublisher | None = None,
        name: str = "ccd",
        **kwargs: Any,
    ) -> None:
        super().__init__(name=name, **kwargs)
        self.sample = sample
        self.directory = Path(directory).resolve()
        self.publisher = publisher
        self.geometry.put(json.dumps(sample.geometry.to_config()))
        self._lock = threading.Lock()
        self._asset_docs: deque[tuple[str, dict]] = deque()
        self._file: h5py.File | None = None
        self._dataset: h5py.Dataset | None = None
        self._bundle = None
        self._index = 0
        self.publish_errors = 0
        self.file_path: Path | None = None

    @property
    def image_key(self) -> str:
        return f"{self.name}_image"

    @property
    def frame_shape(self) -> tuple[int, int]:
        return tuple(self.sample.geometry.shape)  # type: ignore[return-value]

    # -- Stageable --------------------------------------------------------------------
    def stage(self) -> list[Any]:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.file_path = self.directory / f"{self.name}_{uuid.uuid4()}.h5"
        ny, nx = self.frame_shape
        f = h5py.File(self.file_path, "w", libver="latest")
        self._dataset = f.create_dataset(
            DATASET,
            shape=(0, ny, nx),
            maxshape=(None, ny, nx),
            dtype="<u2",
            chunks=(1, ny, nx),
            compression="gzip",
            compression_opts=1,
        )
        f.swmr_mode = True
        self._file = f
        self._index = 0
        self._bundle = compose_stream_resource(
            mimetype="application/x-hdf5",
            uri=f"file://localhost{self.file_path}",
            data_key=self.image_key,
            parameters={"dataset": DATASET, "chunk_shape": [1, ny, nx], "swmr": True},
        )
        self._asset_docs.append(("stream_resource", dict(self._bundle.stream_resource_doc)))
        self.frame_counter.put(0)
        return super().stage()

    def unstage(self) -> list[Any]:
        with self._lock:
            if self._file is not None:
                self._file.close()
            self._file = None
            self._dataset = None
        return super().unstage()

    # -- Triggerable ------------------------------------------------------------------
    def trigger(self) -> Status:
        if self._dataset is None:
            raise RuntimeError(f"{self.name} is not staged: stage() opens its HDF5 file")
        helicity = int(self.helicity.get())
        exposure_time = float(self.exposure_time.get())
        shot = self.sample.expose(exposure_time, helicity, float(self.photons_per_frame.get()))
        with self._lock:
            i = self._index
            self._dataset.resize(i + 1, axis=0)
            self._dataset[i] = shot.frame
            self._dataset.flush()
            self._index = i + 1
        self._asset_docs.append(
            ("stream_datum", dict(self._bundle.compose_stream_datum(indices=StreamRange(start=i, stop=i + 1))))
        )
        self.frame_counter.put(i + 1)
        self.truth.state.put(shot.state)
        self.truth.state_fraction.put(shot.state_fraction)
        self.truth.hops.put(shot.hops)
        self.truth.sim_time.put(shot.time)
        self._publish(shot.frame, helicity=helicity, frame_index=i, exposure_time=exposure_time)
        status = Status(obj=self)
        status.set_finished()
        return status

    def _publish(self, frame: np.ndarray, **fields: Any) -> None:
        """Put the frame on the live bus; a failure here never touches the raw record."""
        if self.publisher is None:
            return
        run_uid = self.publisher.current_run_uid
        if run_uid is None:
            return
        try:
            self.publisher.publish_frames(run_uid, self.name, frame, **fields)
        except Exception:
            self.publish_errors += 1
            log.exception("%s: publishing frame %s on the bus failed", self.name, fields)

    # -- Readable ---------------------------------------------------------------------
    def describe(self) -> dict[str, dict[str, Any]]:
        desc = super().describe()
        ny, nx = self.frame_shape
        desc[self.image_key] = {
            "source": f"SIM:{self.name}:hdf5",
            "dtype": "array",
            "shape": [ny, nx],
            "dtype_numpy": "<u2",
            "external": "STREAM:",
            "units": "photons",
        }
        return desc

    def collect_asset_docs(self) -> Iterator[tuple[str, dict]]:
        while self._asset_docs:
            yield self._asset_docs.popleft()
