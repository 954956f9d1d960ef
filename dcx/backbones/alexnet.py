"""AlexNet as trained by DeepCluster: BatchNorm after each conv, features = fc7 before its ReLU."""

from __future__ import annotations

from torch import nn

from dcx.core.contracts import Backbone, BackboneNet
from dcx.core.backbone_net import default_dropout
from dcx.core.options import Option

# (out channels, kernel, stride, padding, max-pool after) - DeepCluster's AlexNet cfg (96 filters in conv1).
_CFG = [(96, 11, 4, 2, True), (256, 5, 1, 2, True), (384, 3, 1, 1, False), (384, 3, 1, 1, False), (256, 3, 1, 1, True)]
#: Below this input side, conv1 becomes 5x5 stride 1 (an 11x11/4 stem leaves nothing of a 32-px image).
SMALL_INPUT = 64


class AlexNet(Backbone):
    """conv1..conv5 blocks, then two 4096-d fully connected layers (dropout 0.5, as the paper).

    For inputs smaller than 64 px the stem is 5x5 stride 1 and the last pooling is adaptive to
    3x3 (6x6 at full size); ``width`` scales conv channels and the fc size together.
    """

    name = "alexnet"
    dcx_api = "3.0"
    sobel_default = True
    options = (
        Option("fc_dim", int, None, "size of fc6/fc7 (default 4096 x width)", nullable=True, min=16),
        Option("dropout", float, None, "dropout before fc6 and fc7 (default: 0.5 at width >= 1 as the paper, else 0)",
               nullable=True, min=0.0, max=0.9),
    )

    def build(self, in_channels: int, image_size: int, width: float = 1.0) -> BackboneNet:
        small = image_size < SMALL_INPUT
        blocks = []
        c_in = in_channels
        for i, (c, k, s, p, pool) in enumerate(_CFG):
            c = max(8, int(round(c * width)))
            if i == 0 and small:
                k, s, p = 5, 1, 2
            layers = [nn.Conv2d(c_in, c, k, s, p), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
            if pool:
                layers.append(nn.MaxPool2d(3, 2))
            blocks.append((f"conv{i + 1}", nn.Sequential(*layers)))
            c_in = c
        side = 3 if small else 6
        fc = self.params["fc_dim"] or max(64, int(round(4096 * width)))
        drop = default_dropout(width) if self.params["dropout"] is None else self.params["dropout"]
        neck = nn.Sequential(
            nn.AdaptiveAvgPool2d(side),
            nn.Flatten(),
            nn.Dropout(drop),
            nn.Linear(c_in * side * side, fc),
            nn.ReLU(inplace=True),
            nn.Dropout(drop),
            nn.Linear(fc, fc),  # fc7; its ReLU is applied by the classifier head, not here
        )
        net = BackboneNet(blocks, neck, fc, relu_head=True)
        _init(net, reference_fan_in={neck[3]: 256 * 6 * 6, neck[6]: 4096})
        return net


def _init(net: nn.Module, reference_fan_in: dict[nn.Module, int]) -> None:
    """Reference initialisation: conv N(0, sqrt(2/n)), BN (1, 0), linear N(0, 0.01) at full size.

    Narrower or smaller-input nets scale the linear std by sqrt(reference fan-in / fan-in), so
    each layer keeps the reference's gain: a plain 0.01 at width 0.25 shrinks fc7 ~4x and the
    loss sits at ln k through the first epoch (docs/decisions.md D50).
    """
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01 * (reference_fan_in[m] / m.in_features) ** 0.5)
            nn.init.zeros_(m.bias)
