"""The trained network: an optional fixed Sobel input layer in front of a backbone."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from dcx.core.contracts import Backbone, BackboneNet


class Sobel(nn.Module):
    """Fixed input layer of the paper: grayscale, then horizontal and vertical Sobel filters.

    RGB -> gray with equal weights (reference ``grayscale`` conv), then the 2 Sobel kernels;
    the network sees 2 channels of edges instead of colour. No trainable parameters.
    """

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        gray = torch.full((1, in_channels, 1, 1), 1.0 / in_channels)
        kx = torch.tensor([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]])
        self.register_buffer("gray", gray)
        self.register_buffer("kernels", torch.stack([kx, kx.T])[:, None])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.conv2d(x, self.gray)
        return nn.functional.conv2d(x, self.kernels, padding=1)


class FeatureNet(nn.Module):
    """Input layer (Sobel or identity) + BackboneNet; the module the engine trains and saves."""

    def __init__(self, net: BackboneNet, sobel: bool, in_channels: int) -> None:
        super().__init__()
        self.input = Sobel(in_channels) if sobel else nn.Identity()
        self.net = net

    @property
    def feature_dim(self) -> int:
        return self.net.feature_dim

    @property
    def block_names(self) -> tuple[str, ...]:
        return self.net.block_names

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.input(x))

    def forward_blocks(self, x: torch.Tensor, names: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        return self.net.forward_blocks(self.input(x), names)


def build_network(backbone: Backbone, in_channels: int, image_size: int, width: float, sobel: bool) -> FeatureNet:
    """Instantiate the backbone for these inputs, with the Sobel layer when asked."""
    net = backbone.build(2 if sobel else in_channels, image_size, width)
    return FeatureNet(net, sobel, in_channels)
