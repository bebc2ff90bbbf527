"""Simulated instruments and the physics models they sample.

Devices follow ophyd / ``bluesky.protocols``; the physics (maze states, hopping
dynamics, FTH hologram formation; supercooled-liquid speckle with KWW dynamics) lives in
plain modules testable without Bluesky.
"""

from .celeritas import Celeritas, CeleritasTruth, DetectorResponse
from .helicity_ccd import HelicityCCD, SampleTruth
from .liquid import LiquidSample, LiquidTruth
from .sample import Exposure, MagneticSample
from .scan import RasterScan, ScanController, ScanPoints

__all__ = [
    "Celeritas",
    "CeleritasTruth",
    "DetectorResponse",
    "Exposure",
    "HelicityCCD",
    "LiquidSample",
    "LiquidTruth",
    "MagneticSample",
    "RasterScan",
    "SampleTruth",
    "ScanController",
    "ScanPoints",
]
