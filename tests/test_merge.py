import numpy as np
import pytest

from dcx.core.contracts import FitContext
from dcx.algorithms.kmeans import kmeans
from dcx.algorithms.knn import knn_graph
from dcx.algorithms.merge import cluster_affinity, merge_clusters
from dcx.algorithms.metrics import nmi
from dcx.clusterers.kmeans import KMeans


def two_bands(n=600, seed=0):
    """Two long parallel bands, 2 apart and 20 long: each class a chain, not a blob."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = np.column_stack([rng.uniform(0, 20, n), 2 * y + rng.normal(scale=0.08, size=n)]).astype(np.float32)
    return x, y


def test_merging_fine_clusters_along_the_graph_recovers_chains_that_kmeans_cuts_across():
    x, y = two_bands()
    coarse = kmeans(x, 2, niter=20, seed=0).labels  # cuts the bands across their length
    fine = kmeans(x, 40, niter=20, seed=0).labels
    graph = knn_graph(x, 8, backend="exact")
    merged = merge_clusters(fine, graph.indices, 40, [2])[0][fine]
    assert nmi(y, coarse) < 0.2
    assert nmi(y, merged) > 0.95


def test_affinity_is_symmetric_with_zero_diagonal_and_counts_edges_between_clusters():
    labels = np.array([0, 0, 1, 1, 2])
    neighbours = np.array([[1], [2], [3], [0], [3]])  # 0-0, 0-1, 1-1, 1-0, 2-1
    a = cluster_affinity(labels, neighbours, 4)
    assert np.allclose(a, a.T) and np.all(np.diag(a) == 0)
    assert a[0, 1] == pytest.approx(2 / 2)  # two edges between clusters of sizes 2 and 2
    assert a[1, 2] == pytest.approx(1 / np.sqrt(2))
    assert a[0, 2] == 0 and not a[3].any()  # cluster 3 is empty


def test_as_many_groups_as_clusters_is_the_identity():
    labels = np.arange(10) % 5
    neighbours = np.roll(np.arange(10), 1)[:, None]
    identity, merged = merge_clusters(labels, neighbours, 5, [7, 2])
    assert np.array_equal(identity, np.arange(5)) and len(np.unique(merged)) == 2


def test_merged_heads_are_unions_of_the_first_heads_clusters(blobs):
    x, _ = blobs
    part = KMeans(k=12, niter=5, heads=2, merged_heads=2, merge_scale=0.5).fit(x, FitContext(seed=0))
    part.validate(len(x), "kmeans")
    assert [len(np.unique(c)) for c in part.more_labels.T] == [12, 6, 3]  # a second k-means head, then merged
    for column in part.more_labels[:, 1:].T:  # every fine cluster lies inside one group
        assert all(len(np.unique(column[part.labels == c])) == 1 for c in np.unique(part.labels))
    alone = KMeans(k=12, niter=5, heads=1, merged_heads=2, merge_scale=0.5).fit(x, FitContext(seed=0))
    assert np.array_equal(alone.more_labels, part.more_labels[:, 1:])  # the k-means heads do not change them
