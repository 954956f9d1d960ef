"""k-nearest-neighbour graphs of a feature matrix, exact or approximate (PIC, kNN evaluation).

The exact graph is O(N^2 d): ~8.5 s at N=50k and ~1.5 h at N=1.28M on 2 cores
(docs/performance.md). The approximate backends (faiss IVF / HNSW, pynndescent) are tuned on a
sample of rows against exact search and report the recall they reach, so a caller can trust or
reject the graph instead of guessing.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dcx.core.errors import InputError, OptionError

log = logging.getLogger(__name__)

BACKENDS = ("auto", "exact", "hnsw", "ivf", "pynndescent")
METRICS = ("l2", "cosine")

#: "auto" uses the exact graph up to this many rows. Measured on 2 cores, d=256, k=5, mixture
#: data: exact 0.5 / 1.9 / 8.8 s at 10k / 20k / 50k rows, IVF 0.3 / 0.6 / 1.3 s (recall >= 0.99).
#: Up to 20k the exact graph (the reference's, reproducible) costs under 2 s; above, the
#: approximate one wins by a factor growing as ~sqrt(N).
AUTO_EXACT_MAX_N = 20_000

#: Query rows per exact-search batch: bounds the output and faiss's scratch memory.
_EXACT_BATCH = 16_384


@dataclass(frozen=True)
class KnnGraph:
    """The k nearest neighbours of every row, itself excluded, nearest first.

    ``distances`` are *squared* L2 (on L2-normalised rows for metric "cosine": 2 - 2 cos).
    ``recall`` is the fraction of the true k neighbours found, measured on a random sample of
    rows against exact search (1.0 for the exact backend, None when not measured).
    """

    indices: np.ndarray  # (N, k) int64
    distances: np.ndarray  # (N, k) float32
    backend: str
    recall: float | None = None
    seconds: float = 0.0
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def k(self) -> int:
        return int(self.indices.shape[1])


def have_faiss() -> bool:
    """Whether faiss (faiss-cpu or faiss-gpu) can be imported."""
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def knn_graph(
    x: np.ndarray,
    k: int,
    backend: str = "auto",
    metric: str = "l2",
    seed: int = 0,
    recall_sample: int = 1000,
    target_recall: float = 0.99,
) -> KnnGraph:
    """Graph of the ``k`` nearest neighbours of each row of ``x`` (N, d), self excluded.

    ``backend``: "exact" (faiss flat, or chunked torch without faiss), "ivf" (inverted lists
    over faiss k-means centroids, nlist ~ 4 sqrt(N), searched as BLAS blocks), "hnsw" (faiss
    HNSWFlat), "pynndescent", or "auto" (exact up to AUTO_EXACT_MAX_N rows, IVF above).
    The faiss backends raise their search effort (nprobe, efSearch) until ``target_recall`` is
    met on ``recall_sample // 2`` tuning rows; every approximate backend then reports its recall
    on ``recall_sample`` other rows. ``recall_sample=0`` skips both (recall None).
    """
    x = _check_input(x, k, backend, metric)
    n = len(x)
    if metric == "cosine":
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    if backend == "auto":
        backend = "exact" if n <= AUTO_EXACT_MAX_N or not have_faiss() else "ivf"
        if n > AUTO_EXACT_MAX_N and backend == "exact":
            log.warning("faiss is not installed: exact kNN graph of %d rows, O(N^2); pip install faiss-cpu", n)
    if backend in ("ivf", "hnsw") and not have_faiss():
        raise OptionError(
            f"kNN backend '{backend}' needs faiss: pip install 'dcx[cpu]', or use backend=exact or pynndescent"
        )

    t0 = time.perf_counter()
    params: dict[str, Any] = {}
    if backend == "exact":
        if have_faiss():
            idx, dist = _exact_faiss(x, x, k + 1)
            params["library"] = "faiss"
        else:
            idx, dist = _exact_torch(x, x, k + 1)
            params["library"] = "torch"
        indices, distances = _drop_self(idx, dist, k)
        graph = KnnGraph(indices, distances, "exact", 1.0, time.perf_counter() - t0, params)
        log.info("exact kNN graph: N=%d k=%d in %.2f s", n, k, graph.seconds)
        return graph

    rng = np.random.default_rng(seed)
    n_tune = 0 if backend == "pynndescent" else min(max(recall_sample // 2, 0), n)
    n_eval = min(max(recall_sample, 0), n)
    perm = rng.permutation(n)
    tune_rows = np.sort(perm[:n_tune])
    # Evaluation rows are disjoint from the tuning rows when N allows, so the recall is unbiased.
    eval_rows = np.sort(perm[n_tune : n_tune + n_eval] if n - n_tune >= n_eval else perm[:n_eval])
    truth = None
    if n_tune or n_eval:
        rows = np.concatenate([tune_rows, eval_rows])
        t_idx = _drop_self(*_exact_rows(x, rows, k + 1), k, rows=rows)[0]
        truth = (t_idx[:n_tune], t_idx[n_tune:])

    if backend == "ivf":
        idx, dist = _ivf(x, k + 1, seed, tune_rows, truth, target_recall, params)
    elif backend == "hnsw":
        idx, dist = _hnsw(x, k + 1, seed, tune_rows, truth, target_recall, params)
    else:
        idx, dist = _pynndescent(x, k + 1, seed, params)
    # Rows whose probed lists held fewer than k+1 rows (tiny, isolated groups): search exactly.
    short = np.flatnonzero((idx < 0).any(axis=1))
    if len(short):
        idx[short], dist[short] = _exact_rows(x, short, k + 1)
        params["exact_rows"] = len(short)
    indices, distances = _drop_self(idx, dist, k)
    recall = _recall(indices[eval_rows], truth[1]) if truth is not None and n_eval else None
    graph = KnnGraph(indices, distances, backend, recall, time.perf_counter() - t0, params)
    if recall is not None and recall < target_recall - 0.01:
        log.warning(
            "%s kNN graph recall %.4f is below the target %.2f: consider backend=exact", backend, recall, target_recall
        )
    log.info(
        "%s kNN graph: N=%d k=%d in %.2f s, recall@%d %s on %d sampled rows (%s)",
        backend, n, k, graph.seconds, k, "n/a" if recall is None else f"{recall:.4f}", n_eval,
        ", ".join(f"{a}={b}" for a, b in params.items()),
    )
    return graph


# ----------------------------------------------------------------------------- validation


def _check_input(x: np.ndarray, k: int, backend: str, metric: str) -> np.ndarray:
    if backend not in BACKENDS:
        raise OptionError(f"unknown kNN backend {backend!r}: use one of {', '.join(BACKENDS)}")
    if metric not in METRICS:
        raise OptionError(f"unknown kNN metric {metric!r}: use one of {', '.join(METRICS)}")
    x = np.asarray(x)
    if x.ndim != 2:
        raise InputError(f"kNN graph needs an (N, d) feature matrix, got shape {x.shape}: reshape to 2-D")
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise InputError(f"kNN graph needs numeric features, got dtype {x.dtype}")
    n, d = x.shape
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise InputError(f"kNN graph needs an integer k >= 1, got {k!r}")
    if d == 0 or k >= n:
        raise InputError(f"kNN graph with k={k} needs more than k rows and d >= 1, got shape {x.shape}: lower k")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        bad = np.flatnonzero(~np.isfinite(x).all(axis=1))
        raise InputError(
            f"kNN graph input has NaN or inf in {len(bad)} row(s) (first: {bad[0]}): clean or drop those rows"
        )
    return x


# ----------------------------------------------------------------------------- exact search


def _exact_faiss(xq: np.ndarray, xb: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact k-NN of the rows of ``xq`` in ``xb``, in query batches (faiss BLAS kernel)."""
    import faiss

    idx = np.empty((len(xq), k), dtype=np.int64)
    dist = np.empty((len(xq), k), dtype=np.float32)
    for s in range(0, len(xq), _EXACT_BATCH):
        dist[s : s + _EXACT_BATCH], idx[s : s + _EXACT_BATCH] = faiss.knn(xq[s : s + _EXACT_BATCH], xb, k)
    return idx, dist


def _exact_torch(
    xq: np.ndarray, xb: np.ndarray, k: int, q_chunk: int = 2048, b_chunk: int = 32_768
) -> tuple[np.ndarray, np.ndarray]:
    """Exact k-NN without faiss: blocks of ||q||^2 + ||b||^2 - 2 q.b with a running top-k."""
    import torch

    q_all = torch.from_numpy(xq)
    b_all = torch.from_numpy(xb)
    b_norm = (b_all * b_all).sum(1)
    k_eff = min(k, len(xb))
    idx = np.empty((len(xq), k_eff), dtype=np.int64)
    dist = np.empty((len(xq), k_eff), dtype=np.float32)
    for qs in range(0, len(xq), q_chunk):
        q = q_all[qs : qs + q_chunk]
        q_norm = (q * q).sum(1, keepdim=True)
        best_d = torch.full((len(q), 0), float("inf"))
        best_i = torch.empty((len(q), 0), dtype=torch.int64)
        for bs in range(0, len(xb), b_chunk):
            d = q_norm + b_norm[bs : bs + b_chunk] - 2.0 * (q @ b_all[bs : bs + b_chunk].T)
            d.clamp_(min=0)
            cand_d = torch.cat([best_d, d], 1)
            cand_i = torch.cat([best_i, torch.arange(bs, bs + d.shape[1]).expand(len(q), -1)], 1)
            best_d, pos = torch.topk(cand_d, min(k_eff, cand_d.shape[1]), dim=1, largest=False, sorted=True)
            best_i = torch.gather(cand_i, 1, pos)
        idx[qs : qs + q_chunk] = best_i.numpy()
        dist[qs : qs + q_chunk] = best_d.numpy()
    return idx, dist


def _exact_rows(x: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact neighbours of the selected rows (recall ground truth)."""
    xq = np.ascontiguousarray(x[rows])
    return _exact_faiss(xq, x, k) if have_faiss() else _exact_torch(xq, x, k)


def _drop_self(
    idx: np.ndarray, dist: np.ndarray, k: int, rows: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Remove each row's own index from its k+1 neighbours (the last one when self is absent).

    Self is not always in column 0: with duplicate rows a twin can come first, and an
    approximate search can miss self altogether.
    """
    rows = np.arange(len(idx)) if rows is None else rows
    drop = idx == rows[:, None]
    missing = ~drop.any(axis=1)
    drop[missing, -1] = True
    # A stable sort moves the dropped column last; the first k are the neighbours, in order.
    order = np.argsort(drop, axis=1, kind="stable")[:, :k]
    out_i = np.take_along_axis(idx, order, axis=1).astype(np.int64, copy=False)
    out_d = np.take_along_axis(dist, order, axis=1).astype(np.float32, copy=False)
    return np.ascontiguousarray(out_i), np.ascontiguousarray(out_d)


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of each row's true neighbours present in its found neighbours."""
    if len(truth) == 0:
        return float("nan")
    hits = (found[:, :, None] == truth[:, None, :]).any(axis=1).sum()
    return float(hits) / truth.size


# ----------------------------------------------------------------------------- approximate


def _tune(
    search, rows: np.ndarray, truth: tuple[np.ndarray, np.ndarray] | None, k: int, grid: list[int], target: float
) -> tuple[int, float | None]:
    """Smallest effort in ``grid`` whose recall on the tuning rows reaches ``target``."""
    if truth is None or len(rows) == 0:
        return grid[min(2, len(grid) - 1)], None
    r = None
    for effort in grid:
        idx, dist = search(rows, effort)
        r = _recall(_drop_self(idx, dist, k - 1, rows=rows)[0], truth[0])
        if r >= target:
            return effort, r
    return grid[-1], r


def _ivf(x, k, seed, tune_rows, truth, target, params) -> tuple[np.ndarray, np.ndarray]:
    """Inverted lists over faiss k-means centroids; each row searched in its ``nprobe`` nearest lists.

    The queries are the indexed rows themselves, so the search is done list by list as dense
    BLAS blocks (queries probing list L) x (members of L) instead of faiss's per-query scan,
    which ran at ~2.5 GFLOP/s here (a fifth of the time at 200k rows, most of it at 1M).
    """
    import faiss

    n, d = x.shape
    nlist = max(1, min(int(round(4 * math.sqrt(n))), n // 32))
    norms = np.einsum("ij,ij->i", x, x)
    # On unit-norm rows (PIC's and kNN evaluation's input) plain k-means leaves a few centroids
    # near the origin that are every row's second-nearest list ("hubs"): at 200k rows one list
    # was probed by 40% of the rows, 6x the work of balanced lists. Unit-norm centroids have none.
    spherical = bool(np.all(np.abs(norms - 1.0) < 1e-3))
    # The centroids only route queries: 32 training points per list and 5 iterations gave recall
    # 0.999 at nprobe=1 where 16 points gave 0.98 (200k rows), at a fraction of faiss's default
    # cost. At 1M rows (20k classes) 10 iterations reach recall 0.99 with nprobe 8 instead of 16,
    # which halves the search for twice a training that is then the smaller part.
    niter = 5 if n <= 200_000 else 10
    km = faiss.Kmeans(
        d, nlist, niter=niter, seed=seed, spherical=spherical, max_points_per_centroid=32, min_points_per_centroid=1
    )
    km.train(x)
    p_max = min(nlist, 32)
    probes = np.empty((n, p_max), dtype=np.int64)
    for s in range(0, n, _EXACT_BATCH * 4):
        probes[s : s + _EXACT_BATCH * 4] = km.index.search(x[s : s + _EXACT_BATCH * 4], p_max)[1]
    lists = _InvertedLists(x, probes[:, 0], nlist)

    def search(rows, nprobe):
        if nprobe <= p_max:
            return lists.search(rows, probes[rows, :nprobe], k)
        return lists.search(rows, km.index.search(np.ascontiguousarray(x[rows]), nprobe)[1], k)

    grid = sorted({p for p in (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128, 256, nlist) if p <= nlist})
    nprobe, _ = _tune(search, tune_rows, truth, k, grid, target)
    params.update(nlist=nlist, nprobe=nprobe, spherical=spherical)
    idx = np.empty((n, k), dtype=np.int64)
    dist = np.empty((n, k), dtype=np.float32)
    step = _EXACT_BATCH * 16
    for s in range(0, n, step):
        rows = np.arange(s, min(n, s + step))
        idx[rows], dist[rows] = search(rows, nprobe)
    return idx, dist


class _InvertedLists:
    """Rows grouped by their nearest centroid (a copy of x sorted by list) for block search."""

    def __init__(self, x: np.ndarray, assign: np.ndarray, nlist: int) -> None:
        self.x = x
        self.order = np.argsort(assign, kind="stable")
        self.xs = x[self.order]
        self.norms = np.einsum("ij,ij->i", self.xs, self.xs)  # ||m||^2 of the sorted rows
        self.starts = np.concatenate([[0], np.cumsum(np.bincount(assign, minlength=nlist))])

    def search(self, rows: np.ndarray, probes: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k nearest rows to each x[rows] among the members of its probed lists.

        The blocks are small (~100 x 250), so BLAS runs on one thread: multi-threaded BLAS on
        blocks this size ran ~50x slower on a busy 2-core machine (threads waiting on each other).
        """
        with _single_threaded_blas():
            return self._search(rows, probes, k)

    def _search(self, rows: np.ndarray, probes: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        m, p = probes.shape
        best_d = np.full((m, k), np.inf, dtype=np.float32)
        best_i = np.full((m, k), -1, dtype=np.int64)
        pair_l = probes.ravel()
        pair_q = np.repeat(np.arange(m), p)
        o = np.argsort(pair_l, kind="stable")
        pair_l, pair_q = pair_l[o], pair_q[o]
        lists, first = np.unique(pair_l, return_index=True)
        bounds = np.append(first, len(pair_l))
        for li, a, b in zip(lists, bounds[:-1], bounds[1:]):
            lo, hi = self.starts[li], self.starts[li + 1]
            if hi == lo:
                continue
            q = pair_q[a:b]
            xq = self.x[rows[q]]
            d = np.einsum("ij,ij->i", xq, xq)[:, None] + self.norms[None, lo:hi] - 2.0 * (xq @ self.xs[lo:hi].T)
            np.maximum(d, 0, out=d)
            cand = self.order[lo:hi]
            if hi - lo > k:
                part = np.argpartition(d, k - 1, axis=1)[:, :k]
                d, cand = np.take_along_axis(d, part, axis=1), cand[part]
            else:
                cand = np.broadcast_to(cand, d.shape)
            all_d = np.concatenate([best_d[q], d], axis=1)
            all_i = np.concatenate([best_i[q], cand], axis=1)
            keep = np.argpartition(all_d, k - 1, axis=1)[:, :k]
            best_d[q] = np.take_along_axis(all_d, keep, axis=1)
            best_i[q] = np.take_along_axis(all_i, keep, axis=1)
        srt = np.argsort(best_d, axis=1, kind="stable")
        return np.take_along_axis(best_i, srt, axis=1), np.take_along_axis(best_d, srt, axis=1)


def _single_threaded_blas():
    """Context limiting numpy's BLAS to one thread (no-op without threadpoolctl)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
        return contextlib.nullcontext()
    return threadpool_limits(1, user_api="blas")


def _hnsw(x, k, seed, tune_rows, truth, target, params) -> tuple[np.ndarray, np.ndarray]:
    import faiss

    n, d = x.shape
    # M=32, efConstruction=64: a common recall/build-time balance for d ~ 256 (faiss wiki);
    # efSearch is tuned below. Multi-threaded insertion makes the graph (not the recall) vary.
    index = faiss.IndexHNSWFlat(d, 32, faiss.METRIC_L2)
    index.hnsw.efConstruction = 64
    index.add(x)

    def search(rows, ef):
        index.hnsw.efSearch = ef
        dist, idx = index.search(np.ascontiguousarray(x[rows]), k)
        return idx, dist

    grid = [e for e in (16, 32, 64, 128, 256, 512) if e >= k]
    ef, _ = _tune(search, tune_rows, truth, k, grid, target)
    params.update(M=32, efConstruction=64, efSearch=ef)
    index.hnsw.efSearch = ef
    dist, idx = index.search(x, k)
    return idx.astype(np.int64, copy=False), dist


def _pynndescent(x, k, seed, params) -> tuple[np.ndarray, np.ndarray]:
    # Imported here only: pynndescent compiles with numba on first use (30-75 s per process).
    try:
        from pynndescent import NNDescent
    except ImportError:
        raise OptionError("kNN backend 'pynndescent' is not installed: pip install 'dcx[ann]', or use backend=ivf") from None

    n_neighbors = max(k, 15)  # fewer than ~15 neighbours per node lowers NN-descent's recall
    index = NNDescent(x, n_neighbors=n_neighbors, metric="euclidean", random_state=seed, low_memory=True)
    idx, dist = index.neighbor_graph
    params.update(n_neighbors=n_neighbors)
    return idx[:, :k].astype(np.int64), np.square(dist[:, :k]).astype(np.float32)
