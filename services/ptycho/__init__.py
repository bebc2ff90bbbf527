"""Mixed-object, mixed-probe multislice electron ptychography (CAVIAR, issue 7).

Pure compute. ``probe``, ``geometry`` and ``result`` need numpy only; ``model`` and
``fit`` import torch (the optional extra ``ptycho``) and are imported on use::

    from speckleflow.services.ptycho.fit import reconstruct
"""

from .geometry import (
    ObjectGrid,
    fresnel_propagator,
    information_limit_per_A,
    model_window,
    object_grid,
)
from .probe import (
    aperture_probe,
    electron_wavelength_A,
    interaction_constant,
    orthogonalize_modes,
    probe_modes,
    real_space_pixel_A,
)
from .result import PtychoData, ReconstructionResult

__all__ = [
    "ObjectGrid",
    "PtychoData",
    "ReconstructionResult",
    "aperture_probe",
    "electron_wavelength_A",
    "fresnel_propagator",
    "information_limit_per_A",
    "interaction_constant",
    "model_window",
    "object_grid",
    "orthogonalize_modes",
    "probe_modes",
    "real_space_pixel_A",
]
