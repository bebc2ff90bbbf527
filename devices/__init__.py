"""Simulated instruments and the physics models they sample.

Devices follow ophyd / ``bluesky.protocols``; the physics (maze states, hopping
dynamics, FTH hologram formation) lives in plain modules testable without Bluesky.
"""

from .helicity_ccd import HelicityCCD, SampleTruth
from .sample import Exposure, MagneticSample

__all__ = ["Exposure", "HelicityCCD", "MagneticSample", "SampleTruth"]
