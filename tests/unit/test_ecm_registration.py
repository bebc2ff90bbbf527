"""Drift registration of repeated rasters against the liquid model's true drift track."""

from __future__ import annotations

import numpy as np
import pytest
from speckleflow.devices.liquid import LiquidSample
from speckleflow.devices.scan import RasterScan
from speckleflow.services.ecm.geometry import DetectorGeometry
from speckleflow.services.ecm.registration import crop_to_common_field, estimate_drift
from speckleflow.services.ecm.virtual import VirtualDetectors


@pytest.fixture(scope="module")
def drifting_run():
    """24×24 raster, 10 repeats at 4 kHz on a 64×64 camera, 1 e/pixel on the ring, with
    linear drift plus wander; per repeat the site shifts its frames really saw."""
    ny = nx = 24
    sample = LiquidSample((ny, nx), detector_shape=(64, 64), drift_velocity_nm_s=(0.5, -0.8),
                          drift_wander_nm=0.5, drift_period_s=2.0, drift_margin=6, dose=1.0, seed=3)
    scan = RasterScan(nx, ny, 10, 1 / 4000.0)
    acc = VirtualDetectors(DetectorGeometry.from_mapping(sample.geometry())).accumulator((ny, nx))
    seen = []
    for pts in scan.batches(ny * nx):
        acc.process(sample.electrons(pts.ix, pts.iy, pts.time), pts.ix, pts.iy, pts.repeat)
        seen.append(sample.site_shift(pts.time))
    assert sample.drift_clipped == 0
    return sample, acc.stack("adf"), seen


def test_drift_track_recovered_from_adf_images(drifting_run):
    sample, adf, seen = drifting_run
    est = estimate_drift(adf, scan_step_nm=sample.scan_step_nm)
    ref = seen[0][0]
    assert (seen[0] == ref).all()
    got = est.integer_shift()
    exact = 0
    for r, shifts in enumerate(seen):
        rel = shifts - ref
        values, counts = np.unique(rel, axis=0, return_counts=True)
        mode = values[counts.argmax()]
        # The shift changes within some repeats (drift during the raster): then the
        # estimate must be one of the shifts that repeat's frames saw.
        assert any((got[r] == v).all() for v in values), (r, got[r], values)
        if counts.max() >= 0.9 * len(rel):
            assert (got[r] == mode).all(), (r, got[r], mode)
            exact += 1
    assert exact >= 7  # most repeats have one dominant shift
    assert est.shift.any()  # the run really drifted
    np.testing.assert_allclose(est.shift_nm, est.shift * sample.scan_step_nm)
    assert est.correlation[1:].min() > 0.8


def test_upsampled_shift_stays_within_half_a_step_of_the_integer_truth(drifting_run):
    _sample, adf, seen = drifting_run
    est = estimate_drift(adf, upsample_factor=10)
    ref = seen[0][0]
    for r, shifts in enumerate(seen):
        values, counts = np.unique(shifts - ref, axis=0, return_counts=True)
        if counts.max() >= 0.9 * len(shifts):
            assert np.abs(est.shift[r] - values[counts.argmax()]).max() <= 0.5


def test_chained_registration_agrees(drifting_run):
    _, adf, _ = drifting_run
    a = estimate_drift(adf).integer_shift()
    b = estimate_drift(adf, chained=True).integer_shift()
    assert np.abs(a - b).max() <= 1


def test_registration_ignores_unvisited_positions(drifting_run):
    """NaN rows (positions not yet acquired) are masked: dominant shifts still exact."""
    _, adf, seen = drifting_run
    holes = adf.copy()
    holes[:, 20:, :] = np.nan  # the last 4 of 24 rows not yet acquired
    got = estimate_drift(holes).integer_shift()
    for r, shifts in enumerate(seen):
        values, counts = np.unique(shifts - seen[0][0], axis=0, return_counts=True)
        if counts.max() >= 0.9 * len(shifts):
            assert (got[r] == values[counts.argmax()]).all(), r


def test_crop_puts_each_sample_point_at_one_position():
    """Data whose value is the sample site seen: after cropping all repeats agree."""
    ny, nx = 12, 15
    shift = np.array([[0, 0], [1, -2], [3, -1], [-1, 2]])
    iy, ix = np.mgrid[0:ny, 0:nx]
    # image_r(p) = ref(p + d_r): value = site id of p + d_r; trailing k axes of size (2, 3).
    site = np.stack([(iy + d[0]) * 100 + (ix + d[1]) for d in shift])
    data = np.broadcast_to(site[..., None, None], (4, ny, nx, 2, 3)).copy()
    cropped, field = crop_to_common_field(data, shift + 0.2)  # rounds to whole steps
    assert field.shape == (ny - 4, nx - 4) and cropped.shape == (4, ny - 4, nx - 4, 2, 3)
    assert field.rows == slice(3, ny - 1) and field.cols == slice(2, nx - 2)
    for r in range(4):
        np.testing.assert_array_equal(cropped[r], data[0][field.rows, field.cols])


def test_crop_keeps_dask_arrays_lazy():
    da = pytest.importorskip("dask.array")
    data = da.zeros((3, 8, 8, 4, 4), chunks=(1, 4, 4, 4, 4))
    cropped, field = crop_to_common_field(data, np.array([[0, 0], [1, 1], [-1, 0]]))
    assert hasattr(cropped, "__dask_graph__") and cropped.shape == (3, 6, 7, 4, 4)
    assert field.shape == (6, 7)


@pytest.mark.parametrize(
    "kwargs, match",
    [({"reference": 5}, "reference"), ({"upsample_factor": 0}, "upsample_factor"),
     ({"smooth_sigma": -1.0}, "smooth_sigma"), ({"scan_step_nm": 0.0}, "scan_step_nm")],
)
def test_estimate_drift_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        estimate_drift(np.ones((3, 8, 8)), **kwargs)


def test_crop_rejects_drift_larger_than_the_field():
    with pytest.raises(ValueError, match="no scan position common"):
        crop_to_common_field(np.zeros((2, 4, 4)), np.array([[0, 0], [5, 0]]))
    with pytest.raises(ValueError, match="shift must have shape"):
        crop_to_common_field(np.zeros((2, 4, 4)), np.zeros((3, 2)))
