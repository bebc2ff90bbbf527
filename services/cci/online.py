"""Incremental CCI state assignment: one helicity pair at a time, as frames arrive.

The online half of coherent correlation imaging (Klose et al., Nature 614, 256 (2023)).
The full pipeline at run end clusters all pairs at once; online we only need "which
state is the sample in now, and how many pairs does each state have", within
milliseconds of a pair's second frame.

Each pair enters as a feature vector x (centred, unit norm; :mod:`.features`), so a dot
product is a Pearson correlation. The assigner keeps a growing set of state templates:
running Fourier-space sums S_k = Σ x_i of the pairs assigned to state k (the feature *is*
the normalised difference hologram, i.e. Fourier space). A new pair is scored against
every template in one matrix product with the noise-corrected templates u_k =
S_k / (n_k √ρ_k) (ρ below): c_k = x · u_k estimates the correlation of x with the
noise-free state pattern whatever the number of members — plain Pearson r with a
template mean favours big templates, and a state that arrives late would never win
against its look-alike. The best template k by c_k takes the pair when

  1. its Pearson r_k = x · S_k / |S_k| clears the noise floor z_score / √M (a
     pure-noise unit vector in M dimensions projects onto a fixed direction with
     standard deviation 1/√M), and
  2. c_k is not more than ``admit_sigma`` standard deviations below √ρ_k, the value
     expected for a member, after the centre of the earlier members' residuals (median;
     spread 1.4826·MAD, floored at |u_k|/√M): a pair of a state not yet seen, e.g. a
     sibling differing only locally, scores a few σ low, and
  3. the best and runner-up templates are separated by a margin derived from the photon
     statistics: after √(I+ + I−) flattening each pixel carries unit noise, so the
     difference c_k − c_l of one pair has noise σ_kl = |u_k − u_l| / √M; the margin is
     ``z_margin`` σ_kl.

Otherwise the pair waits in an **unassigned buffer**. Every ``discover_every`` new
buffer entries, the buffer (≤ ``max_buffer`` pairs, Gram matrix kept incrementally) is
clustered — average linkage on the Pearson distance 1 − r, cut at r = ½ ρ̂, where ρ̂ is
the typical correlation of two pairs of one state (from the templates, or the buffer
itself before there are any) — and every cluster of ≥ ``min_new_state`` pairs becomes a
new template, unless its noise-corrected correlation with an existing template exceeds
``merge_threshold`` (then it joins that template). Buffered pairs that fit a template
after a discovery are assigned then.

Noise-corrected template correlation (Spearman's disattenuation): for a template of n
members, |S|² = n + n(n − 1) ρ, so ρ = (|S|² − n) / (n (n − 1)) is the mean pairwise
correlation of its members, and two templates' true (noise-free) correlation is
S_k · S_l / (n_k n_l √(ρ_k ρ_l)).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

import numpy as np
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import squareform

__all__ = ["Assignment", "IncrementalAssigner"]

#: Residuals kept per template for the admission test.
RESIDUAL_WINDOW = 200
#: Latest member features kept per template for the split test (150 × M float32:
#: 20 MB per template at the default M ≈ 32 800).
MEMBER_RESERVOIR = 150


@dataclass(frozen=True)
class Assignment:
    """One assignment decision (a row of ``analysis/<uid>/cci/assignments``).

    Attributes
    ----------
    pair : int
        Pair index in the run (frame_index // 2 of its second frame).
    time : float
        Time stamp of the pair (s; as given to :meth:`IncrementalAssigner.add`).
    state : int
        Template (state) index, −1 while unassigned.
    score : float
        Pearson correlation with the best template (nan when there is none).
    runner_up : float
        Pearson correlation with the second-best template (nan when there is none).
    n_templates : int
        Number of templates after this decision.
    """

    pair: int
    time: float
    state: int
    score: float
    runner_up: float
    n_templates: int


@dataclass
class _Template:
    total: np.ndarray  # (M,) float64: Σ of member features
    n: int = 0
    # Residuals score − expected score of the latest pairs admitted by scoring: their
    # median and MAD give a centre and spread that a minority of look-alike pairs (a
    # sibling state not yet discovered) cannot drag along.
    residuals: deque[float] = field(default_factory=lambda: deque(maxlen=RESIDUAL_WINDOW))
    # The latest members (pair, time, feature), for the split test.
    members: deque[tuple[int, float, np.ndarray]] = field(
        default_factory=lambda: deque(maxlen=MEMBER_RESERVOIR)
    )
    added_since_check: int = 0

    def add(self, x: np.ndarray, pair: int, time: float) -> None:
        self.total += x
        self.n += 1
        self.members.append((pair, time, x.astype(np.float32)))
        self.added_since_check += 1

    def remove(self, x: np.ndarray) -> None:
        self.total -= x
        self.n -= 1

    def residual_centre_sigma(self, floor: float) -> tuple[float, float]:
        if len(self.residuals) < 10:
            return 0.0, floor
        r = np.fromiter(self.residuals, float)
        centre = float(np.median(r))
        return centre, max(1.4826 * float(np.median(np.abs(r - centre))), floor)

    @property
    def rho(self) -> float:
        """Mean pairwise Pearson correlation of the members (nan for n < 2)."""
        if self.n < 2:
            return math.nan
        return float((self.total @ self.total - self.n) / (self.n * (self.n - 1)))



@dataclass
class _Buffer:
    features: list[np.ndarray] = field(default_factory=list)
    pairs: list[int] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    gram: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))

    def __len__(self) -> int:
        return len(self.pairs)

    def append(self, x: np.ndarray, pair: int, time: float) -> None:
        row = (
            np.stack(self.features) @ x if self.features else np.zeros(0, np.float32)
        ).astype(np.float32)
        n = len(self.features)
        gram = np.empty((n + 1, n + 1), np.float32)
        gram[:n, :n] = self.gram
        gram[n, :n] = row
        gram[:n, n] = row
        gram[n, n] = 1.0
        self.gram = gram
        self.features.append(x)
        self.pairs.append(pair)
        self.times.append(time)

    def keep(self, mask: np.ndarray) -> None:
        idx = np.flatnonzero(mask)
        self.gram = self.gram[np.ix_(idx, idx)]
        self.features = [self.features[i] for i in idx]
        self.pairs = [self.pairs[i] for i in idx]
        self.times = [self.times[i] for i in idx]


class IncrementalAssigner:
    """Online CCI state assignment against a growing set of templates.

    Parameters
    ----------
    n_pixels : int
        Feature length M (``FeatureMask.n_pixels``).
    z_score : float
        Noise floor for a score, in units of 1/√M.
    z_margin : float
        Required best − runner-up separation in units of its photon-noise σ (see the
        module docstring).
    admit_sigma : float
        A score may lie at most this many standard deviations (of the template's member
        scores, floored at 1/√M) below the members' mean.
    min_new_state : int
        Smallest buffer cluster that becomes a new template.
    discover_every : int
        Cluster the buffer after this many new unassigned pairs.
    max_buffer : int
        Oldest buffered pairs are given up (stay −1 online) beyond this size.
    merge_threshold : float
        Noise-corrected template correlation above which a new cluster joins an
        existing template instead of starting a new one.

    Raises
    ------
    ValueError
        For a parameter out of range (the message names it).
    """

    def __init__(
        self,
        n_pixels: int,
        *,
        z_score: float = 5.0,
        z_margin: float = 3.0,
        admit_sigma: float = 2.5,
        min_new_state: int = 5,
        discover_every: int = 10,
        max_buffer: int = 400,
        merge_threshold: float = 0.985,
        split_threshold: float = 0.99,
        split_every: int = 25,
    ) -> None:
        checks = {
            "n_pixels": (n_pixels, 2),
            "min_new_state": (min_new_state, 2),
            "discover_every": (discover_every, 1),
            "max_buffer": (max_buffer, 2),
        }
        for name, (value, low) in checks.items():
            if int(value) != value or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        for name, value in (("z_score", z_score), ("z_margin", z_margin), ("admit_sigma", admit_sigma)):
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be > 0, got {value!r}")
        if not 0 < merge_threshold <= 1:
            raise ValueError(f"merge_threshold must be in (0, 1], got {merge_threshold!r}")
        self.n_pixels = int(n_pixels)
        self.noise = 1.0 / math.sqrt(self.n_pixels)
        self.z_score = float(z_score)
        self.z_margin = float(z_margin)
        self.admit_sigma = float(admit_sigma)
        self.min_new_state = int(min_new_state)
        self.discover_every = int(discover_every)
        self.max_buffer = int(max_buffer)
        self.merge_threshold = float(merge_threshold)
        self.split_threshold = float(split_threshold)
        self.split_every = int(split_every)
        self.last_split_test = math.nan
        self.templates: list[_Template] = []
        self._norms: list[float] = []  # |S_k|
        self._signal = np.zeros((0, self.n_pixels), np.float32)  # S_k / (n_k √ρ_k)
        self.buffer = _Buffer()
        self._since_discovery = 0
        self.given_up = 0

    # -- public ----------------------------------------------------------------------
    @property
    def n_templates(self) -> int:
        """Number of states (templates) discovered so far."""
        return len(self.templates)

    def state_counts(self) -> list[int]:
        """Pairs assigned to each state so far, by state index."""
        return [t.n for t in self.templates]

    def parameters(self) -> dict[str, float | int]:
        """The parameters, JSON-able (for provenance)."""
        return {
            "z_score": self.z_score,
            "z_margin": self.z_margin,
            "admit_sigma": self.admit_sigma,
            "min_new_state": self.min_new_state,
            "discover_every": self.discover_every,
            "max_buffer": self.max_buffer,
            "merge_threshold": self.merge_threshold,
            "n_pixels": self.n_pixels,
        }

    def template_images(self) -> np.ndarray:
        """Mean features of the templates, shape (K, M), float32 (feature units)."""
        if not self.templates:
            return np.zeros((0, self.n_pixels), np.float32)
        return np.stack([t.total / t.n for t in self.templates]).astype(np.float32)

    def add(self, x: np.ndarray, pair: int, time: float, *, discover: bool = True) -> list[Assignment]:
        """Score one pair; return the decisions it caused, in order.

        The first decision is the new pair's (state −1 if it waits in the buffer);
        further ones are buffered pairs assigned by a discovery this pair triggered.
        With ``discover=False`` a due discovery is left to the caller
        (:attr:`discovery_due`, :meth:`discover`), so that the pair's own decision is
        not delayed by the clustering of the buffer.

        Parameters
        ----------
        x : ndarray, shape (M,), float32
            Feature vector from :func:`.features.pair_features` (centred, unit norm).
        pair : int
            Pair index.
        time : float
            Time stamp, s.
        discover : bool
            Run a due discovery before returning.

        Raises
        ------
        ValueError
            If ``x`` has the wrong shape or is not finite.
        """
        x = np.asarray(x, dtype=np.float32)
        if x.shape != (self.n_pixels,):
            raise ValueError(f"feature must have shape ({self.n_pixels},), got {x.shape}")
        if not np.all(np.isfinite(x)):
            raise ValueError(f"feature of pair {pair} holds non-finite values")
        state, score, runner = self._decide(x)
        if state >= 0:
            self._accept(state, x, pair, time)
            return [Assignment(pair, time, state, score, runner, self.n_templates)]
        self.buffer.append(x, pair, time)
        decisions = [Assignment(pair, time, -1, score, runner, self.n_templates)]
        if len(self.buffer) > self.max_buffer:
            self.buffer.keep(np.arange(len(self.buffer)) >= len(self.buffer) - self.max_buffer)
            self.given_up += 1
        self._since_discovery += 1
        if discover and self.discovery_due:
            decisions += self.discover()
        return decisions

    @property
    def discovery_due(self) -> bool:
        """``discover_every`` pairs were buffered since the last discovery (and enough wait)."""
        return self._since_discovery >= self.discover_every and len(self.buffer) >= self.min_new_state

    def discover(self) -> list[Assignment]:
        """Cluster the unassigned buffer into new templates; assign what now fits."""
        self._since_discovery = 0
        n = len(self.buffer)
        if n < self.min_new_state:
            return []
        gram = self.buffer.gram.astype(np.float64)
        distance = np.clip(1.0 - gram, 0.0, 2.0)
        np.fill_diagonal(distance, 0.0)
        rho = self._typical_rho(gram)
        cut = max(0.5 * rho, self.z_score * self.noise)
        clusters = fcluster(
            linkage(squareform(distance, checks=False), method="average"),
            t=1.0 - cut,
            criterion="distance",
        )
        feats = np.stack(self.buffer.features)
        decisions: list[Assignment] = []
        taken = np.zeros(n, dtype=bool)
        for label in np.unique(clusters):
            members = np.flatnonzero(clusters == label)
            if members.size < self.min_new_state:
                continue
            total = feats[members].astype(np.float64).sum(axis=0)
            target = self._duplicate_of(total, members.size)
            if target is None:
                self.templates.append(_Template(np.zeros(self.n_pixels)))
                target = len(self.templates) - 1
            tmpl = self.templates[target]
            unit = total / max(np.linalg.norm(total), 1e-30)
            scores = feats[members] @ unit.astype(np.float32)
            for i in members:
                tmpl.add(feats[i].astype(np.float64), self.buffer.pairs[i], self.buffer.times[i])
            self._refresh(target)
            taken[members] = True
            for i, s in zip(members, scores, strict=True):
                decisions.append(
                    Assignment(self.buffer.pairs[i], self.buffer.times[i], target, float(s),
                               math.nan, self.n_templates)
                )
        self.buffer.keep(~taken)
        # Buffered pairs that fit a (new) template now.
        if self.templates and len(self.buffer):
            fits = np.zeros(len(self.buffer), dtype=bool)
            for i, x in enumerate(self.buffer.features):
                state, score, runner = self._decide(x)
                if state >= 0:
                    self._accept(state, x, self.buffer.pairs[i], self.buffer.times[i])
                    fits[i] = True
                    decisions.append(
                        Assignment(self.buffer.pairs[i], self.buffer.times[i], state, score,
                                   runner, self.n_templates)
                    )
            self.buffer.keep(~fits)
        return decisions

    def maintain(self) -> list[Assignment]:
        """Split test on one template that grew by ``split_every`` members (idle-time work).

        A state discovered late (a sibling differing only locally from a known state)
        may have had some of its pairs admitted into the look-alike's template before it
        had a template of its own. The latest members of a template (≤
        :data:`MEMBER_RESERVOIR`) are split in two along the leading principal component
        of their deviations from the mean; if the
        noise-corrected correlation of the two halves is below ``split_threshold``,
        the smaller half becomes a new template and its pairs are re-assigned.

        Returns
        -------
        list of Assignment
            The re-assignments (empty when nothing was split).
        """
        due = [k for k, t in enumerate(self.templates) if t.added_since_check >= self.split_every]
        if not due:
            return []
        k = max(due, key=lambda i: self.templates[i].added_since_check)
        tmpl = self.templates[k]
        tmpl.added_since_check = 0
        if len(tmpl.members) < 2 * self.min_new_state:
            return []
        pairs = [m[0] for m in tmpl.members]
        times = [m[1] for m in tmpl.members]
        feats = np.stack([m[2] for m in tmpl.members])
        # Split along the leading principal component of the members' deviations from
        # their mean (average linkage cut in two tends to peel off one outlier).
        centred = feats - feats.mean(axis=0)
        _, vectors = np.linalg.eigh((centred @ centred.T).astype(np.float64))
        halves = np.where(vectors[:, -1] > 0, 1, 2)
        sizes = [int(np.count_nonzero(halves == h)) for h in (1, 2)]
        if min(sizes) < self.min_new_state:
            return []
        minor = 1 if sizes[0] < sizes[1] else 2
        a, b = halves != minor, halves == minor
        sa, sb = feats[a].astype(np.float64).sum(0), feats[b].astype(np.float64).sum(0)
        na, nb = int(a.sum()), int(b.sum())
        rho_a = (sa @ sa - na) / (na * (na - 1))
        rho_b = (sb @ sb - nb) / (nb * (nb - 1))
        if not (rho_a > 0 and rho_b > 0):
            return []
        c = float(sa @ sb) / (na * nb * math.sqrt(rho_a * rho_b))
        self.last_split_test = c
        # An optimised split of one state's noisy members looks less correlated than it
        # is, the more so the fewer members: measured 1 − c ≈ 0.014 at 25 members,
        # 0.009 at 50, 0.005 at 150 (default flux), hence the 0.3 / m allowance.
        if c >= self.split_threshold - 0.3 / len(feats):
            return []
        new = _Template(np.zeros(self.n_pixels))
        keep = deque(maxlen=MEMBER_RESERVOIR)
        for (pair, time, x), minor_member in zip(tmpl.members, b, strict=True):
            if minor_member:
                tmpl.remove(x.astype(np.float64))
                new.add(x.astype(np.float64), pair, time)
            else:
                keep.append((pair, time, x))
        tmpl.members = keep
        tmpl.residuals.clear()
        new.added_since_check = 0
        self.templates.append(new)
        self._refresh(k)
        self._refresh(len(self.templates) - 1)
        return [
            Assignment(pairs[i], times[i], len(self.templates) - 1,
                       self._pearson(len(self.templates) - 1, feats[i]), math.nan, self.n_templates)
            for i in np.flatnonzero(b)
        ]

    # -- internals -----------------------------------------------------------------------
    def _decide(self, x: np.ndarray) -> tuple[int, float, float]:
        """(state or −1, Pearson score with that template, runner-up's score)."""
        if not self.templates:
            return -1, math.nan, math.nan
        corrected = self._signal @ x  # x · u_k: correlation with the noise-free state
        order = np.argsort(corrected)[::-1]
        best = int(order[0])
        # Pearson r with the template means, for the record: only the two that matter.
        score = self._pearson(best, x)
        runner = self._pearson(int(order[1]), x) if len(order) > 1 else math.nan
        if score < self.z_score * self.noise:
            return -1, score, runner
        tmpl = self.templates[best]
        u_norm = float(np.linalg.norm(self._signal[best]))
        centre, sigma = tmpl.residual_centre_sigma(u_norm * self.noise)
        if corrected[best] - math.sqrt(max(tmpl.rho, 0.0)) < centre - self.admit_sigma * sigma:
            return -1, score, runner
        if len(order) > 1:
            second = int(order[1])
            sigma_diff = float(np.linalg.norm(self._signal[best] - self._signal[second])) * self.noise
            if corrected[best] - corrected[second] < self.z_margin * sigma_diff:
                return -1, score, runner
        return best, score, runner

    def _accept(self, state: int, x: np.ndarray, pair: int, time: float) -> None:
        tmpl = self.templates[state]
        tmpl.residuals.append(float(self._signal[state] @ x) - math.sqrt(max(tmpl.rho, 0.0)))
        tmpl.add(x.astype(np.float64), pair, time)
        self._refresh(state)

    def _pearson(self, state: int, x: np.ndarray) -> float:
        """Pearson r of feature ``x`` with template ``state``'s mean, S·x / |S|."""
        return float(self.templates[state].total @ x) / max(self._norms[state], 1e-30)

    def _refresh(self, state: int) -> None:
        tmpl = self.templates[state]
        total = tmpl.total
        rho = tmpl.rho
        # u = S / (n √ρ): x · u estimates the correlation of x with the noise-free state
        # pattern, whatever the number of members (Spearman's disattenuation).
        if rho > 0:
            signal = (total / (tmpl.n * math.sqrt(rho))).astype(np.float32)
        else:
            signal = np.zeros(self.n_pixels, np.float32)
        norm = float(np.linalg.norm(total))
        if state == len(self._norms):
            self._norms.append(norm)
            self._signal = np.vstack([self._signal, signal[np.newaxis]])
        else:
            self._norms[state] = norm
            self._signal[state] = signal

    def _typical_rho(self, gram: np.ndarray) -> float:
        rhos = [t.rho for t in self.templates if t.n >= self.min_new_state]
        if rhos:
            return float(np.median(rhos))
        off = gram - np.diag(np.diag(gram)) - 2.0 * np.eye(len(gram))
        return float(np.median(off.max(axis=1)))

    def _duplicate_of(self, total: np.ndarray, n: int) -> int | None:
        rho_new = (total @ total - n) / (n * (n - 1))
        best, best_c = None, self.merge_threshold
        for k, tmpl in enumerate(self.templates):
            rho_k = tmpl.rho
            if not (rho_new > 0 and rho_k > 0):
                continue
            c = float(total @ tmpl.total) / (n * tmpl.n * math.sqrt(rho_new * rho_k))
            if c > best_c:
                best, best_c = k, c
        return best
