"""The DE-Celeritas-like camera looking at a crystal: 4D-STEM for ptychography (CAVIAR).

:class:`PtychoCamera` is the flown :class:`~.celeritas.Celeritas` (same HDF5 file,
StreamResource/StreamDatum, bus publishing) with a :class:`~.crystal_sample.CrystalSample`
as its sample and :class:`CrystalTruth` as its ``truth`` sub-device, which the plan
reads into the run's ``truth`` stream with the keys of ``services/ptycho/CAVIAR_CONTRACT.md``:

* ``atom_positions`` (n_configurations, n_atoms, 3) float64 Å — every frozen-phonon
  configuration;
* ``atom_equilibrium`` (n_atoms, 3) float64 Å; ``atomic_numbers`` (n_atoms,) int64;
  ``masses_amu`` (n_atoms,) float64;
* ``greens_tensor_analytic`` (3·n_atoms, 3·n_atoms) float64 Å² — k_B T Φ⁺ for the
  harmonic model, σ²·1 for Einstein, NaN-filled for ``phonon_model="none"``;
* ``scan_positions_A`` (n_positions, 2) float64 Å — (y, x) of every scan position in
  raster order.

Its detector response is ideal by default (no dark, gain or read noise; counting): the
frames are exactly the sample's Poisson electron counts (clipped at 65535). ``dose`` is
in electrons per Å² of scanned area (per pattern: dose·step²).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from ophyd import Component as Cpt
from ophyd import Device

from .celeritas import Celeritas, DetectorResponse
from .crystal_sample import CrystalSample
from .helicity_ccd import FramePublisher
from .scan import ScanController
from .signals import SoftSignal

__all__ = ["CrystalTruth", "PtychoCamera", "ideal_response"]


class CrystalTruth(Device):
    """Ground truth of the crystal the camera looked at (read into the ``truth`` stream)."""

    atom_positions = Cpt(SoftSignal, value=np.zeros((1, 1, 3)), kind="normal", units="angstrom")
    atom_equilibrium = Cpt(SoftSignal, value=np.zeros((1, 3)), kind="normal", units="angstrom")
    atomic_numbers = Cpt(SoftSignal, value=np.zeros(1, np.int64), kind="normal")
    masses_amu = Cpt(SoftSignal, value=np.zeros(1), kind="normal", units="amu")
    greens_tensor_analytic = Cpt(SoftSignal, value=np.zeros((3, 3)), kind="normal", units="angstrom**2")
    scan_positions_A = Cpt(SoftSignal, value=np.zeros((1, 2)), kind="normal", units="angstrom")
    temperature_K = Cpt(SoftSignal, value=0.0, kind="normal", units="K")
    # The camera records the sample drift at each raster start; the crystal does not
    # drift, and a 2-D array of ≤ 16 values breaks TiledWriter's table: not read.
    drift = Cpt(SoftSignal, value=np.zeros((0, 3)), kind="omitted")
    drift_shift = Cpt(SoftSignal, value=np.zeros((0, 2), np.int32), kind="omitted")

    def load(self, sample: CrystalSample) -> None:
        """Set every signal from ``sample.truth()`` (simulates or reads the cache first)."""
        t = sample.truth()
        self.atom_positions.put(t.atom_positions)
        self.atom_equilibrium.put(t.atom_equilibrium)
        self.atomic_numbers.put(t.atomic_numbers)
        self.masses_amu.put(t.masses_amu)
        self.greens_tensor_analytic.put(t.greens_tensor_analytic)
        self.scan_positions_A.put(t.scan_positions_A)
        self.temperature_K.put(t.temperature_K)


def ideal_response(shape: tuple[int, int]) -> DetectorResponse:
    """A counting response without dark, gain or read noise: output = input electrons."""
    return DetectorResponse(shape, dark_level=0.0, dark_sd=0.0, gain_sd=0.0, read_noise=0.0)


class PtychoCamera(Celeritas):
    """Celeritas-like camera on a :class:`CrystalSample` (see the module docstring).

    Parameters
    ----------
    sample : CrystalSample
    scan : ScanController
    directory : str or Path
        Where the camera writes its HDF5 files.
    publisher : FramePublisher, optional
    response : DetectorResponse, optional
        Default :func:`ideal_response`.
    **kwargs
        Passed to :class:`~.celeritas.Celeritas` (``batch_size``, ``compression``,
        ``name`` …).
    """

    dose = Cpt(SoftSignal, value=1.0, kind="config", units="electrons/angstrom**2")
    truth = Cpt(CrystalTruth, kind="omitted")

    def __init__(
        self,
        sample: CrystalSample,
        scan: ScanController,
        directory: str | Path,
        *,
        publisher: FramePublisher | None = None,
        response: DetectorResponse | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            sample, scan, directory, publisher=publisher,
            response=response or ideal_response(sample.detector_shape), **kwargs,
        )  # type: ignore[arg-type]  # fmt: skip
        self.dose.put(float(sample.dose))

    def ptycho_metadata(self) -> dict[str, Any]:
        """The start-document keys of the contract (probe, detector, scan, sample)."""
        md = self.sample.metadata()
        md["dose_e_per_A2"] = float(self.dose.get())
        return md
