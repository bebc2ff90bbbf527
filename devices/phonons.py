"""Frozen-phonon displacements: a harmonic lattice with an analytic Green's tensor.

A periodic supercell (an :class:`ase.Atoms`) with Born–von Kármán pair force constants:
each bond of a chosen distance shell is a spring with a longitudinal (central) constant
k_L along the bond and, optionally, a transverse constant k_T across it, so the bond
energy is ½ k_L (e·Δu)² + ½ k_T |Δu − e (e·Δu)|² (Δu = u_j − u_i, e the unit bond
vector). The force-constant matrix Φ (3N × 3N, eV/Å²) has off-diagonal blocks
Φ_ij = −Σ_bonds (k_L e⊗e + k_T (1 − e⊗e)) and diagonal blocks that make every row of
blocks sum to zero (translational invariance: exactly three zero modes for a rigid,
connected lattice; :class:`HarmonicLattice` refuses a floppy one — planar central
springs alone leave hBN's out-of-plane motion without restoring force, diamond's NN
central springs leave shear modes free).

Sampling (:meth:`HarmonicLattice.sample`) is classical equipartition in normal-mode
space: the dynamical matrix D = M^-½ Φ M^-½ has eigenpairs (ω_s², e_s); each
non-zero mode gets an amplitude Q_s ~ N(0, k_B T / ω_s²) and u = M^-½ Σ_s e_s Q_s; then
the (unweighted) mean displacement of each configuration is removed, which fixes the
gauge of the free translation. The covariance of the drawn u is then exactly the
analytic Green's tensor G = ⟨u ⊗ u⟩ = k_B T Φ⁺ (Moore–Penrose pseudo-inverse; proof:
P·(k_B T M^-½ D⁺ M^-½)·P with P the projector off uniform translations is a reflexive,
symmetric generalised inverse of Φ whose products with Φ equal P, i.e. Φ⁺).

:func:`einstein` draws uncorrelated Gaussian displacements (G = σ² 1).

Units: Å, eV, amu, K; frequencies THz.

References
----------
Born & Huang, *Dynamical Theory of Crystal Lattices* (1954), ch. V (harmonic
approximation, normal modes). Gladyshev et al. (2025), CAVIAR: eq. (2) G_ij = ⟨u_i ⊗ u_j⟩
and eq. (6) D = k_B T / m · ⟨ũ ũ*⟩⁻¹ — the relations this model makes exact.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["KB_EV_PER_K", "HarmonicLattice", "Spring", "einstein", "neighbour_shells"]

#: Boltzmann constant, eV/K (CODATA 2018).
KB_EV_PER_K = 8.617333262e-5
#: sqrt(eV / (Å² amu)) in rad/s: ω of a unit force constant on a unit mass.
_OMEGA_UNIT_RAD_PER_S = math.sqrt(1.602176634e-19 / (1e-20 * 1.66053906660e-27))


@dataclass(frozen=True)
class Spring:
    """Force constants of every bond whose length lies in [r_min, r_max] Å.

    Attributes
    ----------
    r_min, r_max : float
        Bond-length window, Å (0 ≤ r_min ≤ r_max).
    k_longitudinal : float
        k_L along the bond (central spring), eV/Å² (≥ 0).
    k_transverse : float
        k_T across the bond, eV/Å² (≥ 0); 0 for a purely central spring.
    """

    r_min: float
    r_max: float
    k_longitudinal: float
    k_transverse: float = 0.0

    def __post_init__(self) -> None:
        if not 0 <= self.r_min <= self.r_max:
            raise ValueError(f"Spring needs 0 <= r_min <= r_max Å, got {self.r_min!r}, {self.r_max!r}")
        if self.k_longitudinal < 0 or self.k_transverse < 0:
            raise ValueError(
                f"force constants must be >= 0 eV/Å², got k_L={self.k_longitudinal!r}, k_T={self.k_transverse!r}"
            )


def neighbour_shells(atoms: object, n_shells: int = 2, *, tol: float = 0.02, cutoff: float = 6.0) -> list[float]:
    """Distances of the first ``n_shells`` neighbour shells of a periodic structure, Å.

    Parameters
    ----------
    atoms : ase.Atoms
        Periodic structure.
    n_shells : int
        Shells to return (≥ 1).
    tol : float
        Distances closer than ``tol`` Å belong to one shell.
    cutoff : float
        Search radius, Å.

    Returns
    -------
    list of float
        Ascending shell distances, Å (fewer if the cutoff holds fewer).
    """
    from ase.neighborlist import neighbor_list

    if n_shells < 1:
        raise ValueError(f"n_shells must be >= 1, got {n_shells!r}")
    d = np.sort(neighbor_list("d", atoms, cutoff))
    shells: list[float] = []
    for x in d:
        if not shells or x - shells[-1] > tol:
            shells.append(float(x))
        if len(shells) == n_shells:
            break
    return shells


class HarmonicLattice:
    """Harmonic model of a periodic supercell: Φ, normal modes, sampling, Green's tensor.

    Parameters
    ----------
    atoms : ase.Atoms
        Periodic supercell (all three directions periodic; bonds use the minimum image).
        Masses (amu) are taken from ``atoms.get_masses()``.
    springs : sequence of Spring
        Force constants per bond-length window; a bond matched by several windows
        gets their sum.
    zero_tol : float
        Eigenvalues of D below ``zero_tol`` × the largest count as zero modes.

    Attributes
    ----------
    force_constants : ndarray, shape (3N, 3N), float64
        Φ, eV/Å², index 3·i + α (atom i, Cartesian α).
    masses : ndarray, shape (N,), float64
        amu.
    omega2 : ndarray, shape (3N,), float64
        Eigenvalues ω² of D = M^-½ Φ M^-½, eV/(Å² amu), ascending; the first three are
        the acoustic zero modes (set to 0).
    modes : ndarray, shape (3N, 3N), float64
        Orthonormal eigenvectors e_s of D in columns.

    Raises
    ------
    ValueError
        If no bond matches the springs, or the lattice has more than three zero modes
        (floppy: the message gives their number and suggests a transverse constant or
        a second shell).
    """

    def __init__(self, atoms: object, springs: Sequence[Spring], *, zero_tol: float = 1e-8) -> None:
        from ase.neighborlist import neighbor_list

        if not springs:
            raise ValueError("springs must hold at least one Spring")
        if not all(bool(p) for p in atoms.pbc):  # type: ignore[attr-defined]
            raise ValueError(f"the supercell must be periodic in x, y and z, got pbc={atoms.pbc!r}")  # type: ignore[attr-defined]
        n = len(atoms)  # type: ignore[arg-type]
        self.n_atoms = n
        self.masses = np.asarray(atoms.get_masses(), dtype=np.float64)  # type: ignore[attr-defined]
        self.equilibrium = np.asarray(atoms.get_positions(), dtype=np.float64)  # type: ignore[attr-defined]
        self.cell = np.asarray(atoms.cell, dtype=np.float64)  # type: ignore[attr-defined]
        cutoff = max(s.r_max for s in springs) + 1e-6
        ii, jj, dd, vv = neighbor_list("ijdD", atoms, cutoff)
        phi = np.zeros((n, n, 3, 3))
        eye = np.eye(3)
        bonds = 0
        for spring in springs:
            sel = (dd >= spring.r_min) & (dd <= spring.r_max)
            if not sel.any():
                continue
            e = vv[sel] / dd[sel, None]
            ee = e[:, :, None] * e[:, None, :]
            k = spring.k_longitudinal * ee + spring.k_transverse * (eye - ee)  # (bonds, 3, 3)
            # neighbor_list lists each bond as i→j and j→i: each entry fills its own row.
            np.add.at(phi, (ii[sel], jj[sel]), -k)
            np.add.at(phi, (ii[sel], ii[sel]), k)
            bonds += int(sel.sum())
        if bonds == 0:
            raise ValueError(f"no bond of the structure lies in the spring windows {list(springs)!r}")
        self.force_constants = phi.transpose(0, 2, 1, 3).reshape(3 * n, 3 * n)
        self.force_constants = 0.5 * (self.force_constants + self.force_constants.T)
        inv_sqrt_m = np.repeat(1.0 / np.sqrt(self.masses), 3)
        dyn = self.force_constants * inv_sqrt_m[:, None] * inv_sqrt_m[None, :]
        w2, vecs = np.linalg.eigh(dyn)
        zero = w2 < zero_tol * w2.max()
        n_zero = int(zero.sum())
        if n_zero != 3:
            raise ValueError(
                f"the lattice has {n_zero} zero modes (3 expected, the free translations): it is "
                "floppy — give the springs a transverse constant k_T > 0 or add a second-neighbour shell"
            )
        w2[zero] = 0.0
        self.omega2 = w2
        self.modes = vecs
        self._inv_sqrt_m3 = inv_sqrt_m

    @property
    def frequencies_THz(self) -> np.ndarray:
        """Normal-mode frequencies ν = ω/2π, THz, shape (3N,), ascending (first three 0)."""
        return np.sqrt(self.omega2) * _OMEGA_UNIT_RAD_PER_S / (2 * math.pi) / 1e12

    def greens_tensor(self, temperature: float) -> np.ndarray:
        """Analytic Green's tensor G = ⟨u ⊗ u⟩ = k_B T Φ⁺ of the drawn displacements.

        Parameters
        ----------
        temperature : float
            T, K (> 0).

        Returns
        -------
        ndarray, shape (3N, 3N), float64
            Å²; block (i, j) = G_ij (3×3), index 3·i + α.
        """
        _check_temperature(temperature)
        return KB_EV_PER_K * temperature * np.linalg.pinv(self.force_constants, hermitian=True)

    def sample(self, temperature: float, n_configs: int, rng: np.random.Generator) -> np.ndarray:
        """Draw frozen-phonon displacements by classical equipartition over normal modes.

        Parameters
        ----------
        temperature : float
            T, K (> 0).
        n_configs : int
            Configurations to draw (≥ 1).
        rng : numpy.random.Generator

        Returns
        -------
        ndarray, shape (n_configs, N, 3), float64
            Displacements u, Å; each configuration has zero mean displacement (the free
            translation removed), and Cov(u) = :meth:`greens_tensor`.
        """
        _check_temperature(temperature)
        if int(n_configs) != n_configs or n_configs < 1:
            raise ValueError(f"n_configs must be a positive integer, got {n_configs!r}")
        kt = KB_EV_PER_K * temperature
        w2 = self.omega2[3:]
        q = rng.standard_normal((int(n_configs), w2.size)) * np.sqrt(kt / w2)
        u = (q @ self.modes[:, 3:].T) * self._inv_sqrt_m3
        u = u.reshape(int(n_configs), self.n_atoms, 3)
        return u - u.mean(axis=1, keepdims=True)

    def bloch_dynamical_matrix(self, q: np.ndarray, sublattice: Sequence[int] | np.ndarray) -> np.ndarray:
        """Dynamical matrix D(q) of the infinite crystal the supercell's springs describe.

        ``D_st(q) = (m_s m_t)^{-1/2} Σ_{j ∈ t} Φ_{i_s j} exp(i q·(R_j − R_{i_s}))`` with
        i_s the first atom of sublattice s and R_j − R_{i_s} the minimum-image bond
        vector (exact while the supercell is more than twice the spring range). Its
        eigenvalues are ω²(q) of the branches (Born & Huang 1954, eq. 38.20); at q on
        the supercell's grid they are eigenvalues of :attr:`omega2`.

        Parameters
        ----------
        q : ndarray, shape (n_q, 3) or (3,)
            Wave vectors (x, y, z), rad/Å.
        sublattice : sequence of int, shape (N,)
            Sublattice (basis site) of every atom, 0 … n_basis − 1; atoms of one
            sublattice must be equivalent by lattice translations.

        Returns
        -------
        ndarray, shape (n_q, 3·n_basis, 3·n_basis), complex128
            eV/(Å² amu), Hermitian; index 3·s + α.

        Raises
        ------
        ValueError
            If ``sublattice`` does not give every atom a label or ``q`` is not (n_q, 3).
        """
        sub = np.asarray(sublattice, dtype=np.int64).reshape(-1)
        qq = np.atleast_2d(np.asarray(q, dtype=np.float64))
        if sub.shape != (self.n_atoms,) or sub.min() < 0:
            raise ValueError(f"sublattice must hold {self.n_atoms} labels >= 0, got shape {sub.shape}")
        if qq.shape[1] != 3:
            raise ValueError(f"q must have shape (n_q, 3) rad/Å, got {qq.shape}")
        nb = int(sub.max()) + 1
        phi = self.force_constants.reshape(self.n_atoms, 3, self.n_atoms, 3)
        inv_cell = np.linalg.inv(self.cell)
        out = np.zeros((len(qq), 3 * nb, 3 * nb), dtype=np.complex128)
        for s in range(nb):
            i0 = int(np.flatnonzero(sub == s)[0])
            frac = (self.equilibrium - self.equilibrium[i0]) @ inv_cell
            dr = (frac - np.rint(frac)) @ self.cell  # minimum image
            phase = np.exp(1j * (qq @ dr.T))  # (n_q, N)
            for t in range(nb):
                js = np.flatnonzero(sub == t)
                block = np.einsum("qj,ajb->qab", phase[:, js], phi[i0, :, js, :].transpose(1, 0, 2))
                out[:, 3 * s:3 * s + 3, 3 * t:3 * t + 3] = block / np.sqrt(
                    self.masses[i0] * self.masses[js[0]])
        return 0.5 * (out + np.conj(out.transpose(0, 2, 1)))

    def potential_energy(self, displacements: np.ndarray) -> np.ndarray:
        """Harmonic energy ½ uᵀΦu per configuration, eV; ``displacements`` (n, N, 3) Å."""
        u = np.asarray(displacements, dtype=np.float64).reshape(len(displacements), -1)
        return 0.5 * np.einsum("ni,ij,nj->n", u, self.force_constants, u)


def einstein(n_atoms: int, sigma: float | np.ndarray, n_configs: int, rng: np.random.Generator) -> np.ndarray:
    """Uncorrelated (Einstein) displacements: every Cartesian component N(0, σ²).

    Parameters
    ----------
    n_atoms : int
        N.
    sigma : float or ndarray, shape (N,)
        rms displacement per Cartesian component, Å (≥ 0); per atom if an array.
    n_configs : int
    rng : numpy.random.Generator

    Returns
    -------
    ndarray, shape (n_configs, N, 3), float64
        Å; Cov(u) = diag(σ²) (G_ij = 0 for i ≠ j).
    """
    s = np.broadcast_to(np.asarray(sigma, dtype=np.float64), (int(n_atoms),))
    if np.any(s < 0) or not np.all(np.isfinite(s)):
        raise ValueError(f"sigma must be finite and >= 0 Å, got {sigma!r}")
    if int(n_configs) != n_configs or n_configs < 1:
        raise ValueError(f"n_configs must be a positive integer, got {n_configs!r}")
    return rng.standard_normal((int(n_configs), int(n_atoms), 3)) * s[None, :, None]


def _check_temperature(temperature: float) -> None:
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be > 0 K, got {temperature!r}")
