"""Are the bundled datasets learnable but not trivial? k-means(#classes) NMI on raw pixels.

For every dataset: k-means with k = number of classes on the raw pixels of the train split
(L2-normalised, mean of 5 seeds) and the accuracy of a 1-nearest-neighbour classifier from train
to test on raw pixels (an upper-ish reference: how separable the classes are before learning).
The random-init network numbers come from ``dcx eval --random --backbone alexnet --dataset NAME
--protocol cluster,knn``; docs/datasets.md lists both.

    python benchmarks/dataset_sanity.py [--datasets textures,photos,characters,digits] [--random-init]

``--random-init`` also runs that ``dcx eval --random`` per dataset (a minute or two each on 2
cores) and adds its k-means NMI (L2, mean of 5 seeds) and kNN-20 top-1 per block; the network has
each dataset's Sobel setting (photos: none since v29), ``--sobel`` puts the layer on
every one (how docs/datasets.md's table was made).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from sklearn.cluster import KMeans
from sklearn.metrics import normalized_mutual_info_score
from sklearn.neighbors import KNeighborsClassifier

from dcx.core.registry import Registry


def pixels(images) -> np.ndarray:
    x = np.stack([np.asarray(images.images[i], dtype=np.float32).ravel() for i in range(len(images))])
    x -= x.mean(axis=1, keepdims=True)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-6)


def random_init(name: str, sobel: bool = False) -> str:
    """k-means(#classes) NMI after L2 and kNN-20 top-1 per block of a random-init AlexNet (with the
    Sobel layer when ``sobel``, else the dataset's setting)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "eval.json"
        subprocess.run(
            [sys.executable, "-m", "dcx", "eval", "--random", "--backbone", "alexnet", "--dataset", name,
             "--protocol", "cluster,knn", "--out", str(out), "--quiet", *(["--sobel"] if sobel else [])],
            check=True, stdout=subprocess.DEVNULL,
        )
        result = json.loads(out.read_text())["random"]
    cells = [
        f"{block} {result['cluster'][block]['l2']['nmi']:.3f} / {result['knn'][block]['top1_k20']:.3f}"
        for block in result["cluster"]
    ]
    return "; ".join(cells)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--datasets", default="textures,photos,characters,digits")
    parser.add_argument("--random-init", action="store_true", help="also run dcx eval --random per dataset")
    parser.add_argument("--sobel", action="store_true", help="--random-init with the Sobel layer on every dataset")
    args = parser.parse_args()
    registry = Registry()
    print("| dataset | train / test | classes | load s | raw k-means NMI (5 seeds) | raw 1-NN acc |")
    print("|---|---|---|---|---|---|")
    for name in args.datasets.split(","):
        ds = registry.create("dataset", name, {})
        t = time.perf_counter()
        train = ds.load(None, ds.splits()[0])
        test = ds.load(None, "test") if "test" in ds.splits() else None
        seconds = time.perf_counter() - t
        x, y = pixels(train), train.labels
        k = train.num_classes
        scores = [normalized_mutual_info_score(y, KMeans(k, n_init=1, random_state=s).fit_predict(x)) for s in range(5)]
        if test is not None:
            acc = KNeighborsClassifier(1).fit(x, y).score(pixels(test), test.labels)
            sizes = f"{len(train)} / {len(test)}"
        else:  # digits: seeded 70/30 split
            order = np.random.default_rng(0).permutation(len(y))
            cut = int(0.7 * len(y))
            acc = KNeighborsClassifier(1).fit(x[order[:cut]], y[order[:cut]]).score(x[order[cut:]], y[order[cut:]])
            sizes = f"{len(train)} (70/30)"
        print(f"| {name} | {sizes} | {k} | {seconds:.1f} | {np.mean(scores):.3f} ± {np.std(scores):.3f} | {acc:.3f} |")
        if args.random_init:
            print(f"|  random-init AlexNet, k-means NMI (L2) / kNN-20 per block: {random_init(name, args.sobel)} |||||")


if __name__ == "__main__":
    main()
