"""dcx k-means vs a direct faiss.Kmeans call on the same features (issue 2 target: <= 1.05x).

N=200k, d=256, k=1000, niter=20, no subsampling, final nearest-centroid assignment included in
both. Runs alternate (faiss, dcx, faiss, dcx, ...) so load changes hit both; the ratio of
medians goes to benchmarks/results/kmeans.json and docs/benchmarks.md.

    python benchmarks/bench_kmeans.py [--n 200000] [--k 1000] [--repeats 3] [--torch]

    python benchmarks/bench_kmeans.py --upstream [--n 100000] [--k 1000] [--repeats 3] [--old-default]
        [--extra-cost-n 1797 5000 20000]

The clustering step against upstream DeepCluster's ``clustering.py`` (issue 37): its
``preprocess_features`` (faiss PCA-256 with eigen_power -0.5, then L2) and ``run_kmeans`` (faiss
Clustering, niter 20, max_points_per_centroid 10,000,000, flat L2 index, nearest-centroid search),
reimplemented below, alternating with dcx's step at its defaults (PCA-whitening + L2, the kmeans
plugin's ``fit``) on the same raw N x 256 features. ``--old-default`` also times once the defaults
before issue 37 (3 k-means heads + a merged head at every N); ``--extra-cost-n`` times what those
extra heads add at each N (k from ``scaled_defaults``), the evidence of docs/decisions.md D55.
Writes benchmarks/results/kmeans-upstream.json and the "## The clustering step against upstream"
section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import time

import faiss
import numpy as np

from _report import environment, write_results, write_section
from dcx.algorithms.kmeans import kmeans
from dcx.algorithms.metrics import nmi
from dcx.algorithms.pca import preprocess
from dcx.clusterers.kmeans import EXTRA_HEADS_MAX_N, KMeans
from dcx.core.contracts import FitContext


def mixture(n: int, d: int, classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, d)).astype(np.float32)
    y = rng.integers(0, classes, n)
    return centres[y] + rng.normal(scale=0.5, size=(n, d)).astype(np.float32), y


def raw_faiss(x: np.ndarray, k: int, niter: int, seed: int) -> np.ndarray:
    km = faiss.Kmeans(x.shape[1], k, niter=niter, seed=seed, max_points_per_centroid=10_000_000, verbose=False)
    km.train(x)
    return km.index.search(x, 1)[1].ravel()


# ----------------------------------------------------------------------------- against upstream (--upstream)


def upstream_preprocess_features(npdata: np.ndarray, pca: int = 256) -> np.ndarray:
    """deepcluster clustering.py ``preprocess_features``: PCA-whitening, then L2 normalisation."""
    _, ndim = npdata.shape
    npdata = npdata.astype("float32")
    mat = faiss.PCAMatrix(ndim, pca, -0.5)  # eigen_power=-0.5 (newer faiss takes it positionally only)
    mat.train(npdata)
    assert mat.is_trained
    npdata = mat.apply_py(npdata)
    row_sums = np.linalg.norm(npdata, axis=1)
    return npdata / row_sums[:, np.newaxis]


def upstream_run_kmeans(x: np.ndarray, nmb_clusters: int, seed: int) -> list[int]:
    """deepcluster clustering.py ``run_kmeans`` on the CPU (a flat L2 index where upstream has the GPU's);
    the seed is given instead of np.random.randint(1234) so runs pair."""
    _, d = x.shape
    clus = faiss.Clustering(d, nmb_clusters)
    clus.seed = seed
    clus.niter = 20
    clus.max_points_per_centroid = 10_000_000
    index = faiss.IndexFlatL2(d)
    clus.train(x, index)
    _, idx = index.search(x, 1)
    return [int(n[0]) for n in idx]


def upstream_cluster(data: np.ndarray, k: int, seed: int) -> np.ndarray:
    """deepcluster clustering.py ``Kmeans.cluster``: preprocess, k-means, the images' lists per cluster."""
    xb = upstream_preprocess_features(data)
    labels = upstream_run_kmeans(xb, k, seed)
    images_lists = [[] for _ in range(k)]
    for i in range(len(data)):
        images_lists[labels[i]].append(i)
    return np.asarray(labels, dtype=np.int64)


def dcx_step(data: np.ndarray, k: int, seed: int, **options) -> tuple[np.ndarray, int]:
    """dcx's clustering step: PCA-whitening + L2 (dcx.algorithms.pca), the kmeans plugin's fit at its
    defaults unless ``options`` say otherwise. Returns (labels, number of heads trained)."""
    part = KMeans(k=k, **options).fit(preprocess(data, 256), FitContext(seed=seed))
    more = 0 if part.more_labels is None else part.more_labels.shape[1]
    return part.labels, 1 + more


def timed_call(fn, *args, **kwargs):
    t = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - t, out


def extra_cost(ns: list[int], repeats: int) -> list[dict]:
    """Seconds the extra heads (2 more k-means + 1 merged, the small-N default) add to one head, per N,
    alternating, k from scaled_defaults (the folder rule)."""
    from dcx.datasets.folder import scaled_defaults

    rows = []
    for n in ns:
        k = scaled_defaults(n, 32).k
        x, _ = mixture(n, 256, max(10, k // 10), seed=1)
        one, four = [], []
        for r in range(repeats):
            t1, _ = timed_call(dcx_step, x, k, r, heads=1, merged_heads=0)
            t4, _ = timed_call(dcx_step, x, k, r, heads=3, merged_heads=1)
            one.append(t1)
            four.append(t4)
        m1, m4 = statistics.median(one), statistics.median(four)
        rows.append({"n": n, "k": k, "one_head_s": m1, "three_plus_merged_s": m4, "extra_s": m4 - m1,
                     "repeats": repeats, "seconds_one": one, "seconds_three_plus_merged": four})
        print(f"N={n} k={k}: one head {m1:.2f} s, 3 + merged {m4:.2f} s, extra {m4 - m1:.2f} s", flush=True)
    return rows


def main_upstream(args) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    x, y = mixture(args.n, args.d, args.k)
    load = [os.getloadavg()[0]]
    times: dict[str, list[float]] = {"upstream": [], "dcx default": []}
    labels: dict[str, np.ndarray] = {}
    heads = None
    agreement = []
    for r in range(args.repeats):
        t_up, up = timed_call(upstream_cluster, x, args.k, r)
        t_dcx, (ours, heads) = timed_call(dcx_step, x, args.k, r)
        times["upstream"].append(t_up)
        times["dcx default"].append(t_dcx)
        labels["upstream"], labels["dcx default"] = up, ours
        agreement.append({"seed": r, "nmi_dcx_vs_upstream": nmi(up, ours), "identical": bool(np.array_equal(up, ours))})
        print(f"repeat {r}: upstream {t_up:.2f} s, dcx default {t_dcx:.2f} s ({heads} head(s)); "
              f"NMI between them {agreement[-1]['nmi_dcx_vs_upstream']:.4f}", flush=True)
    old = None
    if args.old_default:
        t_old, (old_labels, old_heads) = timed_call(dcx_step, x, args.k, 0, heads=3, merged_heads=1)
        old = {"seconds": t_old, "heads": old_heads, "over_upstream_median": t_old / statistics.median(times["upstream"])}
        print(f"pre-issue-37 defaults (3 heads + merged): {t_old:.2f} s", flush=True)
    extra = extra_cost(args.extra_cost_n, args.extra_repeats) if args.extra_cost_n else []
    load.append(os.getloadavg()[0])
    med = {name: statistics.median(v) for name, v in times.items()}
    ratio = med["dcx default"] / med["upstream"]
    nmi_y = {name: nmi(y, lab) for name, lab in labels.items()}
    result = {"benchmark": "clustering step: dcx kmeans defaults vs upstream deepcluster clustering.py",
              "n": args.n, "d": args.d, "k": args.k, "niter": 20, "repeats": args.repeats, "seconds": times,
              "median": med, "ratio_dcx_default_over_upstream": ratio,
              "paired_ratio_median": statistics.median(d / u for d, u in zip(times["dcx default"], times["upstream"])), "dcx_default_heads": heads,
              "agreement": agreement, "nmi_to_mixture": nmi_y, "old_default_once": old,
              "extra_heads_max_n": EXTRA_HEADS_MAX_N, "extra_cost": extra, "load_average_1min": load,
              **environment()}
    write_results("kmeans-upstream", result)
    old_line = ""
    if old:
        old_line = (f"The defaults before issue 37 (3 k-means heads + a merged head at every N) took "
                    f"{old['seconds']:.1f} s once on the same input ({old['over_upstream_median']:.1f}x upstream).")
    extra_rows = "\n".join(f"| {e['n']:,} | {e['k']} | {e['one_head_s']:.2f} s | {e['three_plus_merged_s']:.2f} s "
                            f"| {e['extra_s']:.2f} s |" for e in extra)
    extra_table = f"""
What the extra heads cost below the threshold (median of {args.extra_repeats} alternating runs; mixture
features, k = `scaled_defaults(N).k`; the merged head's kNN graph is exact up to 20,000 rows):

| N | k | one head | 3 heads + merged (default up to {EXTRA_HEADS_MAX_N:,}) | extra |
|---|---|---|---|---|
{extra_rows}
""" if extra else ""
    agree = min(a["nmi_dcx_vs_upstream"] for a in agreement)
    paired = statistics.median(d / u for d, u in zip(times["dcx default"], times["upstream"]))
    cmd_flags = [f"--repeats {args.repeats}"] + (["--old-default"] if args.old_default else []) + (
        [f"--extra-cost-n {' '.join(map(str, args.extra_cost_n))} --extra-repeats {args.extra_repeats}"] if extra else [])
    write_section("The clustering step against upstream", f"""
Upstream DeepCluster's `clustering.py` (`preprocess_features` + `run_kmeans`: faiss PCA-256 with
eigen_power -0.5, L2, faiss `Clustering` niter 20, max_points_per_centroid 10,000,000, flat L2
index; reimplemented in the benchmark, seeded per repeat) against dcx's clustering step at its
defaults (PCA-whitening + L2, the kmeans plugin's `fit`) on the same raw features (Gaussian mixture,
N={args.n:,}, d={args.d}, {args.k} classes), k={args.k}; median of {args.repeats} alternating runs
(`python benchmarks/bench_kmeans.py --upstream {' '.join(cmd_flags)}`, raw numbers in
`benchmarks/results/kmeans-upstream.json`).

| step | median time | heads | NMI to the mixture labels |
|---|---|---|---|
| upstream `clustering.py` | {med['upstream']:.2f} s | 1 | {nmi_y['upstream']:.4f} |
| dcx default | {med['dcx default']:.2f} s | {heads} | {nmi_y['dcx default']:.4f} |

**dcx default / upstream = {ratio:.2f}** (target <= 1.5; median of the paired ratios {paired:.2f}). At N = {args.n:,} > {EXTRA_HEADS_MAX_N:,} the
default is the paper's one head (docs/decisions.md D55); NMI between dcx's and upstream's labels
>= {agree:.4f} on every seed ({sum(a['identical'] for a in agreement)} of {len(agreement)} identical). {old_line}
{extra_table}
Load average (1 min) {load[0]:.1f} -> {load[1]:.1f} (other jobs shared the machine). {result['when'][:1].upper() + result['when'][1:]}, {result['machine']}.
""")
    print(f"dcx default / upstream = {ratio:.3f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=None, help="rows (default 200,000; --upstream: 100,000, issue 37's)")
    ap.add_argument("--d", type=int, default=256)
    ap.add_argument("--k", type=int, default=1000)
    ap.add_argument("--niter", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--torch", action="store_true", help="also time the torch backend once")
    ap.add_argument("--upstream", action="store_true", help="the clustering step against upstream's clustering.py")
    ap.add_argument("--old-default", action="store_true", help="--upstream: also time the pre-issue-37 defaults once")
    ap.add_argument("--extra-cost-n", type=int, nargs="*", default=[], help="--upstream: N at which to time the extra heads")
    ap.add_argument("--extra-repeats", type=int, default=3)
    args = ap.parse_args()
    if args.upstream:
        args.n = args.n or 100_000
        main_upstream(args)
        return
    args.n = args.n or 200_000
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
