"""Per-block features of a frozen network: average-pooled to at most MAX_DIMS, extracted in one pass
per group of layers that fits the memory budget."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from dcx import data as D
from dcx.evaluation.data import EvalData
from dcx.algorithms.arrays import check_finite
from dcx.training.environment import prefers_channels_last
from dcx.training.extraction import extract
from dcx.training.layers import MAX_DIMS, PooledLayers, layer_shapes, pooling_plan
from dcx.training.network import FeatureNet
from dcx.core.progress import NullProgress, Progress

#: Extract at most this many bytes of pooled features per pass; more layers -> more passes.
MEMORY_BUDGET = 2 * 1024**3


def extract_layers(
    model: FeatureNet, data: EvalData, layers: Sequence[str], image_size: int, device: torch.device,
    batch_size: int = 256, workers: int = 0, progress: Progress | None = None, desc: str = "extract",
    max_dims: int = MAX_DIMS,
) -> dict[str, np.ndarray]:
    """Pooled features of every layer for all of ``data``'s images, in one pass (engine's ``extract``);
    inputs in channels_last where the device's convolutions prefer it, as in training (D59)."""
    progress = progress or NullProgress()
    sides, dims = pooling_plan(layer_shapes(model, layers, image_size, data.images.channels, device), max_dims)
    images = decoded(data, image_size, workers, progress)
    batches = images.extraction(range(len(images)), batch_size)
    pooled = PooledLayers(model, layers, sides)
    if prefers_channels_last(device):
        forward = lambda x: pooled(x.contiguous(memory_format=torch.channels_last))  # noqa: E731
    else:
        forward = pooled
    with progress.task(desc, len(images)) as advance:
        flat = extract(model, batches, len(images), device, forward=forward, on_batch=advance)
    check_finite(flat, f"{desc} features")
    out, pos = {}, 0
    for n in layers:
        out[n] = flat[:, pos : pos + dims[n]]
        pos += dims[n]
    return out


def decoded(data: EvalData, image_size: int, workers: int = 0, progress: Progress | None = None) -> D.DecodedImages:
    """``data``'s images decoded once at ``image_size`` for every pass over them (both networks, every
    group of layers): the same pixels as the eval transform of each image (``D.DecodedImages``)."""
    if image_size not in data.decoded:
        data.decoded[image_size] = D.DecodedImages(data.images, image_size, workers, progress=progress)
    return data.decoded[image_size]


def layer_groups(dims: dict[str, int], n: int, budget: int = MEMORY_BUDGET) -> list[list[str]]:
    """Layers grouped so that one group's float32 features for ``n`` images fit in ``budget`` bytes."""
    groups: list[list[str]] = [[]]
    used = 0
    for name, d in dims.items():
        size = 4 * n * d
        if groups[-1] and used + size > budget:
            groups.append([])
            used = 0
        groups[-1].append(name)
        used += size
    return groups
