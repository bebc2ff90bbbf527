"""Phase retrieval under Poisson noise and partial coherence (issue 4, Accuracy).

Sum of n Poisson frames of mean λ = one Poisson draw of mean n·λ, so n averaged pairs
cost one draw per helicity and half-dataset. Default flux: DEFAULT_PHOTONS_PER_FRAME in
the detector plane per frame, 5-px beamstop (its pixels read 0).
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
from speckleflow.devices.fth import (
    DEFAULT_PHOTONS_PER_FRAME,
    blur_coherence,
    default_geometry,
    domain_wall_mz,
    embed_mz,
    hologram,
    valid_pixel_mask,
)
from speckleflow.devices.maze import load_states
from speckleflow.services.phase import PhaseParams, frc, kittel_fit, retrieve_state, wall_profile

DATA = Path(__file__).resolve().parents[1] / "data" / "maze_states_magnumnp_128.npz"
GEO = default_geometry((256, 256))
CFG = GEO.to_config()
PIXEL_NM = 15.0  # an assumed sample-plane pixel, to report nm


def _pairs(mz: np.ndarray, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    valid = valid_pixel_mask(GEO)
    lam = DEFAULT_PHOTONS_PER_FRAME * n
    return tuple(  # type: ignore[return-value]
        rng.poisson(hologram(GEO, mz, h) * lam * valid).astype(np.float64) for h in (1, -1)
    )


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a, b)[0, 1])


@pytest.mark.slow
def test_frc_resolution_improves_with_averaged_pairs() -> None:
    mz = embed_mz(GEO, load_states(DATA).mz[0])
    rng = np.random.default_rng(7)
    resolutions = []
    for n in (1, 10, 100, 1000):
        halves = [retrieve_state(*_pairs(mz, n, rng), CFG) for _ in range(2)]
        region = halves[0].mz_support & halves[1].mz_support
        result = frc(halves[0].mz, halves[1].mz, mask=region, pixel_size_nm=PIXEL_NM)
        corr = _corr(halves[0].mz[region], mz[region])
        print(
            f"n={n}: FRC half-period {result.resolution_px:.2f} px "
            f"({result.resolution_nm:.1f} nm), mz correlation {corr:.3f}"
        )
        resolutions.append(result.resolution_px)
    assert all(b < a for a, b in itertools.pairwise(resolutions)), resolutions


@pytest.mark.slow
def test_kittel_width_at_the_best_resolution() -> None:
    """δ = 3 px walls (stripes of 24 px period), 1000 pairs: δ within 20 %."""
    delta = 3.0
    mz = domain_wall_mz(GEO, delta, period_px=24.0)
    res = retrieve_state(*_pairs(mz, 1000, np.random.default_rng(3)), CFG)
    cy, cx = GEO.object_center
    fits = []
    for x0 in (cx, cx - 12):  # two walls (every P/2 = 12 px), rising and falling
        x, prof = wall_profile(res.mz, (cy, x0 - 6), (cy, x0 + 6), width_px=31)
        fits.append(kittel_fit(x, prof))
    for fit in fits:
        print(f"δ = {fit.delta:.2f} ± {fit.delta_sigma:.2f} px (true {delta})")
        assert fit.delta == pytest.approx(delta, rel=0.2)
        assert fit.delta_sigma < 0.2 * delta


@pytest.mark.slow
def test_richardson_lucy_beats_coherent_on_blurred_holograms() -> None:
    """Holograms blurred by a Gaussian kernel of σ = 0.5 detector px."""
    mz = embed_mz(GEO, load_states(DATA).mz[0])
    ip, im = (blur_coherence(hologram(GEO, mz, h), 0.5) for h in (1, -1))
    coherent = retrieve_state(ip, im, CFG)
    rl = retrieve_state(ip, im, CFG, params=PhaseParams(coherence=True))
    out = {}
    for name, r in (("coherent", coherent), ("RL", rl)):
        s = r.mz_support
        out[name] = (r.log_plus.fourier_error[-1], _corr(r.mz[s], mz[s]))
        print(f"{name}: Fourier error {out[name][0]:.4f}, mz correlation {out[name][1]:.3f}")
    assert out["RL"][0] < out["coherent"][0]
    assert out["RL"][1] > out["coherent"][1] + 0.2
    k = rl.coherence_kernel
    d = np.minimum(np.arange(256), 256 - np.arange(256))
    sigma_y = float(np.sqrt((k * d[:, None] ** 2).sum()))
    print(f"RL kernel σ_y = {sigma_y:.2f} px (true 0.5)")
    assert sigma_y == pytest.approx(0.5, rel=0.3)
