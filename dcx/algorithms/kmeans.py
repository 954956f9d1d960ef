"""k-means used by the `kmeans` clusterer, the per-epoch probe and the evaluation protocols.

Two backends: faiss (CPU, or GPU when faiss has GPUs and a CUDA device is asked for) and a torch
Lloyd with explicit empty-cluster splitting (paper §3.3), for machines without faiss or for
CUDA through torch. Both: random initial centroids drawn from the data, no subsampling
(reference ``max_points_per_centroid=10_000_000``), final assignment to the nearest centroid.
The torch Lloyd is ``kmeans_restarts``, which also advances several seeds together (`dcx eval`).
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from dcx.core.errors import InputError
from dcx.algorithms.arrays import check_finite

if TYPE_CHECKING:  # pragma: no cover - torch is imported by the torch backend only
    import torch

log = logging.getLogger(__name__)

#: Symmetric perturbation when a centroid is copied into an empty cluster (faiss's EPS = 1/1024).
SPLIT_EPS = 1.0 / 1024


@dataclass
class KMeansResult:
    labels: np.ndarray  # (N,) int64
    centroids: np.ndarray  # (k, d) float32
    objective: float  # final sum of squared distances
    empty_splits: int  # empty clusters re-seeded by splitting a large one, over all iterations
    backend: str
    history: list[float] = field(default_factory=list)


def faiss_available() -> bool:
    return importlib.util.find_spec("faiss") is not None


def check_kmeans_input(x: np.ndarray, k: int) -> np.ndarray:
    """Validate an (N, d) matrix for k-means; return it as contiguous float32."""
    x = np.asarray(x)
    if x.ndim != 2:
        raise InputError(f"features must be a 2-D (N, d) array, got shape {x.shape}: reshape or pass an (N, d) .npy")
    if k < 1:
        raise InputError(f"k must be >= 1, got {k}")
    if k > len(x):
        raise InputError(f"k={k} is larger than the number of samples N={len(x)}: lower --k")
    check_finite(x)
    return np.ascontiguousarray(x, dtype=np.float32)


def kmeans(
    x: np.ndarray,
    k: int,
    niter: int = 20,
    seed: int = 0,
    backend: str = "auto",
    device: torch.device | str = "cpu",
    rows: slice | None = None,
    all_reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
    sample: int | None = None,
) -> KMeansResult:
    """Cluster the rows of ``x`` into ``k`` groups. ``backend``: auto | faiss | torch.

    Distributed (``all_reduce`` given): every rank passes the same ``x`` and ``seed`` and its own
    block ``rows``; each Lloyd step assigns this rank's rows and sums per-cluster sums and counts
    over ranks (torch backend), so every rank ends with the same centroids and labels.

    ``sample``: train on that many seeded random rows, then assign every row to the nearest
    centroid in chunks (the reference trains on all rows).
    """
    x = check_kmeans_input(x, k)
    on_gpu = str(device).startswith("cuda")
    if backend == "auto":
        backend = "faiss" if faiss_available() and all_reduce is None else "torch"
    if backend not in ("faiss", "torch"):
        raise InputError(f"unknown kmeans backend {backend!r}: use auto, faiss or torch")
    if backend == "faiss" and not faiss_available():
        raise InputError("kmeans backend 'faiss' asked for but faiss is not installed: pip install 'dcx[cpu]' "
                         "(or [gpu]), or use backend=torch")
    if sample is not None and sample < len(x) and all_reduce is None:
        if sample < k:
            raise InputError(f"k-means sample of {sample} rows is smaller than k={k}: raise the sample")
        pick = np.sort(np.random.default_rng(seed).choice(len(x), sample, replace=False))
        res = kmeans(x[pick], k, niter, seed, backend, device)
        res.labels, res.objective = _nearest(x, res.centroids, backend, device)
        return res
    if backend == "faiss" and all_reduce is None:
        return _faiss_kmeans(x, k, niter, seed, use_gpu=on_gpu)
    return kmeans_restarts(x, k, niter, [seed], device, rows=rows, all_reduce=all_reduce)[0]


def _nearest(x: np.ndarray, centroids: np.ndarray, backend: str, device) -> tuple[np.ndarray, float]:
    """Nearest centroid of every row (exact L2) and the summed squared distance."""
    if backend == "faiss":
        import faiss

        index = faiss.IndexFlatL2(centroids.shape[1])
        index.add(np.ascontiguousarray(centroids, dtype=np.float32))
        dist, idx = index.search(x, 1)
        return idx.ravel().astype(np.int64), float(dist.sum(dtype=np.float64))
    import torch

    labels, dists = _assign(torch.from_numpy(x).to(device), torch.from_numpy(centroids).to(device))
    return labels.cpu().numpy().astype(np.int64), float(dists.sum().double())


def _faiss_kmeans(x: np.ndarray, k: int, niter: int, seed: int, use_gpu: bool) -> KMeansResult:
    import faiss

    gpu = use_gpu and hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0
    km = faiss.Kmeans(
        x.shape[1], k, niter=niter, seed=int(seed) % (2**31), gpu=gpu, verbose=False,
        max_points_per_centroid=10_000_000, min_points_per_centroid=1,
    )
    km.train(x)
    _, assign = km.index.search(x, 1)
    stats = km.iteration_stats
    history = [float(s["obj"]) for s in stats] if stats else list(map(float, km.obj))
    splits = int(sum(s["nsplit"] for s in stats)) if stats else 0
    return KMeansResult(
        labels=assign.ravel().astype(np.int64),
        centroids=km.centroids.copy(),
        objective=history[-1] if history else float("nan"),
        empty_splits=splits,
        backend="faiss-gpu" if gpu else "faiss",
        history=history,
    )


def _assign(x: torch.Tensor, c: torch.Tensor, chunk: int = 65536) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest centroid (exact L2) and squared distance, in chunks to bound memory."""
    import torch

    c_sq = (c * c).sum(1)
    labels = torch.empty(len(x), dtype=torch.long, device=x.device)
    dists = torch.empty(len(x), dtype=x.dtype, device=x.device)
    for s in range(0, len(x), chunk):
        xb = x[s : s + chunk]
        d = c_sq[None, :] - 2 * xb @ c.T
        best, idx = d.min(1)
        labels[s : s + chunk] = idx
        dists[s : s + chunk] = (best + (xb * xb).sum(1)).clamp_min(0)
    return labels, dists


def _split_empty(c: torch.Tensor, counts: torch.Tensor, gen: torch.Generator) -> int:
    """Re-seed each empty cluster from a non-empty one chosen with probability ∝ size (paper §3.3)."""
    import torch

    empty = torch.nonzero(counts == 0).ravel().tolist()
    for e in empty:
        probs = counts.clamp_min(0).double()
        probs = probs / probs.sum()
        donor = int(torch.multinomial(probs, 1, generator=gen))
        c[e] = c[donor] * (1 + SPLIT_EPS)
        c[donor] = c[donor] * (1 - SPLIT_EPS)
        half = counts[donor] // 2
        counts[e] = half
        counts[donor] -= half
    return len(empty)


def kmeans_restarts(x: np.ndarray, k: int, niter: int = 20, seeds: Sequence[int] = (0,),
                    device: torch.device | str = "cpu", chunk_bytes: int = 16 * 1024**2,
                    on_iteration: Callable[[], None] | None = None, rows: slice | None = None,
                    all_reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> list[KMeansResult]:
    """The torch backend: independent k-means runs, one per seed, advanced together. Every Lloyd
    step is one pass over the rows for all seeds (``x @ centroids.T``, then the one-hot sums of the
    rows that changed cluster, per chunk of ``chunk_bytes``, small enough to stay in cache between
    the two products); in a distributed run over this rank's ``rows``, every statistic summed over
    ranks by ``all_reduce`` (see ``kmeans``).

    A seed's run does not depend on the others beside it; several seeds trade one pass each for a
    shared one, which matters where the pass is the cost (many wide rows, small k: `dcx eval`'s
    k-means(#classes), docs/decisions.md D60). Stops early once no seed's labels change, which is a
    fixed point of Lloyd's iteration (the same labels as going on).
    ``on_iteration`` is called after each Lloyd step that is taken (at most ``niter``; each result's
    ``history`` holds the objective before each of them).
    """
    import torch

    x = check_kmeans_input(x, k)
    dev = torch.device(device)
    x_all = torch.from_numpy(x).to(dev)
    n, d = x_all.shape
    reduce = all_reduce or (lambda t: t)
    rows = rows or slice(0, n)
    xs = x_all[rows]
    gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
    c = torch.cat([x_all[torch.randperm(n, generator=g)[:k].to(dev)] for g in gens]).clone()
    runs = len(gens)
    offsets = (torch.arange(runs, device=dev) * k)[None, :]
    step = max(1, chunk_bytes // (4 * max(d, runs * k)))
    x_sq = (xs * xs).sum(1, keepdim=True)
    labels = torch.full((len(xs), runs), -1, dtype=torch.long, device=dev)
    history: list[list[float]] = [[] for _ in gens]
    splits = [0] * runs
    # Per-cluster sums and counts of the current labels, in float64: summed once, then updated by the
    # rows whose label moved (most rows stay after the first steps); again in full after a split.
    sums = torch.zeros(c.shape, dtype=torch.float64, device=dev)
    counts = torch.zeros(runs * k, dtype=torch.float64, device=dev)
    full = True
    for it in range(niter + 1):
        if full:
            sums.zero_()
            counts.zero_()
        objective = torch.zeros(runs, dtype=torch.float64, device=dev)
        step_sums, step_counts = torch.zeros_like(sums), torch.zeros_like(counts)
        c_sq = (c * c).sum(1)
        moved = torch.zeros((), dtype=torch.long, device=dev)
        for s in range(0, len(xs), step):
            xb, old = xs[s : s + step], labels[s : s + step]
            dist = (c_sq - 2 * xb @ c.T).view(len(xb), runs, k)
            best, lab = dist.min(2)
            objective += (best + x_sq[s : s + step]).clamp_min(0).sum(0, dtype=torch.float64)
            changed = lab != old
            moved += changed.sum()
            if it < niter:
                moved_rows = torch.arange(len(xb), device=dev) if full else changed.any(1).nonzero().squeeze(1)
                delta = torch.zeros(len(moved_rows), runs * k, dtype=xb.dtype, device=dev)
                delta.scatter_(1, lab[moved_rows] + offsets, 1.0)  # joins its new cluster
                if not full:  # and leaves its old one (where the label stayed, the two cancel)
                    delta.scatter_add_(1, old[moved_rows] + offsets,
                                       torch.full((len(moved_rows), runs), -1.0, device=dev))
                step_sums += (delta.T @ (xb if full else xb[moved_rows])).double()
                step_counts += delta.sum(0, dtype=torch.float64)
            labels[s : s + step] = lab
        sums += reduce(step_sums)
        counts += reduce(step_counts)
        objective, moved = reduce(objective), reduce(moved)
        for r, obj in enumerate(objective.tolist()):
            history[r].append(obj)
        if it == niter:
            break
        nonempty = counts > 0
        if int(moved) == 0 and bool(nonempty.all()):
            break  # the same labels give the same centroids: Lloyd's fixed point, whatever niter is left
        if on_iteration is not None:
            on_iteration()
        c[nonempty] = (sums[nonempty] / counts[nonempty, None]).to(c.dtype)
        full = not bool(nonempty.all())
        if full:
            c_cpu, counts_cpu = c.cpu(), counts.cpu().long()
            for r, g in enumerate(gens):
                splits[r] += _split_empty(c_cpu[r * k : (r + 1) * k], counts_cpu[r * k : (r + 1) * k], g)
            c = c_cpu.to(dev)
    if all_reduce is not None:  # every rank's labels in its rows, summed into the full vectors
        full_labels = torch.zeros(n, runs, dtype=torch.long, device=dev)
        full_labels[rows] = labels
        labels = all_reduce(full_labels)
    out_labels = labels.T.cpu().numpy()
    centroids = c.view(runs, k, d).cpu().numpy()
    return [KMeansResult(labels=out_labels[r].astype(np.int64), centroids=centroids[r].copy(), objective=history[r][-1],
                         empty_splits=splits[r], backend="torch", history=history[r][:-1])
            for r in range(runs)]
