"""VGG-16 with BatchNorm (torchvision's layer configuration), features = fc7 before its ReLU."""

from __future__ import annotations

from torch import nn
from torchvision.models import vgg as tv_vgg

from dcx.core.contracts import Backbone, BackboneNet
from dcx.core.backbone_net import default_dropout
from dcx.core.options import Option


class VGG16(Backbone):
    """torchvision's VGG-16-BN conv stages as blocks conv1..conv5, then fc6/fc7.

    Inputs below 64 px pool to 1x1 before fc6 (7x7 at full size), so a 32-px image does not feed
    a 25,088-wide fc6 with replicated values; ``width`` scales channels and fc size.
    """

    name = "vgg16"
    dcx_api = "3.0"
    sobel_default = True
    options = (
        Option("fc_dim", int, None, "size of fc6/fc7 (default 4096 x width)", nullable=True, min=16),
        Option("dropout", float, None, "dropout after fc6 (default: 0.5 at width >= 1 as the paper, else 0)",
               nullable=True, min=0.0, max=0.9),
    )

    def build(self, in_channels: int, image_size: int, width: float = 1.0) -> BackboneNet:
        cfg = tv_vgg.cfgs["D"]
        blocks, stage, c_in = [], [], in_channels
        for v in cfg:
            if v == "M":
                stage.append(nn.MaxPool2d(2, 2))
                blocks.append((f"conv{len(blocks) + 1}", nn.Sequential(*stage)))
                stage = []
                continue
            c = max(8, int(round(v * width)))
            stage += [nn.Conv2d(c_in, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
            c_in = c
        side = 1 if image_size < 64 else 7
        fc = self.params["fc_dim"] or max(64, int(round(4096 * width)))
        drop = default_dropout(width) if self.params["dropout"] is None else self.params["dropout"]
        neck = nn.Sequential(
            nn.AdaptiveAvgPool2d(side), nn.Flatten(),
            nn.Linear(c_in * side * side, fc), nn.ReLU(inplace=True), nn.Dropout(drop),
            nn.Linear(fc, fc),  # fc7 before ReLU: the classifier head applies it
        )
        net = BackboneNet(blocks, neck, fc, relu_head=True)
        for m in net.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                # N(0, 0.01) at full size; narrower nets keep the same per-layer gain (see alexnet._init).
                reference = 512 * 7 * 7 if m is neck[2] else 4096
                nn.init.normal_(m.weight, 0, 0.01 * (reference / m.in_features) ** 0.5)
                nn.init.zeros_(m.bias)
        return net
