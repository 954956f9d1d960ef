"""Assigning new images: does `dcx assign` put held-back images into a run's clusters as well as
the run clustered its own training images? (issue 36)

sklearn's 1,797 digits as PNGs, split at random (seed 0): 1,200 in a training folder, the other 597
held back in a second folder. A k-means + AlexNet run trains on the first; its final clusters' NMI
to the labels (training images) is set beside the NMI of `assign` on the held-back folder (target:
within 0.02), for 3 seeds. NMI grows as the sample shrinks (chance agreement), so the training
NMI is also given on random 597-image subsets (mean of 20). Also: how many of the training images
`assign` puts back in their run cluster.

    nice python benchmarks/bench_assign.py [--defaults]

``--defaults``: the run at the folder's own defaults (what a user gets: k, rounds and passes from
the number of images) instead of the fixed k = 10 run. ``--characters``: at those defaults on a
folder of 20,000 rendered characters (2,000 per class), 2,000 more held back, where the 256-d
whitening is fitted on many more rows than it has dimensions (whitening_gap.py).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _report import ROOT, environment, write_results, write_section

sys.path.insert(0, str(ROOT / "tests"))
from results_helpers import digit_folder  # noqa: E402

import dcx  # noqa: E402
from dcx.algorithms.metrics import nmi  # noqa: E402

SEEDS = (0, 1, 2)
CHARACTERS = "--characters" in sys.argv
DEFAULTS = "--defaults" in sys.argv or CHARACTERS
CONFIG = dict(clusterer="kmeans", backbone="alexnet", dataset="imagefolder", probe=False) if DEFAULTS else \
    dict(clusterer="kmeans", backbone="alexnet", dataset="imagefolder", k=10, epochs=5, passes=2, image_size=32,
         width=0.25, probe=False)


def labels_of(result, folder: Path) -> np.ndarray:
    """Each assigned image's class: its folder name."""
    return np.array([int(p.split("/")[0]) for p in result.paths()])


def character_folders(tmp: Path) -> tuple[Path, Path]:
    """2,200 rendered characters per digit, 2,000 of each class to a training folder and 200 held back."""
    from dcx.datasets.characters import write_folder

    write_folder(tmp / "all", per_class=2200, size=28, seed=0)
    rng = np.random.default_rng(0)
    for cls in sorted(p for p in (tmp / "all").iterdir() if p.is_dir()):
        files = sorted(cls.glob("*.png"))
        for i, j in enumerate(rng.permutation(len(files))):
            dest = tmp / ("train" if i < 2000 else "held") / cls.name / files[j].name
            dest.parent.mkdir(parents=True, exist_ok=True)
            files[j].rename(dest)
    return tmp / "train", tmp / "held"


def main() -> None:
    rows = []
    with tempfile.TemporaryDirectory(prefix="dcx-bench-assign-") as tmp:
        tmp = Path(tmp)
        if CHARACTERS:
            train_dir, held_dir = character_folders(tmp)
        else:
            order = np.random.default_rng(0).permutation(1797)
            train_dir = digit_folder(tmp / "train", indices=sorted(order[:1200]))
            held_dir = digit_folder(tmp / "held", indices=sorted(order[1200:]))
        n_train, n_held = (sum(1 for _ in d.rglob("*.png")) for d in (train_dir, held_dir))
        for seed in SEEDS:
            t = time.perf_counter()
            run = dcx.train({**CONFIG, "seed": seed, "data_root": str(train_dir)}, tmp / f"run{seed}")
            own = run.assign()
            truth_train = labels_of(own, train_dir)
            final = np.load(run.path / "assignments.npy")
            held = run.assign(held_dir)
            rng = np.random.default_rng(seed)
            subsets = [rng.choice(len(own.index), n_held, replace=False) for _ in range(20)]
            rows.append({"seed": seed, "k": run.config.k, "nmi_train": nmi(truth_train, final[own.index]),
                         "nmi_train_597": float(np.mean([nmi(truth_train[s], final[own.index][s]) for s in subsets])),
                         "nmi_held": nmi(labels_of(held, held_dir), held.labels),
                         "reproduced": float(np.mean(own.labels == final[own.index])),
                         "seconds": time.perf_counter() - t})
            print(json.dumps(rows[-1]))
    diffs = [r["nmi_held"] - r["nmi_train"] for r in rows]
    result = {**environment(), "config": CONFIG, "train_images": n_train, "held_images": n_held, "runs": rows,
              "mean_nmi_train": float(np.mean([r["nmi_train"] for r in rows])),
              "mean_nmi_held": float(np.mean([r["nmi_held"] for r in rows])),
              "mean_nmi_train_597": float(np.mean([r["nmi_train_597"] for r in rows])),
              "mean_difference": float(np.mean(diffs)), "max_abs_difference": float(np.max(np.abs(diffs)))}
    write_results("assign-characters" if CHARACTERS else "assign-defaults" if DEFAULTS else "assign", result)
    table = "\n".join(f"| {r['seed']} | {r['nmi_train']:.3f} | {r['nmi_train_597']:.3f} | {r['nmi_held']:.3f} | "
                      f"{r['nmi_held'] - r['nmi_train']:+.3f} | {r['reproduced']:.1%} |" for r in rows)
    what = ("k-means + AlexNet at the folder's own defaults (`bench_assign.py --characters`)" if CHARACTERS else
            "k-means + AlexNet at the folder's own defaults (`bench_assign.py --defaults`)" if DEFAULTS else
            "k-means (k = 10) + AlexNet (width 0.25, 32 px, 5 epochs x 2 passes)")
    title = ("Assigning held-back images: 20,000 characters" if CHARACTERS else
             "Assigning held-back images at the folder's defaults" if DEFAULTS else "Assigning held-back images (dcx assign)")
    write_section(title, f"""
`benchmarks/bench_assign.py` ({result['when']}, {result['machine']}): {what} trained on a folder of
{n_train:,} {"rendered characters" if CHARACTERS else "digits drawn at random"};
`dcx assign` then puts {n_held:,} others (a second folder) into the run's last clustering through its
saved PCA-whitening + L2 and centroids. NMI to the labels (target: held-back within 0.02 of
training; NMI rises as the sample shrinks, hence the column on {n_held}-image subsets of the training images):

| seed | NMI training images (run's final clusters) | same, {n_held}-image subsets | NMI held-back images (assign) | held-back minus training | training images reassigned to their run cluster |
|---:|---:|---:|---:|---:|---:|
{table}
| mean | {result['mean_nmi_train']:.3f} | {result['mean_nmi_train_597']:.3f} | {result['mean_nmi_held']:.3f} | {result['mean_difference']:+.3f} | |
""")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
