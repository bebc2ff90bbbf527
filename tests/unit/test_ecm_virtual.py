"""Virtual BF / ADF / COM detectors on the liquid model's diffraction patterns."""

from __future__ import annotations

import numpy as np
import pytest
from speckleflow.devices.liquid import LiquidSample
from speckleflow.devices.scan import RasterScan
from speckleflow.services.ecm.geometry import DetectorGeometry
from speckleflow.services.ecm.virtual import VirtualDetectors


@pytest.fixture(scope="module")
def run():
    ny, nx = 10, 12
    sample = LiquidSample((ny, nx), detector_shape=(64, 96), dose=2.0, seed=5)
    scan = RasterScan(nx, ny, 2, 1 / 2000.0)
    pts = scan.points()
    frames = sample.electrons(pts.ix, pts.iy, pts.time)
    return sample, pts, frames


def test_geometry_from_the_camera_configuration_matches_the_model():
    sample = LiquidSample((2, 2), detector_shape=(64, 96), seed=0)
    geom = DetectorGeometry.from_mapping(sample.geometry())
    truth = sample.truth()
    np.testing.assert_allclose(geom.k_r(), sample.k_r)
    np.testing.assert_allclose(geom.k_phi(), sample.k_phi)
    vd = VirtualDetectors(geom)
    np.testing.assert_array_equal(vd.adf_mask, truth.ring_mask)
    assert geom.convergence_k() == pytest.approx(sample.bf_radius)


def test_adf_image_shows_the_ring_dose_and_bf_the_disc(run):
    sample, _pts, frames = run
    geom = DetectorGeometry.from_mapping(sample.geometry())
    vd = VirtualDetectors(geom)
    img = vd.images(frames[: 120].reshape(10, 12, *frames.shape[1:]))
    # The model calibrates the mean over first-ring pixels to `dose` e/pixel/frame.
    per_pixel = img.adf / vd.adf_mask.sum()
    assert per_pixel.mean() == pytest.approx(sample.dose, rel=0.03)
    # An annulus of equal width just outside the ring sees only the diffuse background.
    off = VirtualDetectors(geom, adf_inner=geom.ring_radius + 2 * geom.ring_width,
                           adf_outer=geom.ring_radius + 3 * geom.ring_width)
    off_img = off.images(frames[:120].reshape(10, 12, *frames.shape[1:]))
    assert (off_img.adf / off.adf_mask.sum()).mean() < 0.5 * per_pixel.mean()
    # BF and ADF follow the same static thickness map (rms < 10 % over this small field)
    # under ~5 % counting and ~5 % speckle noise on the ADF: clearly correlated (0.60 here).
    assert np.corrcoef(img.bf.ravel(), img.adf.ravel())[0, 1] > 0.4
    assert np.array_equal(img.bf, frames[:120][:, vd.bf_mask].sum(1).reshape(10, 12))
    # COM: Σ I·(col − c_x) / Σ I frame by frame; a centro-symmetric pattern averages near 0.
    f = frames[:120].astype(float)
    cols = np.arange(f.shape[2]) - geom.center[1]
    np.testing.assert_allclose(img.com_x.ravel(), (f.sum(1) * cols).sum(1) / f.sum((1, 2)), rtol=1e-12)
    assert abs(np.mean(img.com_x)) < 0.3 and abs(np.mean(img.com_y)) < 0.3
    assert img.com_unit == "px" and (img.frames == 1).all()


def test_com_of_a_single_spot_in_pixels_and_inverse_angstrom():
    geom = DetectorGeometry((32, 40), (16.0, 20.0), 0.01, 0.2, 0.04, 0.05)
    frames = np.zeros((2, 3, 32, 40), np.uint16)
    frames[1, 2, 19, 15] = 7  # 3 rows below, 5 columns left of k = 0
    px = VirtualDetectors(geom).images(frames)
    assert (px.com_y[1, 2], px.com_x[1, 2]) == (3.0, -5.0)
    assert np.isnan(px.com_x[0, 0])  # empty pattern
    k = VirtualDetectors(geom, com_unit="1/angstrom").images(frames)
    assert k.com_y[1, 2] == pytest.approx(0.03) and k.com_x[1, 2] == pytest.approx(-0.05)


def test_incremental_batches_equal_the_whole_repeat(run):
    sample, pts, frames = run
    vd = VirtualDetectors(DetectorGeometry.from_mapping(sample.geometry()))
    order = np.random.default_rng(1).permutation(len(pts))
    a, b = vd.accumulator((10, 12)), vd.accumulator((10, 12))
    for part, acc in ((order[:100], a), (order[100:], b)):
        for chunk in np.array_split(part, 3):
            acc.process(frames[chunk], pts.ix[chunk], pts.iy[chunk], pts.repeat[chunk])
    a.merge(b)
    assert a.repeats == [0, 1]
    for r in (0, 1):
        whole = vd.images(frames[pts.repeat == r].reshape(10, 12, *frames.shape[1:]))
        part = a.images(r)
        for name in ("bf", "adf", "total", "com_x", "com_y"):
            np.testing.assert_allclose(getattr(part, name), getattr(whole, name), rtol=1e-12)
    assert a.stack("adf").shape == (2, 10, 12)


def test_bad_inputs_raise():
    geom = DetectorGeometry((32, 40), (16.0, 20.0), 0.01, 0.2, 0.04, 0.05)
    vd = VirtualDetectors(geom)
    with pytest.raises(ValueError, match="camera shape"):
        vd.signals(np.zeros((3, 32, 41)))
    with pytest.raises(ValueError, match="com_unit"):
        VirtualDetectors(geom, com_unit="mrad")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="adf_inner < adf_outer"):
        VirtualDetectors(geom, adf_inner=0.3, adf_outer=0.2)
    with pytest.raises(ValueError, match="outside"):
        vd.accumulator((4, 4)).process(np.zeros((1, 32, 40)), [4], [0], [0])
    with pytest.raises(ValueError, match="k_per_pixel"):
        DetectorGeometry((32, 40), (16.0, 20.0), -0.01, 0.2, 0.04, 0.05)
    with pytest.raises(ValueError, match="ring_fwhm"):
        DetectorGeometry.from_mapping({"detector_shape": [8, 8], "center": [4, 4]})
    with pytest.raises(KeyError):
        vd.accumulator((4, 4)).images(0)
