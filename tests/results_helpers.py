"""Tiny trained runs and image folders shared by the tests of dcx.results (export, embed, assign, gallery)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from dcx.core.config import RunConfig


def digit_folder(root: Path, n: int = 300, start: int = 0, indices=None) -> Path:
    """sklearn's digits ``start..start+n`` (or ``indices``) as 8x8 PNGs in class sub-folders (a
    labelled image folder)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    pixels = np.clip(bunch.images * (255.0 / 16.0), 0, 255).astype(np.uint8)
    for i in (range(start, start + n) if indices is None else indices):
        path = Path(root) / str(bunch.target[i]) / f"{i:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels[i], mode="L").save(path)
    return Path(root)


def folder_config(root: Path, clusterer: str = "kmeans", **changes) -> RunConfig:
    """A run of a few seconds on a digit folder: a narrow AlexNet, 2 epochs, 20 clusters."""
    settings = dict(clusterer=clusterer, backbone="alexnet", dataset="imagefolder", data_root=str(root), k=20,
                    epochs=2, passes=1, batch_size=32, image_size=32, width=0.125, seed=0, probe=False,
                    options={"alexnet": {"fc_dim": 64}})
    settings.update(changes)
    return RunConfig(**settings)


def train(config: RunConfig, out: Path) -> Path:
    from dcx.api import train as api_train

    return api_train(config, out).path
