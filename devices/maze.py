"""Metastable magnetic maze states of a thin perpendicular film.

The coherent-correlation-imaging (CCI) simulator needs a set of magnetisation patterns
``mz(y, x)`` that the sample hops between: a few *families* of unrelated maze-domain
states, and inside each family *siblings* ("internal modes") that differ from the base
state only locally, near pinning sites on domain walls (Klose et al., Nature 614, 256
(2023)).

Two sources are provided:

* :func:`generate_maze_states` relaxes a Swift–Hohenberg model with quenched disorder and
  pinning sites, a standard phenomenological model of stripe/maze domains in
  perpendicular films. It is deterministic given ``seed`` and takes about a second for
  the default sizes.
* :func:`load_states` reads states computed elsewhere (e.g. the micromagnetic
  ``maze_states_magnumnp_128.npz``) from an ``.npz`` file, without pickle.

Conventions: ``mz`` arrays are ``(n_states, rows, cols)``; pinning sites are in array
index coordinates ``(row, col)`` of the last two axes (called ``(y, x)`` below). Files may
use another naming of the axes (the magnum.np file stores x cells along axis 1); the
loader does not transpose — a transposed maze is an equally valid maze.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import numpy as np
import scipy.fft as sfft
from scipy import ndimage

__all__ = [
    "DEFAULT_PERIOD_PX",
    "MazeStates",
    "generate_maze_states",
    "load_states",
]

#: Default maze period (stripe wavelength, one up + one down domain) in cells.
DEFAULT_PERIOD_PX: float = 16.0

# Swift–Hohenberg model constants (dimensionless; lengths in units of 1/q0, time in
# units of the linear relaxation time). Chosen once, documented here:
_EPSILON = 0.8  # reduced control parameter: > 0 stripes, ~1 saturated square-ish domains
_STABILISER = 3.0  # linear stabiliser S of the semi-implicit scheme (>= max 3 psi^2 - eps)
_DT = 10.0  # semi-implicit time step; fixed points do not depend on it
_PIN_DEPTH = 0.8  # relative reduction of epsilon inside a pinning disc (attracts walls)
_PIN_RADIUS = 0.15  # pinning-disc radius in maze periods (3 cells at the default period)
_DISORDER_CORR = 0.1  # correlation length of the random anisotropy, in maze periods
_WALL_SCALE = 0.4  # mz = tanh(psi / _WALL_SCALE): walls ~3 cells wide at the default period
_FIELD_PULSE = 2.0  # local field h of the sibling-creating pulse (dimensionless, ~2 psi_sat)
_PULSE_RADIUS = 0.4  # radius of the field pulse, in maze periods
_PULSE_STEPS = 20  # semi-implicit steps with the local field on
_SETTLE_STEPS = 30  # steps after the pulse (applied to base and sibling alike)
_SIBLING_WINDOW = (0.90, 0.98)  # target Pearson correlation base-sibling
_MAX_SITES_PER_SIBLING = 5
_MIN_SITES_PER_SIBLING = 2


@dataclass(frozen=True)
class MazeStates:
    """A set of magnetic maze states the simulated sample hops between.

    Parameters
    ----------
    mz : ndarray, shape (n_states, ny, nx), float32
        z-component of the unit magnetisation, dimensionless, in [-1, 1].
    family : ndarray, shape (n_states,), int16
        Family label. States of one family are "internal modes" that differ only
        locally (base state and its siblings).
    is_sibling : ndarray, shape (n_states,), int8
        1 for a sibling (locally perturbed copy of its family's base state), else 0.
    pinning_sites : ndarray, shape (n_sites, 2), float64
        Pinning-site centres in array index coordinates (row, col), in cells;
        shape (0, 2) when unknown.
    cell_size_nm : float
        Size of one cell in nm.
    source : str
        Provenance: ``"swift-hohenberg seed=<seed> ..."`` or the path of the file read.

    Raises
    ------
    ValueError
        If shapes are inconsistent, ``mz`` is not finite or outside [-1, 1] (with a
        1e-3 tolerance), or ``cell_size_nm`` is not positive.

    Notes
    -----
    The arrays are stored as read-only copies with the dtypes above.
    """

    mz: np.ndarray
    family: np.ndarray
    is_sibling: np.ndarray
    pinning_sites: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    cell_size_nm: float = 4.0
    source: str = ""

    def __post_init__(self) -> None:
        mz = np.array(self.mz, dtype=np.float32, copy=True)
        if mz.ndim != 3:
            raise ValueError(f"mz must have shape (n_states, ny, nx), got shape {mz.shape}")
        n = mz.shape[0]
        if not np.all(np.isfinite(mz)):
            raise ValueError(f"mz has {int(np.count_nonzero(~np.isfinite(mz)))} non-finite values")
        lo, hi = float(mz.min(initial=0.0)), float(mz.max(initial=0.0))
        if lo < -1.0 - 1e-3 or hi > 1.0 + 1e-3:
            raise ValueError(f"mz must lie in [-1, 1], got range [{lo}, {hi}]")
        family = np.array(self.family, copy=True)
        if family.shape != (n,):
            raise ValueError(f"family must have shape ({n},), got shape {family.shape}")
        is_sibling = np.array(self.is_sibling, copy=True)
        if is_sibling.shape != (n,):
            raise ValueError(f"is_sibling must have shape ({n},), got shape {is_sibling.shape}")
        sites = np.array(self.pinning_sites, dtype=np.float64, copy=True).reshape(-1, 2)
        cell = float(self.cell_size_nm)
        if not np.isfinite(cell) or cell <= 0:
            raise ValueError(f"cell_size_nm must be a positive number, got {self.cell_size_nm!r}")
        arrays = {
            "mz": np.clip(mz, -1.0, 1.0),
            "family": family.astype(np.int16),
            "is_sibling": is_sibling.astype(np.int8),
            "pinning_sites": sites,
        }
        for name, arr in arrays.items():
            arr.setflags(write=False)
            object.__setattr__(self, name, arr)
        object.__setattr__(self, "cell_size_nm", cell)

    @property
    def n_states(self) -> int:
        """Number of states."""
        return int(self.mz.shape[0])

    @property
    def shape(self) -> tuple[int, int]:
        """Shape (ny, nx) of one state, in cells."""
        return (int(self.mz.shape[1]), int(self.mz.shape[2]))


# --------------------------------------------------------------------------------------
# Swift–Hohenberg model
# --------------------------------------------------------------------------------------


class _SwiftHohenberg:
    """Semi-implicit spectral integrator of a pinned Swift–Hohenberg model.

    Solves, on a periodic grid with lengths in cells,

        dpsi/dt = eps(r) psi - (1 + lap / q0^2)^2 psi - psi^3 + h(r),

    where eps(r) carries the quenched disorder and the pinning discs and h(r) is an
    optional local field. The stiff linear operator is implicit, the rest explicit with a
    linear stabiliser S:

        (1 + dt (L_k + S)) psi_k^{n+1} = F[psi^n + dt (eps psi^n - psi^n^3 + S psi^n + h)]_k

    with L_k = (1 - k^2/q0^2)^2. Fixed points of the map are exact stationary states of
    the continuous equation whatever dt, so a large dt relaxes quickly.
    """

    def __init__(self, eps_map: np.ndarray, period_px: float) -> None:
        ny, nx = eps_map.shape
        q0 = 2.0 * np.pi / period_px
        ky = 2.0 * np.pi * sfft.fftfreq(ny)[:, None]
        kx = 2.0 * np.pi * sfft.rfftfreq(nx)[None, :]
        lin = (1.0 - (ky**2 + kx**2) / q0**2) ** 2
        self.shape = (ny, nx)
        self.denominator = 1.0 + _DT * (lin + _STABILISER)
        self.linear = eps_map + _STABILISER

    def relax(
        self, psi: np.ndarray, steps: int, local_field: np.ndarray | None = None
    ) -> np.ndarray:
        """Advance one field ``psi`` (ny, nx) float64 by ``steps`` time steps."""
        psi = np.array(psi, dtype=np.float64, copy=True)
        drive = self.linear
        for _ in range(steps):
            rhs = psi * psi
            rhs *= -psi
            rhs += drive * psi
            if local_field is not None:
                rhs += local_field
            rhs *= _DT
            rhs += psi
            spec = sfft.rfft2(rhs)
            spec /= self.denominator
            psi = sfft.irfft2(spec, s=self.shape, overwrite_x=True)
        return psi


def _periodic_disc(shape: tuple[int, int], center: np.ndarray, radius: float) -> np.ndarray:
    """Boolean disc of ``radius`` cells around ``center`` (row, col) on a periodic grid."""
    ny, nx = shape
    dy = (np.arange(ny)[:, None] - center[0] + ny / 2.0) % ny - ny / 2.0
    dx = (np.arange(nx)[None, :] - center[1] + nx / 2.0) % nx - nx / 2.0
    return dy * dy + dx * dx <= radius * radius


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a = a.ravel() - a.mean()
    b = b.ravel() - b.mean()
    return float(a @ b / np.sqrt((a @ a) * (b @ b)))


def _check_positive_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def generate_maze_states(
    n_families: int = 8,
    siblings_per_family: int = 1,
    shape: tuple[int, int] = (128, 128),
    *,
    seed: int = 0,
    n_pinning_sites: int = 24,
    cell_size_nm: float = 4.0,
    period_px: float = DEFAULT_PERIOD_PX,
    disorder: float = 0.5,
    relax_steps: int = 400,
) -> MazeStates:
    """Relax a pinned Swift–Hohenberg model into families of metastable maze states.

    The order parameter psi(y, x) (∝ mz) follows

        dpsi/dt = eps(r) psi - (q0^2 + lap)^2 psi / q0^4 - psi^3 + h(r)

    on a periodic grid, integrated by semi-implicit spectral steps. eps(r) = eps0 (1 +
    ``disorder`` g(r) - 0.8 P(r)) holds a smooth Gaussian random anisotropy g (unit
    variance, correlation length 0.1 period) and ``n_pinning_sites`` pinning discs P of
    radius 0.15 period where the order parameter is weakened — the domain walls are
    attracted there, like walls at defects of lower anisotropy. The sample (disorder and
    pinning sites) is the same for all states.

    * Base states: one per family, relaxed ``relax_steps`` steps (dt = 10) from
      independent small random fields; the maze is pinned and nearly stationary by then.
    * Siblings: 2–5 pinning sites lying on domain walls of the base state (preferably
      inside the disc inscribed in the field of view, which a circular FTH object
      aperture shows) receive a local field pulse (radius 0.4 period, sign opposite to
      the local majority) for 20 steps, which pushes the wall across the site; then base
      and sibling both relax 30 more steps without field. The number of pulsed sites is adapted (within 2–5; then the
      pulse radius grows up to 1.6×) so that the Pearson correlation base–sibling falls
      in [0.90, 0.98] when possible (measured for seeds 0–19: all 160 siblings).

    Finally mz = tanh(psi / 0.4): domains saturate at ±1, walls are 2–3 cells wide at
    the default period. Measured with the defaults over seeds 0–19 (160 siblings):
    base–sibling Pearson correlation 0.90–0.98 (median 0.96; 0.87–0.98 inside the
    inscribed disc), |correlation| between families <= 0.40 (95th percentile 0.24);
    about 1–2 s per call.

    Parameters
    ----------
    n_families : int
        Number of independent base states (>= 1).
    siblings_per_family : int
        Siblings per base state (>= 0). States are ordered family by family: base first,
        then its siblings.
    shape : tuple of int
        Grid (ny, nx) in cells, each >= 16.
    seed : int
        Seed of everything random (disorder, sites, initial fields, sibling sites). The
        same seed gives bit-identical states.
    n_pinning_sites : int
        Number of pinning sites (>= 2 when siblings are requested).
    cell_size_nm : float
        Physical cell size in nm (metadata only; the model is in cells).
    period_px : float
        Maze period (one up plus one down domain) in cells, 4 <= period_px <= min(shape)/2.
    disorder : float
        Relative rms amplitude of the random anisotropy (>= 0, < 1). It pins the maze;
        with 0 the pattern keeps coarsening towards straight stripes.
    relax_steps : int
        Semi-implicit steps for each base state (>= 1).

    Returns
    -------
    MazeStates
        ``mz`` float32 (n_families * (1 + siblings_per_family), ny, nx).

    Raises
    ------
    TypeError
        If a count is not an int.
    ValueError
        If a count, the shape, the period, the disorder or the cell size is out of range.

    References
    ----------
    J. Swift and P. C. Hohenberg, Phys. Rev. A 15, 319 (1977).
    C. Klose et al., Nature 614, 256 (2023) — internal modes and states of a maze.
    """
    n_families = _check_positive_int("n_families", n_families, 1)
    siblings_per_family = _check_positive_int("siblings_per_family", siblings_per_family, 0)
    n_pinning_sites = _check_positive_int("n_pinning_sites", n_pinning_sites, 0)
    relax_steps = _check_positive_int("relax_steps", relax_steps, 1)
    seed = _check_positive_int("seed", seed, 0)
    if len(tuple(shape)) != 2 or any(int(s) != s or s < 16 for s in shape):
        raise ValueError(f"shape must be two ints >= 16, got {shape!r}")
    ny, nx = int(shape[0]), int(shape[1])
    if n_families * (1 + siblings_per_family) < 2:
        raise ValueError(
            f"need at least 2 states, got n_families={n_families}, "
            f"siblings_per_family={siblings_per_family}"
        )
    if siblings_per_family > 0 and n_pinning_sites < _MIN_SITES_PER_SIBLING:
        raise ValueError(
            f"siblings need n_pinning_sites >= {_MIN_SITES_PER_SIBLING}, got {n_pinning_sites}"
        )
    period_px = float(period_px)
    if not (4.0 <= period_px <= min(ny, nx) / 2.0):
        raise ValueError(f"period_px must be in [4, {min(ny, nx) / 2}], got {period_px}")
    disorder = float(disorder)
    if not (0.0 <= disorder < 1.0):
        raise ValueError(f"disorder must be in [0, 1), got {disorder}")
    cell_size_nm = float(cell_size_nm)
    if not (np.isfinite(cell_size_nm) and cell_size_nm > 0):
        raise ValueError(f"cell_size_nm must be > 0, got {cell_size_nm}")

    seq_sample, seq_init, seq_sib = np.random.SeedSequence(seed).spawn(3)
    rng_sample = np.random.default_rng(seq_sample)
    grid = (ny, nx)

    # The sample: smooth random anisotropy and pinning discs (same for every state).
    noise = ndimage.gaussian_filter(
        rng_sample.standard_normal(grid), _DISORDER_CORR * period_px, mode="wrap"
    )
    noise /= noise.std()
    sites = rng_sample.uniform(0.0, [ny, nx], size=(n_pinning_sites, 2))
    pin = np.zeros(grid, dtype=bool)
    for c in sites:
        pin |= _periodic_disc(grid, c, _PIN_RADIUS * period_px)
    eps_map = _EPSILON * (1.0 + disorder * noise - _PIN_DEPTH * pin)
    model = _SwiftHohenberg(eps_map, period_px)

    init_rngs = [np.random.default_rng(s) for s in seq_init.spawn(n_families)]
    sib_rng = np.random.default_rng(seq_sib)
    probe_radius = 0.25 * period_px
    visible_radius = 0.5 * min(ny, nx) - _PULSE_RADIUS * period_px
    states: list[np.ndarray] = []
    families: list[int] = []
    siblings: list[int] = []
    for f in range(n_families):
        psi = model.relax(0.1 * init_rngs[f].standard_normal(grid), relax_steps)
        base = model.relax(psi, _PULSE_STEPS + _SETTLE_STEPS)
        base_mz = np.tanh(base / _WALL_SCALE)
        states.append(base_mz)
        families.append(f)
        siblings.append(0)
        # A site is on a domain wall when psi takes both signs within a quarter period.
        # Candidate sites, best first: on a wall and inside the inscribed disc of the
        # field of view (what a circular FTH aperture shows), then on a wall anywhere,
        # then the rest.
        groups: list[list[int]] = [[], [], []]
        for i, c in enumerate(sites):
            near = psi[_periodic_disc(grid, c, probe_radius)]
            wall = near.max() > 0 > near.min()
            visible = np.hypot(c[0] - (ny - 1) / 2, c[1] - (nx - 1) / 2) <= visible_radius
            groups[0 if wall and visible else 1 if wall else 2].append(i)
        for _ in range(siblings_per_family):
            order = [int(i) for g in groups for i in sib_rng.permutation(g)]
            k_max = min(_MAX_SITES_PER_SIBLING, len(order))
            k = int(
                min(sib_rng.integers(_MIN_SITES_PER_SIBLING, _MAX_SITES_PER_SIBLING + 1), k_max)
            )
            sib_mz = _make_sibling(model, psi, base_mz, sites, order, k, k_max, period_px)
            states.append(sib_mz)
            families.append(f)
            siblings.append(1)

    return MazeStates(
        mz=np.stack(states).astype(np.float32),
        family=np.asarray(families, dtype=np.int16),
        is_sibling=np.asarray(siblings, dtype=np.int8),
        pinning_sites=sites,
        cell_size_nm=cell_size_nm,
        source=(
            f"swift-hohenberg seed={seed} period_px={period_px} disorder={disorder} "
            f"n_pinning_sites={n_pinning_sites} relax_steps={relax_steps}"
        ),
    )


def _make_sibling(
    model: _SwiftHohenberg,
    psi: np.ndarray,
    base_mz: np.ndarray,
    sites: np.ndarray,
    order: list[int],
    k: int,
    k_max: int,
    period_px: float,
) -> np.ndarray:
    """Field-pulse the first ``k`` sites of ``order``; adapt k (and the radius) to the window.

    The number of pulsed sites moves by one from ``k`` towards the target correlation
    window (within 2..``k_max``); if five sites still leave the sibling too similar, the
    pulse radius grows by 30 % and 60 %. The attempt closest to the window is returned.
    """
    grid = psi.shape
    lo, hi = _SIBLING_WINDOW
    tried: list[tuple[float, np.ndarray]] = []

    def attempt(n_sites: int, radius_factor: float = 1.0) -> float:
        pulse = np.zeros(grid)
        for i in order[:n_sites]:
            disc = _periodic_disc(grid, sites[i], radius_factor * _PULSE_RADIUS * period_px)
            sign = -1.0 if psi[disc].sum() > 0 else 1.0
            pulse[disc] = sign * _FIELD_PULSE
        sib = model.relax(psi, _PULSE_STEPS, local_field=pulse)
        sib = model.relax(sib, _SETTLE_STEPS)
        mz = np.tanh(sib / _WALL_SCALE)
        r = _pearson(base_mz, mz)
        tried.append((r, mz))
        return r

    r = attempt(k)
    step = 1 if r > hi else -1 if r < lo else 0
    while step and _MIN_SITES_PER_SIBLING <= k + step <= k_max:
        k += step
        r = attempt(k)
        if lo <= r <= hi or (step > 0 and r < lo) or (step < 0 and r > hi):
            break
    for radius_factor in (1.3, 1.6):
        if r <= hi:
            break
        r = attempt(k_max, radius_factor)
    best = min(tried, key=lambda t: max(lo - t[0], t[0] - hi, 0.0))
    return best[1]


# --------------------------------------------------------------------------------------
# Loading from file
# --------------------------------------------------------------------------------------


def load_states(path: str | os.PathLike[str]) -> MazeStates:
    """Read maze states from an ``.npz`` file (never unpickling).

    Parameters
    ----------
    path : str or path-like
        ``.npz`` file with key ``mz``, shape (n_states, ny, nx), float, in [-1, 1]
        (tolerance 1e-3; values are then clipped). Optional keys: ``family`` (n_states,)
        int, ``is_sibling`` (n_states,) int, ``cell_size_nm`` scalar (default 4.0 nm),
        ``params_json`` (str; if it lists ``families[*].defects`` with ``x``/``y`` cells,
        as the magnum.np file does, these become the pinning sites in (axis 1, axis 2)
        index order, i.e. (x, y) for that file).

    Returns
    -------
    MazeStates
        Without ``family`` each state is its own family; without ``is_sibling`` none is a
        sibling.

    Raises
    ------
    ValueError
        If the file is not a readable npz, ``mz`` is missing, not 3-D, has fewer than 2
        states, holds non-finite values or values outside [-1, 1], or an optional key has
        the wrong shape. The message names the file, the key and the bad value or shape.
    """
    path_str = os.fspath(path)
    try:
        npz = np.load(path_str, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path_str}: cannot read as an npz file without pickle: {exc}") from exc
    if getattr(npz, "files", None) is None:
        raise ValueError(f"{path_str}: expected an .npz archive, got a single array")
    with npz:
        keys = set(npz.files)
        if "mz" not in keys:
            raise ValueError(f"{path_str}: key 'mz' missing (keys: {sorted(keys)})")
        try:
            mz = npz["mz"]
        except ValueError as exc:
            raise ValueError(f"{path_str}: key 'mz' cannot be read without pickle") from exc
        if mz.dtype.kind not in "fiu":
            raise ValueError(f"{path_str}: key 'mz' must be numeric, got dtype {mz.dtype}")
        if mz.ndim != 3:
            raise ValueError(
                f"{path_str}: key 'mz' must have shape (n_states, ny, nx), got shape {mz.shape}"
            )
        n = mz.shape[0]
        if n < 2:
            raise ValueError(f"{path_str}: key 'mz' must hold >= 2 states, got shape {mz.shape}")
        n_bad = int(np.count_nonzero(~np.isfinite(mz)))
        if n_bad:
            raise ValueError(f"{path_str}: key 'mz' has {n_bad} non-finite values")
        lo, hi = float(mz.min()), float(mz.max())
        if lo < -1.0 - 1e-3 or hi > 1.0 + 1e-3:
            raise ValueError(f"{path_str}: key 'mz' must lie in [-1, 1], got range [{lo}, {hi}]")

        def optional_vector(key: str, default: np.ndarray) -> np.ndarray:
            if key not in keys:
                return default
            arr = npz[key]
            if arr.shape != (n,) or arr.dtype.kind not in "iub":
                raise ValueError(
                    f"{path_str}: key {key!r} must be an int array of shape ({n},), "
                    f"got shape {arr.shape} dtype {arr.dtype}"
                )
            return arr

        family = optional_vector("family", np.arange(n))
        is_sibling = optional_vector("is_sibling", np.zeros(n, dtype=np.int8))
        cell = 4.0
        if "cell_size_nm" in keys:
            raw = npz["cell_size_nm"]
            if raw.size != 1 or raw.dtype.kind not in "fiu" or not float(raw) > 0:
                raise ValueError(
                    f"{path_str}: key 'cell_size_nm' must be a positive scalar, got {raw!r}"
                )
            cell = float(raw)
        sites = np.zeros((0, 2))
        if "params_json" in keys:
            sites = _sites_from_params(npz["params_json"])
    return MazeStates(
        mz=np.clip(mz.astype(np.float32), -1.0, 1.0),
        family=family,
        is_sibling=is_sibling,
        pinning_sites=sites,
        cell_size_nm=cell,
        source=path_str,
    )


def _sites_from_params(raw: np.ndarray) -> np.ndarray:
    """Defect positions listed in a magnum.np-style ``params_json`` (else empty)."""
    try:
        params = json.loads(str(raw))
        rows = [
            (float(d["x"]), float(d["y"]))
            for fam in params.get("families", [])
            for d in fam.get("defects", [])
        ]
    except (ValueError, TypeError, KeyError, AttributeError):
        return np.zeros((0, 2))
    return np.asarray(rows, dtype=np.float64).reshape(-1, 2)
