"""What the results commands read: a run's trained network, the images to run it on (a folder or
a dataset plugin, read as the run read its own), and one layer's rows streamed batch by batch."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from dcx import data as D
from dcx.core.contracts import ImageSet
from dcx.core.errors import InputError
from dcx.evaluation.runs import TrainedNetwork
from dcx.training.extraction import extract
from dcx.training.layers import FEATURES, pooled_layer
from dcx.core.progress import NullProgress, Progress
from dcx.core.registry import Registry
from dcx.training.setup import train_split


def load_images(trained: TrainedNetwork, data_root: str | Path | None = None, dataset: str | None = None,
                options: dict[str, Any] | None = None, split: str | None = None) -> ImageSet:
    """The images of ``data_root`` (a folder: ``imagefolder``) or of ``dataset``; by default the
    run's own training images. A folder is read with the run's channels (gray or colour)."""
    cfg = trained.setup.config
    if dataset is None:
        dataset = "imagefolder" if data_root is not None else cfg.dataset
    own = dataset == cfg.dataset and data_root is None
    opts = dict(cfg.options.get(dataset, {})) if own or dataset == cfg.dataset else {}
    if dataset == "imagefolder":
        opts.setdefault("grayscale", trained.channels == 1)
    opts.update(options or {})
    plugin = Registry().create("dataset", dataset, opts)
    root = cfg.data_root if own else data_root
    images = plugin.load(Path(root) if root is not None else None, split or train_split(plugin), cfg.download)
    if images.channels != trained.channels:
        raise InputError(f"the run's network takes {trained.channels}-channel images and {dataset} gives "
                         f"{images.channels}: pass a dataset of the run's kind of images")
    return images


def layer_forward(trained: TrainedNetwork, layer: str = FEATURES) -> tuple[torch.nn.Module, int]:
    """One layer's forward, pooled as ``dcx eval`` pools it, and its number of dims (InputError
    naming the network's layers when ``layer`` is not one of them)."""
    cfg = trained.setup.config
    return pooled_layer(trained.learned, layer, cfg.image_size, trained.channels, trained.setup.device)


def stream_rows(trained: TrainedNetwork, images: ImageSet, forward: Callable | None = None,
                batch_size: int = 256, workers: int | None = None, progress: Progress | None = None,
                desc: str = "embed") -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(rows, indices, indices that failed to decode) per batch, in dataset order; unreadable
    images are left out of ``rows`` (and logged), as training skips them."""
    cfg = trained.setup.config
    progress = progress or NullProgress()
    dataset = D.IndexedImages(images, D.eval_transform(cfg.image_size, images.channels))
    workers = cfg.workers if workers is None else workers
    device = trained.setup.device
    batches = D.loader(dataset, batch_size, workers, pin_memory=device.type == "cuda")
    with progress.task(desc, len(dataset)) as advance:
        for x, idx, failed in batches:
            rows = np.empty((0, 0), np.float32)
            if x is not None:
                rows = extract(trained.learned, [x], len(x), device, forward=forward)
            advance(len(idx) + len(failed))
            yield rows, idx.numpy(), failed.numpy()
