"""How noisy is the end-of-run best-block number? The compare's probe again with more k-means seeds.

The block probe (``dcx.evaluation.probe``, what ``dcx compare`` tabulates) scores every block
by the mean NMI of ``CLUSTER_RUNS`` (5) single k-means(#classes) runs on the L2-normalised
features, then keeps the best block. One k-means run's NMI moves by several hundredths with its
seed, so the best of six such means is biased upwards by the noise it selects. This script
reloads each finished run of a ``dcx compare`` directory, repeats the probe's clustering with
``--runs`` seeds (the first ``CLUSTER_RUNS`` equal the probe's: it checks that they reproduce the
summary) and prints both versions of the comparison. docs/decisions.md D01.

``--restarts R`` also scores each block as k-means itself is meant to be run: the seeds in groups of
R, each group's run with the lowest objective kept (faiss's ``nredo``, scikit-learn's ``n_init``),
the block's score the mean over the groups (the engine's final probe keeps the best of 10 the same way).

    python benchmarks/probe_noise.py COMPARE_DIR --runs 20 --out benchmarks/results/probe-noise-digits-intel.json
    python benchmarks/probe_noise.py COMPARE_DIR --runs 50 --restarts 10 --out benchmarks/results/probe-restarts-digits-intel.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np


def block_nmis(run_dir: Path, runs: int) -> dict[str, dict[str, list[float]]]:
    """{block: {"learned": [NMI per k-means seed], "random": [...], "learned_objective": [k-means objective per
    seed], "random_objective": [...]}} on the probe's images."""
    import torch

    from dcx.core.contracts import ImageSet
    from dcx.evaluation.data import EvalData
    from dcx.evaluation.extraction import extract_layers
    from dcx.evaluation.probe import PROBE_IMAGES, _Subset
    from dcx.evaluation.protocols import SPLIT_SEED, preprocess_for_clustering
    from dcx.algorithms.kmeans import kmeans
    from dcx.training.layers import layer_names
    from dcx.algorithms.metrics import clustering_scores
    from dcx.evaluation.runs import load_run

    loaded = load_run(run_dir)
    images, cfg = loaded.setup.images, loaded.setup.config
    n = len(images)
    # the probe's images: all of them, or its seeded sample of PROBE_IMAGES (block_nmi)
    idx = np.arange(n) if n <= PROBE_IMAGES else np.sort(np.random.default_rng(cfg.seed).choice(n, PROBE_IMAGES, False))
    labels = np.asarray(images.labels)[idx]
    subset = ImageSet(_Subset(images.images, idx), labels, images.classes, images.channels)
    data = EvalData(subset, labels, np.arange(len(idx)), np.arange(0), np.arange(len(idx)), cfg.dataset, "probe")
    k = len(np.unique(labels))
    out: dict[str, dict[str, list[float]]] = {}
    for which, net in (("learned", loaded.learned), ("random", loaded.random)):
        feats = extract_layers(net, data, layer_names(net, "all"), cfg.image_size, torch.device("cpu"))
        for block, f in feats.items():
            z = preprocess_for_clustering(f, "l2")
            fits = [kmeans(z, k, 20, SPLIT_SEED + r) for r in range(runs)]
            out.setdefault(block, {})[which] = [clustering_scores(labels, fit.labels)["nmi"] for fit in fits]
            out[block][f"{which}_objective"] = [fit.objective for fit in fits]
    return out


def best_of_restarts(nmis: list[float], objectives: list[float], restarts: int) -> list[float]:
    """The NMI of the lowest-objective run in each consecutive group of ``restarts`` seeds."""
    groups = len(nmis) // restarts
    return [nmis[g * restarts + int(np.argmin(objectives[g * restarts:(g + 1) * restarts]))] for g in range(groups)]


def restart_scores(results: dict[str, dict], restarts: int) -> dict[str, dict]:
    """``results`` with every block's per-seed NMIs replaced by its best-of-``restarts`` NMIs (one per group)."""
    return {name: {block: {which: best_of_restarts(v[which], v[f"{which}_objective"], restarts)
                           for which in ("learned", "random")} for block, v in blocks.items()}
            for name, blocks in results.items()}


def best_block(blocks: dict, runs: int) -> tuple[str, float, float]:
    """(block, learned, random) of the block whose mean over the first ``runs`` seeds is highest."""
    means = {b: statistics.fmean(v["learned"][:runs]) for b, v in blocks.items()}
    b = max(means, key=means.get)
    return b, means[b], statistics.fmean(blocks[b]["random"][:runs])


def report(results: dict[str, dict], runs: int, first: str) -> list[str]:
    """Per clusterer: best block per seed, mean, gain, and minus the ``first`` clusterer paired by seed."""
    from scipy import stats

    by: dict[str, dict[int, tuple]] = {}
    for name, blocks in results.items():
        clusterer, seed = name.rsplit("-seed", 1)
        by.setdefault(clusterer, {})[int(seed)] = best_block(blocks, runs)
    lines = [f"mean of {runs} k-means seeds per block:",
             "| clusterer | best block per seed | mean | gain over random | minus " + first + " per seed; 95 % interval |",
             "|---|---|---|---|---|"]
    base = by.get(first, {})
    for clusterer, seeds in by.items():
        order = sorted(seeds)
        vals = [seeds[s][1] for s in order]
        gain = statistics.fmean(seeds[s][1] - seeds[s][2] for s in order)
        paired = ""
        common = [s for s in order if s in base]
        if clusterer != first and len(common) >= 2:
            diff = np.array([seeds[s][1] - base[s][1] for s in common])
            lo, hi = stats.t.interval(0.95, len(diff) - 1, loc=diff.mean(), scale=diff.std(ddof=1) / np.sqrt(len(diff)))
            paired = f"{', '.join(f'{d:+.3f}' for d in diff)} = {diff.mean():+.3f} [{lo:+.3f}, {hi:+.3f}]"
        cells = ", ".join(f"{seeds[s][0]} {seeds[s][1]:.3f}" for s in order)
        lines.append(f"| {clusterer} | {cells} | {statistics.fmean(vals):.3f} | {gain:+.3f} | {paired} |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("compare_dir", type=Path)
    ap.add_argument("--runs", type=int, default=20, help="k-means seeds per block (the probe uses CLUSTER_RUNS)")
    ap.add_argument("--restarts", type=int, default=1,
                    help="also score each block by the best of this many k-means runs by objective (groups of the seeds)")
    ap.add_argument("--out", type=Path, help="JSON of every block's NMI per seed (read back if it exists)")
    args = ap.parse_args()
    if args.restarts > 1 and args.runs < args.restarts:
        ap.error(f"--restarts {args.restarts} needs --runs of at least as many seeds")
    from dcx.evaluation.protocols import CLUSTER_RUNS

    comparison = json.loads((args.compare_dir / "comparison.json").read_text())
    names = [r["run_dir"] for r in comparison["runs"]]
    first = comparison["runs"][0]["clusterer"]
    results = json.loads(args.out.read_text())["blocks"] if args.out and args.out.exists() else {}
    for name in names:
        stored = results.get(name)
        if stored and (args.restarts == 1 or all("learned_objective" in v for v in stored.values())):
            continue
        t = time.perf_counter()
        results[name] = block_nmis(args.compare_dir / name, args.runs)
        summary = json.loads((args.compare_dir / name / "summary.json").read_text())["best_block"]["blocks"]
        drift = max(abs(statistics.fmean(v["learned"][:CLUSTER_RUNS]) - summary[b]["learned"]) for b, v in results[name].items())
        print(f"{name}: {time.perf_counter() - t:.0f} s; the first {CLUSTER_RUNS} seeds vs its summary: {drift:.1e}", flush=True)
    results = {name: results[name] for name in names}  # the comparison's order
    sd = [statistics.stdev(v["learned"]) for blocks in results.values() for v in blocks.values()]
    lines = [*report(results, CLUSTER_RUNS, first), "", *report(results, args.runs, first), "",
             f"sd of one k-means run's NMI over {args.runs} seeds, per block and run: median {statistics.median(sd):.3f}, "
             f"max {max(sd):.3f}"]
    if args.restarts > 1:
        best = restart_scores(results, args.restarts)
        groups = args.runs // args.restarts
        rows = report(best, groups, first)
        rows[0] = f"best of {args.restarts} k-means runs by objective, mean of {groups} such groups per block:"
        sd = [statistics.stdev(v["learned"]) for blocks in best.values() for v in blocks.values()] if groups > 1 else [0.0]
        lines += ["", *rows, "", f"sd of one best-of-{args.restarts} NMI over {groups} groups, per block and run: "
                  f"median {statistics.median(sd):.3f}, max {max(sd):.3f}"]
    print("\n".join(lines))
    if args.out:
        args.out.write_text(json.dumps({"runs": args.runs, "restarts": args.restarts, "compare_dir": str(args.compare_dir),
                                        "blocks": results, "report": lines}))


if __name__ == "__main__":
    main()
