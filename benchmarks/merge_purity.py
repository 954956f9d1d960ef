"""How pure coarse partitions are: k-means into few clusters vs k-means(k) merged along the kNN graph.

Trains one default k-means run and, at every round, takes the features k-means sees (PCA-whitened,
L2) and scores against the classes: k-means into k, k/2, k/4 and #classes clusters, and the
k-means(k) clusters merged into k/2, k/4 and #classes groups (`dcx.algorithms.merge`, 10 neighbours).
Purity: the share of images in their group's majority class. docs/decisions.md D24.

    python benchmarks/merge_purity.py --dataset digits --seed 0
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path
from unittest import mock

import numpy as np

RESULTS = Path(__file__).parent / "results"


def purity(y: np.ndarray, labels: np.ndarray) -> float:
    return float(sum(np.bincount(y[labels == c]).max() for c in np.unique(labels)) / len(labels))


def score_round(x: np.ndarray, y: np.ndarray, k: int, classes: int, seed: int) -> dict:
    """One round's features: purity and NMI to the classes of each coarse partition."""
    from dcx.algorithms.kmeans import kmeans
    from dcx.algorithms.knn import knn_graph
    from dcx.algorithms.merge import merge_clusters
    from dcx.algorithms.metrics import nmi

    graph = knn_graph(x, 10, backend="exact")
    fine = kmeans(x, k, 20, seed).labels
    row = {"knn10_same_class": float((y[graph.indices] == y[:, None]).mean()),
           f"kmeans_{k}": {"purity": purity(y, fine), "nmi": nmi(y, fine)}}
    for groups in sorted({k // 2, k // 4, classes}, reverse=True):
        direct = kmeans(x, groups, 20, seed).labels
        merged = merge_clusters(fine, graph.indices, k, [groups])[0][fine]
        row[f"kmeans_{groups}"] = {"purity": purity(y, direct), "nmi": nmi(y, direct)}
        row[f"merged_{groups}"] = {"purity": purity(y, merged), "nmi": nmi(y, merged),
                                   "largest": float(np.bincount(merged).max() / len(merged))}
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="digits")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from dcx.core.config import RunConfig
    from dcx.runs.runner import execute, new_run
    from dcx.training.setup import setup
    from dcx.clusterers.kmeans import KMeans

    cfg = RunConfig(dataset=args.dataset, seed=args.seed, probe=False)
    s = setup(cfg)
    y = np.asarray(s.images.labels)
    classes, k = s.images.num_classes, s.config.k
    rounds: list[dict] = []
    fit = KMeans.fit

    def scored_fit(self, features, context):
        rounds.append(score_round(np.asarray(features, dtype=np.float32), y, k, classes, context.seed))
        print(f"round {len(rounds) - 1}: " + ", ".join(
            f"{name} {v['purity']:.3f}" for name, v in rounds[-1].items() if isinstance(v, dict)), flush=True)
        return fit(self, features, context)

    with tempfile.TemporaryDirectory() as tmp, mock.patch.object(KMeans, "fit", scored_fit):
        execute(new_run(cfg, Path(tmp) / "run"))
    keys = [key for key in rounds[0] if isinstance(rounds[0][key], dict)]
    later = rounds[len(rounds) // 2:]  # the second half of the run, past the first rounds' changes
    summary = {key: {m: statistics.mean(r[key][m] for r in later) for m in ("purity", "nmi")} for key in keys}
    out = {"dataset": args.dataset, "seed": args.seed, "k": k, "classes": classes, "rounds": rounds,
           "second_half_mean": summary, "options": s.config.options, "load": os.getloadavg()[0]}
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"merge_purity-{args.dataset}-seed{args.seed}.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    print("| partition | purity | NMI to classes |\n|---|---|---|")
    for key in keys:
        print(f"| {key} | {summary[key]['purity']:.3f} | {summary[key]['nmi']:.3f} |")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
