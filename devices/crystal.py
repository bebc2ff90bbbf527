"""Crystal supercells for 4D-STEM, beam along z, in orthogonal periodic cells (ase).

* **hBN few-layer along [0001]** — honeycomb B/N layers, a = 2.504 Å, AA' stacking
  (B over N), interlayer spacing c/2 = 3.33 Å; the orthogonal cell (a, √3 a) holds 2 B
  + 2 N per layer; B–N bond a/√3 = 1.446 Å.
* **Si along [110]** — diamond, a = 5.431 Å; the orthogonal cell (a along [001],
  a/√2 along [1̄10], a/√2 along [110] = z) holds 4 atoms; bond √3 a/4 = 2.352 Å.

Each :class:`CrystalSpec` also carries default Born–von Kármán force constants for
:class:`~.phonons.HarmonicLattice` (nearest-neighbour longitudinal and transverse
springs, plus the hBN interlayer shell) chosen to give rms displacements of a few
hundredths of an Å at room temperature — model values for simulation, not fitted
phonon dispersions.

References
----------
Pease, Acta Cryst. 5, 356 (1952) (hBN lattice); Okada & Tokumaru, J. Appl. Phys. 56,
314 (1984) (Si lattice parameter).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .phonons import Spring

__all__ = ["CRYSTALS", "CrystalSpec", "build_crystal", "crystal_name", "parse_crystal", "supercell_for_scan"]

HBN_A = 2.504
HBN_C = 6.661
SI_A = 5.431


@dataclass(frozen=True)
class CrystalSpec:
    """A crystal and its supercell: what :func:`build_crystal` builds.

    Attributes
    ----------
    kind : str
        ``"hBN"`` (along [0001]) or ``"Si"`` (along [110]).
    layers : int
        hBN layers, or Si orthogonal cells along the beam (each a/√2 = 3.84 Å thick).
    repeats : tuple of int
        Orthogonal cells along (x, y).
    vacuum : float
        Vacuum added above and below along z, Å (the cell stays periodic for the
        phonon model; abTEM slices the whole cell).
    """

    kind: str
    layers: int = 1
    repeats: tuple[int, int] = (6, 4)
    vacuum: float = 2.0

    def __post_init__(self) -> None:
        if self.kind not in CRYSTALS:
            raise ValueError(f"crystal kind must be one of {sorted(CRYSTALS)}, got {self.kind!r}")
        if int(self.layers) != self.layers or self.layers < 1:
            raise ValueError(f"layers must be a positive integer, got {self.layers!r}")
        if len(self.repeats) != 2 or min(self.repeats) < 1:
            raise ValueError(f"repeats must be two positive integers (x, y), got {self.repeats!r}")
        if self.vacuum < 0:
            raise ValueError(f"vacuum must be >= 0 Å, got {self.vacuum!r}")

    @property
    def name(self) -> str:
        """The run's ``crystal`` name, e.g. ``"hBN-3L[0001]"``, ``"Si-2c[110]"``."""
        return crystal_name(self.kind, self.layers)

    @property
    def cell_size(self) -> tuple[float, float]:
        """Orthogonal unit-cell size (x, y), Å."""
        return CRYSTALS[self.kind]["cell"]  # type: ignore[return-value]

    @property
    def thickness(self) -> float:
        """Slab thickness along the beam, Å: layers × layer period (c/2 for hBN, a/√2 for Si)."""
        return self.layers * (HBN_C / 2 if self.kind == "hBN" else SI_A / math.sqrt(2))

    def default_springs(self) -> list[Spring]:
        """Default force constants (see the module docstring), eV/Å²."""
        return [Spring(*s) for s in CRYSTALS[self.kind]["springs"]]  # type: ignore[union-attr]


#: Per kind: orthogonal cell (x, y) Å and default springs (r_min, r_max, k_L, k_T).
CRYSTALS: dict[str, dict[str, object]] = {
    "hBN": {
        "cell": (HBN_A, math.sqrt(3) * HBN_A),
        # B–N in-plane bond 1.446 Å; interlayer B–N (AA') 3.33 Å.
        "springs": [(1.40, 1.50, 25.0, 8.0), (3.30, 3.36, 1.0, 0.5)],
    },
    "Si": {
        "cell": (SI_A, SI_A / math.sqrt(2)),
        "springs": [(2.30, 2.40, 10.0, 3.0)],
    },
}


def crystal_name(kind: str, layers: int) -> str:
    """``"hBN-<n>L[0001]"`` or ``"Si-<n>c[110]"``."""
    return f"hBN-{layers}L[0001]" if kind == "hBN" else f"Si-{layers}c[110]"


def parse_crystal(name: str) -> tuple[str, int]:
    """Kind and layers from ``"hBN-3L"``, ``"hBN-3L[0001]"``, ``"hBN"``, ``"Si-2c[110]"``, ``"Si"``.

    Raises
    ------
    ValueError
        For another name.
    """
    base = name.split("[", 1)[0]
    kind, _, rest = base.partition("-")
    if kind not in CRYSTALS:
        raise ValueError(f"crystal must be hBN-<n>L or Si-<n>c (e.g. 'hBN-3L', 'Si-2c'), got {name!r}")
    if not rest:
        return kind, 1
    suffix = "L" if kind == "hBN" else "c"
    if not (rest.endswith(suffix) and rest[:-1].isdigit() and int(rest[:-1]) >= 1):
        raise ValueError(f"crystal must be hBN-<n>L or Si-<n>c (e.g. 'hBN-3L', 'Si-2c'), got {name!r}")
    return kind, int(rest[:-1])


def _hbn_cell(layers: int) -> tuple[np.ndarray, list[str], np.ndarray]:
    a = HBN_A
    b = math.sqrt(3) * a
    d = a / math.sqrt(3)
    base = np.array([[0.0, 0.0], [0.0, d], [a / 2, b / 2], [a / 2, b / 2 + d]])
    positions, symbols = [], []
    for layer in range(layers):
        z = layer * HBN_C / 2
        order = ["B", "N", "B", "N"] if layer % 2 == 0 else ["N", "B", "N", "B"]  # AA': B over N
        for (x, y), s in zip(base, order, strict=True):
            positions.append((x, y, z))
            symbols.append(s)
    cell = np.diag([a, b, layers * HBN_C / 2])
    return np.array(positions), symbols, cell


def _si_cell(layers: int) -> tuple[np.ndarray, list[str], np.ndarray]:
    from ase.build import bulk

    orth = bulk("Si", "diamond", a=SI_A, orthorhombic=True)  # (a/√2 [110], a/√2 [1̄10], a [001])
    pos = orth.get_positions()[:, [2, 1, 0]]  # x ← [001], y ← [1̄10], z ← [110]
    cz = SI_A / math.sqrt(2)
    positions = np.concatenate([pos + [0.0, 0.0, k * cz] for k in range(layers)])
    cell = np.diag([SI_A, SI_A / math.sqrt(2), layers * cz])
    return positions, ["Si"] * len(positions), cell


def build_crystal(spec: CrystalSpec) -> object:
    """The periodic supercell of ``spec`` as an :class:`ase.Atoms`.

    Returns
    -------
    ase.Atoms
        Orthogonal cell (Lx, Ly, Lz) Å, ``pbc=True``; the atoms centred in z with
        ``spec.vacuum`` Å of vacuum on each side (the periodic images along z are not
        bonded when vacuum ≥ 1.5 Å: only the springs' windows make bonds).
    """
    from ase import Atoms

    positions, symbols, cell = (_hbn_cell if spec.kind == "hBN" else _si_cell)(spec.layers)
    unit = Atoms(symbols=symbols, positions=positions, cell=cell, pbc=True)
    atoms = unit.repeat((spec.repeats[0], spec.repeats[1], 1))
    if spec.vacuum > 0:
        atoms.center(vacuum=spec.vacuum, axis=2)
    atoms.pbc = True
    return atoms


def supercell_for_scan(kind: str, scan_extent: float, probe_margin: float = 5.0) -> tuple[int, int]:
    """Orthogonal cells (x, y) so the supercell holds the scan plus a probe margin.

    Parameters
    ----------
    kind : str
        ``"hBN"`` or ``"Si"``.
    scan_extent : float
        Largest scan span (nx − 1)·step or (ny − 1)·step, Å.
    probe_margin : float
        Room around the scan on each side for the probe's tails, Å.

    Returns
    -------
    tuple of int
        (repeats_x, repeats_y), each ≥ 2.
    """
    if kind not in CRYSTALS:
        raise ValueError(f"crystal kind must be one of {sorted(CRYSTALS)}, got {kind!r}")
    if scan_extent < 0 or probe_margin < 0:
        raise ValueError(f"scan_extent and probe_margin must be >= 0 Å, got {scan_extent!r}, {probe_margin!r}")
    cx, cy = CRYSTALS[kind]["cell"]  # type: ignore[misc]
    need = scan_extent + 2 * probe_margin
    return max(2, math.ceil(need / cx)), max(2, math.ceil(need / cy))
