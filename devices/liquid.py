"""A supercooled liquid seen by 4D-STEM: speckle with spatially heterogeneous KWW dynamics.

What a pixelated camera records at each scan position of a thin supercooled-liquid (or
metallic-glass-forming) film, frame after frame, for k-resolved electron correlation
microscopy (Huang & Voyles, 5D-STEM ECM):

* **Diffraction pattern.** A bright-field disk of radius α/λ (convergence semi-angle α,
  electron wavelength λ), a diffuse background 2·b/(1 + (k/k₁)²) and the first
  diffraction ring, a Gaussian of FWHM ``ring_fwhm`` at k₁ ≈ 0.3–0.6 Å⁻¹ (k = 1/d).
  Pixel (row, col) sits at k = ((col − c_x)·Δk, (row − c_y)·Δk) with Δk the
  k-calibration (Å⁻¹ per pixel); k_φ = atan2(k_y, k_x) ∈ [0, 2π).
* **Speckle.** On the ring (|k − k₁| ≤ 3σ) the ring term is multiplied by a speckle
  intensity S = (1 − c) + c·|E|², E a unit complex Gaussian field independent per
  pixel (speckle grain ≈ one pixel), so a ring pixel's intensity autocorrelation is
  g2(Δt) = 1 + A·exp(−2(Δt/τ)^β) with A = (c·ring/(bf + bg + ring))² (the static
  background dilutes the contrast; the truth gives A per pixel).
* **Dynamic domains.** The k_φ circle is cut into ``n_phi_bins`` bins. For each bin an
  independent Voronoi tessellation of the sample with one cell per ``domain_size_nm``²
  on average gives the domains that diffract in that direction; every cell draws τ from
  a log-normal distribution (median ``tau_median``, σ of ln τ ``tau_sigma``) and β from
  a normal distribution (``beta_mean``, ``beta_sd``, clipped to [0.3, 1], rounded to
  0.02). So τ(r, k_φ) has domains of a few nm, different at different k_φ.
* **Dynamics.** E follows the KWW correlation of its domain exactly as a sum of
  Ornstein–Uhlenbeck components (:mod:`.kww`), advanced on demand per visit, so a
  repeated raster yields I(r, k, t) without storing the 5D cube. State is kept for ring
  pixels only.
* **Thickness.** A smooth random mass-thickness field (relative rms
  ``thickness_variation``) scales all intensities of a site: the static contrast of
  virtual bright/dark-field images that drift registration locks onto.
* **Drift.** The sample moves by d(t) = v·t + a smooth bounded wander (three random
  sinusoids of amplitude ``drift_wander_nm`` in total, periods of ``drift_period_s`` to
  3× that). The probe at scan position (ix, iy) sees the sample site
  (ix, iy) + round(d(t)/step): the speckle of a site keeps its own time series, so
  registering by the integer shift recovers it exactly. Sites cover the scan field plus
  ``drift_margin`` positions on each side; beyond it the shift is clipped (counted in
  :attr:`LiquidSample.drift_clipped`).
* **Counting.** Electrons per pixel are Poisson distributed around the intensity scaled
  so that the mean over the first-ring pixels (|k − k₁| ≤ FWHM/2, N_d of them) is
  ``dose`` electrons per pixel per frame — the paper's I_s/(f·N_d).

References
----------
Huang & Voyles, k-resolved electron correlation microscopy by 5D-STEM (see
``ARCHITECTURE.md`` §3): acquisition constraints N_x·N_y/f < 0.05·τ and I_s/(f·N_d) > 1.
L. He et al., Microsc. Microanal. 21, 1026 (2015); P. Zhang et al., Nat. Commun. 9, 1129
(2018) — ECM: per-pixel g2 and KWW fits, log-normal τ distributions, dynamic domains.
R. Kohlrausch (1854); G. Williams and D. C. Watts (1970) — the KWW function.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from .kww import SpeckleField

__all__ = ["LiquidSample", "LiquidTruth", "electron_wavelength"]

#: β values are rounded to this step (one KWW mixture fit per distinct value).
BETA_STEP = 0.02


def electron_wavelength(voltage_kV: float) -> float:
    """Relativistic electron wavelength, Å, for an accelerating voltage in kV (> 0)."""
    if not voltage_kV > 0:
        raise ValueError(f"voltage_kV must be > 0, got {voltage_kV!r}")
    v = voltage_kV * 1e3
    h, m0, e, c = 6.62607015e-34, 9.1093837015e-31, 1.602176634e-19, 299792458.0
    return h / math.sqrt(2 * m0 * e * v * (1 + e * v / (2 * m0 * c**2))) * 1e10


@dataclass(frozen=True)
class LiquidTruth:
    """Ground truth of a :class:`LiquidSample` (what ECM analysis should recover).

    Attributes
    ----------
    tau : ndarray, shape (ny, nx, n_phi_bins), float64
        τ at each scan position (zero drift) and k_φ bin, s.
    beta : ndarray, shape (ny, nx, n_phi_bins), float64
        β likewise.
    ensemble_tau : float
        Median of ``tau`` over positions and bins, s.
    tau_median, tau_sigma : float
        Parameters of the log-normal τ distribution the domains were drawn from (s, −).
    contrast : ndarray, shape (det_ny, det_nx), float32
        Speckle contrast A of every detector pixel (0 off the dynamic ring).
    phi_bin : ndarray, shape (det_ny, det_nx), int16
        k_φ bin of every dynamic pixel, −1 elsewhere.
    ring_mask : ndarray, shape (det_ny, det_nx), bool
        First-ring pixels (|k − k₁| ≤ FWHM/2), where ``dose`` is defined.
    k_per_pixel : float
        k-calibration, Å⁻¹ per pixel.
    ring_radius : float
        k₁, Å⁻¹.
    ring_radius_px : float
        k₁ in pixels.
    center : tuple of float
        (row, col) of k = 0, pixels.
    domain_size_nm : float
        Mean domain (Voronoi cell) diameter √(area), nm.
    scan_step_nm : float
        Distance between scan positions, nm.
    """

    tau: np.ndarray
    beta: np.ndarray
    ensemble_tau: float
    tau_median: float
    tau_sigma: float
    contrast: np.ndarray
    phi_bin: np.ndarray
    ring_mask: np.ndarray
    k_per_pixel: float
    ring_radius: float
    ring_radius_px: float
    center: tuple[float, float]
    domain_size_nm: float
    scan_step_nm: float
    extra: dict[str, Any] = field(default_factory=dict)


class LiquidSample:
    """Supercooled-liquid speckle model for 5D-STEM ECM (pure numpy, seedable).

    See the module docstring for the physics.

    Parameters
    ----------
    scan_shape : tuple of int
        (ny, nx) scan positions the model covers.
    detector_shape : tuple of int
        (rows, cols) of the camera readout, pixels; default (128, 256).
    scan_step_nm : float
        Scan step, nm.
    domain_size_nm : float
        Mean dynamic-domain size √(cell area), nm.
    tau_median : float
        Median τ of the log-normal distribution, s.
    tau_sigma : float
        Standard deviation of ln τ (0: one τ everywhere).
    beta_mean, beta_sd : float
        Normal distribution of β (clipped to [0.3, 1], rounded to 0.02).
    n_phi_bins : int
        Number of k_φ bins with independent domain maps.
    k_ring : float
        First-ring position k₁, Å⁻¹ (0.3–0.6 for metallic liquids).
    ring_fwhm : float
        Ring width, Å⁻¹.
    k_per_pixel : float, optional
        k-calibration, Å⁻¹/pixel; default puts k₁ at 0.3·min(detector_shape) pixels.
    voltage_kV : float
        Accelerating voltage (sets λ).
    convergence_mrad : float
        Probe convergence semi-angle α, mrad (bright-field disk radius α/λ).
    dose : float
        Electrons per pixel per frame on the first ring (mean), > 0.
    speckle_fraction : float
        c in S = (1 − c) + c·|E|², in [0, 1].
    background : float
        Diffuse background at k₁ relative to the ring peak.
    bright_field : float
        Bright-field disk level relative to the ring peak.
    thickness_variation : float
        Relative rms of the mass-thickness field, in [0, 0.5].
    drift_velocity_nm_s : tuple of float
        Linear drift (vy, vx), nm/s.
    drift_wander_nm : float
        Amplitude of the bounded wander, nm.
    drift_period_s : float
        Shortest wander period, s.
    drift_margin : int
        Extra sample sites on each side of the scan field, scan positions.
    n_components : int
        Exponentials per KWW mixture.
    max_state_bytes : int
        Refuse configurations whose speckle state would exceed this, bytes.
    seed : int
        Seeds domains, thickness, drift and the noise.

    Raises
    ------
    ValueError
        For out-of-range parameters, or a ring that does not fit on the detector, or a
        state larger than ``max_state_bytes`` (the message says what to reduce).
    """

    def __init__(
        self,
        scan_shape: tuple[int, int] = (16, 16),
        *,
        detector_shape: tuple[int, int] = (128, 256),
        scan_step_nm: float = 0.5,
        domain_size_nm: float = 3.0,
        tau_median: float = 1.0,
        tau_sigma: float = 0.4,
        beta_mean: float = 0.6,
        beta_sd: float = 0.08,
        n_phi_bins: int = 8,
        k_ring: float = 0.45,
        ring_fwhm: float = 0.06,
        k_per_pixel: float | None = None,
        voltage_kV: float = 200.0,
        convergence_mrad: float = 1.5,
        dose: float = 1.0,
        speckle_fraction: float = 0.9,
        background: float = 0.2,
        bright_field: float = 10.0,
        thickness_variation: float = 0.1,
        drift_velocity_nm_s: tuple[float, float] = (0.0, 0.0),
        drift_wander_nm: float = 0.0,
        drift_period_s: float = 10.0,
        drift_margin: int = 2,
        n_components: int = 6,
        max_state_bytes: int = 2**31,
        seed: int = 0,
    ) -> None:
        ny, nx = (int(v) for v in scan_shape)
        if ny < 1 or nx < 1:
            raise ValueError(f"scan_shape must be positive, got {scan_shape!r}")
        drows, dcols = (int(v) for v in detector_shape)
        if drows < 16 or dcols < 16:
            raise ValueError(f"detector_shape must be at least 16×16 pixels, got {detector_shape!r}")
        for name, value in (("scan_step_nm", scan_step_nm), ("domain_size_nm", domain_size_nm),
                            ("tau_median", tau_median), ("k_ring", k_ring), ("ring_fwhm", ring_fwhm),
                            ("convergence_mrad", convergence_mrad), ("dose", dose),
                            ("drift_period_s", drift_period_s)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        if not 0 <= tau_sigma < 5:
            raise ValueError(f"tau_sigma must be in [0, 5), got {tau_sigma!r}")
        if not (0.3 <= beta_mean <= 1.0 and beta_sd >= 0):
            raise ValueError(f"beta_mean must be in [0.3, 1] and beta_sd >= 0, got {beta_mean!r}, {beta_sd!r}")
        if not 0 <= speckle_fraction <= 1:
            raise ValueError(f"speckle_fraction must be in [0, 1], got {speckle_fraction!r}")
        if not 0 <= thickness_variation <= 0.5:
            raise ValueError(f"thickness_variation must be in [0, 0.5], got {thickness_variation!r}")
        if background < 0 or bright_field < 0:
            raise ValueError(f"background and bright_field must be >= 0, got {background!r}, {bright_field!r}")
        if int(n_phi_bins) != n_phi_bins or not 1 <= n_phi_bins <= 360:
            raise ValueError(f"n_phi_bins must be an integer in 1..360, got {n_phi_bins!r}")
        if int(drift_margin) != drift_margin or drift_margin < 0:
            raise ValueError(f"drift_margin must be an integer >= 0, got {drift_margin!r}")

        self.scan_shape = (ny, nx)
        self.detector_shape = (drows, dcols)
        self.scan_step_nm = float(scan_step_nm)
        self.domain_size_nm = float(domain_size_nm)
        self.tau_median = float(tau_median)
        self.tau_sigma = float(tau_sigma)
        self.n_phi_bins = int(n_phi_bins)
        self.k_ring = float(k_ring)
        self.ring_fwhm = float(ring_fwhm)
        self.voltage_kV = float(voltage_kV)
        self.wavelength = electron_wavelength(voltage_kV)
        self.convergence_mrad = float(convergence_mrad)
        self.speckle_fraction = float(speckle_fraction)
        self.margin = int(drift_margin)
        self.drift_velocity_nm_s = (float(drift_velocity_nm_s[0]), float(drift_velocity_nm_s[1]))
        self.drift_wander_nm = float(drift_wander_nm)
        self.drift_clipped = 0
        self.seed = int(seed)
        self.rng = np.random.default_rng(seed)
        self._dose = float(dose)

        # -- detector geometry ------------------------------------------------------
        self.center = (drows // 2, dcols // 2)
        if k_per_pixel is None:
            k_per_pixel = self.k_ring / (0.3 * min(drows, dcols))
        if not k_per_pixel > 0:
            raise ValueError(f"k_per_pixel must be > 0, got {k_per_pixel!r}")
        self.k_per_pixel = float(k_per_pixel)
        sigma_k = self.ring_fwhm / (2 * math.sqrt(2 * math.log(2)))
        reach = (self.k_ring + 3 * sigma_k) / self.k_per_pixel
        if reach > min(self.center[0], drows - 1 - self.center[0], self.center[1], dcols - 1 - self.center[1]):
            raise ValueError(
                f"the first ring (k₁ = {self.k_ring} Å⁻¹ + 3σ) reaches {reach:.1f} px from the centre and "
                f"does not fit on a {drows}×{dcols} detector at {self.k_per_pixel:.4g} Å⁻¹/px"
            )
        rows, cols = np.mgrid[0:drows, 0:dcols]
        ky = (rows - self.center[0]) * self.k_per_pixel
        kx = (cols - self.center[1]) * self.k_per_pixel
        self.k_r = np.hypot(kx, ky)
        self.k_phi = np.mod(np.arctan2(ky, kx), 2 * np.pi)
        self.bf_radius = self.convergence_mrad * 1e-3 / self.wavelength  # Å⁻¹
        ring = np.exp(-0.5 * ((self.k_r - self.k_ring) / sigma_k) ** 2)
        bg = 2.0 * float(background) / (1.0 + (self.k_r / self.k_ring) ** 2)
        edge = 0.5 * self.k_per_pixel
        bf = float(bright_field) * np.clip((self.bf_radius - self.k_r) / (2 * edge) + 0.5, 0.0, 1.0)
        profile = ring + bg + bf
        self.ring_mask = np.abs(self.k_r - self.k_ring) <= self.ring_fwhm / 2
        self.ring_pixels = int(self.ring_mask.sum())  # N_d
        self._profile_mean_ring = float(profile[self.ring_mask].mean())
        dynamic = np.abs(self.k_r - self.k_ring) <= 3 * sigma_k
        self._dyn_index = np.flatnonzero(dynamic.ravel())
        edges = np.linspace(0.0, 2 * np.pi, self.n_phi_bins + 1)
        dyn_bins = np.clip(np.searchsorted(edges, self.k_phi.ravel()[self._dyn_index], side="right") - 1,
                           0, self.n_phi_bins - 1)
        self.phi_bin_edges = edges
        self._profile = profile.astype(np.float32).ravel()
        self._ring_dyn = (ring.ravel()[self._dyn_index]).astype(np.float32)
        phi_bin = np.full(drows * dcols, -1, np.int16)
        phi_bin[self._dyn_index] = dyn_bins
        self.phi_bin = phi_bin.reshape(drows, dcols)
        contrast = np.zeros(drows * dcols, np.float32)
        contrast[self._dyn_index] = (self.speckle_fraction * self._ring_dyn / self._profile[self._dyn_index]) ** 2
        self.contrast = contrast.reshape(drows, dcols)

        # -- sample sites: scan field plus the drift margin -------------------------
        m = self.margin
        self.site_shape = (ny + 2 * m, nx + 2 * m)
        n_sites = self.site_shape[0] * self.site_shape[1]
        need = SpeckleField.state_bytes(n_sites, self._dyn_index.size, n_components)
        if need > max_state_bytes:
            raise ValueError(
                f"the speckle state needs {need / 2**20:.0f} MiB for {n_sites} sites × "
                f"{self._dyn_index.size} ring pixels × {n_components} components, more than "
                f"max_state_bytes = {max_state_bytes / 2**20:.0f} MiB: use a smaller scan, a "
                f"smaller detector, a narrower ring_fwhm or fewer n_components"
            )
        self._tau_sites, self._beta_sites = self._draw_domains(beta_mean, beta_sd)
        self.field = SpeckleField(
            self._tau_sites.reshape(n_sites, self.n_phi_bins),
            self._beta_sites.reshape(n_sites, self.n_phi_bins),
            dyn_bins,
            self.rng,
            n_components=n_components,
        )
        thick = self.rng.standard_normal(self.site_shape)
        if thickness_variation > 0:
            thick = ndimage.gaussian_filter(thick, self.domain_size_nm / self.scan_step_nm / 2, mode="wrap")
            thick = 1.0 + thickness_variation * (thick - thick.mean()) / (thick.std() or 1.0)
            thick = np.clip(thick, 0.2, None)
            thick /= thick[m : m + ny, m : m + nx].mean()  # mean 1 over the scan field: dose exact
        else:
            thick = np.ones(self.site_shape)
        self._thickness = thick.ravel().astype(np.float32)
        phases = self.rng.uniform(0, 2 * np.pi, (2, 3))
        periods = float(drift_period_s) * self.rng.uniform(1.0, 3.0, (2, 3))
        self._wander = (phases, periods)

    # -- construction helpers ---------------------------------------------------------
    def _draw_domains(self, beta_mean: float, beta_sd: float) -> tuple[np.ndarray, np.ndarray]:
        """τ and β per (site row, site col, k_φ bin) from one Voronoi tessellation per bin."""
        sy, sx = self.site_shape
        step = self.scan_step_nm
        border = 2.0 * self.domain_size_nm
        height, width = sy * step + 2 * border, sx * step + 2 * border
        pts = np.stack(np.meshgrid(np.arange(sy) * step, np.arange(sx) * step, indexing="ij"), -1).reshape(-1, 2)
        tau = np.empty((sy * sx, self.n_phi_bins))
        beta = np.empty_like(tau)
        for b in range(self.n_phi_bins):
            n_cells = max(1, int(self.rng.poisson(height * width / self.domain_size_nm**2)))
            seeds = self.rng.uniform((-border, -border), (height - border, width - border), (n_cells, 2))
            cell = cKDTree(seeds).query(pts)[1]
            cell_tau = self.tau_median * np.exp(self.tau_sigma * self.rng.standard_normal(n_cells))
            cell_beta = np.clip(beta_mean + beta_sd * self.rng.standard_normal(n_cells), 0.3, 1.0)
            cell_beta = np.round(cell_beta / BETA_STEP) * BETA_STEP
            tau[:, b] = cell_tau[cell]
            beta[:, b] = np.round(cell_beta[cell], 6)
        return tau.reshape(sy, sx, -1), beta.reshape(sy, sx, -1)

    # -- properties -------------------------------------------------------------------
    @property
    def dose(self) -> float:
        """Mean electrons per pixel per frame on the first ring (settable, > 0)."""
        return self._dose

    @dose.setter
    def dose(self, value: float) -> None:
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ValueError(f"dose must be a finite number > 0 electrons/pixel/frame, got {value!r}")
        self._dose = float(value)

    @property
    def state_bytes(self) -> int:
        """Memory held by the speckle state, bytes."""
        return int(self.field._state.nbytes)

    def geometry(self) -> dict[str, Any]:
        """Detector and scan geometry as plain JSON-able values (for device configuration)."""
        return {
            "detector_shape": list(self.detector_shape),
            "center": [float(c) for c in self.center],
            "k_per_pixel": self.k_per_pixel,
            "ring_radius": self.k_ring,
            "ring_radius_px": self.k_ring / self.k_per_pixel,
            "ring_fwhm": self.ring_fwhm,
            "ring_pixels": self.ring_pixels,
            "n_phi_bins": self.n_phi_bins,
            "voltage_kV": self.voltage_kV,
            "wavelength_A": self.wavelength,
            "convergence_mrad": self.convergence_mrad,
            "bf_radius": self.bf_radius,
            "scan_shape": list(self.scan_shape),
            "scan_step_nm": self.scan_step_nm,
        }

    # -- drift ------------------------------------------------------------------------
    def drift(self, t: np.ndarray | float) -> np.ndarray:
        """Sample displacement at simulated time(s) t (s), shape (..., 2) as (dy, dx), nm."""
        t = np.asarray(t, float)
        v = np.asarray(self.drift_velocity_nm_s)
        out = t[..., None] * v
        if self.drift_wander_nm > 0:
            phases, periods = self._wander
            wave = np.sin(2 * np.pi * t[..., None, None] / periods + phases).sum(-1) / 3.0
            out = out + self.drift_wander_nm * wave
        return out

    def site_shift(self, t: np.ndarray | float) -> np.ndarray:
        """Integer site shift round(d(t)/step) at time(s) t, shape (..., 2) as (sy, sx)."""
        return np.rint(self.drift(t) / self.scan_step_nm).astype(np.int64)

    def _sites(self, ix: np.ndarray, iy: np.ndarray, t: np.ndarray) -> np.ndarray:
        ny, nx = self.scan_shape
        if ix.min() < 0 or iy.min() < 0 or ix.max() >= nx or iy.max() >= ny:
            raise ValueError(f"scan positions outside the model's {nx}×{ny} field")
        shift = self.site_shift(t)
        m = self.margin
        row = iy + m + shift[:, 0]
        col = ix + m + shift[:, 1]
        clipped = (row < 0) | (row >= self.site_shape[0]) | (col < 0) | (col >= self.site_shape[1])
        self.drift_clipped += int(clipped.sum())
        row = np.clip(row, 0, self.site_shape[0] - 1)
        col = np.clip(col, 0, self.site_shape[1] - 1)
        return row * self.site_shape[1] + col

    # -- frames -----------------------------------------------------------------------
    def intensity(self, ix: np.ndarray, iy: np.ndarray, t: np.ndarray) -> np.ndarray:
        """Expected electrons per pixel (speckle included, before Poisson counting).

        Parameters
        ----------
        ix, iy : ndarray, shape (B,), int
            Scan positions (column, row).
        t : ndarray, shape (B,), float
            Simulated time of each frame, s, non-decreasing for any one sample site.

        Returns
        -------
        ndarray, shape (B, det_ny, det_nx), float32
            Mean electrons per pixel in each frame.

        Raises
        ------
        ValueError
            For positions outside the scan field, mismatched lengths or time going
            backwards at a site.
        """
        ix = np.atleast_1d(np.asarray(ix, np.int64))
        iy = np.atleast_1d(np.asarray(iy, np.int64))
        t = np.atleast_1d(np.asarray(t, float))
        if not ix.shape == iy.shape == t.shape or ix.ndim != 1:
            raise ValueError(f"ix, iy, t must be 1-D of one length, got {ix.shape}, {iy.shape}, {t.shape}")
        sites = self._sites(ix, iy, t)
        n = sites.size
        scale = np.float32(self._dose / self._profile_mean_ring)
        thick = self._thickness[sites] * scale
        out = thick[:, None] * self._profile[None, :]
        # Sites repeat within a batch only when drift maps two positions onto one site:
        # advance such frames in successive groups so that each site moves forward in time.
        start = 0
        distinct = np.unique(sites).size == n
        while start < n:
            if distinct:
                stop = n
            else:
                seen: set[int] = set()
                stop = start
                while stop < n and int(sites[stop]) not in seen:
                    seen.add(int(sites[stop]))
                    stop += 1
            e = self.field.amplitudes(sites[start:stop], t[start:stop])
            speckle = self.speckle_fraction * (e.real * e.real + e.imag * e.imag - np.float32(1.0))
            out[start:stop, self._dyn_index] += thick[start:stop, None] * self._ring_dyn[None, :] * speckle
            start = stop
        return out.reshape(n, *self.detector_shape)

    def electrons(self, ix: np.ndarray, iy: np.ndarray, t: np.ndarray) -> np.ndarray:
        """Poisson electron counts per pixel (as :meth:`intensity`, then counted).

        Returns
        -------
        ndarray, shape (B, det_ny, det_nx), int64
            Electrons per pixel in each frame.
        """
        return self.rng.poisson(self.intensity(ix, iy, t))

    # -- truth ------------------------------------------------------------------------
    def truth(self) -> LiquidTruth:
        """Ground truth maps at the scan positions (zero drift)."""
        ny, nx = self.scan_shape
        m = self.margin
        tau = self._tau_sites[m : m + ny, m : m + nx].copy()
        beta = self._beta_sites[m : m + ny, m : m + nx].copy()
        return LiquidTruth(
            tau=tau,
            beta=beta,
            ensemble_tau=float(np.median(tau)),
            tau_median=self.tau_median,
            tau_sigma=self.tau_sigma,
            contrast=self.contrast.copy(),
            phi_bin=self.phi_bin.copy(),
            ring_mask=self.ring_mask.copy(),
            k_per_pixel=self.k_per_pixel,
            ring_radius=self.k_ring,
            ring_radius_px=self.k_ring / self.k_per_pixel,
            center=(float(self.center[0]), float(self.center[1])),
            domain_size_nm=self.domain_size_nm,
            scan_step_nm=self.scan_step_nm,
        )
