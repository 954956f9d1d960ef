"""Per-block features of a frozen network: average-pooled to at most MAX_DIMS, extracted in one pass
per group of layers that fits the memory budget."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from torch import nn

from dcx.core import data as D
from dcx.core.errors import InputError
from dcx.core.evaluate.data import EvalData
from dcx.core.features import check_finite, extract
from dcx.core.network import FeatureNet
from dcx.core.progress import NullProgress, Progress

#: The model's output (what the engine clusters; AlexNet/VGG: fc7 before ReLU), after the blocks.
FEATURES = "features"
#: Block outputs are average-pooled to at most this many dims (paper: ~9-10k per conv layer).
MAX_DIMS = 9216
#: Extract at most this many bytes of pooled features per pass; more layers -> more passes.
MEMORY_BUDGET = 2 * 1024**3


def pooled_side(channels: int, height: int, width: int, max_dims: int = MAX_DIMS) -> int | None:
    """Side of the adaptive average pooling bringing C x H x W to <= ``max_dims`` (None: keep as is)."""
    if channels * height * width <= max_dims:
        return None
    side = int(math.floor(math.sqrt(max_dims / channels)))
    return max(1, min(side, height, width))


def layer_names(model: FeatureNet, layers: Sequence[str] | str | None) -> list[str]:
    """Resolve ``layers`` ('all', None or names) to the model's block names (+ 'features')."""
    known = list(model.block_names) + [FEATURES]
    if layers is None or layers == "all" or list(layers) == ["all"]:
        return known
    names = [layers] if isinstance(layers, str) else list(layers)
    bad = [n for n in names if n not in known]
    if bad:
        raise InputError(f"unknown layer(s) {', '.join(bad)}: this network has {', '.join(known)} (or all)")
    return [n for n in known if n in names]  # network order


class _Pooled(nn.Module):
    """Forward returning the chosen blocks (average-pooled, flattened) concatenated in one row."""

    def __init__(self, model: FeatureNet, layers: Sequence[str], sides: dict[str, int | None]) -> None:
        super().__init__()
        self.model, self.layers, self.sides = model, list(layers), sides

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        blocks = [n for n in self.layers if n != FEATURES]
        out = self.model.forward_blocks(x, blocks) if blocks else {}
        if FEATURES in self.layers:
            out[FEATURES] = self.model(x)
        parts = []
        for name in self.layers:
            y = out[name]
            side = self.sides.get(name)
            if side is not None and y.ndim == 4:
                y = nn.functional.adaptive_avg_pool2d(y, side)
            parts.append(y.reshape(len(y), -1))
        return torch.cat(parts, 1)


@torch.no_grad()
def layer_shapes(model: FeatureNet, layers: Sequence[str], image_size: int, channels: int, device: torch.device) -> dict[str, tuple[int, ...]]:
    """Output shape (without batch) of each layer for one input of the network's size."""
    was = model.training
    model.eval()
    try:
        x = torch.zeros(1, channels, image_size, image_size, device=device)
        out = model.forward_blocks(x, [n for n in layers if n != FEATURES])
        if FEATURES in layers:
            out[FEATURES] = model(x)
    finally:
        model.train(was)
    return {n: tuple(out[n].shape[1:]) for n in layers}


def extract_layers(
    model: FeatureNet, data: EvalData, layers: Sequence[str], image_size: int, device: torch.device,
    batch_size: int = 256, workers: int = 0, progress: Progress | None = None, desc: str = "extract",
    max_dims: int = MAX_DIMS,
) -> dict[str, np.ndarray]:
    """Pooled features of every layer for all of ``data``'s images, in one pass (engine's ``extract``)."""
    progress = progress or NullProgress()
    sides, dims = pooling_plan(layer_shapes(model, layers, image_size, data.images.channels, device), max_dims)
    dataset = D.IndexedImages(data.images, D.eval_transform(image_size, data.images.channels), blank=image_size)
    batches = D.loader(dataset, batch_size, workers)
    with progress.task(desc, len(dataset)) as advance:
        flat = extract(model, batches, len(dataset), device, forward=_Pooled(model, layers, sides), on_batch=advance)
    check_finite(flat, f"{desc} features")
    out, pos = {}, 0
    for n in layers:
        out[n] = flat[:, pos : pos + dims[n]]
        pos += dims[n]
    return out


def pooling_plan(shapes: dict[str, tuple[int, ...]], max_dims: int = MAX_DIMS) -> tuple[dict, dict[str, int]]:
    """Per layer: the pooled side (None: kept as is) and the resulting number of dims."""
    sides = {n: pooled_side(*s, max_dims) if len(s) == 3 else None for n, s in shapes.items()}
    dims = {n: int(np.prod(s)) if sides[n] is None else s[0] * sides[n] ** 2 for n, s in shapes.items()}
    return sides, dims


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
