"""Bluesky plans: generators of Msgs built from ``bluesky.plan_stubs``."""

from .cci import cci_series, one_helicity_frame
from .ecm import AcquisitionConstraintError, ConstraintCheck, check_ecm_constraints, ecm_5d

__all__ = [
    "AcquisitionConstraintError",
    "ConstraintCheck",
    "cci_series",
    "check_ecm_constraints",
    "ecm_5d",
    "one_helicity_frame",
]
