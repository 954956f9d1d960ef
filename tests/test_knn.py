"""kNN graph service: exact = brute force, approximate backends reach their recall, bad input fails."""

from __future__ import annotations

import numpy as np
import pytest

from dcx.algorithms import knn
from dcx.core.errors import InputError, OptionError
from dcx.algorithms.knn import KnnGraph, knn_graph
from synthetic import mixture, varied_mixture


def brute_force(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Obviously-correct k-NN, self excluded: all pairwise squared distances in float64."""
    x = x.astype(np.float64)
    sq = (x * x).sum(1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * (x @ x.T), 0.0)
    np.fill_diagonal(d2, np.inf)
    order = np.argsort(d2, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(d2, order, axis=1)


def recall_vs_truth(graph: KnnGraph, truth: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(graph.indices, truth)]))


@pytest.fixture(scope="module")
def small():
    return np.random.default_rng(1).standard_normal((600, 12)).astype(np.float32)


def test_exact_equals_brute_force(small):
    g = knn_graph(small, 7, backend="exact")
    idx, d2 = brute_force(small, 7)
    assert g.indices.shape == (600, 7) and g.indices.dtype == np.int64 and g.distances.dtype == np.float32
    assert g.backend == "exact" and g.recall == 1.0
    np.testing.assert_array_equal(g.indices, idx)
    np.testing.assert_allclose(g.distances, d2, rtol=1e-4, atol=1e-4)


def test_torch_fallback_equals_brute_force(small, monkeypatch):
    monkeypatch.setattr(knn, "have_faiss", lambda: False)
    g = knn_graph(small, 5, backend="auto")
    assert g.backend == "exact" and g.params["library"] == "torch"
    idx, d2 = brute_force(small, 5)
    np.testing.assert_array_equal(g.indices, idx)
    np.testing.assert_allclose(g.distances, d2, rtol=1e-4, atol=1e-4)
    # Blocks smaller than the data exercise the running top-k merge.
    i2, d2b = knn._exact_torch(small, small, 6, q_chunk=64, b_chunk=100)
    np.testing.assert_array_equal(knn._drop_self(i2, d2b, 5)[0], idx)


def test_without_faiss_approximate_faiss_backends_say_what_to_install(small, monkeypatch):
    monkeypatch.setattr(knn, "have_faiss", lambda: False)
    with pytest.raises(OptionError, match="faiss"):
        knn_graph(small, 5, backend="ivf")


def test_self_excluded_even_with_duplicate_rows():
    x = np.random.default_rng(2).standard_normal((200, 8)).astype(np.float32)
    x[100:] = x[:100]  # every row has an exact twin
    g = knn_graph(x, 3, backend="exact")
    rows = np.arange(200)
    assert not (g.indices == rows[:, None]).any()
    twin = (rows + 100) % 200
    assert (g.indices == twin[:, None]).any(axis=1).all()
    assert np.all(g.distances[:, 0] <= 1e-5)


def test_cosine_is_l2_on_normalised_rows(small):
    unit = small / np.linalg.norm(small, axis=1, keepdims=True)
    a = knn_graph(small * 7.0, 4, backend="exact", metric="cosine")
    b = knn_graph(unit, 4, backend="exact")
    np.testing.assert_array_equal(a.indices, b.indices)


@pytest.fixture(scope="module")
def hard():
    """A small version of the benchmark's hard case: 50 rows per class, noise spread per class."""
    return varied_mixture(3000, 64, 60, seed=2)


@pytest.fixture(scope="module")
def hard_truth(hard):
    return brute_force(hard[0], 5)[0]


@pytest.mark.parametrize("backend", ["ivf", "hnsw"])
@pytest.mark.parametrize("target", [0.9, 0.99])
def test_faiss_backends_reach_the_requested_recall_on_a_hard_mixture(hard, hard_truth, backend, target):
    x, _ = hard
    g = knn_graph(x, 5, backend=backend, seed=0, recall_sample=600, target_recall=target)
    true_recall = recall_vs_truth(g, hard_truth)
    assert g.backend == backend
    assert true_recall >= target - 0.01
    # The reported recall (held-out sampled rows) is an honest estimate of the whole graph's.
    assert g.recall is not None and abs(g.recall - true_recall) < 0.02
    assert not (g.indices == np.arange(len(x))[:, None]).any()
    # Distances are the true squared distances of the returned neighbours, nearest first.
    d_true = ((x[:, None, :] - x[g.indices]) ** 2).sum(-1)
    np.testing.assert_allclose(g.distances, d_true, rtol=1e-4, atol=1e-4)
    assert (np.diff(g.distances, axis=1) >= -1e-6).all()
    effort = g.params["nprobe"] if backend == "ivf" else g.params["efSearch"]
    assert effort >= 1


def test_ivf_is_deterministic_for_a_seed(hard):
    x, _ = hard
    a = knn_graph(x, 5, backend="ivf", seed=4, recall_sample=300)
    b = knn_graph(x, 5, backend="ivf", seed=4, recall_sample=300)
    np.testing.assert_array_equal(a.indices, b.indices)
    assert a.params == b.params


def test_ivf_tuning_raises_effort_until_target_recall():
    x, _ = mixture(4000, 64, 10, 1.5, seed=3)  # diffuse clusters: one probe is not enough
    loose = knn_graph(x, 5, backend="ivf", recall_sample=400, target_recall=0.5)
    tight = knn_graph(x, 5, backend="ivf", recall_sample=400, target_recall=0.99)
    assert tight.params["nprobe"] > loose.params["nprobe"]
    assert tight.recall > loose.recall and tight.recall >= 0.97


def test_auto_picks_what_the_docs_say():
    # docs/benchmarks.md (PIC): exact up to AUTO_EXACT_MAX_N rows, faiss IVF above.
    assert knn.auto_backend(knn.AUTO_EXACT_MAX_N) == "exact"
    assert knn.auto_backend(knn.AUTO_EXACT_MAX_N + 1) == "ivf"
    assert knn.auto_backend(1_000_000) == "ivf"


def test_auto_is_exact_for_small_n_and_approximate_above(monkeypatch):
    x, _ = mixture(1000, 16, 10, 0.5)
    assert knn_graph(x, 5).backend == "exact"
    monkeypatch.setattr(knn, "AUTO_EXACT_MAX_N", 500)
    g = knn_graph(x, 5, recall_sample=200)
    assert g.backend == "ivf" and g.recall > 0.95


def test_auto_without_faiss_is_exact_at_any_size(monkeypatch):
    monkeypatch.setattr(knn, "have_faiss", lambda: False)
    assert knn.auto_backend(10**7) == "exact"


def test_ivf_lists_grow_as_sqrt_n_with_enough_rows_per_list():
    assert knn.ivf_lists(1_000_000) == round(knn.IVF_LISTS_PER_SQRT_N * 1000)
    for n in (100, 2000, 50_000):
        assert 1 <= knn.ivf_lists(n) <= max(1, n // knn.IVF_MIN_TRAIN_PER_LIST)


def test_recall_short_of_target_warns_unless_told_not_to(monkeypatch, caplog):
    """A user-chosen graph short of its recall warns; a graph no option of the user chose (the merged
    heads' and sets') says so at info (issue 37: a default run never warns about its own graph)."""
    import logging

    from dcx.algorithms.merge import merged_labels

    x, _ = mixture(1000, 16, 10, 0.5)
    monkeypatch.setattr(knn, "_recall", lambda found, truth: 0.5)
    monkeypatch.setattr(knn, "AUTO_EXACT_MAX_N", 500)
    with caplog.at_level(logging.INFO, logger="dcx.algorithms.knn"):
        knn_graph(x, 5, backend="ivf", recall_sample=200)
        assert [r.levelno for r in caplog.records if "below the target" in r.message] == [logging.WARNING]
        caplog.clear()
        knn_graph(x, 5, backend="ivf", recall_sample=200, warn_recall=False)
        merged_labels(x, np.arange(1000) % 20, 20, [5], 5, seed=0)  # auto -> ivf above the patched limit
        assert [r.levelno for r in caplog.records if "below the target" in r.message] == [logging.INFO] * 2


def test_no_recall_sample_means_no_recall():
    x, _ = mixture(1000, 16, 10, 0.5)
    assert knn_graph(x, 5, backend="ivf", recall_sample=0).recall is None


@pytest.mark.parametrize(
    "x, k, match",
    [
        (np.zeros(10, dtype=np.float32), 3, "2-D"),
        (np.zeros((10, 0), dtype=np.float32), 3, "d >= 1"),
        (np.zeros((5, 3), dtype=np.float32), 5, "lower k"),
        (np.zeros((5, 3), dtype=np.float32), 0, "k >= 1"),
        (np.array([["a", "b"], ["c", "d"]]), 1, "numeric"),
        (np.array([[0.0, 1.0], [np.nan, 0.0], [1.0, 1.0]]), 1, "NaN or inf"),
        (np.array([[0.0, 1.0], [np.inf, 0.0], [1.0, 1.0]]), 1, "row"),
    ],
)
def test_bad_input_is_an_input_error(x, k, match):
    with pytest.raises(InputError, match=match):
        knn_graph(x, k)


def test_unknown_backend_or_metric_is_an_option_error(small):
    with pytest.raises(OptionError, match="one of"):
        knn_graph(small, 3, backend="annoy")
    with pytest.raises(OptionError, match="one of"):
        knn_graph(small, 3, metric="manhattan")


def test_pynndescent_is_imported_only_by_its_backend():
    # pynndescent compiles with numba on first use (30-75 s): importing dcx.algorithms.knn or building
    # a graph with another backend must not pull it in. A fresh process, so other tests don't count.
    import subprocess
    import sys

    code = (
        "import sys, numpy as np, dcx.algorithms.knn as k; x = np.random.rand(3000, 8).astype('float32');"
        "k.knn_graph(x, 5, 'exact'); k.knn_graph(x, 5, 'ivf', recall_sample=100);"
        "k.knn_graph(x, 5, 'hnsw', recall_sample=100);"
        "sys.exit('pynndescent' in sys.modules or 'numba' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


@pytest.mark.slow
def test_pynndescent_recall():
    pytest.importorskip("pynndescent")
    x, _ = mixture(3000, 32, 30, 0.6)
    truth, _ = brute_force(x, 5)
    import torch

    threads = torch.get_num_threads()
    g = knn_graph(x, 5, backend="pynndescent", recall_sample=400)
    assert g.backend == "pynndescent"
    assert torch.get_num_threads() == threads  # numba's OpenMP layer must not leak into torch
    assert recall_vs_truth(g, truth) > 0.95 and g.recall > 0.95
    d_true = ((x[:, None, :] - x[g.indices]) ** 2).sum(-1)
    np.testing.assert_allclose(g.distances, d_true, rtol=1e-3, atol=1e-4)


def test_rows_with_too_few_candidates_are_searched_exactly(monkeypatch):
    # Probed lists holding fewer than k+1 rows leave -1 slots; those rows are redone exactly.
    x, _ = mixture(2000, 16, 10, 0.3)
    original = knn._ivf

    def short_ivf(*args, **kwargs):
        idx, dist = original(*args, **kwargs)
        idx[:4, 3:], dist[:4, 3:] = -1, np.inf
        return idx, dist

    monkeypatch.setattr(knn, "_ivf", short_ivf)
    g = knn_graph(x, 5, backend="ivf", recall_sample=0)
    assert g.params["exact_rows"] == 4 and (g.indices >= 0).all()
    truth, _ = brute_force(x, 5)
    np.testing.assert_array_equal(g.indices[:4], truth[:4])
