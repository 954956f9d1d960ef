"""k-nearest-neighbour graphs, exact or approximate (PIC, merged heads, kNN evaluation): a thin layer
over faiss (flat, IVF, HNSW; GPU when faiss-gpu sees one) and pynndescent that tunes the search effort
on sampled rows against exact search and reports the recall reached on others (docs/benchmarks.md)."""

from __future__ import annotations

import logging
import math
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dcx.core.errors import InputError, OptionError

log = logging.getLogger(__name__)

BACKENDS = ("auto", "exact", "hnsw", "ivf", "pynndescent")
METRICS = ("l2", "cosine")

#: "auto": the exact graph up to this many rows, the IVF graph above (docs/benchmarks.md, PIC).
AUTO_EXACT_MAX_N = 20_000
#: IVF: nlist = IVF_LISTS_PER_SQRT_N * sqrt(N) lists (docs/benchmarks.md, PIC), trained by faiss k-means on
#: at most IVF_TRAIN_PER_LIST sampled rows per list, IVF_TRAIN_ITER iterations, and at least
#: IVF_MIN_TRAIN_PER_LIST rows per list (faiss's own minimum).
IVF_LISTS_PER_SQRT_N = 4.0
IVF_TRAIN_PER_LIST = 32
IVF_TRAIN_ITER = 10
IVF_MIN_TRAIN_PER_LIST = 39
#: nprobe is raised at most to nlist / IVF_MAX_SCAN (beyond, exact search is as cheap).
IVF_MAX_SCAN = 8
#: Nearest lists computed once per row, reused for adding and searching it.
IVF_PRECOMPUTED_PROBES = 16
#: HNSW graph degree and construction effort (faiss's efConstruction default); efSearch is tuned.
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 40

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


def auto_backend(n: int) -> str:
    """The backend "auto" picks for ``n`` rows: "exact" up to AUTO_EXACT_MAX_N rows (or without
    faiss), "ivf" above (docs/benchmarks.md, PIC)."""
    return "exact" if n <= AUTO_EXACT_MAX_N or not have_faiss() else "ivf"


def knn_graph(
    x: np.ndarray,
    k: int,
    backend: str = "auto",
    metric: str = "l2",
    seed: int = 0,
    recall_sample: int = 1000,
    target_recall: float = 0.99,
    warn_recall: bool = True,
) -> KnnGraph:
    """Graph of the ``k`` nearest neighbours of each row of ``x`` (N, d), self excluded.

    ``backend``: "exact" (faiss flat in blocks, or chunked torch without faiss), "ivf" (faiss
    IndexIVFFlat, nlist = ivf_lists(N)), "hnsw" (faiss IndexHNSWFlat), "pynndescent" (imported only
    here: numba compiles it in every new process), or "auto" (exact up to AUTO_EXACT_MAX_N rows, IVF
    above). The faiss backends raise their search effort (nprobe, efSearch) until ``target_recall`` is
    met on ``recall_sample // 2`` tuning rows; every approximate backend then reports its recall
    on ``recall_sample`` other rows. ``recall_sample=0`` skips both (recall None). A short recall warns,
    or logs at info with ``warn_recall=False`` (callers whose user cannot choose the backend).
    """
    x = _check_input(x, k, backend, metric)
    n = len(x)
    if metric == "cosine":
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    if backend == "auto":
        backend = auto_backend(n)
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
        (log.warning if warn_recall else log.info)(
            "%s kNN graph recall %.4f is below the target %.2f: consider backend=exact", backend, recall, target_recall
        )
    log.info(
        "%s kNN graph: N=%d k=%d in %.2f s, recall@%d %s on %d sampled rows (%s)",
        backend, n, k, graph.seconds, k, "n/a" if recall is None else f"{recall:.4f}", n_eval,
        ", ".join(f"{a}={b}" for a, b in params.items()),
    )
    return graph


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


def ivf_lists(n: int) -> int:
    """Number of inverted lists for ``n`` rows: IVF_LISTS_PER_SQRT_N * sqrt(n), at least
    IVF_MIN_TRAIN_PER_LIST rows per list (faiss's minimum for a meaningful k-means)."""
    return int(max(1, min(round(IVF_LISTS_PER_SQRT_N * math.sqrt(n)), n // IVF_MIN_TRAIN_PER_LIST)))


def _gpu(index):
    """The index moved to every GPU faiss sees (faiss-gpu), else unchanged."""
    import faiss

    if getattr(faiss, "get_num_gpus", lambda: 0)() > 0:
        return faiss.index_cpu_to_all_gpus(index)
    return index


def _ivf(x, k, seed, tune_rows, truth, target, params) -> tuple[np.ndarray, np.ndarray]:
    """faiss IndexIVFFlat: k-means lists trained on a sample, nprobe tuned to the target recall.

    The queries are the indexed rows, so on CPU each row's nearest lists are computed once
    (``quantizer.search``) and used both to add it and to search it (faiss.contrib.ivf_tools);
    faiss owns the threading. On GPU (faiss-gpu) the index is moved there and searched plainly.
    """
    import faiss

    n, d = x.shape
    nlist = ivf_lists(n)
    index = faiss.index_factory(d, f"IVF{nlist},Flat")
    index.cp.seed = seed
    index.cp.niter = IVF_TRAIN_ITER
    index.cp.max_points_per_centroid = IVF_TRAIN_PER_LIST  # faiss trains on a sample of this many per list
    index.cp.min_points_per_centroid = 1  # nlist already respects IVF_MIN_TRAIN_PER_LIST
    # Beyond 1/IVF_MAX_SCAN of the lists per row the scan costs about what exact BLAS search does.
    p_cap = max(1, nlist // IVF_MAX_SCAN)
    grid = sorted({p for p in (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128, 256, p_cap) if p <= p_cap})
    params.update(nlist=nlist, train_rows=min(n, nlist * IVF_TRAIN_PER_LIST), niter=IVF_TRAIN_ITER)
    gpu = _gpu(index)
    if gpu is not index:
        gpu.train(x)
        gpu.add(x)

        def search(rows, nprobe):
            faiss.GpuParameterSpace().set_index_parameter(gpu, "nprobe", nprobe)
            dist, idx = gpu.search(np.ascontiguousarray(x[rows]), k)
            return idx.astype(np.int64, copy=False), dist

        params["device"] = "gpu"
    else:
        from faiss.contrib.ivf_tools import add_preassigned, search_preassigned

        index.train(x)
        # Each row's nearest lists, computed once: column 0 places the row, the first nprobe
        # columns are searched (rows needing more lists than precomputed are quantized again).
        p_max = min(nlist, IVF_PRECOMPUTED_PROBES)
        lists = np.empty((n, p_max), dtype=np.int64)
        for s in range(0, n, _EXACT_BATCH * 4):
            lists[s : s + _EXACT_BATCH * 4] = index.quantizer.search(x[s : s + _EXACT_BATCH * 4], p_max)[1]
        add_preassigned(index, x, np.ascontiguousarray(lists[:, 0]))

        def search(rows, nprobe):
            index.nprobe = nprobe
            xq = np.ascontiguousarray(x[rows])
            if nprobe > p_max:
                dist, idx = index.search(xq, k)
            else:
                dist, idx = search_preassigned(index, xq, k, np.ascontiguousarray(lists[rows, :nprobe]))
            return idx.astype(np.int64, copy=False), dist

    nprobe, _ = _tune(search, tune_rows, truth, k, grid, target)
    params["nprobe"] = nprobe
    idx = np.empty((n, k), dtype=np.int64)
    dist = np.empty((n, k), dtype=np.float32)
    step = _EXACT_BATCH * 16  # bounds the copy of the query rows
    for s in range(0, n, step):
        rows = np.arange(s, min(n, s + step))
        idx[rows], dist[rows] = search(rows, nprobe)
    return idx, dist


def _hnsw(x, k, seed, tune_rows, truth, target, params) -> tuple[np.ndarray, np.ndarray]:
    """faiss IndexHNSWFlat (M=HNSW_M, efConstruction=HNSW_EF_CONSTRUCTION), efSearch tuned.

    Insertion is multi-threaded, so the graph (not the recall) can vary between runs.
    """
    import faiss

    n, d = x.shape
    index = faiss.IndexHNSWFlat(d, HNSW_M, faiss.METRIC_L2)
    index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
    index.add(x)

    def search(rows, ef):
        index.hnsw.efSearch = ef
        dist, idx = index.search(np.ascontiguousarray(x[rows]), k)
        return idx.astype(np.int64, copy=False), dist

    grid = [e for e in (16, 24, 32, 48, 64, 96, 128, 192, 256, 512) if e >= k]
    ef, _ = _tune(search, tune_rows, truth, k, grid, target)
    params.update(M=HNSW_M, efConstruction=HNSW_EF_CONSTRUCTION, efSearch=ef)
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
    # numba's OpenMP layer resets the process-wide thread count torch shares, which would change every
    # later torch result; only a process that already uses torch has a count to keep.
    torch = sys.modules.get("torch")
    threads = torch.get_num_threads() if torch is not None else None
    try:
        index = NNDescent(x, n_neighbors=n_neighbors, metric="euclidean", random_state=seed, low_memory=True)
        idx, dist = index.neighbor_graph
    finally:
        if threads is not None:
            torch.set_num_threads(threads)
    params.update(n_neighbors=n_neighbors)
    return idx[:, :k].astype(np.int64), np.square(dist[:, :k]).astype(np.float32)
