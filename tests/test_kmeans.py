import numpy as np
import pytest

from dcx.core.contracts import FitContext
from dcx.core.errors import InputError
from dcx.core.kmeans import kmeans
from dcx.core.metrics import nmi
from dcx.plugins.kmeans import KMeans


@pytest.mark.parametrize("backend", ["faiss", "torch"])
def test_recovers_planted_clusters(blobs, backend):
    x, y = blobs
    # Random initialisation can merge two blobs; like n_init, keep the best of 3 by objective.
    res = min((kmeans(x, 6, niter=20, seed=s, backend=backend) for s in range(3)), key=lambda r: r.objective)
    assert nmi(y, res.labels) > 0.95
    assert res.centroids.shape == (6, 16) and res.labels.dtype == np.int64


def test_torch_backend_splits_empty_clusters():
    # 10 distinct points repeated: a random init draws duplicate centroids, some clusters go
    # empty, and each must be re-seeded by splitting a non-empty one (paper §3.3).
    rng = np.random.default_rng(0)
    x = np.repeat(rng.normal(size=(10, 4)).astype(np.float32), 30, axis=0)
    res = kmeans(x, 10, niter=10, seed=0, backend="torch")
    assert res.empty_splits > 0
    assert len(np.unique(res.labels)) == 10  # every distinct point ends in its own cluster


def test_seed_makes_it_deterministic_and_plugin_reports_stats(blobs):
    x, _ = blobs
    plugin = KMeans(k=12, niter=5)
    a = plugin.fit(x, FitContext(seed=1)).validate(len(x), "kmeans")
    b = plugin.fit(x, FitContext(seed=1)).validate(len(x), "kmeans")
    assert np.array_equal(a.labels, b.labels)
    assert {"objective", "iterations", "empty_splits", "backend"} <= set(a.stats)
    assert a.n_clusters == 12


@pytest.mark.parametrize("k, heads, scale, sizes", [(1, 1, 1.0, [1]), (1, 3, 0.5, [1, 1, 1]), (3, 3, 0.5, [3, 2, 2]),
                                                    (12, 3, 0.5, [12, 6, 3]), (12, 2, 1.0, [12, 12])])
def test_first_head_has_exactly_k_clusters_and_further_ones_k_times_the_scale(blobs, k, heads, scale, sizes):
    """head_scale shrinks only the further heads (never below 2, nor above k): k = 1 stays one cluster."""
    x, _ = blobs
    part = KMeans(k=k, niter=5, heads=heads, head_scale=scale, merged_heads=0).fit(x, FitContext(seed=0)).validate(len(x), "kmeans")
    labels = part.labels[:, None] if part.more_labels is None else np.column_stack([part.labels, part.more_labels])
    assert [len(np.unique(col)) for col in labels.T] == sizes and part.n_clusters == k


@pytest.mark.parametrize(
    "x, k, match",
    [
        (np.zeros(10, np.float32), 2, "2-D"),
        (np.zeros((5, 3), np.float32), 6, "larger than the number of samples"),
        (np.array([[0.0, np.nan], [1.0, 1.0]], np.float32), 1, "NaN or inf"),
    ],
)
def test_bad_input(x, k, match):
    with pytest.raises(InputError, match=match):
        kmeans(x, k)


@pytest.mark.parametrize("backend", ["faiss", "torch"])
def test_given_starting_centroids_replace_the_random_rows(blobs, backend):
    x, _ = blobs
    fitted = kmeans(x, 6, niter=20, seed=0, backend=backend)
    again = kmeans(x, 6, niter=20, seed=5, backend=backend, init=fitted.centroids)
    assert np.array_equal(again.labels, fitted.labels)  # a fixed point stays put, ids included
    assert again.history[0] == pytest.approx(fitted.objective, rel=1e-4)
    with pytest.raises(InputError, match=r"init centroids have shape \(5, 16\), expected \(6, 16\)"):
        kmeans(x, 6, backend=backend, init=fitted.centroids[:5])


def test_init_previous_carries_cluster_ids_over_rounds(blobs):
    """kmeans.init=previous starts from the means of the previous round's clusters: on features
    that moved a little, each cluster keeps its id; random init draws new ones."""
    x, y = blobs
    first = KMeans(k=6, seed=0).fit(x, FitContext(seed=0))
    moved = x + np.random.default_rng(1).normal(scale=0.05, size=x.shape).astype(np.float32)
    ctx = FitContext(epoch=1, seed=7, previous_labels=first.labels)
    warm = KMeans(k=6, init="previous", heads=1).fit(moved, ctx)
    cold = KMeans(k=6).fit(moved, ctx)
    assert np.array_equal(warm.labels, first.labels)
    assert not np.array_equal(cold.labels, first.labels)
    # A cluster the previous round left empty starts from a data row, not from NaN.
    prev = first.labels.copy()
    prev[prev == 5] = 4
    assert len(np.unique(KMeans(k=6, init="previous", heads=1).fit(moved, FitContext(previous_labels=prev)).labels)) == 6
