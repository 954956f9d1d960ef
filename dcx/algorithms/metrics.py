"""Clustering diagnostics: NMI, ARI, Hungarian accuracy, cluster-size statistics.

scikit-learn and scipy are imported when a score is computed: ``dcx embed``/``assign``/``export``
load the evaluation package and need neither (~65 MB of peak RSS, docs/benchmarks.md).
"""

from __future__ import annotations

import numpy as np


def nmi(a: np.ndarray, b: np.ndarray) -> float:
    """Normalised mutual information (arithmetic mean normalisation, as in the paper)."""
    from sklearn import metrics as skm

    return float(skm.normalized_mutual_info_score(a, b))


def ari(a: np.ndarray, b: np.ndarray) -> float:
    """Adjusted Rand index."""
    from sklearn import metrics as skm

    return float(skm.adjusted_rand_score(a, b))


def hungarian_accuracy(truth: np.ndarray, pred: np.ndarray) -> float:
    """Accuracy under the best one-to-one matching of predicted clusters to classes."""
    from scipy.optimize import linear_sum_assignment

    truth = np.asarray(truth)
    pred = np.asarray(pred)
    _, t = np.unique(truth, return_inverse=True)
    _, p = np.unique(pred, return_inverse=True)
    table = np.zeros((p.max() + 1, t.max() + 1), dtype=np.int64)
    np.add.at(table, (p, t), 1)
    rows, cols = linear_sum_assignment(-table)
    return float(table[rows, cols].sum() / len(truth))


def cluster_sizes(labels: np.ndarray, n_clusters: int) -> dict[str, float]:
    """Non-empty/empty counts and min/median/max size of the non-empty clusters."""
    counts = np.bincount(np.asarray(labels), minlength=n_clusters)
    nonempty = counts[counts > 0]
    return {
        "clusters": int(n_clusters),
        "nonempty": int(len(nonempty)),
        "empty": int(n_clusters - len(nonempty)),
        "size_min": int(nonempty.min()) if len(nonempty) else 0,
        "size_median": float(np.median(nonempty)) if len(nonempty) else 0.0,
        "size_max": int(nonempty.max()) if len(nonempty) else 0,
    }


def clustering_scores(truth: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """NMI, ARI and Hungarian accuracy of ``pred`` against ``truth``."""
    return {"nmi": nmi(truth, pred), "ari": ari(truth, pred), "accuracy": hungarian_accuracy(truth, pred)}
