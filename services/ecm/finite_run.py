"""What a finite run does to a measured g2: the expected value of the multi-tau estimator.

A g2 measured over a run of finite length is not the g2 of the process. The multi-tau
estimator with the symmetric normalisation (:mod:`speckleflow.services.g2.multitau`),

    ĝ2(Δ) = m·Σ_k X_{k−i} X_k / (Σ_k X_{k−i} · Σ_k X_k),

divides by means estimated from the same m pairs. Writing X_k = μ·M·(1 + D_k) (level-l
frames are sums of M = 2^l repeats, D_k their relative fluctuation) and expanding to
second order in D, its expectation is (Priestley, *Spectral Analysis and Time Series*
§5.3; the bias of the sample autocovariance when the mean is estimated)

    E[ĝ2(Δ)] − 1 = C_l(i) − (1/m²) Σ_{q=−(m−1)}^{m−1} (m − |q|)·C_l(q + i),

    C_l(r) = Σ_{d=−(M−1)}^{M−1} (M − |d|)/M² · c(M·r + d),

with c(s) = ⟨δ(t) δ(t + s)⟩ the relative intensity autocovariance at a lag of s repeats;
for speckle with KWW dynamics c(s) = A·exp(−2(s·Δt/τ)^β) (Siegert). The first term is the
process averaged over the 2^l repeats a level-l frame spans, the second the covariance
of the past and future means: a negative offset of order A·2∫g1²dt / (m·M·Δt). For
β = 0.6 that is ≈ −0.09·A at a run of 10 τ, enough to make a fitted τ 20–40 % short
(He et al. 2015 ask for runs of ≥ 40 τ for that reason). When n independent speckles
are pooled before normalising (the labelled-ROI ensemble g2), the means are averaged
over n pixels and the second term is divided by n.

:func:`estimator_kernel` tabulates both terms as linear maps of c(s) sampled on a grid
of lags s (in repeats): the KWW fit (:func:`.kww.fit_kww` with ``kernel=``) then fits
``1 + A·(K_signal − K_mean/n)·f(s; τ, β)``, the model of what was measured, instead of the
process g2. Between grid points c is interpolated linearly in s (a grid of every lag up
to ``dense`` and log-spaced beyond; the KWW decay is smooth there).

References
----------
M. B. Priestley, Spectral Analysis and Time Series (Academic Press, 1981), §5.3.3 —
bias of autocovariance estimates with an estimated mean.
L. He, P. Zhang, M. F. Besser, M. J. Kramer, P. M. Voyles, Microsc. Microanal. 21, 1026
(2015) — ECM τ is underestimated when the trajectory is short compared with τ.
D. Lumma et al., Rev. Sci. Instrum. 71, 3274 (2000) — symmetric multi-tau normalisation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["FiniteRunKernel", "estimator_kernel"]


@dataclass(frozen=True)
class FiniteRunKernel:
    """Linear maps from c(s) on a lag grid to the expected estimator at each g2 lag.

    Attributes
    ----------
    s : ndarray, shape (n_grid,), float64
        Grid of lags, repeats (frames of level 0); ``s[0] == 0``.
    signal : ndarray, shape (n_lags, n_grid), float64
        K_signal: c averaged over the repeats a lag's frames span.
    mean : ndarray, shape (n_lags, n_grid), float64
        K_mean: covariance of the past and future means of one pixel.
    lags : ndarray, shape (n_lags,), int64
        The g2 lags, repeats.
    """

    s: np.ndarray
    signal: np.ndarray
    mean: np.ndarray
    lags: np.ndarray

    def expected_g2(self, c: np.ndarray, pooled: float = 1.0) -> np.ndarray:
        """E[ĝ2] for an autocovariance c (shape (..., n_grid)), n = ``pooled`` pixels."""
        c = np.asarray(c, float)
        return 1.0 + c @ self.signal.T - (c @ self.mean.T) / pooled


def _triangle(M: int) -> np.ndarray:
    """Weights (M − |d|)/M², d = −(M−1) … M−1 (sum 1)."""
    d = np.arange(-(M - 1), M)
    return (M - np.abs(d)) / float(M * M)


def _grid(n_max: int, dense: int, per_decade: int) -> np.ndarray:
    if n_max <= dense:
        return np.arange(n_max + 1, dtype=float)
    tail = np.unique(np.rint(np.logspace(np.log10(dense), np.log10(n_max), per_decade * 4)).astype(int))
    return np.unique(np.concatenate([np.arange(dense + 1), tail, [n_max]])).astype(float)


def _interpolation_weights(values: np.ndarray, grid: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For integer values (≥ 0, ≤ grid[-1]): left index and the two linear weights."""
    j = np.clip(np.searchsorted(grid, values, side="right") - 1, 0, grid.size - 2)
    w = (values - grid[j]) / (grid[j + 1] - grid[j])
    return j, 1.0 - w, w


def estimator_kernel(
    lags: np.ndarray,
    level: np.ndarray,
    n_pairs: np.ndarray,
    *,
    dense: int = 32,
    per_decade: int = 16,
) -> FiniteRunKernel:
    """Tabulate E[ĝ2] of the multi-tau estimator as linear maps of c(s).

    Parameters
    ----------
    lags : ndarray, shape (n_lags,), int
        Lags in repeats (``MultiTauSums.lags``); lag 0 gets zero rows (it is never fitted).
    level : ndarray, shape (n_lags,), int
        Multi-tau level of each lag (``MultiTauSums.level``).
    n_pairs : ndarray, shape (n_lags,), int
        Level-l frame pairs m of each lag (``MultiTauSums.n_pairs``).
    dense : int
        Every integer lag up to this is a grid point; beyond, ``per_decade`` points per
        decade (c is interpolated linearly in between).
    per_decade : int
        Grid points per decade beyond ``dense``. The defaults (≈ 100 points for 300
        repeats) reproduce E[ĝ2] of every lag to 6·10⁻⁵·A of an exact (every-lag) grid
        for β in [0.4, 1] and τ from 3 to 60 repeats.

    Returns
    -------
    FiniteRunKernel

    Raises
    ------
    ValueError
        For arrays of different lengths, a lag that is not i·2^level, or m < 1.
    """
    lags = np.asarray(lags, np.int64)
    level = np.asarray(level, np.int64)
    n_pairs = np.asarray(n_pairs, np.int64)
    if not (lags.ndim == level.ndim == n_pairs.ndim == 1 and lags.size == level.size == n_pairs.size):
        raise ValueError(f"lags, level, n_pairs must be 1-D of one length, got {lags.shape}, {level.shape}, "
                         f"{n_pairs.shape}")
    if (n_pairs < 1).any() or (level < 0).any():
        raise ValueError(f"n_pairs must be >= 1 and level >= 0, got {n_pairs!r}, {level!r}")
    M_all = np.left_shift(1, level)
    if (lags % M_all).any():
        raise ValueError(f"every lag must be a multiple of 2^level, got lags {lags!r} at levels {level!r}")
    i_all = lags // M_all
    # longest lag any term reaches: M·(i + m − 1) + M − 1
    reach = int((M_all * (i_all + n_pairs)).max()) if lags.size else 1
    s = _grid(max(reach, 1), dense, per_decade)
    K_sig = np.zeros((lags.size, s.size))
    K_mean = np.zeros((lags.size, s.size))
    for row, (lag, M, i, m) in enumerate(zip(lags, M_all, i_all, n_pairs, strict=True)):
        if lag == 0:
            continue
        M, i, m = int(M), int(i), int(m)
        tri = _triangle(M)
        # signal: c(M·i + d) with the triangle weights
        vals = M * i + np.arange(-(M - 1), M)
        _scatter(K_sig[row], s, np.abs(vals), tri)
        # mean: Σ_q (m − |q|)/m² C_l(q + i) = Σ_x w(x) c(x), x = M·(q + i) + d
        q = np.arange(-(m - 1), m)
        wq = (m - np.abs(q)) / float(m * m)
        up = np.zeros((2 * m - 1) * M - (M - 1))
        up[::M] = wq
        w = np.convolve(up, tri)  # x from M·(i − m + 1) − (M − 1)
        x = M * (i - m + 1) - (M - 1) + np.arange(w.size)
        _scatter(K_mean[row], s, np.abs(x), w)
    return FiniteRunKernel(s=s, signal=K_sig, mean=K_mean, lags=lags)


def _scatter(row: np.ndarray, grid: np.ndarray, values: np.ndarray, weights: np.ndarray) -> None:
    """Add ``weights`` at integer lags ``values`` to ``row``, linearly between grid points."""
    j, wl, wr = _interpolation_weights(values.astype(float), grid)
    np.add.at(row, j, weights * wl)
    np.add.at(row, j + 1, weights * wr)
