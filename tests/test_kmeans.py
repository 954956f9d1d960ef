import numpy as np
import pytest

from dcx.core.contracts import FitContext
from dcx.core.errors import InputError
from dcx.algorithms.kmeans import kmeans, kmeans_restarts
from dcx.algorithms.metrics import nmi
from dcx.clusterers.kmeans import KMeans


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


def test_restarts_together_are_each_seeds_own_run(blobs):
    """kmeans_restarts advances several seeds in one pass per Lloyd step: each seed ends as its own
    run alone (the torch backend: labels, objective); empty clusters are split per seed."""
    x, _ = blobs
    for k in (6, 25):
        together = kmeans_restarts(x, k, 20, seeds=[3, 4, 5])
        for seed, res in zip([3, 4, 5], together):
            alone = kmeans(x, k, niter=20, seed=seed, backend="torch")
            assert np.array_equal(res.labels, alone.labels)
            assert res.objective == pytest.approx(alone.objective, rel=1e-4)
            assert res.centroids.shape == (k, x.shape[1])
    # Exact duplicates tie after a split (either copy is as near), so only the outcome is compared.
    rng = np.random.default_rng(0)
    dupes = np.repeat(rng.normal(size=(10, 4)).astype(np.float32), 30, axis=0)
    split = kmeans_restarts(dupes, 10, 10, seeds=[0, 1, 2])
    assert all(r.empty_splits > 0 and len(np.unique(r.labels)) == 10 for r in split)


def test_restarts_stop_at_lloyds_fixed_point(blobs):
    """Once no seed's labels move, the remaining steps are skipped: the same labels as all of them."""
    x, _ = blobs
    steps = []
    short = kmeans_restarts(x, 6, 200, seeds=[0, 1], on_iteration=lambda: steps.append(1))
    assert 0 < len(steps) < 200 and all(len(r.history) == len(steps) for r in short)
    longer = kmeans_restarts(x, 6, len(steps) + 5, seeds=[0, 1])
    assert all(np.array_equal(a.labels, b.labels) for a, b in zip(short, longer))


def test_seed_makes_it_deterministic_and_plugin_reports_stats(blobs):
    x, _ = blobs
    plugin = KMeans(k=12, niter=5)
    a = plugin.fit(x, FitContext(seed=1)).validate(len(x), "kmeans")
    b = plugin.fit(x, FitContext(seed=1)).validate(len(x), "kmeans")
    assert np.array_equal(a.labels, b.labels)
    assert {"objective", "iterations", "empty_splits", "backend"} <= set(a.stats)
    assert a.n_clusters == 12


@pytest.mark.parametrize("k, heads", [(1, 1), (1, 3), (12, 3)])
def test_every_kmeans_head_has_exactly_k_clusters(blobs, k, heads):
    x, _ = blobs
    part = KMeans(k=k, niter=5, heads=heads, merged_heads=0).fit(x, FitContext(seed=0)).validate(len(x), "kmeans")
    labels = part.labels[:, None] if part.more_labels is None else np.column_stack([part.labels, part.more_labels])
    assert [len(np.unique(col)) for col in labels.T] == [k] * heads and part.n_clusters == k


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


def test_default_heads_depend_on_n(monkeypatch):
    """auto: DeepCluster-v2's 3 heads + a merged head up to EXTRA_HEADS_MAX_N rows, the paper's one head above
    (docs/decisions.md D55); a set option wins at any N."""
    import dcx.clusterers.kmeans as km

    assert km.default_heads(1_797) == (3, 1)  # digits: the defaults the goldens guard
    assert km.default_heads(km.EXTRA_HEADS_MAX_N) == (3, 1)
    assert km.default_heads(km.EXTRA_HEADS_MAX_N + 1) == (1, 0)
    assert km.default_heads(100_000) == (1, 0)
    assert KMeans().params["heads"] is None and KMeans().params["merged_heads"] is None
    assert KMeans(heads=2).heads_for(100_000) == (2, 0)
    assert KMeans(merged_heads=2).heads_for(100_000) == (1, 2)
    assert KMeans(heads=1, merged_heads=0).heads_for(1_797) == (1, 0)

    # the plugin follows the rows it is given: a small threshold makes 60 rows "large"
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(c, 0.1, size=(20, 4)) for c in (0.0, 3.0, 6.0)]).astype(np.float32)
    small = KMeans(k=6, niter=3).fit(x, FitContext(seed=0))
    assert small.more_labels is not None and small.more_labels.shape == (60, 3)  # 2 more k-means + 1 merged
    monkeypatch.setattr(km, "EXTRA_HEADS_MAX_N", 59)
    large = KMeans(k=6, niter=3).fit(x, FitContext(seed=0))
    assert large.more_labels is None
    np.testing.assert_array_equal(large.labels, small.labels)  # the first head is the same clustering
