"""What the queue server's RunEngine worker builds: devices, RunEngine and its subscriptions.

``start-re-manager --startup-dir <speckleflow>/services/queue/startup --keep-re`` runs
the startup script in its RunEngine worker process; the script calls
:func:`build_profile` and puts the result in its namespace, where the queue server
finds the devices (``sample``-backed ``ccd``), the plans and the RunEngine ``RE``.

Every connection parameter comes from the environment (``SPECKLEFLOW_*``, read by
:class:`QueueProfileSettings`); ``speckleflow serve`` sets them for the re-manager it
starts. The Tiled API key is a secret: it travels only in ``SPECKLEFLOW_API_KEY`` and is
never printed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict
from speckleflow.streaming import BusPublisher, BusReceiver, HeartbeatMessage

from ..processes import wait_until
from ..tiled_server import DataDirectory

log = logging.getLogger(__name__)

PUBLISHER_NAME = "queue-server"


class QueueProfileSettings(BaseSettings):
    """Environment of the queue-server profile (prefix ``SPECKLEFLOW_``).

    Attributes
    ----------
    data_dir : Path
        Data directory: detector HDF5 files (``detector/``), TiledWriter backups
        (``backup/``). Must be readable by the Tiled server.
    tiled_uri : str
        Tiled server receiving the raw runs (``raw/<uid>``).
    api_key : SecretStr
        Writer API key of that server.
    bus_frontend : str
        ZeroMQ proxy's XSUB endpoint the publisher connects to.
    bus_backend : str
        The proxy's XPUB endpoint (used once, to check the publisher is connected).
    detector_size : int
        Detector side, pixels.
    sample_families : int
        Built-in maze model: families of states.
    sample_temperature_k : float
        Sample temperature, K.
    sample_seed : int
        Seed of the sample model, dynamics and photon noise.
    states_file : Path or None
        npz of maze states (``mz``), instead of the built-in model.
    ecm_scan_size : int
        5D-STEM: side of the simulated liquid's scan grid, probe positions (0: no ECM
        devices). 8 by default. (An ``ecm_5d`` run of 16×16 positions × 2 repeats was
        refused by TiledWriter at its stop document: the truth stream's small 2-D drift
        array went to the SQL table, which pyarrow refused; :mod:`..raw_writer` now
        writes every array as an array node.)
    ecm_tau_s : float
        5D-STEM: median relaxation time τ of the simulated liquid, s.
    """

    model_config = SettingsConfigDict(env_prefix="SPECKLEFLOW_", extra="ignore")

    data_dir: Path
    tiled_uri: str
    api_key: SecretStr
    bus_frontend: str
    bus_backend: str
    detector_size: int = 256
    sample_families: int = 8
    sample_temperature_k: float = 300.0
    sample_seed: int = 0
    states_file: Path | None = None
    ecm_scan_size: int = 8
    ecm_tau_s: float = 1.0


@dataclass
class QueueProfile:
    """The objects the startup script exposes to the queue server.

    Attributes
    ----------
    RE : bluesky.RunEngine
        Subscribed to the bus publisher and to TiledWriter.
    ccd : HelicityCCD
        The helicity CCD looking at ``sample``.
    sample : MagneticSample
    publisher : BusPublisher
    client : tiled client
        Root of the Tiled server (the adaptive plan reads the online counts from it).
    camera, scan : Celeritas, ScanController or None
        5D-STEM devices on a simulated supercooled liquid (None if disabled).
    """

    RE: Any
    ccd: Any
    sample: Any
    publisher: BusPublisher
    client: Any
    camera: Any = None
    scan: Any = None


def wait_publisher_connected(publisher: BusPublisher, backend: str, timeout: float = 30.0) -> None:
    """Return once a heartbeat of ``publisher`` comes out of the proxy's ``backend``.

    A PUB socket drops what it sends before the proxy has forwarded the subscriptions to
    it (ZeroMQ's slow joiner). Seeing our own heartbeat come back through the proxy
    proves the subscriptions arrived, so the next start document reaches the workers,
    which subscribed before the queue server started.

    Raises
    ------
    TimeoutError
        If no heartbeat comes back within ``timeout`` seconds.
    """
    with BusReceiver(backend) as receiver:

        def came_back() -> bool:
            publisher.heartbeat()
            message = receiver.recv(timeout_ms=100)
            return isinstance(message, HeartbeatMessage) and message.header.stream == publisher.name

        wait_until(came_back, timeout, interval=0.0, what=f"bus publisher to reach {backend}")


def build_profile(settings: QueueProfileSettings | None = None) -> QueueProfile:
    """Build the RunEngine, devices and subscriptions from the environment.

    Parameters
    ----------
    settings : QueueProfileSettings, optional
        Read from the environment when omitted.

    Returns
    -------
    QueueProfile

    Raises
    ------
    pydantic.ValidationError
        If a required ``SPECKLEFLOW_*`` variable is missing or malformed (names it).
    TimeoutError
        If the bus publisher cannot reach the proxy.
    """
    from bluesky import RunEngine
    from speckleflow.devices import (
        Celeritas,
        HelicityCCD,
        LiquidSample,
        MagneticSample,
        ScanController,
    )
    from speckleflow.services.raw_record import FramesPublishedNote, RawRecordCheckAtStop
    from speckleflow.services.raw_writer import raw_run_writer
    from tiled.client import from_uri

    s = settings or QueueProfileSettings()  # type: ignore[call-arg]
    data_dir = DataDirectory.create(s.data_dir)
    client = from_uri(s.tiled_uri, api_key=s.api_key.get_secret_value())
    publisher = BusPublisher(s.bus_frontend, name=PUBLISHER_NAME)
    wait_publisher_connected(publisher, s.bus_backend)
    sample = MagneticSample.from_options(
        states_file=str(s.states_file) if s.states_file else None,
        n_families=s.sample_families,
        seed=s.sample_seed,
        detector_shape=(s.detector_size, s.detector_size),
        temperature_K=s.sample_temperature_k,
    )
    ccd = HelicityCCD(sample, data_dir.detector, publisher=publisher, name="ccd")
    camera = scan = None
    if s.ecm_scan_size > 0:
        liquid = LiquidSample((s.ecm_scan_size, s.ecm_scan_size), tau_median=s.ecm_tau_s, seed=s.sample_seed)
        scan = ScanController(name="scan")
        camera = Celeritas(liquid, scan, data_dir.detector, publisher=publisher, name="celeritas")
    RE = RunEngine({})
    RE.subscribe(publisher)
    RE.subscribe(FramesPublishedNote(publisher, client))  # before TiledWriter writes the stop
    RE.subscribe(raw_run_writer(client["raw"], backup_directory=str(data_dir.backup), batch_size=50))
    RE.subscribe(RawRecordCheckAtStop(client, data_dir.backup))  # replays a backup if TiledWriter failed
    RE.md["sample"] = {
        "source": sample.states.source,
        "n_states": sample.n_states,
        "seed": s.sample_seed,
        "temperature_K": s.sample_temperature_k,
    }
    log.info("queue profile: Tiled %s, bus %s, sample %s states", s.tiled_uri, s.bus_frontend, sample.n_states)
    return QueueProfile(
        RE=RE, ccd=ccd, sample=sample, publisher=publisher, client=client, camera=camera, scan=scan
    )
