"""Holography-aided phase retrieval (HAPRE; Battistelli et al., Optica 11, 234 (2024)).

Pure algorithms on in-memory arrays: hologram preparation, FTH support, RAAR/ER with
partial coherence, mz from the two helicities, refocusing, FRC / PRTF / Kittel fits.
"""

from .hapre import PhaseParams, PhaseResult, retrieve_starts, retrieve_state
from .quality import FRCResult, KittelFit, frc, kittel_fit, prtf, wall_profile

__all__ = [
    "FRCResult",
    "KittelFit",
    "PhaseParams",
    "PhaseResult",
    "frc",
    "kittel_fit",
    "prtf",
    "retrieve_starts",
    "retrieve_state",
    "wall_profile",
]
