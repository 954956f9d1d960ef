"""Per-epoch diagnostics of a partition: sizes, NMI to the previous epoch and to the true labels,
and the k-means probe of the features (how well they cluster by class)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from dcx.core.data import derive_seed
from dcx.core.features import PCAWhitening, l2_normalize
from dcx.core.kmeans import kmeans
from dcx.core.metrics import cluster_sizes, nmi


def probe_nmi(x: np.ndarray, labels: np.ndarray, seed: int, restarts: int = 10) -> float:
    """NMI to ``labels`` of k-means(#classes) on ``x``: how well these features cluster by class.

    The best of ``restarts`` k-means runs by objective, so the probe is not a coin toss.
    """
    k = int(len(np.unique(labels)))
    best = min((kmeans(x, k, 20, seed + r) for r in range(restarts)), key=lambda r: r.objective)
    return nmi(labels, best.labels)


def partition_row(
    labels: np.ndarray, n_clusters: int, previous: np.ndarray | None, truth: np.ndarray | None,
    features: np.ndarray | None = None, whitened: np.ndarray | None = None, probe: bool = False,
    seed: int = 0, epoch: int = 0, pca_dim: int = 256,
) -> dict[str, Any]:
    """Cluster sizes, NMI to the previous labels and to the true labels, and the k-means probe.

    The probe is reported on two views of the same features, because they can disagree
    (docs/algorithms "Evaluation preprocessing changes conclusions"): ``probe_nmi`` on
    L2-normalised features, ``probe_nmi_whitened`` on the PCA-whitened + L2 features that
    offline clusterers see.
    """
    row: dict[str, Any] = dict(cluster_sizes(labels, n_clusters))
    if previous is not None and len(previous) == len(labels):
        row["nmi_prev"] = nmi(labels, previous)
    if truth is not None:
        row["nmi_labels"] = nmi(truth, labels)
        if probe and features is not None:
            t = time.perf_counter()
            probe_seed = derive_seed(seed, epoch, 7)
            if whitened is None:
                whitened = PCAWhitening(dim=pca_dim).fit_transform(features)
            row["probe_nmi"] = probe_nmi(l2_normalize(features), truth, probe_seed)
            row["probe_nmi_whitened"] = probe_nmi(whitened, truth, probe_seed)
            row["time_probe"] = time.perf_counter() - t
    return row
