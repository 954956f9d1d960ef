import numpy as np

from dcx.algorithms.metrics import ari, cluster_sizes, hungarian_accuracy, nmi
from dcx.data.sampling import UniformLabelSampler, relabel, uniform_label_indices


def test_metrics_known_cases():
    y = np.repeat(np.arange(5), 40)
    perm = np.array([3, 0, 4, 1, 2])[y]
    assert nmi(y, y) == 1.0 and hungarian_accuracy(y, y) == 1.0
    assert abs(nmi(y, perm) - 1) < 1e-12 and hungarian_accuracy(y, perm) == 1.0 and abs(ari(y, perm) - 1) < 1e-12
    rnd = np.random.default_rng(0).integers(0, 5, len(y) * 50)
    assert nmi(np.tile(y, 50), rnd) < 0.01
    assert hungarian_accuracy(np.array([0, 0, 1, 1]), np.array([1, 1, 1, 0])) == 0.75


def test_cluster_sizes_counts_empty():
    s = cluster_sizes(np.array([0, 0, 0, 2]), 4)
    assert s == {"clusters": 4, "nonempty": 2, "empty": 2, "size_min": 1, "size_median": 2.0, "size_max": 3}


def test_relabel_is_contiguous():
    new, kept = relabel(np.array([7, 7, 2, 9]))
    assert new.tolist() == [1, 1, 0, 2] and kept.tolist() == [2, 7, 9]


def test_sampler_draws_each_cluster_equally_despite_imbalance():
    # One huge cluster and many tiny ones: the reference's cluster-sorted indexing bug would
    # draw in proportion to size; ours draws uniformly over clusters (paper §3.3).
    labels = np.concatenate([np.zeros(900, int), np.repeat(np.arange(1, 11), 10)])
    rng = np.random.default_rng(0)
    idx = uniform_label_indices(labels, len(labels), rng)
    assert len(idx) == len(labels)
    counts = np.bincount(labels[idx], minlength=11)
    assert counts.max() - counts.min() <= 1
    sampler = UniformLabelSampler(labels, 550, seed=1)
    drawn = np.bincount(labels[list(sampler)], minlength=11)
    assert drawn.max() - drawn.min() <= 1 and len(list(sampler)) == 550
