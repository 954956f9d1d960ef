"""BackboneNet: the network contract of backbone plugins (re-exported by ``dcx.core.contracts``)."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


class BackboneNet(nn.Module):
    """A network split into named blocks run in order, then a neck giving the feature vector.

    ``forward`` returns (B, feature_dim) features (for AlexNet/VGG: fc7 without its last ReLU).
    ``forward_blocks`` returns the outputs of the named blocks, for per-layer evaluation.
    """

    def __init__(
        self, blocks: Sequence[tuple[str, nn.Module]], neck: nn.Module, feature_dim: int, relu_head: bool = False
    ) -> None:
        super().__init__()
        self.block_names = tuple(name for name, _ in blocks)
        self.blocks = nn.ModuleDict(dict(blocks))
        self.neck = neck
        self.feature_dim = int(feature_dim)
        #: The features are a pre-activation (fc7 before ReLU): the classifier head applies ReLU.
        self.relu_head = relu_head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks.values():
            x = block(x)
        return self.neck(x)

    def forward_blocks(self, x: torch.Tensor, names: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        wanted = set(self.block_names if names is None else names)
        out = {}
        for name, block in self.blocks.items():
            x = block(x)
            if name in wanted:
                out[name] = x
            if len(out) == len(wanted):
                break
        return out


def default_dropout(width: float) -> float:
    """The paper's 0.5 for full-width fc layers; none for narrow ones, where it drowned the signal
    (docs/decisions.md D16)."""
    return 0.5 if width >= 1.0 else 0.0
