"""Ground truth for the lattice-analysis tests, without abTEM.

Periodic 1-D and 2-D lattices with central nearest-neighbour (and optionally second-
neighbour) springs: force constants Φ (eV/Å²), the classical Green's tensor
G = k_B T Φ⁺ (Å²), configurations drawn from N(0, G), Bloch-summed dynamical matrices
straight from Φ, and phase images rendered as Gaussian peaks with noise.
"""

from __future__ import annotations

import numpy as np

K_B = 8.617333262e-5  # eV/K


def triangular(n1: int, n2: int, a: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sites (n1*n2, 2) as (y, x), primitive cell (2, 2) and supercell vectors (2, 2), Å."""
    cell = a * np.array([[0.0, 1.0], [np.sqrt(3) / 2, 0.5]])  # rows (y, x): a1, a2 at 60°
    i, j = np.meshgrid(np.arange(n1), np.arange(n2), indexing="ij")
    sites = i.reshape(-1, 1) * cell[0] + j.reshape(-1, 1) * cell[1]
    return sites, cell, np.array([n1 * cell[0], n2 * cell[1]])


def honeycomb(n1: int, n2: int, a: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Two-sublattice honeycomb (hBN-like, lattice constant a): sites, sublattice, cell, super."""
    cell = a * np.array([[0.0, 1.0], [np.sqrt(3) / 2, 0.5]])
    basis = np.array([[0.0, 0.0], (cell[0] + cell[1]) / 3])
    i, j = np.meshgrid(np.arange(n1), np.arange(n2), indexing="ij")
    lat = i.reshape(-1, 1) * cell[0] + j.reshape(-1, 1) * cell[1]
    sites = np.concatenate([lat + basis[0], lat + basis[1]])
    sub = np.repeat([0, 1], len(lat))
    return sites, sub, cell, np.array([n1 * cell[0], n2 * cell[1]])


def _min_image(dr: np.ndarray, sup: np.ndarray) -> np.ndarray:
    frac = dr @ np.linalg.inv(sup)
    return (frac - np.rint(frac)) @ sup


def springs(sites: np.ndarray, sup: np.ndarray, shells: list[tuple[float, float]]) -> np.ndarray:
    """Φ (n d, n d), eV/Å², of central springs: shells = [(bond length Å, k eV/Å²), ...]."""
    n, d = sites.shape
    phi = np.zeros((n, d, n, d))
    for i in range(n):
        dr = _min_image(sites - sites[i], sup)
        dist = np.linalg.norm(dr, axis=1)
        for length, k in shells:
            for j in np.flatnonzero(np.isclose(dist, length, rtol=1e-6)):
                e = dr[j] / dist[j]
                block = k * np.outer(e, e)
                phi[i, :, j, :] -= block
                phi[i, :, i, :] += block
    return phi.reshape(n * d, n * d)


def greens(phi: np.ndarray, temperature_K: float) -> np.ndarray:
    """Classical harmonic G = k_B T Φ⁺, Å² (uniform translations excluded)."""
    return K_B * temperature_K * np.linalg.pinv(phi, rcond=1e-10, hermitian=True)


def sample(g: np.ndarray, n_states: int, d: int, rng: np.random.Generator) -> np.ndarray:
    """Displacements (n_states, n_atoms, d), Å, drawn from N(0, G)."""
    w, v = np.linalg.eigh(g)
    root = v * np.sqrt(np.clip(w, 0.0, None))
    u = rng.standard_normal((n_states, g.shape[0])) @ root.T
    return u.reshape(n_states, -1, d)


def bloch_dynamical(
    phi: np.ndarray, sites: np.ndarray, sub: np.ndarray, sup: np.ndarray, masses: np.ndarray,
    q: np.ndarray,
) -> np.ndarray:
    """D(q) (n_q, nb d, nb d), eV/(Å² amu), Bloch-summed from Φ of one atom per sublattice."""
    n, d = sites.shape
    nb = int(sub.max()) + 1
    blocks = phi.reshape(n, d, n, d)
    out = np.zeros((len(q), nb * d, nb * d), dtype=complex)
    for s in range(nb):
        i0 = int(np.flatnonzero(sub == s)[0])
        dr = _min_image(sites - sites[i0], sup)
        ph = np.exp(1j * (q @ dr.T))  # (n_q, n)
        for t in range(nb):
            js = np.flatnonzero(sub == t)
            out[:, s * d:(s + 1) * d, t * d:(t + 1) * d] = np.einsum(
                "qj,jab->qab", ph[:, js], blocks[i0, :, js, :]
            ) / np.sqrt(masses[s] * masses[t])
    return out


def render(
    positions: np.ndarray,
    shape: tuple[int, int],
    pixel: float,
    *,
    sigma: float = 0.35,
    amplitude: float | np.ndarray = 1.0,
    noise: float = 0.0,
    offset: float = 0.0,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Phase image (H, W), rad: Gaussian peaks at (y, x) positions in Å, origin (0, 0)."""
    yy = np.arange(shape[0]) * pixel
    xx = np.arange(shape[1]) * pixel
    amp = np.broadcast_to(np.asarray(amplitude, dtype=float), (len(positions),))
    gy = np.exp(-((yy[None, :] - positions[:, 0, None]) ** 2) / (2 * sigma**2))
    gx = np.exp(-((xx[None, :] - positions[:, 1, None]) ** 2) / (2 * sigma**2))
    img = np.einsum("n,ny,nx->yx", amp, gy, gx) + offset
    if noise and rng is not None:
        img = img + noise * rng.standard_normal(shape)
    return img
