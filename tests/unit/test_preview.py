"""FTH preview reconstruction (services/fth/preview.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage
from speckleflow.devices.fth import (
    DEFAULT_PHOTONS_PER_FRAME,
    FTHGeometry,
    default_geometry,
    embed_mz,
    expose,
    hologram,
    valid_pixel_mask,
)
from speckleflow.devices.maze import generate_maze_states, load_states
from speckleflow.services.fth.preview import (
    RollingPreview,
    beamstop_apodisation,
    crop_aperture_mask,
    cross_term_crops,
    preview_image,
    reconstruct,
)

DATA = Path(__file__).resolve().parents[1] / "data" / "maze_states_magnumnp_128.npz"


@pytest.fixture(scope="module")
def geometry() -> FTHGeometry:
    return default_geometry()


@pytest.fixture(scope="module")
def config(geometry: FTHGeometry) -> dict:
    return geometry.to_config()


@pytest.fixture(scope="module")
def magnum_mz() -> np.ndarray:
    return load_states(DATA).mz


@pytest.fixture(scope="module")
def generated_mz() -> np.ndarray:
    return generate_maze_states(n_families=2, seed=0).mz


def blurred_truth(geometry: FTHGeometry, field: np.ndarray, half: int) -> np.ndarray:
    """embed_mz ⊛ reference disc, cropped around the object like the preview."""
    r = geometry.reference_radius
    k = int(np.ceil(r))
    yy, xx = np.mgrid[-k : k + 1, -k : k + 1]
    disc = (yy**2 + xx**2 <= r**2).astype(float)
    blurred = ndimage.convolve(field, disc, mode="wrap")
    cy, cx = (round(v) for v in geometry.object_center)
    return blurred[cy - half : cy + half + 1, cx - half : cx + half + 1]


def pearson_inside(a: np.ndarray, b: np.ndarray, inside: np.ndarray) -> float:
    return float(np.corrcoef(a[inside], b[inside])[0, 1])


def difference(
    geometry: FTHGeometry, mz: np.ndarray, contrast: complex = 0.1 + 0.05j
) -> tuple[np.ndarray, np.ndarray]:
    field = embed_mz(geometry, mz)
    return (
        hologram(geometry, field, +1, contrast) - hologram(geometry, field, -1, contrast),
        field,
    )


def test_reconstruct_is_the_patterson_map(geometry: FTHGeometry) -> None:
    h = hologram(geometry, np.zeros(geometry.shape), 1)
    p = reconstruct(h)
    assert p.shape == (256, 256) and p.dtype == np.complex128
    # Zero offset at the centre holds sum |phi|^2 (normalised): the maximum.
    assert np.unravel_index(np.argmax(np.abs(p)), p.shape) == (128, 128)
    # Hermitian: P(-x) = conj(P(x)) (twin convention).
    flipped = np.roll(p[::-1, ::-1], (1, 1), axis=(0, 1))
    np.testing.assert_allclose(flipped, np.conj(p), atol=1e-12 * np.abs(p).max())


def test_cross_terms_show_the_object_aperture(geometry: FTHGeometry, config: dict) -> None:
    """Non-magnetic hologram: each crop is the aperture ⊛ reference, centred in the crop."""
    crops = cross_term_crops(reconstruct(hologram(geometry, np.zeros(geometry.shape), 1)), config)
    assert crops.shape == (3, 73, 73) and crops.dtype == np.complex128
    inside = crop_aperture_mask(config)
    yy, xx = np.mgrid[-36:37, -36:37]
    rho = np.hypot(yy, xx)
    # Just outside the term (aperture dilated by the 3 x 3 hole reaches 32 + sqrt(2) px);
    # the neighbouring terms begin >= 1.5 px further out, so windows show their edges
    # and previews are masked to the aperture.
    ring = (rho > 34.1) & (rho < 34.9)
    for crop in np.abs(crops):
        peak = crop[inside].max()
        assert np.median(crop[inside]) > 0.9 * peak
        assert crop[ring].max() < 0.05 * peak


@pytest.mark.parametrize("state", range(16))
def test_preview_of_magnum_state_matches_truth(
    geometry: FTHGeometry, config: dict, magnum_mz: np.ndarray, state: int
) -> None:
    """Acceptance: noise-free preview vs mz ⊛ reference hole, Pearson inside the aperture.

    Measured over the 16 states: 0.94-0.98 with the default beamstop apodisation (which
    removes |q| < 10 px, where the magnum.np mazes with their large domains and net
    magnetisation carry weight) and 1.000 without it (exact up to blur and scale).
    """
    diff, field = difference(geometry, magnum_mz[state])
    inside = crop_aperture_mask(config)
    truth = blurred_truth(geometry, field, 36)
    image = preview_image(diff, config)
    assert image.dtype == np.float32 and image.shape == (73, 73)
    r = pearson_inside(image, truth, inside)
    assert abs(r) >= 0.9
    assert r > 0  # sign convention: default contrast (Re c > 0) gives +mz
    exact = preview_image(diff, config, apodise_beamstop=False)
    assert pearson_inside(exact, truth, inside) >= 0.999


@pytest.mark.parametrize("state", [0, 1, 3])
def test_preview_of_generated_state_matches_truth(
    geometry: FTHGeometry, config: dict, generated_mz: np.ndarray, state: int
) -> None:
    """Measured: 0.997-0.999 (apodised), 1.000 exact."""
    diff, field = difference(geometry, generated_mz[state])
    inside = crop_aperture_mask(config)
    truth = blurred_truth(geometry, field, 36)
    assert pearson_inside(preview_image(diff, config), truth, inside) >= 0.99
    exact = preview_image(diff, config, apodise_beamstop=False)
    assert pearson_inside(exact, truth, inside) >= 0.999


def test_beamstop_apodisation_helps(
    geometry: FTHGeometry, config: dict, magnum_mz: np.ndarray
) -> None:
    """With a real (hard, 5 px) beamstop, the smooth window limits central-term leakage.

    Measured over the 16 magnum.np states: 0.82-1.00 (mean 0.92) with the hard edge,
    0.94-0.98 (mean 0.96) with the window.
    """
    valid = valid_pixel_mask(geometry)
    inside = crop_aperture_mask(config)
    hard, soft = [], []
    for mz in magnum_mz:
        diff, field = difference(geometry, mz)
        truth = blurred_truth(geometry, field, 36)
        image = preview_image(diff * valid, config, apodise_beamstop=False)
        hard.append(pearson_inside(image, truth, inside))
        soft.append(pearson_inside(preview_image(diff * valid, config), truth, inside))
    assert min(soft) >= 0.9 and min(soft) > min(hard) and np.mean(soft) > np.mean(hard)
    window = beamstop_apodisation((256, 256), 5.0)
    assert window[128, 128] == 0 and window[128, 133] == 0 and window[128, 138] == 1
    assert np.all(beamstop_apodisation((8, 8), 0.0) == 1)


def test_sign_and_twin_conventions(
    geometry: FTHGeometry, config: dict, magnum_mz: np.ndarray
) -> None:
    inside = crop_aperture_mask(config)
    diff, field = difference(geometry, magnum_mz[2], contrast=-0.1 - 0.05j)
    truth = blurred_truth(geometry, field, 36)
    exact = {"apodise_beamstop": False}
    assert pearson_inside(preview_image(diff, config, **exact), truth, inside) <= -0.999  # Re c < 0
    assert pearson_inside(preview_image(diff, config), truth, inside) <= -0.9
    # Purely dichroic-phase contrast (arg c = 90°) is at the branch edge; |r| still 1.
    diff_i, _ = difference(geometry, magnum_mz[2], contrast=0.1j)
    assert abs(pearson_inside(preview_image(diff_i, config, **exact), truth, inside)) >= 0.999
    # The twin at -d is the point-mirrored complex conjugate of the cross term at +d.
    p = reconstruct(diff)
    d = np.round(geometry.cross_term_offsets[0]).astype(int)
    direct = cross_term_crops(p, config)[0]
    rows = (128 - d[0] + np.arange(-36, 37)) % 256
    cols = (128 - d[1] + np.arange(-36, 37)) % 256
    twin = p[np.ix_(rows, cols)]
    np.testing.assert_allclose(np.conj(twin[::-1, ::-1]), direct, atol=1e-12 * np.abs(direct).max())


def test_single_reference_subsets(
    geometry: FTHGeometry, config: dict, magnum_mz: np.ndarray
) -> None:
    diff, field = difference(geometry, magnum_mz[4])
    inside = crop_aperture_mask(config)
    truth = blurred_truth(geometry, field, 36)
    for refs in ([0], [1, 2], [2]):
        image = preview_image(diff, config, references=refs, apodise_beamstop=False)
        assert pearson_inside(image, truth, inside) > 0.999
    with pytest.raises(ValueError, match=r"\[3\]"):
        preview_image(diff, config, references=[3])


@pytest.mark.parametrize(
    ("source", "state", "minimum"), [("magnum", 0, 0.9), ("generated", 1, 0.95)]
)
def test_preview_with_poisson_noise(
    geometry: FTHGeometry,
    config: dict,
    magnum_mz: np.ndarray,
    generated_mz: np.ndarray,
    source: str,
    state: int,
    minimum: float,
) -> None:
    """100 pairs at the default flux (2e5 photons per frame, beamstop 5 px).

    Measured: 0.96 (magnum.np state 0; its noise-free beamstopped preview reaches 0.96)
    and 0.99 (generated state 1). A single pair gives 0.6-0.7, ten pairs 0.9-0.94.
    """
    mz = (magnum_mz if source == "magnum" else generated_mz)[state]
    field = embed_mz(geometry, mz)
    ip, im = hologram(geometry, field, 1), hologram(geometry, field, -1)
    rng = np.random.default_rng(7)
    rolling = RollingPreview(config, n_pairs=100)
    bs = geometry.beamstop_radius
    for pair in range(100):
        plus = expose(ip, DEFAULT_PHOTONS_PER_FRAME, rng, beamstop_radius=bs)
        minus = expose(im, DEFAULT_PHOTONS_PER_FRAME, rng, beamstop_radius=bs)
        rolling.add(pair, plus.astype(np.int32) - minus.astype(np.int32))
    inside = crop_aperture_mask(config)
    r = pearson_inside(rolling.image(), blurred_truth(geometry, field, 36), inside)
    assert r >= max(minimum, 0.7)


def test_rolling_preview_window(config: dict) -> None:
    rng = np.random.default_rng(1)
    frames = [rng.normal(size=(256, 256)) for _ in range(5)]
    rolling = RollingPreview(config, n_pairs=3)
    with pytest.raises(RuntimeError, match="empty"):
        rolling.image()
    with pytest.raises(RuntimeError, match="empty"):
        _ = rolling.pair_range
    for i, f in enumerate(frames):
        rolling.add(10 + 2 * i, f)
    assert len(rolling) == 3
    assert rolling.pair_range == (14, 18)
    np.testing.assert_allclose(rolling.summed_difference(), frames[2] + frames[3] + frames[4])
    np.testing.assert_array_equal(
        rolling.image(), preview_image(frames[2] + frames[3] + frames[4], config)
    )
    with pytest.raises(ValueError, match="after 18"):
        rolling.add(18, frames[0])
    with pytest.raises(ValueError, match="n_pairs"):
        RollingPreview(config, n_pairs=0)


def test_bad_inputs_are_named(config: dict) -> None:
    bad = np.zeros((256, 256))
    bad[3, :7] = np.nan
    with pytest.raises(ValueError, match="7 NaN"):
        preview_image(bad, config)
    with pytest.raises(ValueError, match=r"shape \(128, 256\)"):
        preview_image(np.zeros((128, 256)), config)
    with pytest.raises(TypeError, match="complex"):
        preview_image(np.zeros((256, 256), complex), config)
    with pytest.raises(ValueError, match="7 NaN"):
        reconstruct(bad)
    with pytest.raises(ValueError, match="missing keys"):
        preview_image(np.zeros((256, 256)), {"shape": [256, 256]})
    with pytest.raises(ValueError, match=r"shape \(5, 5\)"):
        cross_term_crops(np.zeros((5, 5), complex), config)


def test_preview_module_is_pure() -> None:
    """Imports numpy only: no devices, no transport, no Tiled."""
    code = (
        "import sys; import speckleflow.services.fth.preview; "
        "bad = [m for m in sys.modules if m.startswith(('speckleflow.devices', "
        "'speckleflow.streaming', 'zmq', 'tiled', 'bluesky', 'ophyd'))]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
