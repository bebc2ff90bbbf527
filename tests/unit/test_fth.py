"""FTH mask geometry, hologram formation and photon statistics."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from speckleflow.devices.fth import (
    DEFAULT_PHOTONS_PER_FRAME,
    FTHGeometry,
    default_geometry,
    embed_mz,
    expose,
    hologram,
    mask_transmission,
    object_aperture,
    valid_pixel_mask,
)
from speckleflow.devices.maze import load_states

DATA = Path(__file__).resolve().parents[1] / "data" / "maze_states_magnumnp_128.npz"


@pytest.fixture(scope="module")
def geometry() -> FTHGeometry:
    return default_geometry()


@pytest.fixture(scope="module")
def magnum_holograms(geometry: FTHGeometry) -> tuple[np.ndarray, np.ndarray]:
    """Noise-free (I+, I-) of the 16 magnum.np states: (16, 2, ny, nx), and families."""
    states = load_states(DATA)
    h = np.array(
        [[hologram(geometry, embed_mz(geometry, m), s) for s in (1, -1)] for m in states.mz]
    )
    return h, states.family


# -- geometry ------------------------------------------------------------------------


def test_default_geometry_256(geometry: FTHGeometry) -> None:
    assert geometry.shape == (256, 256)
    assert geometry.object_radius == 32.0  # shape / 8
    assert geometry.n_references == 3
    assert geometry.reference_radius == 1.5
    assert geometry.beamstop_radius == 5.0
    assert geometry == FTHGeometry()  # the dataclass defaults are this layout


@pytest.mark.parametrize("shape", [(128, 128), (192, 192), (512, 512), (256, 384)])
def test_default_geometry_scales(shape: tuple[int, int]) -> None:
    g = default_geometry(shape)  # validated in __post_init__
    assert g.shape == shape
    assert 0.9 * min(shape) / 8 <= g.object_radius <= min(shape) / 8


@pytest.mark.parametrize("n", [128, 192, 384, 512, 1024])
def test_default_geometry_keeps_the_physics_of_256(n: int) -> None:
    """The same mask on a larger detector of the same pitch: the beamstop stays at the
    first Airy zero of the aperture (0.61·n/R px), the references keep r/R above 256."""
    g = default_geometry((n, n))
    airy = 3.8317 / (2 * np.pi) * n / g.object_radius
    assert abs(g.beamstop_radius - airy) <= 0.5
    if n > 256:
        assert g.reference_radius / g.object_radius == pytest.approx(1.5 / 32.0)


def test_default_geometry_rejects_small_grid() -> None:
    with pytest.raises(ValueError, match=r"\(64, 64\)"):
        default_geometry((64, 64))


def test_config_round_trip_is_plain_json(geometry: FTHGeometry) -> None:
    cfg = geometry.to_config()
    text = json.dumps(cfg)  # plain lists / floats / ints only
    again = FTHGeometry.from_config(json.loads(text))
    assert again == geometry
    np.testing.assert_array_equal(again.reference_centers, geometry.reference_centers)


def test_from_config_names_missing_and_unknown_keys(geometry: FTHGeometry) -> None:
    cfg = geometry.to_config()
    del cfg["beamstop_radius"]
    cfg["colour"] = "red"
    with pytest.raises(ValueError, match=r"missing keys \['beamstop_radius'\].*\['colour'\]"):
        FTHGeometry.from_config(cfg)


def _with(geometry: FTHGeometry, **changes: object) -> dict:
    cfg = geometry.to_config()
    cfg.update(changes)
    return cfg


def test_cross_terms_are_separated(geometry: FTHGeometry) -> None:
    d = geometry.cross_term_offsets
    big_r, r = geometry.object_radius, geometry.reference_radius
    assert np.all(np.hypot(*d.T) >= 2 * big_r + big_r + r + 1)
    for i in range(3):
        for j in range(3):
            if i != j:
                assert np.hypot(*(d[i] - d[j])) >= 2 * (big_r + r) + 1
            assert np.hypot(*(d[i] + d[j])) >= 2 * (big_r + r) + 1


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        # Reference 60 px left of the object: cross term inside the central term.
        ({"reference_centers": [[96.0, 95.0]]}, "central object autocorrelation and cross term"),
        # Two references 6 px apart: their cross terms overlap.
        (
            {"reference_centers": [[188.0, 118.0], [188.0, 112.0]]},
            "cross term of reference 0 and cross term of reference 1 are 6.00 px apart",
        ),
        # Two references mirror-symmetric about the object: cross term on the other's twin.
        (
            {"object_center": [128.0, 128.0], "reference_centers": [[58.0, 58.0], [198.0, 198.0]]},
            "cross term of reference 0 and twin of reference 1",
        ),
        # Mask wider than half the grid: aliased Patterson map.
        (
            {"reference_centers": [[188.0, 118.0], [188.0, 250.0]]},
            "leaves the unaliased Patterson box",
        ),
        ({"reference_centers": [[96.0, 140.0]]}, "object aperture and reference hole 0 overlap"),
        ({"reference_centers": [[0.0, 10.0]]}, "leaves the 256x256 grid"),
        ({"object_radius": -1.0}, "object_radius"),
        ({"beamstop_radius": 100.0}, "beamstop_radius"),
        ({"reference_centers": []}, r"shape \(k, 2\)"),
    ],
)
def test_invalid_layouts_are_named(geometry: FTHGeometry, changes: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        FTHGeometry.from_config(_with(geometry, **changes))


# -- mask and object -----------------------------------------------------------------


def test_mask_transmission(geometry: FTHGeometry) -> None:
    t = mask_transmission(geometry)
    assert t.shape == (256, 256) and t.dtype == np.complex128
    assert set(np.unique(t)) == {0, 1}
    obj = object_aperture(geometry).sum()
    assert abs(obj - np.pi * 32**2) < 2 * np.pi * 32  # disc area to a perimeter
    assert t.real.sum() == obj + 3 * 9  # a 1.5-px hole is 3 x 3 pixels


def test_embed_mz(geometry: FTHGeometry) -> None:
    states = load_states(DATA)
    field = embed_mz(geometry, states.mz[0])
    assert field.shape == (256, 256) and field.dtype == np.float64
    ap = object_aperture(geometry)
    assert np.all(field[~ap] == 0) and np.all(np.abs(field) <= 1)
    # The aperture shows the state, resampled 128 -> 65 px (compare with every 2nd cell).
    cy, cx = (int(v) for v in geometry.object_center)
    window = (slice(cy - 32, cy + 32), slice(cx - 32, cx + 32))
    coarse = states.mz[0].astype(float)[::2, ::2]
    inside = ap[window]
    assert np.corrcoef(field[window][inside], coarse[inside])[0, 1] > 0.85
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        embed_mz(geometry, np.zeros(3))
    bad = np.zeros((8, 8))
    bad[2, 3] = np.nan
    with pytest.raises(ValueError, match="1 non-finite"):
        embed_mz(geometry, bad)


# -- holograms -----------------------------------------------------------------------


def test_hologram_normalisation_and_centre(geometry: FTHGeometry) -> None:
    field = embed_mz(geometry, load_states(DATA).mz[3])
    ip = hologram(geometry, field, +1)
    im = hologram(geometry, field, -1)
    assert ip.dtype == np.float64 and ip.min() >= 0
    assert (ip.sum() + im.sum()) / 2 == pytest.approx(1.0, abs=1e-12)
    # Dichroism changes the transmitted flux by a little: 1 ± 2 Re(c) <mz> A_obj / A.
    assert abs(ip.sum() - 1) < 0.05
    assert np.unravel_index(np.argmax(ip), ip.shape) == (128, 128)  # q = 0 at the centre


def test_heterodyne_identity(geometry: FTHGeometry) -> None:
    """I+ - I- = 4 Re(Psi_c* Psi_m) / A (Battistelli et al., Optica 11, 234 (2024))."""
    c = 0.07 - 0.03j
    field = embed_mz(geometry, load_states(DATA).mz[5])
    ip = hologram(geometry, field, +1, c)
    im = hologram(geometry, field, -1, c)
    phi_c = mask_transmission(geometry)
    psi_c = np.fft.fft2(phi_c)
    psi_m = np.fft.fft2(c * field * phi_c)
    norm = np.sum(np.abs(psi_c) ** 2) + np.sum(np.abs(psi_m) ** 2)
    expected = np.fft.fftshift(4 * np.real(np.conj(psi_c) * psi_m)) / norm
    np.testing.assert_allclose(ip - im, expected, rtol=0, atol=1e-14 * ip.max())
    # No magnetic contrast -> identical helicities.
    np.testing.assert_array_equal(
        hologram(geometry, field, 1, 0j), hologram(geometry, field, -1, 0j)
    )


def test_hologram_rejects_bad_input(geometry: FTHGeometry) -> None:
    field = np.zeros(geometry.shape)
    with pytest.raises(ValueError, match="helicity"):
        hologram(geometry, field, 0)
    with pytest.raises(ValueError, match=r"shape \(4, 4\)"):
        hologram(geometry, np.zeros((4, 4)), 1)
    with pytest.raises(ValueError, match="contrast"):
        hologram(geometry, field, 1, 2.0)


# -- photon counting -----------------------------------------------------------------


def test_expose_statistics(geometry: FTHGeometry) -> None:
    ip = hologram(geometry, np.zeros(geometry.shape), 1)
    rng = np.random.default_rng(0)
    frame = expose(ip, 2e5, rng, beamstop_radius=geometry.beamstop_radius)
    assert frame.dtype == np.uint16 and frame.shape == (256, 256)
    valid = valid_pixel_mask(geometry)
    assert valid.dtype == bool and not valid[128, 128]
    assert (~valid).sum() == 81  # pixel centres within 5 px of q = 0
    assert np.all(frame[~valid] == 0)
    mean = 2e5 * ip[valid].sum()
    assert abs(frame.sum() - mean) < 5 * np.sqrt(mean)
    # Mixed-state frames: intensities add (weights are time fractions).
    mixed = 0.3 * ip + 0.7 * hologram(geometry, embed_mz(geometry, load_states(DATA).mz[0]), 1)
    assert expose(mixed, 1e4, 1, beamstop_radius=0.0).dtype == np.uint16


def test_expose_saturates_and_validates() -> None:
    expected = np.full((8, 8), 1 / 64)
    frame = expose(expected, 1e9, np.random.default_rng(0), beamstop_radius=0)
    assert np.all(frame == 65535)
    with pytest.raises(ValueError, match="minimum -0.98"):
        expose(expected - 1, 1e3, 0, beamstop_radius=0)
    with pytest.raises(ValueError, match="photons_per_frame"):
        expose(expected, 0.0, 0, beamstop_radius=0)
    with pytest.raises(ValueError, match="1 non-finite"):
        expose(np.pad([[np.nan]], ((0, 1), (0, 1))), 1e3, 0, beamstop_radius=0)


def _features(ip: np.ndarray, im: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Single-pair difference hologram normalised by sqrt(I+ + I-), centred, unit norm."""
    p = ip[valid].astype(np.float64)
    m = im[valid].astype(np.float64)
    s = p + m
    f = np.where(s > 0, (p - m) / np.sqrt(np.maximum(s, 1.0)), 0.0)
    f -= f.mean()
    return f / np.linalg.norm(f)


def test_default_photons_separate_families_and_mostly_siblings(
    geometry: FTHGeometry, magnum_holograms: tuple[np.ndarray, np.ndarray]
) -> None:
    """Single-pair Pearson correlations at DEFAULT_PHOTONS_PER_FRAME (2e5).

    Measured (magnum.np states, 8 pairs per state, seed 0): same state 0.27 ± 0.01,
    base vs sibling 0.26 ± 0.01, different families 0.00 ± 0.04 (max |r| ≈ 0.11).
    """
    holo, family = magnum_holograms
    n, reps = holo.shape[0], 8
    valid = valid_pixel_mask(geometry)
    rng = np.random.default_rng(0)
    bs = geometry.beamstop_radius
    feats = np.array(
        [
            [
                _features(
                    expose(holo[k, 0], DEFAULT_PHOTONS_PER_FRAME, rng, beamstop_radius=bs),
                    expose(holo[k, 1], DEFAULT_PHOTONS_PER_FRAME, rng, beamstop_radius=bs),
                    valid,
                )
                for _ in range(reps)
            ]
            for k in range(n)
        ]
    )
    r = np.einsum("kif,ljf->kilj", feats, feats)  # (state, rep, state, rep)
    iu = np.triu_indices(reps, 1)
    same = np.concatenate([r[k, :, k, :][iu] for k in range(n)])
    sibling = np.concatenate([r[k, :, k ^ 1, :].ravel() for k in range(n)])
    other = np.concatenate(
        [r[k, :, j, :].ravel() for k in range(n) for j in range(n) if family[j] != family[k]]
    )
    # Families: clearly separated, every same-state r above every other-family r.
    assert same.mean() > 0.2
    assert same.mean() > sibling.mean() > 0.9 * same.mean()  # siblings: close, but below
    assert abs(other.mean()) < 0.02
    assert same.min() > np.abs(other).max()
    # Siblings: a single pair's mean r with its own state's other pairs beats its mean r
    # with the sibling's pairs (measured 98 % of pairs; 100 % of the 16 state averages).
    own = np.array([[np.delete(r[k, i, k], i).mean() for i in range(reps)] for k in range(n)])
    sib = np.array([[r[k, i, k ^ 1].mean() for i in range(reps)] for k in range(n)])
    assert np.mean(own > sib) >= 0.9
    assert np.all(own.mean(axis=1) > sib.mean(axis=1))
