"""Bluesky plans: generators of Msgs built from ``bluesky.plan_stubs``."""

from .adaptive import (
    CoverageDecision,
    FrameRateDecision,
    cci_until_covered,
    choose_frame_rate,
    ecm_adaptive,
    is_covered,
)
from .cci import cci_series, helicity_pair, one_helicity_frame
from .ecm import AcquisitionConstraintError, ConstraintCheck, check_ecm_constraints, ecm_5d
from .ptycho import ptycho_scan

__all__ = [
    "AcquisitionConstraintError",
    "ConstraintCheck",
    "CoverageDecision",
    "FrameRateDecision",
    "cci_series",
    "cci_until_covered",
    "check_ecm_constraints",
    "choose_frame_rate",
    "ecm_5d",
    "ecm_adaptive",
    "helicity_pair",
    "is_covered",
    "one_helicity_frame",
    "ptycho_scan",
]
