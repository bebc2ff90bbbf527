"""What the CCI pipeline delivers after clustering: averaged holograms, images, dynamics.

Given the clustering of a series (:func:`.states.run_cci_clustering`) and the pairs'
raw holograms, this module makes the products of Klose et al., Nature 614, 256 (2023):

* Fourier-space averages of each state (both helicities) and of each internal mode
  (difference holograms) — :class:`HologramSums`, fed chunk by chunk;
* a magnetic image of every state and mode by FTH (one FFT of the averaged difference
  hologram, :func:`speckleflow.services.fth.preview.preview_image`);
* the state timeline, transition counts, dwell times, the transition network laid out
  by Pearson distance, its agglomerates (:mod:`.dynamics`);
* the domain-wall occupancy of the internal modes and the pinning landscape
  (:mod:`.pinning`);
* figures a person can look at (:mod:`.figures`).

Everything is pure compute on in-memory arrays; reading runs and publishing is the
shell's job (``speckleflow.services.process_cci``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import networkx as nx
import numpy as np

from ..fth.preview import crop_aperture_mask, preview_image
from .dynamics import (
    DwellTimes,
    Timeline,
    agglomerates,
    dwell_times,
    network_summary,
    state_occupancy,
    state_timeline,
    transition_counts,
    transition_network,
)
from .pinning import PinningLandscape, pinning_landscape, wall_occupancy
from .states import CCIResult

ProgressCallback = Callable[[str, int, int], None]

#: Product steps reported to ``progress(step, done, total)`` by :func:`build_products`.
PRODUCT_STEPS = ("images", "dynamics", "pinning", "figures")


class HologramSums:
    """Running Fourier-space sums of the raw holograms per state and per internal mode.

    Parameters
    ----------
    shape : tuple of int
        Detector shape (ny, nx).
    state_of_pair : ndarray, shape (n_pairs,), int
        State of every pair (−1 unassigned: not summed into a state).
    mode_of_pair : ndarray, shape (n_pairs,), int
        Internal mode of every pair (−1: not summed into a mode). Only pairs with a
        state are summed into their mode, so mode sums partition the state sums.
    n_states, n_modes : int
        S and K.

    Notes
    -----
    Sums are float64, counts of photons: ``state_plus[s]`` is Σ I₊ over the pairs of
    state s. Averaging in Fourier space and reconstructing the average is the CCI
    recipe (Klose et al. 2023, Methods: "frames of a state are averaged in Fourier
    space"); the single-frame holograms are far too noisy to reconstruct one by one.
    """

    def __init__(
        self,
        shape: tuple[int, int],
        state_of_pair: np.ndarray,
        mode_of_pair: np.ndarray,
        n_states: int,
        n_modes: int,
    ) -> None:
        self.shape = (int(shape[0]), int(shape[1]))
        self.state_of_pair = np.asarray(state_of_pair, dtype=np.int64)
        self.mode_of_pair = np.asarray(mode_of_pair, dtype=np.int64)
        if self.state_of_pair.shape != self.mode_of_pair.shape or self.state_of_pair.ndim != 1:
            raise ValueError(
                f"state_of_pair {self.state_of_pair.shape} and mode_of_pair "
                f"{self.mode_of_pair.shape} must be equal-length 1-D arrays"
            )
        if self.state_of_pair.max(initial=-1) >= n_states or self.mode_of_pair.max(initial=-1) >= n_modes:
            raise ValueError(f"a state label is >= n_states={n_states} or a mode label >= n_modes={n_modes}")
        self.state_plus = np.zeros((n_states, *self.shape))
        self.state_minus = np.zeros((n_states, *self.shape))
        self.state_pairs = np.zeros(n_states, dtype=np.int64)
        self.mode_difference = np.zeros((n_modes, *self.shape))
        self.mode_pairs = np.zeros(n_modes, dtype=np.int64)
        self.total_difference = np.zeros(self.shape)

    def add(self, pairs: np.ndarray, plus: np.ndarray, minus: np.ndarray) -> None:
        """Add the holograms of ``pairs``.

        Parameters
        ----------
        pairs : ndarray, shape (k,), int
            Pair indices into ``state_of_pair``.
        plus, minus : ndarray, shape (k, ny, nx)
            Their + and − helicity frames (counts).

        Raises
        ------
        ValueError
            On shape mismatches or pair indices out of range.
        """
        pairs = np.asarray(pairs, dtype=np.int64)
        if plus.shape != minus.shape or plus.shape != (pairs.size, *self.shape):
            raise ValueError(
                f"plus {plus.shape} and minus {minus.shape} must be {(pairs.size, *self.shape)}"
            )
        if pairs.size and (pairs.min() < 0 or pairs.max() >= self.state_of_pair.size):
            raise ValueError(f"pair index out of range [0, {self.state_of_pair.size})")
        states = self.state_of_pair[pairs]
        modes = self.mode_of_pair[pairs]
        for k in range(pairs.size):
            p = plus[k].astype(np.float64)
            m = minus[k].astype(np.float64)
            self.total_difference += p - m
            s = states[k]
            if s < 0:
                continue
            self.state_plus[s] += p
            self.state_minus[s] += m
            self.state_pairs[s] += 1
            if modes[k] >= 0:
                self.mode_difference[modes[k]] += p - m
                self.mode_pairs[modes[k]] += 1

    def state_means(self) -> np.ndarray:
        """Mean hologram per state and helicity.

        Returns
        -------
        ndarray, shape (S, 2, ny, nx), float32
            ``[:, 0]`` helicity +1, ``[:, 1]`` helicity −1, photons per frame; NaN for
            a state without pairs.
        """
        n = self.state_pairs.astype(np.float64)[:, None, None]
        with np.errstate(invalid="ignore", divide="ignore"):
            out = np.stack([self.state_plus / n, self.state_minus / n], axis=1)
        return out.astype(np.float32)


@dataclass
class CCIProducts:
    """The products of :func:`build_products` (see the module docstring).

    Attributes
    ----------
    state_images, mode_images : ndarray, shape (S or K, h, w), float32
        FTH images ∝ mz of the averaged difference holograms, NaN outside the object
        aperture, one global sign for all (taken from the whole series' image).
    aperture : ndarray, shape (h, w), bool
    state_distance : ndarray, shape (S, S), float64
        Pearson distance 1 − r between the states' mean difference holograms.
    timeline : Timeline
    transitions : ndarray, shape (S, S), int64
    dwell : DwellTimes
    occupancy : ndarray, shape (S,), int64
        Pairs per state.
    network : networkx.DiGraph
    agglomerates : list of set of int
    network_summary : dict
    wall_occupancy : ndarray, shape (h, w), float64
    pinning : PinningLandscape
    figures : dict of str to ndarray (H, W, 4) uint8
    """

    state_images: np.ndarray
    mode_images: np.ndarray
    aperture: np.ndarray
    state_distance: np.ndarray
    timeline: Timeline
    transitions: np.ndarray
    dwell: DwellTimes
    occupancy: np.ndarray
    network: nx.DiGraph
    agglomerates: list[set[int]]
    network_summary: dict[str, Any]
    wall_occupancy: np.ndarray
    pinning: PinningLandscape
    figures: dict[str, np.ndarray] = field(default_factory=dict)


def label_distance(X: np.ndarray, labels: np.ndarray, n_labels: int) -> np.ndarray:
    """Pearson distance between the mean feature vectors of labelled groups.

    Parameters
    ----------
    X : ndarray, shape (n, M), float32
        Centred unit-norm feature rows (:func:`.features.pair_features`).
    labels : ndarray, shape (n,), int
        Group per row, 0 … n_labels − 1, or −1 (ignored).
    n_labels : int

    Returns
    -------
    ndarray, shape (n_labels, n_labels), float64
        1 − r of the group means, symmetric, zero diagonal, in [0, 2]; a group without
        rows has distance 1 to every other.
    """
    labels = np.asarray(labels)
    sums = np.zeros((n_labels, X.shape[1]))
    for k in range(n_labels):
        rows = np.flatnonzero(labels == k)
        if rows.size:
            sums[k] = X[rows].sum(axis=0, dtype=np.float64)
    sums -= sums.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(sums, axis=1)
    unit = np.divide(sums, norm[:, None], out=np.zeros_like(sums), where=norm[:, None] > 0)
    d = 1.0 - unit @ unit.T
    d[norm == 0, :] = 1.0
    d[:, norm == 0] = 1.0
    np.fill_diagonal(d, 0.0)
    return np.clip((d + d.T) / 2, 0.0, 2.0)


def fth_images(
    differences: np.ndarray, geometry_config: Mapping[str, Any], reference: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """FTH images of summed difference holograms, with one sign convention.

    :func:`~speckleflow.services.fth.preview.preview_image` fixes each image's global
    phase only up to a sign; each image here is flipped, if needed, to correlate
    positively with the image of ``reference`` (the whole series' difference sum), so
    that images of different modes can be compared pixel by pixel (wall motion).

    Parameters
    ----------
    differences : ndarray, shape (k, ny, nx), float
        Summed difference holograms I₊ − I₋ (counts).
    geometry_config : dict
        Mask geometry (``FTHGeometry.to_config()``).
    reference : ndarray, shape (ny, nx), float
        Difference hologram defining the sign.

    Returns
    -------
    images : ndarray, shape (k, h, w), float32
        ∝ mz, NaN outside the aperture and for a zero input.
    aperture : ndarray, shape (h, w), bool
    """
    aperture = crop_aperture_mask(geometry_config)
    ref = preview_image(reference, geometry_config)[aperture]
    images = np.full((differences.shape[0], *aperture.shape), np.nan, dtype=np.float32)
    for k, diff in enumerate(differences):
        if not np.any(diff):
            continue
        img = preview_image(diff, geometry_config)
        if float(np.dot(img[aperture], ref)) < 0:
            img = -img
        img[~aperture] = np.nan
        images[k] = img
    return images, aperture


def build_products(
    result: CCIResult,
    X: np.ndarray,
    sums: HologramSums,
    time: np.ndarray,
    geometry_config: Mapping[str, Any],
    *,
    max_gap_pairs: int | None = 10,
    pixel_size_nm: float | None = None,
    figures: bool = True,
    progress: ProgressCallback | None = None,
) -> CCIProducts:
    """Images, dynamics, pinning landscape and figures of a clustered CCI series.

    Parameters
    ----------
    result : CCIResult
        From :func:`.states.run_cci_clustering`.
    X : ndarray, shape (n, M), float32
        The feature rows it was computed from.
    sums : HologramSums
        Filled with every pair's holograms.
    time : ndarray, shape (n,), float
        Time of each pair, s, non-decreasing.
    geometry_config : dict
        FTH mask geometry.
    max_gap_pairs : int or None
        Transitions across longer unassigned gaps are not counted
        (:func:`.dynamics.transition_counts`).
    pixel_size_nm : float or None
        Sample-plane pixel size for the image axes.
    figures : bool
        Render the figures (a few seconds).
    progress : callable, optional
        ``progress(step, done, total)`` with ``step`` in :data:`PRODUCT_STEPS`.

    Returns
    -------
    CCIProducts

    Raises
    ------
    ValueError
        If ``time`` does not have one non-decreasing entry per pair.
    """
    from . import figures as figs

    def report(step: str, done: int, total: int) -> None:
        if progress is not None:
            progress(step, done, total)

    n = result.state.size
    time = np.asarray(time, dtype=np.float64)
    if time.shape != (n,):
        raise ValueError(f"time must have shape ({n},) (one per pair), got {time.shape}")
    S, K = result.n_states, result.n_modes

    report("images", 0, S + K)
    state_diff = sums.state_plus - sums.state_minus
    state_images, aperture = fth_images(state_diff, geometry_config, sums.total_difference)
    report("images", S, S + K)
    mode_images, _ = fth_images(sums.mode_difference, geometry_config, sums.total_difference)
    report("images", S + K, S + K)

    report("dynamics", 0, 1)
    timeline = state_timeline(result.state, time)
    counts = transition_counts(timeline, S, max_gap_pairs=max_gap_pairs)
    dwell = dwell_times(timeline, S)
    occupancy = state_occupancy(result.state, S)
    distance = label_distance(X, result.state, S)
    graph = transition_network(counts, distance, occupancy, dwell=dwell)
    groups = agglomerates(counts, distance) if S > 1 else [set(range(S))]
    summary = network_summary(graph, groups)
    report("dynamics", 1, 1)

    report("pinning", 0, 1)
    imaged = np.flatnonzero(np.isfinite(mode_images).any(axis=(1, 2)))
    clean = np.nan_to_num(mode_images[imaged], nan=0.0)
    occ = wall_occupancy(clean, result.mode_counts[imaged].astype(np.float64), aperture)
    landscape = pinning_landscape(occ, aperture)
    report("pinning", 1, 1)

    out = CCIProducts(
        state_images=state_images,
        mode_images=mode_images,
        aperture=aperture,
        state_distance=distance,
        timeline=timeline,
        transitions=counts,
        dwell=dwell,
        occupancy=occupancy,
        network=graph,
        agglomerates=groups,
        network_summary=summary,
        wall_occupancy=occ,
        pinning=landscape,
    )
    if figures:
        makers: dict[str, Callable[[], np.ndarray]] = {
            "state_timeline": lambda: figs.state_timeline_figure(
                result.state, time, n_states=S, title="CCI state timeline"
            ),
            "dendrogram": lambda: figs.dendrogram_figure(
                result.linkage, leaf_modes=result.internal_mode, title="average-linkage tree"
            ),
            "transition_network": lambda: figs.network_figure(
                graph, groups, title="transition network (distance: Pearson 1 − r)"
            ),
            "state_images": lambda: figs.images_figure(
                state_images,
                [f"state {s} ({c} pairs)" for s, c in enumerate(sums.state_pairs)],
                pixel_size_nm=pixel_size_nm,
            ),
            "pinning": lambda: figs.pinning_figure(
                occ,
                landscape.attractive_xy,
                landscape.repulsive_labels,
                pixel_size_nm=pixel_size_nm,
                title="domain-wall occupancy and pinning",
            ),
        }
        for i, (name, make) in enumerate(makers.items()):
            report("figures", i, len(makers))
            out.figures[name] = make()
        report("figures", len(makers), len(makers))
    return out
