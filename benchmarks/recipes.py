"""Ablations of the training recipe: learned-minus-random k-means NMI per block, over seeds and datasets.

Each variant is a set of run settings on top of the defaults; each (dataset, variant, seed) is
one ordinary `dcx run` (library API) whose end-of-run block probe (``dcx.evaluation.probe``)
gives every block's k-means(#classes) NMI learned and at random init. Rows are appended to
``benchmarks/results/recipes/<dataset>.jsonl`` as they finish (an interrupted sweep resumes);
``--report`` turns them into per-block tables (the evidence of docs/decisions.md; the sessions' own
notes are benchmarks/results/recipes-log.md).

    python benchmarks/recipes.py --dataset digits --variants baseline,affine --seeds 0,1,2
    python benchmarks/recipes.py --report
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "recipes"

#: name -> (settings on top of the defaults, what it tests). "baseline" is the defaults. Variants of
#: settings removed after dcx 0.1.0 are gone; their rows stay in results/ and docs/decisions.md.
VARIANTS: dict[str, tuple[dict, str]] = {
    "baseline": ({}, "the defaults"),
    "passes1": ({"passes": 1}, "1 pass per clustering round"),
    "passes6": ({"passes": 6}, "6 passes per clustering round"),
    "constant_lr": ({"lr_schedule": "constant"}, "constant learning rate (reference)"),
    "flip": ({"flip": True}, "horizontal flips"),
    "no_flip": ({"flip": False}, "no horizontal flips"),
    "crop_only": ({"augment": "crop"}, "random resized crops only (the reference)"),
    "affine": ({"augment": "affine"}, "crops + small affine warps"),
    "elastic": ({"augment": "elastic"}, "crops + affine + elastic warps"),
    "crop_small": ({"crop_scale": 0.2}, "crops down to 20% of the area"),
    "crop_large": ({"crop_scale": 0.8}, "crops of at least 80% of the area"),
    "k_classes": ({"k_per_class": 1}, "k = #classes"),
    "k_2x": ({"k_per_class": 2}, "k = 2 x #classes"),
    "k_30x": ({"k_per_class": 30}, "k = 30 x #classes"),
    "fc_small": ({"options": {"alexnet": {"fc_dim": 256}}}, "fc6/fc7 of 256 units"),
    "dropout": ({"options": {"alexnet": {"dropout": 0.5}}}, "fc dropout 0.5 (paper)"),
    "pca64": ({"pca_dim": 64}, "PCA to 64 dims before k-means"),
    "pca128": ({"pca_dim": 128}, "PCA to 128 dims before k-means"),
    "pca32": ({"pca_dim": 32}, "PCA to 32 dims before k-means"),
    "no_pca": ({"pca_dim": 100000}, "no dimension reduction (whitening only)"),
    "no_sobel": ({"sobel": False}, "no Sobel input layer"),
    "sobel": ({"sobel": True}, "the fixed Sobel input layer (AlexNet's default; photos declares none since v29)"),
    "swav_no_sobel": ({"clusterer": "swav", "sobel": False}, "SwAV without the Sobel input layer"),
    "dcv2_no_sobel": ({"clusterer": "dcv2", "sobel": False}, "DeepCluster-v2 without the Sobel input layer"),
    "lr_0.1": ({"lr": 0.1}, "learning rate 0.1"),
    "lr_0.02": ({"lr": 0.02}, "learning rate 0.02"),
    "epochs_x2": ({"epochs_factor": 2}, "twice the epochs"),
    "width_0.5": ({"width": 0.5}, "a network twice as wide"),
    "width_0.375": ({"width": 0.375}, "a network 1.5 times as wide"),
    "width_0.5_epochs_x0.7": ({"width": 0.5, "epochs_factor": 0.7}, "a network twice as wide, 0.7 times the epochs"),
    "dcv2": ({"clusterer": "dcv2"}, "DeepCluster-v2 instead of k-means (its defaults)"),
    "swav": ({"clusterer": "swav"}, "SwAV instead of k-means (its defaults)"),
    "sinkhorn": ({"clusterer": "sinkhorn"}, "SeLa instead of k-means"),
    "pic": ({"clusterer": "pic"}, "PIC instead of k-means"),
    "k_5x": ({"k_per_class": 5}, "k = 5 x #classes"),
    "wd_5e-4": ({"weight_decay": 5e-4}, "weight decay 5e-4"),
    "dcv2_passes6": ({"clusterer": "dcv2", "passes": 6}, "DeepCluster-v2, 3 passes of its 2 views per epoch"),
    "dcv2_1view": ({"clusterer": "dcv2", "options": {"dcv2": {"n_large": 1}}},
                   "DeepCluster-v2 with one view: 3 passes per epoch, as k-means"),
    "swav_passes6": ({"clusterer": "swav", "passes": 6, "options": {"swav": {"proj_dim": 33}}},
                     "SwAV (33-d projection), 3 passes of its 2 views per epoch"),
    "swav_k30": ({"clusterer": "swav", "passes": 6, "k": 30, "options": {"swav": {"proj_dim": 33}}},
                 "SwAV (33-d projection), 30 prototypes (< batch 64), 3 passes of 2 views"),
    "swav_queue": ({"clusterer": "swav", "passes": 6,
                    "options": {"swav": {"proj_dim": 33, "queue_length": 512, "queue_start_epoch": 1}}},
                   "SwAV (33-d projection), 512-row queue from epoch 1, 3 passes of 2 views"),
    "swav_passes12": ({"clusterer": "swav", "passes": 12, "options": {"swav": {"proj_dim": 33}}},
                      "SwAV (33-d projection), 6 passes of 2 views per epoch"),
    "swav_t02": ({"clusterer": "swav", "passes": 6, "options": {"swav": {"proj_dim": 33, "temperature": 0.2}}},
                 "SwAV (33-d projection), temperature 0.2, 3 passes of 2 views"),
    "swav_proj128": ({"clusterer": "swav", "passes": 6, "options": {"swav": {"proj_dim": 128}}},
                     "SwAV, 128-d projection (SwAV's), 3 passes of 2 views"),
    "dcv2_equal": ({"clusterer": "dcv2", "passes": 3},
                   "DeepCluster-v2 at k-means' compute: 1 pass of its 2 views per epoch (the former default)"),
    "swav_equal": ({"clusterer": "swav", "passes": 3}, "SwAV at k-means' compute: 1 pass of its 2 views per epoch "
                   "(the former default)"),
    "swav_proj33": ({"clusterer": "swav", "options": {"swav": {"proj_dim": 33}}},
                    "SwAV, 33-d projection (the former default min(128, k // 3) at k = 100)"),
    "swav_eps05": ({"clusterer": "swav", "options": {"swav": {"epsilon": 0.05}}},
                   "SwAV, Sinkhorn epsilon 0.05 (SwAV's) instead of 0.02"),
    "batch_32": ({"batch_size": 32}, "batch 32 (twice the steps)"),
    "jitter_0.4": ({"jitter": 0.4}, "photometric jitter 0.4 (brightness, contrast; colour: saturation, hue) + blur"),
    "swav_jitter_0.8": ({"clusterer": "swav", "jitter": 0.8}, "SwAV with its paper's photometric distortion (jitter 0.8 + blur)"),
    "swav_jitter_0.4": ({"clusterer": "swav", "jitter": 0.4}, "SwAV with photometric jitter 0.4 + blur"),
    "dcv2_jitter_0.8": ({"clusterer": "dcv2", "jitter": 0.8, "options": {"dcv2": {"merged_heads": 1, "merge_scale": 0.25}}}, "DeepCluster-v2 with its reference's photometric distortion (jitter 0.8 + blur), as SwAV's views"),
    "dcv2_jitter_0.4": ({"clusterer": "dcv2", "jitter": 0.4}, "DeepCluster-v2 with photometric jitter 0.4 + blur"),
    "jitter_0.8": ({"jitter": 0.8}, "photometric jitter 0.8 (SwAV's strength) + blur"),
    "kmeans_heads3": ({"options": {"kmeans": {"heads": 3}}},
                      "three k-means clusterings per round, each with its own head (DeepCluster-v2's 3 heads)"),
    "kmeans_heads5": ({"options": {"kmeans": {"heads": 5}}}, "five k-means clusterings per round, each with its own head"),
    "epochs_x0.7": ({"epochs_factor": 0.7}, "0.7 times the epochs (clustering rounds)"),
    "epochs_x0.5": ({"epochs_factor": 0.5}, "half the epochs (clustering rounds)"),
    "warmup_1": ({"warmup_epochs": 1.0}, "linear learning-rate warm-up over the first epoch"),
    "epochs_x1.5": ({"epochs_factor": 1.5}, "1.5 times the epochs (clustering rounds)"),
    "swav_freeze_0": ({"clusterer": "swav", "options": {"swav": {"freeze_prototypes_steps": 0}}},
                      "SwAV with its prototypes trained from the first step (not frozen for the first epoch)"),
    "size_40": ({"image_size": 40}, "40-px inputs (1.4x the training time on digits)"),
    "size_48": ({"image_size": 48}, "48-px inputs (2.1x the training time on digits)"),
    "pca128_size_40": ({"pca_dim": 128, "image_size": 40}, "PCA to 128 dims before k-means, and 40-px inputs"),
    "true_labels": ({"true_labels": True, "options": {"kmeans": {"heads": 1}}},
                    "trained on the true classes instead of k-means' clusters: this network's and probe's ceiling"),
    "fc_2048": ({"options": {"alexnet": {"fc_dim": 2048}}}, "fc6/fc7 of 2048 units (twice the default at width 0.25)"),
    "jitter_0.2": ({"jitter": 0.2}, "photometric jitter 0.2 + blur"),
    "batch_128_lr_0.1": ({"batch_size": 128, "lr": 0.1}, "batch 128 at lr 0.1 (half the steps, the rate scaled with the batch)"),
    "merged_0.5": ({"options": {"kmeans": {"heads": 1, "merged_heads": 2, "merge_scale": 0.5}}},
                   "heads 2 and 3 merge head 1's k clusters along the kNN graph into k/2 and k/4 groups"),
    "merged_0.316": ({"options": {"kmeans": {"heads": 1, "merged_heads": 2, "merge_scale": 0.316}}},
                     "heads 2 and 3 merge head 1's k clusters along the kNN graph into k/3.2 and k/10 groups"),
    "heads3_merged_0.25": ({"options": {"kmeans": {"merged_heads": 1}}},
                           "the defaults since v19: the three k-means heads and a fourth: head 1's k clusters merged along the kNN graph into k/4 groups"),
    "dcv2_merged": ({"clusterer": "dcv2", "options": {"dcv2": {"merged_heads": 1, "merge_scale": 0.25}}},
                    "DeepCluster-v2 with a fourth prototype set: head 1's k clusters merged along the bank's kNN graph into k/4 groups (its defaults in v20)"),
    "dcv2_merged2_0.5": ({"clusterer": "dcv2", "options": {"dcv2": {"merged_heads": 2, "merge_scale": 0.5}}},
                         "DeepCluster-v2 with two merged sets: head 1's k clusters merged along the bank's kNN graph into k/2 and k/4 groups (its defaults since v21)"),
    "dcv2_unmerged": ({"clusterer": "dcv2", "options": {"dcv2": {"merged_heads": 0}}},
                      "DeepCluster-v2's three k-means prototype sets alone (its defaults before v20)"),
    "swav_queue_512": ({"clusterer": "swav", "options": {"swav": {"queue_length": 512, "queue_start_epoch": 2}}},
                       "SwAV whose codes see a 512-row queue of past embeddings beside the batch of 64 from epoch 2 (k = 100 > batch)"),
    "swav_k50": ({"clusterer": "swav", "k": 50}, "SwAV with k = 50 prototypes <= the batch of 64 (each batch's codes can use every prototype; same steps)"),
    "swav_large3": ({"clusterer": "swav", "options": {"swav": {"n_large": 3}}},
                    "SwAV with three large crops per image, each predicting the others' codes (1.5x the steps)"),
    "swav_batch_128_lr_0.1": ({"clusterer": "swav", "batch_size": 128, "lr": 0.1},
                              "SwAV at batch 128 >= k = 100 (each batch's codes can use every prototype), the rate scaled with the batch"),
    "dcv2_merged3_0.5": ({"clusterer": "dcv2", "options": {"dcv2": {"merged_heads": 3, "merge_scale": 0.5}}},
                         "DeepCluster-v2 with three merged sets: head 1's k clusters merged along the bank's kNN graph into k/2, k/4 and k/8 groups"),
    "swav_t_0.05": ({"clusterer": "swav", "options": {"swav": {"temperature": 0.05}}},
                    "SwAV with prediction temperature 0.05 (sharper predictions)"),
    "swav_scale_0.3": ({"clusterer": "swav", "options": {"swav": {"large_min_scale": 0.3}}},
                       "SwAV with large crops of 30-100 % of the area (defaults: 50-100 %)"),
    "swav_scale_0.7": ({"clusterer": "swav", "options": {"swav": {"large_min_scale": 0.7}}},
                       "SwAV with large crops of 70-100 % of the area (defaults: 50-100 %)"),
    "swav_hidden_2048": ({"clusterer": "swav", "options": {"swav": {"hidden_dim": 2048}}},
                         "SwAV with the reference's 2048-wide projection MLP (auto: the feature dim, 1024 here)"),
    "swav_lr_0.1": ({"clusterer": "swav", "lr": 0.1}, "SwAV at lr 0.1 (defaults: 0.05)"),
    "swav_lr_0.025": ({"clusterer": "swav", "lr": 0.025}, "SwAV at lr 0.025 (defaults: 0.05)"),
    "swav_passes12_128": ({"clusterer": "swav", "passes": 12},
                          "SwAV at twice its former default steps: 6 passes of its 2 views per epoch (4x k-means' image-steps; "
                          "its default since swav.passes_scale=2 on a 3-pass dataset)"),
    "dcv2_passes12": ({"clusterer": "dcv2", "passes": 12},
                      "DeepCluster-v2 at twice its default steps: 6 passes of its 2 views per epoch"),
    "swav_queue_512_eps05": ({"clusterer": "swav", "options": {"swav": {"queue_length": 512, "queue_start_epoch": 2,
                                                                       "epsilon": 0.05}}},
                             "SwAV with a 512-row queue from epoch 2 at SwAV's epsilon 0.05 (its small-batch recipe)"),
    "heads3_only": ({"options": {"kmeans": {"merged_heads": 0}}},
                    "the defaults before v19: the three k-means heads, no merged head"),
}


@contextlib.contextmanager
def _true_labels(labels):
    """k-means' rounds return the dataset's classes (rows are in dataset order): supervised training
    through the same engine, augmentations and probe - the ceiling a clusterer's labels could reach."""
    import numpy as np

    from dcx.core.contracts import Partition
    from dcx.clusterers.kmeans import KMeans

    truth = np.asarray(labels, dtype=np.int64)
    with mock.patch.object(KMeans, "fit", lambda self, features, context: Partition(truth, int(truth.max()) + 1)):
        yield


def run_one(dataset: str, variant: str, seed: int, base: dict, probe_runs: int = 0) -> dict:
    """Train one run and return its per-block probe (learned, random), time and settings; with
    ``probe_runs``, also every block's mean over that many k-means seeds (``probe_noise.py``: the
    run's 5-seed probe is noisy, sd ~0.016 per block)."""
    from dcx.core.config import RunConfig
    from dcx.runs.runner import execute, new_run
    from dcx.training.setup import setup

    settings, _ = VARIANTS[variant]
    settings = json.loads(json.dumps(settings))
    cfg = dict(base, dataset=dataset, seed=seed, probe=True)
    options = cfg.setdefault("options", {})
    for plugin, opts in settings.pop("options", {}).items():
        options.setdefault(plugin, {}).update(opts)
    if "clusterer" in settings:
        cfg["clusterer"] = settings.pop("clusterer")
    probe_cfg = RunConfig(**{k: v for k, v in cfg.items()})
    s = setup(probe_cfg)  # resolve the dataset's defaults once, for the relative settings
    classes = s.images.num_classes or 10
    if "k_per_class" in settings:
        cfg["k"] = classes * settings.pop("k_per_class")
    if "epochs_factor" in settings:
        cfg["epochs"] = round(s.config.epochs * settings.pop("epochs_factor"))
    true_labels = settings.pop("true_labels", False)
    cfg.update(settings)
    labelled = _true_labels(s.images.labels) if true_labels else contextlib.nullcontext()
    with tempfile.TemporaryDirectory() as tmp, labelled:
        t = time.perf_counter()
        summary = execute(new_run(RunConfig(**cfg), Path(tmp) / "run"))
        seconds = time.perf_counter() - t
        metrics = [json.loads(line) for line in (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()]
        more = _more_seeds(Path(tmp) / "run", probe_runs) if probe_runs else None
    curve = [{k: r.get(k) for k in ("epoch", "phase", "nmi_labels", "nmi_prev", "loss", "nonempty")} for r in metrics]
    best = summary["best_block"]
    return {
        "dataset": dataset, "variant": variant, "seed": seed, "seconds": seconds,
        "train_seconds": summary["seconds"], "images": summary["images"],
        "blocks": best["blocks"], "best_block": best["block"], "best_learned": best["learned"],
        "best_random": best["random"], "nmi_labels": summary["final"].get("nmi_labels"), "curve": curve,
        "settings": {k: v for k, v in cfg.items() if k not in ("options",)} | {"options": options},
        "load": os.getloadavg()[0],
    } | (more or {})


def _more_seeds(run_dir: Path, runs: int) -> dict:
    """The row's fields of a probe over ``runs`` k-means seeds per block."""
    from probe_noise import best_block, block_nmis

    blocks = block_nmis(run_dir, runs)
    block, learned, random = best_block(blocks, runs)
    means = {b: {k: statistics.fmean(v[k]) for k in ("learned", "random")} for b, v in blocks.items()}
    return {"probe_runs": runs, "blocks_more": means, "best_block_more": block, "best_learned_more": learned,
            "best_random_more": random}


def sweep(dataset: str, variants: list[str], seeds: list[int], base: dict, tag: str = "", probe_runs: int = 0) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{dataset}{'-' + tag if tag else ''}.jsonl"
    done = set()
    if path.exists():
        for line in path.read_text().splitlines():
            row = json.loads(line)
            done.add((row["variant"], row["seed"]))
    for seed in seeds:
        for variant in variants:
            if (variant, seed) in done:
                continue
            row = run_one(dataset, variant, seed, base, probe_runs)
            with open(path, "a") as fh:
                fh.write(json.dumps(row) + "\n")
            more = f"; {probe_runs} k-means seeds: {row['best_block_more']} {row['best_learned_more']:.3f}" if probe_runs else ""
            print(f"{dataset} {variant} seed {seed}: best {row['best_block']} {row['best_learned']:.3f} "
                  f"(random {row['best_random']:.3f}) in {row['seconds']:.0f} s{more}", flush=True)


def _fmt(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:+.3f}"
    return f"{statistics.mean(values):+.3f} ± {statistics.stdev(values):.3f}"


def report(files: list[str] | None = None, min_seeds: int = 1, max_seeds: int = 1000) -> str:
    """Markdown: per results file, learned - random per block (mean ± sd over seeds) for each
    variant measured with ``min_seeds``..``max_seeds`` seeds; ``files`` are stems (``digits-elastic``)."""
    out = []
    paths = [RESULTS / f"{f}.jsonl" for f in files] if files else sorted(RESULTS.glob("*.jsonl"))
    for path in paths:
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        dataset = path.stem
        blocks = list(rows[0]["blocks"])
        seeds = {v: len({r["seed"] for r in rows if r["variant"] == v}) for v in VARIANTS}
        variants = [v for v in VARIANTS if min_seeds <= seeds[v] <= max_seeds]
        if not variants:
            continue
        out += [f"#### {dataset}", "",
                "| variant | seeds | " + " | ".join(blocks) + " | best block learned (random) | train s |",
                "|---|---|" + "---|" * (len(blocks) + 2)]
        for v in variants:
            vr = [r for r in rows if r["variant"] == v]
            cells = [_fmt([r["blocks"][b]["learned"] - r["blocks"][b]["random"] for r in vr]) for b in blocks]
            best = statistics.mean(r["best_learned"] for r in vr)
            rand = statistics.mean(r["best_random"] for r in vr)
            sd = f" ± {statistics.stdev(r['best_learned'] for r in vr):.3f}" if len(vr) > 1 else ""
            secs = statistics.median(r["train_seconds"] for r in vr)
            out.append(f"| {v} ({VARIANTS[v][1]}) | {len(vr)} | " + " | ".join(cells)
                       + f" | {best:.3f}{sd} ({rand:.3f}) | {secs:.0f} |")
        out.append("")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="digits")
    ap.add_argument("--variants", default="baseline")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--base", default="{}", help="JSON settings applied to every variant")
    ap.add_argument("--tag", default="", help="results go to <dataset>-<tag>.jsonl (e.g. another --base)")
    ap.add_argument("--probe-runs", type=int, default=0,
                    help="also probe every block with this many k-means seeds (e.g. 20; the run's probe uses 5)")
    ap.add_argument("--report", action="store_true")
    ap.add_argument("--files", default="", help="--report: results files (stems, comma-separated)")
    ap.add_argument("--min-seeds", type=int, default=1, help="--report: variants with at least this many seeds")
    ap.add_argument("--max-seeds", type=int, default=1000, help="--report: variants with at most this many seeds")
    args = ap.parse_args()
    if args.report:
        print(report([f for f in args.files.split(",") if f] or None, args.min_seeds, args.max_seeds))
        return
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    import logging

    logging.basicConfig(level=logging.WARNING)
    sweep(args.dataset, args.variants.split(","), [int(s) for s in args.seeds.split(",")], json.loads(args.base),
          args.tag, args.probe_runs)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
