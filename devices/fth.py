"""Fourier-transform holography (FTH): mask geometry and hologram formation.

An FTH mask is an opaque film with an *object aperture* (radius R, the magnetic sample
behind it) and a few small *reference holes* (radius r ≈ 1–1.5 px). The far-field
intensity I = |F[φ]|² of the exit wave φ is recorded; its inverse Fourier transform, the
Patterson map (autocorrelation of φ), holds the object autocorrelation at the centre
(radius 2R) and, for each reference k, an image of the object convolved with that
reference at ``object_center − reference_center`` (plus its conjugate, point-mirrored
twin at the opposite position).

Magnetic contrast comes from X-ray magnetic circular dichroism: for helicity h = ±1 the
exit wave is φ_h = φ_c·(1 + h·c·mz) with φ_c the mask transmission and c a complex
contrast (mz only inside the object aperture). The difference hologram

    I_+ − I_− = 4·Re(Ψ_c*·Ψ_m),   Ψ_c = F[φ_c],  Ψ_m = F[c·mz·φ_c],

is the heterodyne term: it keeps only the magnetic ⊗ mask cross terms.

Array conventions: detector arrays are (ny, nx) with q = 0 at index (ny // 2, nx // 2)
(``fftshift`` order); sample-plane arrays share the same grid with lengths in pixels.
Coordinates are (row, col) = (y, x) in pixels.

References
----------
S. Eisebitt et al., Nature 432, 885 (2004) — lensless imaging of magnetic nanostructures
by X-ray spectro-holography.
C. Klose et al., Nature 614, 256 (2023) — coherent correlation imaging.
R. Battistelli et al., Optica 11, 234 (2024) — holography-aided phase retrieval; the
heterodyne difference hologram.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

__all__ = [
    "DEFAULT_PHOTONS_PER_FRAME",
    "FTHGeometry",
    "beamstop_mask",
    "blur_coherence",
    "default_geometry",
    "domain_wall_mz",
    "embed_mz",
    "expose",
    "hologram",
    "mask_transmission",
    "object_aperture",
    "valid_pixel_mask",
]

#: Default expected photons per frame in the detector plane (before the beamstop).
#: See the Notes of :func:`expose` for the measured separations it gives.
DEFAULT_PHOTONS_PER_FRAME: float = 2.0e5

#: Reference layout for a 256 × 256 grid: object_center − reference_center, px.
#: Found by a search maximising the smallest gap between Patterson terms for R = 32,
#: r = 1.5: every term (central, cross terms, twins, reference ⊗ reference) lies inside
#: the unaliased box with >= 1.5 px to spare, cross terms and twins are >= 1.5 px apart,
#: and the reference ⊗ reference terms stay >= 14 px off every cross term and twin.
_REFERENCE_OFFSETS_256 = np.array([[-92.0, 37.0], [-93.0, -34.0], [-47.0, 89.0]])
_MIN_GAP_PX = 1.0
#: First zero of J1 over 2π: the Airy pattern of a disc of radius R (px) on an n-px grid
#: has its first dark ring at 0.6098·n/R detector px.
_AIRY_FIRST_ZERO = 3.8317059702075125 / (2.0 * math.pi)
_CONFIG_KEYS = (
    "shape",
    "object_center",
    "object_radius",
    "reference_centers",
    "reference_radius",
    "beamstop_radius",
)


def _disc(
    shape: tuple[int, int], center: tuple[float, float] | np.ndarray, radius: float
) -> np.ndarray:
    """Boolean disc (ny, nx): pixels whose centre lies within ``radius`` of ``center``."""
    yy = np.arange(shape[0])[:, None] - float(center[0])
    xx = np.arange(shape[1])[None, :] - float(center[1])
    return yy * yy + xx * xx <= radius * radius


def _default_reference_centers() -> np.ndarray:
    # default_geometry((256, 256)): object at (96, 155), references at object - offsets.
    return np.array([[96.0, 155.0]]) - _REFERENCE_OFFSETS_256


@dataclass(frozen=True, eq=False)
class FTHGeometry:
    """Geometry of an FTH mask and detector.

    Parameters
    ----------
    shape : tuple of int
        Detector / sample grid (ny, nx) in pixels, each >= 16.
    object_center : tuple of float
        Object-aperture centre (y, x) in px on the sample grid.
    object_radius : float
        Object-aperture radius in px, > 0.
    reference_centers : ndarray, shape (k, 2), float64
        Reference-hole centres (y, x) in px, k >= 1.
    reference_radius : float
        Reference-hole radius in px, > 0.
    beamstop_radius : float
        Radius in px of the beamstop around q = 0 on the detector, >= 0.

    Raises
    ------
    ValueError
        If a value is out of range, a hole leaves the grid, holes overlap, or two terms
        of the Patterson map overlap or leave the unaliased box (|offset| + radius <=
        n/2 along each axis) — the message names the terms and the distances.
    TypeError
        If ``shape`` is not a pair of ints.

    Notes
    -----
    Patterson terms (positions relative to the map centre, radii):

    * central object autocorrelation at 0, radius 2R;
    * cross term k at d_k = object_center − reference_center_k, radius R + r — the
      object (times conj of reference k) upright; its twin at −d_k, point-mirrored and
      complex-conjugated.

    * reference i ⊗ reference j at reference_center_j − reference_center_i, radius 2r
      (these cancel in a difference hologram but not in a single one).

    Every term must lie inside the unaliased box |offset| + radius <= n/2 along each
    axis (the mask spans at most half the grid: Nyquist-sampled speckle), and each cross
    term must be separated by >= 1 px from the central term, the other cross terms, all
    twins and all reference ⊗ reference terms.

    The defaults equal ``default_geometry((256, 256))``. Two geometries compare equal
    when their :meth:`to_config` dicts are equal.
    """

    shape: tuple[int, int] = (256, 256)
    object_center: tuple[float, float] = (96.0, 155.0)
    object_radius: float = 32.0
    reference_centers: np.ndarray = field(default_factory=_default_reference_centers)
    reference_radius: float = 1.5
    beamstop_radius: float = 5.0

    def __post_init__(self) -> None:
        shape = tuple(self.shape)
        if len(shape) != 2 or not all(
            isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in shape
        ):
            raise TypeError(f"shape must be a pair of ints, got {self.shape!r}")
        if min(shape) < 16:
            raise ValueError(f"shape must be >= 16 px along each axis, got {shape}")
        shape = (int(shape[0]), int(shape[1]))
        center = tuple(float(v) for v in np.asarray(self.object_center, dtype=float).ravel())
        if len(center) != 2 or not all(math.isfinite(v) for v in center):
            raise ValueError(
                f"object_center must be a finite (y, x) pair, got {self.object_center!r}"
            )
        refs = np.array(self.reference_centers, dtype=np.float64, copy=True)
        if refs.ndim != 2 or refs.shape[1] != 2 or refs.shape[0] < 1:
            raise ValueError(
                f"reference_centers must have shape (k, 2) with k >= 1, got shape {refs.shape}"
            )
        if not np.all(np.isfinite(refs)):
            raise ValueError(f"reference_centers must be finite, got {refs.tolist()}")
        for name in ("object_radius", "reference_radius"):
            v = float(getattr(self, name))
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be > 0 px, got {getattr(self, name)!r}")
        bs = float(self.beamstop_radius)
        if not (math.isfinite(bs) and 0 <= bs < min(shape) / 4):
            raise ValueError(
                f"beamstop_radius must be in [0, {min(shape) / 4}) px, got {self.beamstop_radius!r}"
            )
        refs.setflags(write=False)
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "object_center", center)
        object.__setattr__(self, "object_radius", float(self.object_radius))
        object.__setattr__(self, "reference_radius", float(self.reference_radius))
        object.__setattr__(self, "beamstop_radius", bs)
        object.__setattr__(self, "reference_centers", refs)
        self._check_layout()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, FTHGeometry):
            return NotImplemented
        return self.to_config() == other.to_config()

    def __hash__(self) -> int:
        cfg = self.to_config()
        return hash(tuple((k, repr(v)) for k, v in cfg.items()))

    # -- validation -------------------------------------------------------------------

    def _check_layout(self) -> None:
        ny, nx = self.shape
        big_r, r = self.object_radius, self.reference_radius
        holes = [("object aperture", np.asarray(self.object_center), big_r)] + [
            (f"reference hole {k}", c, r) for k, c in enumerate(self.reference_centers)
        ]
        for name, c, rad in holes:
            if not (rad <= c[0] <= ny - 1 - rad and rad <= c[1] <= nx - 1 - rad):
                raise ValueError(
                    f"{name} at (y, x) = ({c[0]:g}, {c[1]:g}) with radius {rad:g} px leaves "
                    f"the {ny}x{nx} grid"
                )
        for (na, ca, ra), (nb, cb, rb) in itertools.combinations(holes, 2):
            dist = float(np.hypot(*(ca - cb)))
            if dist < ra + rb + _MIN_GAP_PX:
                raise ValueError(
                    f"{na} and {nb} overlap: centres {dist:.2f} px apart < {ra + rb + _MIN_GAP_PX:g} px"
                )
        terms = [("central object autocorrelation", np.zeros(2), 2.0 * big_r)]
        for k, d in enumerate(self.cross_term_offsets):
            terms.append((f"cross term of reference {k}", d, big_r + r))
            terms.append((f"twin of reference {k}", -d, big_r + r))
        ref_terms = [
            (
                f"reference {i} ⊗ reference {j} term",
                self.reference_centers[j] - self.reference_centers[i],
                2.0 * r,
            )
            for i, j in itertools.permutations(range(self.n_references), 2)
        ]
        pairs = list(itertools.combinations(terms, 2)) + [
            (a, b) for a in terms[1:] for b in ref_terms
        ]
        for (na, da, ra), (nb, db, rb) in pairs:
            if not (na.startswith("cross") or nb.startswith("cross")):
                continue  # twins vs central / twins: mirror images of checked pairs
            dist = float(np.hypot(*(da - db)))
            if dist < ra + rb + _MIN_GAP_PX:
                raise ValueError(
                    f"Patterson terms overlap: {na} and {nb} are {dist:.2f} px apart, "
                    f"need >= {ra + rb + _MIN_GAP_PX:.2f} px"
                )
        for name, d, rad in terms + ref_terms:
            if abs(d[0]) + rad > ny / 2 or abs(d[1]) + rad > nx / 2:
                raise ValueError(
                    f"{name} at offset (y, x) = ({d[0]:g}, {d[1]:g}) px with radius {rad:g} px "
                    f"leaves the unaliased Patterson box ±({ny / 2:g}, {nx / 2:g}) px "
                    "(the mask must span at most half the grid along each axis)"
                )

    # -- derived quantities -----------------------------------------------------------

    @property
    def n_references(self) -> int:
        """Number of reference holes."""
        return int(self.reference_centers.shape[0])

    @property
    def cross_term_offsets(self) -> np.ndarray:
        """Offsets (k, 2) float64, px, of the cross terms from the Patterson centre."""
        return np.asarray(self.object_center)[None, :] - self.reference_centers

    def to_config(self) -> dict[str, Any]:
        """Plain JSON-able description (lists and floats), for Bluesky documents.

        Returns
        -------
        dict
            Keys ``shape`` [ny, nx] (ints), ``object_center`` [y, x], ``object_radius``,
            ``reference_centers`` [[y, x], ...], ``reference_radius``,
            ``beamstop_radius`` (px, floats).
        """
        return {
            "shape": [int(self.shape[0]), int(self.shape[1])],
            "object_center": [float(v) for v in self.object_center],
            "object_radius": float(self.object_radius),
            "reference_centers": [[float(y), float(x)] for y, x in self.reference_centers],
            "reference_radius": float(self.reference_radius),
            "beamstop_radius": float(self.beamstop_radius),
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> FTHGeometry:
        """Rebuild a geometry from :meth:`to_config` output.

        Raises
        ------
        ValueError
            If a key is missing or unknown, or a value is invalid.
        """
        if not isinstance(config, dict):
            raise TypeError(f"config must be a dict, got {type(config).__name__}")
        missing = [k for k in _CONFIG_KEYS if k not in config]
        unknown = sorted(set(config) - set(_CONFIG_KEYS))
        if missing or unknown:
            raise ValueError(f"FTH geometry config: missing keys {missing}, unknown keys {unknown}")
        shape = config["shape"]
        try:
            shape_t = (int(shape[0]), int(shape[1]))
        except (TypeError, ValueError, IndexError) as exc:
            raise ValueError(f"FTH geometry config: bad shape {shape!r}") from exc
        if len(shape) != 2 or shape_t != tuple(shape):
            raise ValueError(f"FTH geometry config: shape must be two ints, got {shape!r}")
        return cls(
            shape=shape_t,
            object_center=tuple(config["object_center"]),
            object_radius=config["object_radius"],
            reference_centers=np.asarray(config["reference_centers"], dtype=np.float64),
            reference_radius=config["reference_radius"],
            beamstop_radius=config["beamstop_radius"],
        )


def default_geometry(shape: tuple[int, int] = (256, 256)) -> FTHGeometry:
    """A mask with one object aperture and three reference holes, scaled to ``shape``.

    The grid models one physical mask seen by a larger or smaller detector of the same
    pixel pitch: the sample-plane pixel shrinks as 1/n, so the mask grows in pixels and
    its far field does not. Object radius R = min(shape)/8 (32 px for 256 × 256; shrunk
    by up to 10 % if the rounded, scaled layout needs it, e.g. 15.5 px for 128);
    reference radius r = 1.5 px × n/256 above 256 (r/R fixed: the references keep their
    share of the exit wave), 1.5 px from 192 to 256 and 1.0 px below; the references sit at offsets chosen so that every
    cross term of the Patterson map is clear of the central term (radius 2R), of the
    other cross terms and of all twins, and stays inside the unaliased box (the speckle
    is Nyquist-sampled). The object is placed so that the whole mask is centred on the
    grid. Beamstop radius: the first zero of the object aperture's Airy pattern,
    round(0.61·n/R) px (5 px for every default grid), so that it hides the central lobe
    at any n. The number of far-field modes the beamstop leaves unconstrained by the
    support, ≈ (area of the support)·(area of the beamstop)/n² ∝ (R·b/n)²
    (Thibault et al., Acta Cryst. A62, 248 (2006)), is then the same for every grid;
    a beamstop growing as n would give 4× as many at 512 as at 256.

    Parameters
    ----------
    shape : tuple of int
        Grid (ny, nx) in px; each >= 128.

    Returns
    -------
    FTHGeometry

    Raises
    ------
    ValueError
        If ``shape`` is too small for a valid layout.
    """
    if len(tuple(shape)) != 2 or any(int(s) != s for s in shape):
        raise ValueError(f"shape must be two ints, got {shape!r}")
    ny, nx = int(shape[0]), int(shape[1])
    if min(ny, nx) < 128:
        raise ValueError(f"default_geometry needs shape >= 128 px per axis, got {shape!r}")
    n = min(ny, nx)
    scale = n / 256.0
    # above 256 px the same physical holes: r/R as at 256 (1.5/32); below, the smallest
    # pixelated discs that still fit the layout
    r = 1.5 * max(scale, 1.0) if n >= 192 else 1.0
    offsets = np.round(_REFERENCE_OFFSETS_256 * scale)
    rel = np.vstack([np.zeros((1, 2)), -offsets])  # object at 0, references at -offset
    error: ValueError | None = None
    # R = n/8, shrunk in 0.5-px steps (by at most 10 %) if rounding the scaled layout
    # (or the unscaled reference radius) makes terms touch.
    for big_r in np.arange(n / 8.0, 0.9 * n / 8.0 - 1e-9, -0.5):
        radii = np.array([big_r] + [r] * len(offsets))
        lo = (rel - radii[:, None]).min(axis=0)
        hi = (rel + radii[:, None]).max(axis=0)
        center = np.round(np.array([(ny - 1) / 2.0, (nx - 1) / 2.0]) - (lo + hi) / 2.0)
        try:
            return FTHGeometry(
                shape=(ny, nx),
                object_center=(float(center[0]), float(center[1])),
                object_radius=float(big_r),
                reference_centers=center[None, :] - offsets,
                reference_radius=r,
                # first zero of the aperture's Airy pattern, J1(2π·R·ρ/n) = 0
                beamstop_radius=float(max(2, round(_AIRY_FIRST_ZERO * n / big_r))),
            )
        except ValueError as exc:
            error = exc
    raise ValueError(f"no valid default FTH layout for shape {shape!r}: {error}")


def mask_transmission(geometry: FTHGeometry) -> np.ndarray:
    """Complex amplitude transmission φ_c of the mask.

    Parameters
    ----------
    geometry : FTHGeometry

    Returns
    -------
    ndarray, shape (ny, nx), complex128
        1 inside the object aperture and the reference holes (pixel centres within the
        radius), 0 elsewhere (hard edges).
    """
    t = _disc(geometry.shape, geometry.object_center, geometry.object_radius)
    for c in geometry.reference_centers:
        t |= _disc(geometry.shape, c, geometry.reference_radius)
    return t.astype(np.complex128)


def object_aperture(geometry: FTHGeometry) -> np.ndarray:
    """Boolean (ny, nx) map of the object aperture on the sample grid."""
    return _disc(geometry.shape, geometry.object_center, geometry.object_radius)


def embed_mz(geometry: FTHGeometry, mz: np.ndarray) -> np.ndarray:
    """Place one magnetisation state into the object aperture.

    The state is resampled (``scipy.ndimage.zoom``, order 1, grid mode) onto the
    aperture's bounding square of 2·round(R)+1 px, centred on the object centre, and set
    to zero outside the aperture disc. The state's field of view is thus mapped onto
    the aperture diameter (anisotropically if ``mz`` is not square).

    Parameters
    ----------
    geometry : FTHGeometry
    mz : ndarray, shape (my, mx), float
        z-magnetisation, dimensionless, in [-1, 1]; my, mx >= 2.

    Returns
    -------
    ndarray, shape (ny, nx), float64
        mz on the sample grid, zero outside the object aperture.

    Raises
    ------
    ValueError
        If ``mz`` is not 2-D, too small, or not finite.
    """
    arr = np.asarray(mz)
    if arr.ndim != 2 or min(arr.shape) < 2:
        raise ValueError(f"mz must be a 2-D array of at least 2x2, got shape {arr.shape}")
    if arr.dtype.kind not in "fiu":
        raise ValueError(f"mz must be real, got dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    n_bad = int(np.count_nonzero(~np.isfinite(arr)))
    if n_bad:
        raise ValueError(f"mz has {n_bad} non-finite values")
    half = round(geometry.object_radius)
    size = 2 * half + 1
    patch = ndimage.zoom(
        arr, (size / arr.shape[0], size / arr.shape[1]), order=1, mode="nearest", grid_mode=True
    )
    patch = patch[:size, :size]
    if patch.shape != (size, size):  # rounding inside zoom; pad by edge values
        patch = np.pad(patch, ((0, size - patch.shape[0]), (0, size - patch.shape[1])), mode="edge")
    out = np.zeros(geometry.shape, dtype=np.float64)
    cy, cx = (round(v) for v in geometry.object_center)
    out[cy - half : cy + half + 1, cx - half : cx + half + 1] = patch
    out *= object_aperture(geometry)
    return out


def hologram(
    geometry: FTHGeometry,
    mz_field: np.ndarray,
    helicity: int,
    contrast: complex = 0.1 + 0.05j,
) -> np.ndarray:
    """Noise-free far-field FTH hologram for one helicity.

    Exit wave φ_h = φ_c·(1 + h·c·mz) with φ_c = :func:`mask_transmission`, mz only
    inside the object aperture (the references carry no magnetic contrast); intensity
    I_h = |F[φ_h]|², fftshifted so that q = 0 is at (ny // 2, nx // 2).

    Normalisation: both helicities are divided by the same helicity-independent factor
    A = Σ|Ψ_c|² + Σ|Ψ_m|² (Ψ_c = F[φ_c], Ψ_m = F[c·mz·φ_c]), so that (I_+ + I_−)/2
    sums to exactly 1 and each I_h sums to 1 + h·B/A with B = 2·Re Σ Ψ_c*·Ψ_m
    (B/A ≈ 2·Re(c)·⟨mz⟩ over the aperture: dichroism changes the total transmission;
    up to 0.03 for the magnum.np states, whose net magnetisation reaches 0.14). Then
    exactly

        I_+ − I_− = 4·Re(Ψ_c*·Ψ_m) / A.

    Intensities of different states add incoherently: a frame in which the state changed
    is the time-weighted sum of the states' holograms.

    Parameters
    ----------
    geometry : FTHGeometry
    mz_field : ndarray, shape (ny, nx), float
        mz on the sample grid (from :func:`embed_mz`); values outside the object
        aperture are ignored.
    helicity : int
        +1 or −1.
    contrast : complex
        Dichroic contrast c (dimensionless); |c| < 1.

    Returns
    -------
    ndarray, shape (ny, nx), float64
        Expected intensity per pixel (fraction of the photons), >= 0.

    Raises
    ------
    ValueError
        If ``helicity`` is not ±1, ``mz_field`` has the wrong shape or non-finite values,
        or |contrast| >= 1.
    """
    if helicity not in (1, -1) or isinstance(helicity, bool):
        raise ValueError(f"helicity must be +1 or -1, got {helicity!r}")
    c = complex(contrast)
    if not abs(c) < 1:
        raise ValueError(f"|contrast| must be < 1, got {contrast!r}")
    field = np.asarray(mz_field, dtype=np.float64)
    if field.shape != geometry.shape:
        raise ValueError(f"mz_field must have shape {geometry.shape}, got shape {field.shape}")
    n_bad = int(np.count_nonzero(~np.isfinite(field)))
    if n_bad:
        raise ValueError(f"mz_field has {n_bad} non-finite values")
    phi_c = mask_transmission(geometry)
    magnetic = c * field * object_aperture(geometry) * phi_c
    psi_c = np.fft.fft2(phi_c)
    psi_m = np.fft.fft2(magnetic)
    norm = float(np.sum(np.abs(psi_c) ** 2) + np.sum(np.abs(psi_m) ** 2))
    intensity = np.abs(psi_c + helicity * psi_m) ** 2 / norm
    return np.fft.fftshift(intensity)


def beamstop_mask(shape: tuple[int, int], beamstop_radius: float) -> np.ndarray:
    """Boolean (ny, nx) map of detector pixels behind a beamstop centred on q = 0.

    Pixels whose centre lies within ``beamstop_radius`` px of (ny // 2, nx // 2); none
    for a radius of 0 (no beamstop).
    """
    if beamstop_radius <= 0:
        return np.zeros(shape, dtype=bool)
    return _disc(shape, (shape[0] // 2, shape[1] // 2), float(beamstop_radius))


def valid_pixel_mask(geometry: FTHGeometry) -> np.ndarray:
    """Detector pixels that record data.

    Returns
    -------
    ndarray, shape (ny, nx), bool
        False behind the beamstop (pixel centres within ``beamstop_radius`` of q = 0 at
        (ny // 2, nx // 2)), True elsewhere.
    """
    return ~beamstop_mask(geometry.shape, geometry.beamstop_radius)


def expose(
    expected: np.ndarray,
    photons_per_frame: float,
    rng: np.random.Generator | int | None,
    *,
    beamstop_radius: float,
) -> np.ndarray:
    """Photon-counting frame with Poisson noise.

    Parameters
    ----------
    expected : ndarray, shape (ny, nx), float
        Expected intensity per pixel as a fraction of the photons (e.g. a
        :func:`hologram`, or a time-weighted sum of holograms), >= 0.
    photons_per_frame : float
        Expected number of photons reaching the detector plane in the frame, before the
        beamstop, > 0. With the default geometry the beamstop blocks ≈ 83 % of them (the
        central Airy lobe of the mask), so a frame records ≈ 17 %.
    rng : numpy.random.Generator, int or None
        Source of the Poisson noise (an int seeds a new Generator).
    beamstop_radius : float
        Radius in px of the beamstop around q = 0 at (ny // 2, nx // 2); those pixels
        read 0 (0: no beamstop).

    Returns
    -------
    ndarray, shape (ny, nx), uint16
        Counts, saturating at 65535.

    Raises
    ------
    ValueError
        If ``expected`` is not 2-D, is negative or not finite, or ``photons_per_frame``
        or ``beamstop_radius`` is out of range.

    Notes
    -----
    Choice of :data:`DEFAULT_PHOTONS_PER_FRAME` (2·10⁵ in the detector plane, of which
    the 5-px beamstop blocks ≈ 83 %: ≈ 3.4·10⁴ photons recorded per frame). Measured in
    the default geometry with single helicity pairs reduced to d = (I_+ − I_−)/√(I_+ +
    I_−) over the valid pixels (8 pairs per state):

    * magnum.np states: Pearson r between two pairs of one state 0.27 ± 0.01, base vs
      sibling 0.26 ± 0.01, different families 0.00 ± 0.04 (max |r| 0.11) — families
      separate completely; siblings "mostly": a pair's mean r with its own state's other
      pairs exceeds its mean r with the sibling's pairs for 98 % of pairs, and a Poisson
      template classifier assigns 100 % of single pairs to the right state (99 % at
      10⁴ photons, 1 700 recorded);
    * generated states (seed 0): 0.20 ± 0.01, 0.19 ± 0.01, 0.00 ± 0.03 (max |r| 0.08);
      98 % of pairs by the same mean-r test.

    ``tests/unit/test_fth.py`` asserts these separations.
    """
    exp = np.asarray(expected)
    if exp.ndim != 2:
        raise ValueError(f"expected must be a 2-D array, got shape {exp.shape}")
    if exp.dtype.kind not in "fiu":
        raise ValueError(f"expected must be real, got dtype {exp.dtype}")
    exp = exp.astype(np.float64)
    n_bad = int(np.count_nonzero(~np.isfinite(exp)))
    if n_bad:
        raise ValueError(f"expected has {n_bad} non-finite values")
    if exp.min(initial=0.0) < 0:
        raise ValueError(f"expected must be >= 0, got minimum {exp.min()}")
    photons = float(photons_per_frame)
    if not (math.isfinite(photons) and photons > 0):
        raise ValueError(f"photons_per_frame must be > 0, got {photons_per_frame!r}")
    bs = float(beamstop_radius)
    if not (math.isfinite(bs) and bs >= 0):
        raise ValueError(f"beamstop_radius must be >= 0 px, got {beamstop_radius!r}")
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    lam = exp * photons
    lam[beamstop_mask(exp.shape, bs)] = 0.0
    counts = gen.poisson(lam)
    return np.minimum(counts, 65535).astype(np.uint16)


def domain_wall_mz(
    geometry: FTHGeometry,
    width_px: float,
    *,
    angle_deg: float = 0.0,
    offset_px: float = 0.0,
    period_px: float | None = None,
) -> np.ndarray:
    """Straight Kittel domain walls across the object aperture, of known width.

    mz = tanh(d/δ) with d the signed distance (px) from the wall line, which passes at
    ``offset_px`` from the aperture centre with its normal at ``angle_deg`` from the +x
    axis (0: a vertical wall, mz rising along x); zero outside the aperture. With
    ``period_px`` P, stripes: walls every P/2 along the normal, each with the profile
    ±tanh(d_k/δ) of its own distance d_k within ±P/4 of it (continuous where two meet).
    The ground truth for wall-width fits (Kittel, Rev. Mod. Phys. 21, 541 (1949)).

    Parameters
    ----------
    geometry : FTHGeometry
    width_px : float
        δ in sample-grid px, > 0.
    angle_deg, offset_px : float
        Direction of the wall normal (degrees) and its distance from the centre (px).
    period_px : float or None
        Stripe period (px, > 4δ); None: a single wall.

    Returns
    -------
    ndarray, shape (ny, nx), float64
        mz on the sample grid (a :func:`hologram` input).

    Raises
    ------
    ValueError
        If ``width_px`` is not > 0 or ``period_px`` is not > 4·``width_px``.
    """
    if not (math.isfinite(width_px) and width_px > 0):
        raise ValueError(f"width_px must be > 0, got {width_px!r}")
    if period_px is not None and not (math.isfinite(period_px) and period_px > 4 * width_px):
        raise ValueError(f"period_px must be > 4·width_px = {4 * width_px}, got {period_px!r}")
    yy = np.arange(geometry.shape[0])[:, None] - geometry.object_center[0]
    xx = np.arange(geometry.shape[1])[None, :] - geometry.object_center[1]
    a = math.radians(angle_deg)
    d = xx * math.cos(a) + yy * math.sin(a) - offset_px
    if period_px is None:
        mz = np.tanh(d / width_px)
    else:
        half = period_px / 2.0
        k = np.rint(d / half)
        mz = np.where(k % 2 == 0, 1.0, -1.0) * np.tanh((d - k * half) / width_px)
    return mz * object_aperture(geometry)


def blur_coherence(intensity: np.ndarray, sigma_px: float) -> np.ndarray:
    """Partially coherent intensity: the coherent one convolved with a Gaussian kernel.

    With a Gaussian mutual coherence function the detector intensity is I_coh ⊛ K, K a
    normalised Gaussian of ``sigma_px`` detector pixels (Clark & Peele, Appl. Phys.
    Lett. 99, 154103 (2011)); periodic boundaries, the total is preserved.

    Parameters
    ----------
    intensity : ndarray, shape (ny, nx), float
        E.g. a :func:`hologram`.
    sigma_px : float
        Kernel σ, detector px, >= 0 (0 returns a copy).

    Raises
    ------
    ValueError
        For a negative or non-finite ``sigma_px``.
    """
    if not (math.isfinite(sigma_px) and sigma_px >= 0):
        raise ValueError(f"sigma_px must be >= 0, got {sigma_px!r}")
    arr = np.asarray(intensity, dtype=np.float64)
    if sigma_px == 0:
        return arr.copy()
    return ndimage.gaussian_filter(arr, sigma_px, mode="wrap")
