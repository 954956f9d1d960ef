"""dcx k-means vs a direct faiss.Kmeans call on the same features (issue 2 target: <= 1.05x).

N=200k, d=256, k=1000, niter=20, no subsampling, final nearest-centroid assignment included in
both. Runs alternate (faiss, dcx, faiss, dcx, ...) so load changes hit both; the ratio of
medians goes to benchmarks/results/kmeans.json and docs/benchmarks.md.

    python benchmarks/bench_kmeans.py [--n 200000] [--k 1000] [--repeats 3] [--torch]
"""

from __future__ import annotations

import argparse
import statistics
import time

import faiss
import numpy as np

from _report import environment, write_results, write_section
from dcx.algorithms.kmeans import kmeans
from dcx.algorithms.metrics import nmi


def mixture(n: int, d: int, classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, d)).astype(np.float32)
    y = rng.integers(0, classes, n)
    return centres[y] + rng.normal(scale=0.5, size=(n, d)).astype(np.float32), y


def raw_faiss(x: np.ndarray, k: int, niter: int, seed: int) -> np.ndarray:
    km = faiss.Kmeans(x.shape[1], k, niter=niter, seed=seed, max_points_per_centroid=10_000_000, verbose=False)
    km.train(x)
    return km.index.search(x, 1)[1].ravel()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--d", type=int, default=256)
    ap.add_argument("--k", type=int, default=1000)
    ap.add_argument("--niter", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--torch", action="store_true", help="also time the torch backend once")
    args = ap.parse_args()
    x, y = mixture(args.n, args.d, args.k)
    times: dict[str, list[float]] = {"faiss": [], "dcx": []}
    scores: dict[str, float] = {}
    for r in range(args.repeats):
        t = time.perf_counter()
        labels = raw_faiss(x, args.k, args.niter, seed=r)
        times["faiss"].append(time.perf_counter() - t)
        scores["faiss"] = nmi(y, labels)
        t = time.perf_counter()
        res = kmeans(x, args.k, args.niter, seed=r, backend="faiss")
        times["dcx"].append(time.perf_counter() - t)
        scores["dcx"] = nmi(y, res.labels)
        print(f"repeat {r}: faiss {times['faiss'][-1]:.2f} s, dcx {times['dcx'][-1]:.2f} s", flush=True)
    if args.torch:
        t = time.perf_counter()
        res = kmeans(x, args.k, args.niter, seed=0, backend="torch")
        times["dcx-torch"] = [time.perf_counter() - t]
        scores["dcx-torch"] = nmi(y, res.labels)
    med = {name: statistics.median(v) for name, v in times.items()}
    ratio = med["dcx"] / med["faiss"]
    result = {"n": args.n, "d": args.d, "k": args.k, "niter": args.niter, "seconds": times,
              "median": med, "nmi": scores, "ratio_dcx_over_faiss": ratio, **environment()}
    write_results("kmeans", result)
    rows = "\n".join(f"| {name} | {med[name]:.2f} s | {scores[name]:.3f} |" for name in med)
    write_section("k-means", f"""
Same features (Gaussian mixture, N={args.n:,}, d={args.d}, {args.k} classes, noise 0.5), k={args.k},
niter={args.niter}, no subsampling, final assignment included; median of {args.repeats} alternating runs
(`python benchmarks/bench_kmeans.py`, raw numbers in `benchmarks/results/kmeans.json`).

| implementation | median time | NMI to the mixture labels |
|---|---|---|
{rows}

**dcx / raw faiss = {ratio:.3f}** (target <= 1.05). {result['when']}, {result['machine']}.
""")
    print(f"dcx / faiss = {ratio:.3f}")


if __name__ == "__main__":
    main()
