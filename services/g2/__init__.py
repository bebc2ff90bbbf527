"""Online correlators (pure compute): incremental multi-tau g2 and two-time correlation.

Used by the rolling g2 worker of k-resolved electron correlation microscopy (5D-STEM ECM)
and by the full ECM processing; no transport, no Tiled.
"""

from speckleflow.services.g2.multitau import (
    MultiTauCorrelator,
    MultiTauSums,
    multi_tau_g2,
    multi_tau_lags,
)

__all__ = [
    "MultiTauCorrelator",
    "MultiTauSums",
    "multi_tau_g2",
    "multi_tau_lags",
]
