"""Coarser partitions from a fine one: its clusters merged along the kNN graph between them.

k-means with k ~ 10x the classes gives nearly pure clusters (most of a class's images sharing
their cluster with their own class only), but k-means with k ~ the classes on the same
PCA-whitened features does not, while the fine clusters merged by average linkage over the kNN edges
between them stay nearly as pure at few groups (benchmarks/merge_purity.py; docs/decisions.md D24).
A class is a chain of neighbouring clusters, not one blob.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def coarser(k: int, scale: float, j: int) -> int:
    """The j-th coarser partition's size, k * scale**j, at least 2 (or k when k < 2): the sizes of the
    merged heads and sets (j = 1, 2, ...) and of the coarser k-means heads and SwAV prototype sets."""
    return max(min(k, 2), round(k * scale ** j))


def merge_options(what: str, heads: int | None, scale: float, heads_help: str) -> tuple:
    """The ``merged_heads``, ``merge_scale`` and ``neighbours`` options of a plugin whose merged
    ``what``s (heads or prototype sets) train on these partitions; ``heads`` None: "auto", decided
    by the plugin from the data."""
    from dcx.core.options import Option

    return (
        Option("merged_heads", int, heads, heads_help, min=0, nullable=heads is None),
        Option("merge_scale", float, scale, f"merged {what} j has k * merge_scale**j groups (at least 2)",
               min=0.01, max=1.0),
        Option("neighbours", int, 10, f"kNN graph degree the merged {what}s use", min=1),
    )


def cluster_affinity(labels: np.ndarray, neighbours: np.ndarray, k: int) -> np.ndarray:
    """(k, k) kNN edges between every two clusters over the geometric mean of their sizes, zero diagonal.

    ``labels`` (N,) cluster ids in [0, k); ``neighbours`` (N, m) row indices of each row's neighbours.
    Symmetric: an edge counts for both of its ends' clusters.
    """
    from scipy.sparse import coo_matrix

    labels = np.asarray(labels, dtype=np.int64)
    m = neighbours.shape[1]
    ends = labels[np.asarray(neighbours, dtype=np.int64)].ravel()
    # Sparse counts summed into one dense (k, k): no np.add.at over N * m entries (k = 10,000: 800 MB).
    edges = coo_matrix((np.ones(len(ends), np.float64), (np.repeat(labels, m), ends)), shape=(k, k)).toarray()
    edges += edges.T
    sizes = np.bincount(labels, minlength=k).astype(np.float64)
    affinity = edges / np.maximum(np.sqrt(np.outer(sizes, sizes)), 1.0)
    np.fill_diagonal(affinity, 0.0)
    return affinity


def merge_clusters(labels: np.ndarray, neighbours: np.ndarray, k: int, groups: Sequence[int]) -> list[np.ndarray]:
    """For each count in ``groups``, the (k,) group of each of the ``k`` clusters, by average linkage on their kNN affinity.

    Average linkage on 1 - affinity / max (scikit-learn's AgglomerativeClustering): two groups
    merge when their clusters share many edges on average, so chains of neighbouring clusters
    join before distant ones. Clusters without edges to others (or empty ones) join last. The
    affinity is computed once for all counts.
    """
    from sklearn.cluster import AgglomerativeClustering

    if all(g >= k for g in groups):
        return [np.arange(k, dtype=np.int64) for _ in groups]
    affinity = cluster_affinity(labels, neighbours, k)
    top = affinity.max()
    distance = 1.0 - affinity / top if top > 0 else np.ones_like(affinity)
    np.fill_diagonal(distance, 0.0)
    out = []
    for g in groups:
        if g >= k:
            out.append(np.arange(k, dtype=np.int64))
        else:
            model = AgglomerativeClustering(n_clusters=g, metric="precomputed", linkage="average")
            out.append(model.fit_predict(distance).astype(np.int64))
    return out


def merged_labels(features: np.ndarray, labels: np.ndarray, k: int, sizes: Sequence[int], neighbours: int,
                  seed: int) -> np.ndarray:
    """(len(sizes), N) labels: the k clusters of ``labels`` merged along the ``neighbours``-NN graph of
    ``features`` (L2; on unit rows the same neighbours as cosine) into each of ``sizes`` groups.

    What the kmeans merged heads and the dcv2 / swav merged sets train on; with fewer than 2 rows
    there is no graph and every row stays in group 0.
    """
    from dcx.algorithms.knn import knn_graph

    labels = np.asarray(labels, dtype=np.int64)
    out = np.zeros((len(sizes), len(labels)), dtype=np.int64)
    m = min(neighbours, len(features) - 1)
    if m >= 1 and len(sizes):
        # No graph option reaches the user here: a recall short of the target is logged, not warned (issue 37).
        graph = knn_graph(np.asarray(features, dtype=np.float32), m, metric="l2", seed=seed, warn_recall=False).indices
        for i, group in enumerate(merge_clusters(labels, graph, k, sizes)):
            out[i] = group[labels]
    return out


def from_rank0(compute, shape: tuple[int, ...], rank: int, all_reduce=None, device=None):
    """An int64 torch tensor of ``shape`` that rank 0 computes (``compute()``, numpy or torch) and every
    rank receives as the sum over ranks (``all_reduce``; None in one process), the others contributing
    zeros: how the merged labels reach every rank."""
    import torch

    out = torch.as_tensor(compute(), dtype=torch.int64) if rank == 0 else torch.zeros(shape, dtype=torch.int64)
    out = out.to(device) if device is not None else out
    if all_reduce is not None:
        all_reduce(out)
    return out


def merged_labels_from_rank0(features, labels, k: int, sizes: Sequence[int], neighbours: int, seed: int,
                             rank: int, all_reduce=None, device=None):
    """``merged_labels`` as a (len(sizes), N) int64 torch tensor on ``device``, in one process or many
    (``from_rank0``: rank 0 builds the graph and merges). ``features`` and ``labels`` are numpy arrays
    or torch tensors; only rank 0 reads them."""
    import torch

    def as_numpy(a):
        return a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else a if a is None else np.asarray(a)

    return from_rank0(lambda: merged_labels(as_numpy(features), as_numpy(labels), k, sizes, neighbours, seed),
                      (len(sizes), len(labels)), rank, all_reduce, device)
