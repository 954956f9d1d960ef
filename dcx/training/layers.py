"""Which layer of a network, and how its output becomes one row per image: the blocks named by
the backbone plus ``features`` (the network's output), average-pooled to at most MAX_DIMS. The
probe, ``dcx eval`` and ``dcx embed`` read layers the same way."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from torch import nn

from dcx.core.backbone_net import BackboneNet
from dcx.core.errors import InputError
from dcx.training.network import FeatureNet

#: The model's output (what the engine clusters; AlexNet/VGG: fc7 before ReLU), after the blocks.
FEATURES = "features"
#: Block outputs are average-pooled to at most this many dims (paper: ~9-10k per conv layer).
MAX_DIMS = 9216


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


class PooledLayers(nn.Module):
    """Forward returning the chosen blocks (average-pooled, flattened) concatenated in one row."""

    def __init__(self, model: FeatureNet, layers: Sequence[str], sides: dict[str, int | None]) -> None:
        super().__init__()
        self.model, self.layers, self.sides = model, list(layers), sides

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        blocks = [n for n in self.layers if n != FEATURES]
        if FEATURES in self.layers and _neck_follows_blocks(self.model):
            # One pass: the features are the neck of the last block, not a second forward.
            last = self.model.block_names[-1]
            out = self.model.forward_blocks(x, [*blocks, last])
            out[FEATURES] = self.model.net.neck(out[last].clone() if last in blocks else out.pop(last))
        else:
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


def _neck_follows_blocks(model: nn.Module) -> bool:
    """Whether ``model``'s features are its neck applied to its last block (BackboneNet's own
    ``forward``, not overridden by the plugin), so that one pass gives blocks and features."""
    net = getattr(model, "net", None)
    return (isinstance(model, FeatureNet) and isinstance(net, BackboneNet)
            and type(net).forward is BackboneNet.forward and type(net).forward_blocks is BackboneNet.forward_blocks)


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


def pooled_layer(model: FeatureNet, layer: str, image_size: int, channels: int, device: torch.device,
                 max_dims: int = MAX_DIMS) -> tuple[PooledLayers, int]:
    """One layer's forward, pooled as the probe and ``dcx eval`` pool it, and its number of dims."""
    (layer,) = layer_names(model, [layer])  # one name, never "all"
    sides, dims = pooling_plan(layer_shapes(model, [layer], image_size, channels, device), max_dims)
    return PooledLayers(model, [layer], sides), dims[layer]


def pooling_plan(shapes: dict[str, tuple[int, ...]], max_dims: int = MAX_DIMS) -> tuple[dict, dict[str, int]]:
    """Per layer: the pooled side (None: kept as is) and the resulting number of dims."""
    sides = {n: pooled_side(*s, max_dims) if len(s) == 3 else None for n, s in shapes.items()}
    dims = {n: int(np.prod(s)) if sides[n] is None else s[0] * sides[n] ** 2 for n, s in shapes.items()}
    return sides, dims
