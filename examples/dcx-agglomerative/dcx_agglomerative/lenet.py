"""LeNet-5 (LeCun et al. 1998) as a dcx backbone, with BatchNorm and a width multiplier."""

from __future__ import annotations

from torch import nn

from dcx.core.contracts import Backbone, BackboneNet
from dcx.core.options import Option


class LeNet(Backbone):
    """conv1, conv2 (5x5 conv, BatchNorm, ReLU, 2x2 max-pool), then two fully connected layers.

    An adaptive 4x4 pooling before the first fully connected layer makes it accept any side
    from ``min_image_size`` up (LeNet-5 itself takes 32 px).
    """

    name = "lenet"
    dcx_api = "3.0"  # the contract this was written for: another major version will not load it
    min_image_size = 16
    options = (
        Option("channels", int, 32, "channels of conv1 at width 1 (conv2 has twice as many)", min=4),
        Option("fc_dim", int, 256, "size of the fully connected layers (the features)", min=8),
    )

    def build(self, in_channels: int, image_size: int, width: float = 1.0) -> BackboneNet:
        c1 = max(4, round(self.params["channels"] * width))
        c2 = 2 * c1
        fc = self.params["fc_dim"]
        blocks = [
            ("conv1", nn.Sequential(nn.Conv2d(in_channels, c1, 5, padding=2), nn.BatchNorm2d(c1), nn.ReLU(inplace=True),
                                    nn.MaxPool2d(2))),
            ("conv2", nn.Sequential(nn.Conv2d(c1, c2, 5, padding=2), nn.BatchNorm2d(c2), nn.ReLU(inplace=True),
                                    nn.MaxPool2d(2))),
        ]
        neck = nn.Sequential(
            nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(c2 * 16, fc), nn.ReLU(inplace=True), nn.Linear(fc, fc),
        )
        # The features are fc2 before a ReLU: the engine's classifier head applies it (relu_head).
        return BackboneNet(blocks, neck, fc, relu_head=True)
