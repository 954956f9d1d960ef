"""DeepCluster's classifier heads (served by ``dcx.core.contracts``): one fresh linear layer per
clustering, initialised as the reference's top layer."""

from __future__ import annotations

import torch
from torch import nn


def linear_head(feature_dim: int, n_outputs: int, preactivation: bool = False) -> nn.Module:
    """DeepCluster's top layer: Linear with weights N(0, 0.01) and zero bias (reference init),
    after a ReLU when the features are a pre-activation. Draws from torch's global RNG."""
    from torch import nn

    linear = nn.Linear(feature_dim, n_outputs)
    nn.init.normal_(linear.weight, 0.0, 0.01)
    nn.init.zeros_(linear.bias)
    return nn.Sequential(nn.ReLU(), linear) if preactivation else nn.Sequential(linear)


def linear_heads(feature_dim: int, n_outputs: int, heads: int, preactivation: bool = False) -> nn.Module:
    """``heads`` independent DeepCluster top layers in one Linear: output (B, n_outputs, heads), the
    layout cross-entropy takes for (B, heads) targets. Same init as ``linear_head``."""
    from torch import nn

    class Heads(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.relu = nn.ReLU() if preactivation else nn.Identity()
            self.linear = nn.Linear(feature_dim, n_outputs * heads)
            nn.init.normal_(self.linear.weight, 0.0, 0.01)
            nn.init.zeros_(self.linear.bias)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.linear(self.relu(x)).view(len(x), heads, n_outputs).transpose(1, 2)

    return Heads()
