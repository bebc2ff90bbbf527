"""Agreement of a found labelling with a reference (e.g. the simulator's true states).

Used by the accuracy tests and benchmarks of CCI; scikit-learn is not a dependency.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.special import comb

__all__ = ["adjusted_rand_index", "contingency_table", "matched_accuracy"]


def contingency_table(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Counts of (label in ``a``, label in ``b``), shape (n_labels_a, n_labels_b), float64.

    Raises
    ------
    ValueError
        If ``a`` and ``b`` differ in length.
    """
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"labellings differ in shape: {a.shape} vs {b.shape}")
    _, ai = np.unique(a, return_inverse=True)
    _, bi = np.unique(b, return_inverse=True)
    table = np.zeros((ai.max() + 1, bi.max() + 1))
    np.add.at(table, (ai, bi), 1)
    return table


def adjusted_rand_index(a: np.ndarray, b: np.ndarray) -> float:
    """Adjusted Rand index of two labellings (Hubert & Arabie, J. Classif. 2, 193 (1985)).

    1 for identical partitions (whatever the label names), ≈ 0 for independent ones.
    """
    table = contingency_table(a, b)
    index = comb(table, 2).sum()
    sa, sb = comb(table.sum(axis=1), 2).sum(), comb(table.sum(axis=0), 2).sum()
    expected = sa * sb / comb(len(np.asarray(a)), 2)
    top = 0.5 * (sa + sb) - expected
    return float((index - expected) / top) if top > 0 else 1.0


def matched_accuracy(found: np.ndarray, truth: np.ndarray) -> float:
    """Fraction of agreement after the best one-to-one matching of labels (Hungarian)."""
    table = contingency_table(found, truth)
    rows, cols = linear_sum_assignment(-table)
    return float(table[rows, cols].sum() / len(np.asarray(found)))
