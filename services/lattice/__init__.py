"""Lattice analysis of reconstructed object states (CAVIAR, Gladyshev et al. 2025): pure algorithms.

Atom positions per object state and slice from the reconstructed phase
(:mod:`.atoms`), displacements, Green's tensor, LSM/CSM and Debye–Waller factors
(:mod:`.correlations`), u and G of a mixed object free of the states' unitary
ambiguity (:mod:`.mixed_state`), Fourier-transformed displacements, dynamical matrix and phonon
frequencies (:mod:`.dynamics`), the projected lattice of a run's crystal and D(q) of a
cropped field (:mod:`.model`), and the figures (:mod:`.figures`, imported on demand).

Conventions: lengths Å, mass amu, temperature K, frequencies THz (ν = ω/2π); in-plane
coordinates are (y, x) in the row-major order of the images.
"""

from .analysis import LatticeAnalysis, LatticeModel, analyse_states
from .atoms import (
    AtomTable,
    atom_table,
    detect_atoms,
    match_sites,
    refine_centre_of_mass,
    register_sites,
)
from .correlations import (
    NeighbourCorrelationTest,
    Similarity,
    bond_correlation,
    column_groups,
    column_positions,
    correlation_vectors,
    debye_waller,
    displacements,
    einstein_ratio,
    greens_tensor,
    in_plane_greens,
    neighbour_correlation,
    neighbour_correlation_test,
    neighbour_pairs,
    similarity,
)
from .dynamics import (
    DispersionResult,
    assign_cells,
    detrend_greens,
    dispersion,
    dynamical_matrix,
    fourier_covariance,
    fourier_displacements,
    frequencies_THz,
    high_symmetry_path,
    periodic_cut,
    supercell_q,
)
from .mixed_state import (
    band_limit,
    coherent_object,
    column_displacements,
    equivalent_configurations,
    greens_from_displacements,
    projected_transmission,
)
from .model import (
    BlockDispersion,
    cropped_field_dispersion,
    crystal_kind,
    largest_block,
    projected_lattice,
)
from .truth import TruthReference, truth_reference

__all__ = [
    "AtomTable",
    "BlockDispersion",
    "DispersionResult",
    "LatticeAnalysis",
    "LatticeModel",
    "NeighbourCorrelationTest",
    "Similarity",
    "TruthReference",
    "analyse_states",
    "assign_cells",
    "atom_table",
    "bond_correlation",
    "band_limit",
    "coherent_object",
    "column_displacements",
    "column_groups",
    "column_positions",
    "correlation_vectors",
    "cropped_field_dispersion",
    "crystal_kind",
    "debye_waller",
    "detect_atoms",
    "detrend_greens",
    "dispersion",
    "displacements",
    "dynamical_matrix",
    "einstein_ratio",
    "equivalent_configurations",
    "fourier_covariance",
    "fourier_displacements",
    "frequencies_THz",
    "greens_from_displacements",
    "greens_tensor",
    "high_symmetry_path",
    "in_plane_greens",
    "largest_block",
    "match_sites",
    "neighbour_correlation",
    "neighbour_correlation_test",
    "neighbour_pairs",
    "periodic_cut",
    "projected_lattice",
    "projected_transmission",
    "refine_centre_of_mass",
    "register_sites",
    "similarity",
    "supercell_q",
    "truth_reference",
]
