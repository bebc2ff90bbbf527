"""Bluesky plans: generators of Msgs built from ``bluesky.plan_stubs``."""

from .cci import cci_series, one_helicity_frame

__all__ = ["cci_series", "one_helicity_frame"]
