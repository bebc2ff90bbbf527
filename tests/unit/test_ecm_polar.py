"""Polar (k_r, k_φ) binning of the first ring: exact counts, model's k_φ bins, warnings."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from speckleflow.devices.liquid import LiquidSample
from speckleflow.services.ecm.geometry import DetectorGeometry
from speckleflow.services.ecm.polar import polar_binning


@pytest.fixture(scope="module")
def sample():
    return LiquidSample((4, 4), detector_shape=(128, 256), seed=2)


@pytest.fixture(scope="module")
def geom(sample):
    return DetectorGeometry.from_mapping(sample.geometry())


def test_bins_conserve_counts_exactly(sample, geom):
    pb = polar_binning(geom, n_r=4, n_phi=64)
    frames = sample.electrons(np.arange(4), np.zeros(4, int), np.arange(4) * 1e-3).astype(np.uint16)
    binned = pb.bin(frames)
    assert binned.dtype == np.int64 and binned.shape == (4, 4, 64)
    inside = pb.labels >= 0
    # every frame: bins sum to the counts on the strip, and each bin to its pixels' sum
    np.testing.assert_array_equal(binned.sum((1, 2)), frames[:, inside].sum(1))
    for f, b in zip(frames, binned, strict=True):
        np.testing.assert_array_equal(b.ravel(), np.bincount(pb.labels[inside], f[inside], 4 * 64))
    np.testing.assert_array_equal(pb.pixels.ravel(), np.bincount(pb.labels[inside], minlength=4 * 64))
    np.testing.assert_allclose(pb.mean(frames), binned / pb.pixels)
    # float input: exact too (float64 sums of counts)
    np.testing.assert_array_equal(pb.bin(frames.astype(np.float32)), binned)


def test_pixels_fall_in_their_k_bins(geom):
    with pytest.warns(UserWarning, match="probe convergence"):
        pb = polar_binning(geom, n_r=5, n_phi=16)
    rows, cols = np.nonzero(pb.labels >= 0)
    lab = pb.labels[rows, cols]
    k_r, k_phi = geom.k_r()[rows, cols], geom.k_phi()[rows, cols]
    i_r, i_phi = lab // 16, lab % 16
    assert (k_r >= pb.k_r_edges[i_r]).all() and (k_r <= pb.k_r_edges[i_r + 1]).all()
    assert (k_phi >= pb.k_phi_edges[i_phi]).all() and (k_phi < pb.k_phi_edges[i_phi + 1]).all()
    outside = pb.labels < 0
    assert ((geom.k_r()[outside] < pb.k_r_edges[0]) | (geom.k_r()[outside] > pb.k_r_edges[-1])).all()
    np.testing.assert_array_equal(pb.k_r_labels()[rows, cols], i_r)


def test_k_phi_bins_match_the_model_domains(sample, geom):
    """With the model's n_φ, every strip pixel lands in the k_φ bin of its true domain map."""
    with pytest.warns(UserWarning, match="probe convergence"):  # the model's bins are coarse
        pb = polar_binning(geom, n_r=1, n_phi=sample.n_phi_bins)
    truth = sample.truth()
    strip = pb.labels >= 0
    assert (truth.phi_bin[strip] >= 0).all()
    np.testing.assert_array_equal(pb.labels[strip] % sample.n_phi_bins, truth.phi_bin[strip])


def test_warns_when_k_phi_bins_exceed_the_probe_convergence(geom):
    conv = geom.convergence_k()
    n_ok = math.ceil(2 * math.pi * geom.ring_radius / conv)
    with pytest.warns(UserWarning, match=rf"wider than the probe convergence.*n_phi >= {n_ok}"):
        pb = polar_binning(geom, n_phi=8)
    assert pb.arc_k == pytest.approx(geom.ring_radius * 2 * math.pi / 8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        default = polar_binning(geom)
    assert default.n_phi == n_ok and default.arc_k <= conv
    assert (default.pixels > 0).all()


def test_bad_arguments_raise(geom):
    with pytest.raises(ValueError, match="n_r"):
        polar_binning(geom, n_r=0, n_phi=8)
    with pytest.raises(ValueError, match="k_r_range"):
        polar_binning(geom, n_phi=8, k_r_range=(0.5, 0.4))
    no_conv = DetectorGeometry((32, 32), (16.0, 16.0), 0.02, 0.2, 0.04, 0.05)
    with pytest.raises(ValueError, match="n_phi is None"):
        polar_binning(no_conv)
    with pytest.raises(ValueError, match="camera shape"):
        polar_binning(no_conv, n_phi=4).bin(np.zeros((2, 16, 16)))
    with pytest.warns(UserWarning, match="hold no camera pixel"):
        polar_binning(no_conv, n_r=1, n_phi=400)
