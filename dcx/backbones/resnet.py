"""ResNet-18/50 from torchvision, random init, with a CIFAR-style stem for small inputs."""

from __future__ import annotations

from torch import nn
from torchvision.models import resnet as tv_resnet

from dcx.core.contracts import Backbone, BackboneNet

#: Below this input side the stem is a 3x3 stride-1 conv without max-pool (as for CIFAR in
#: SwAV/solo-learn): the ImageNet 7x7/2 + pool stem reduces a 32-px image to 8 px at once.
SMALL_INPUT = 64


def _build(block: type, layers: list[int], in_channels: int, image_size: int, width: float) -> BackboneNet:
    planes = [max(8, int(round(p * width))) for p in (64, 128, 256, 512)]
    m = tv_resnet.ResNet(block, layers)
    m.inplanes = planes[0]
    if image_size < SMALL_INPUT:
        m.conv1 = nn.Conv2d(in_channels, planes[0], 3, 1, 1, bias=False)
        m.maxpool = nn.Identity()
    else:
        m.conv1 = nn.Conv2d(in_channels, planes[0], 7, 2, 3, bias=False)
    m.bn1 = nn.BatchNorm2d(planes[0])
    m.layer1 = m._make_layer(block, planes[0], layers[0])
    m.layer2 = m._make_layer(block, planes[1], layers[1], stride=2)
    m.layer3 = m._make_layer(block, planes[2], layers[2], stride=2)
    m.layer4 = m._make_layer(block, planes[3], layers[3], stride=2)
    for mod in m.modules():  # torchvision's init, redone for the rebuilt layers
        if isinstance(mod, nn.Conv2d):
            nn.init.kaiming_normal_(mod.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(mod, nn.BatchNorm2d):
            nn.init.ones_(mod.weight)
            nn.init.zeros_(mod.bias)
    blocks = [
        ("conv1", nn.Sequential(m.conv1, m.bn1, m.relu, m.maxpool)),
        ("layer1", m.layer1), ("layer2", m.layer2), ("layer3", m.layer3), ("layer4", m.layer4),
    ]
    neck = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return BackboneNet(blocks, neck, planes[3] * block.expansion)


class ResNet18(Backbone):
    """ResNet-18; features = global-average-pooled layer4 (512 x width)."""

    name = "resnet18"
    dcx_api = "3.0"

    def build(self, in_channels: int, image_size: int, width: float = 1.0) -> BackboneNet:
        return _build(tv_resnet.BasicBlock, [2, 2, 2, 2], in_channels, image_size, width)


class ResNet50(Backbone):
    """ResNet-50; features = global-average-pooled layer4 (2048 x width)."""

    name = "resnet50"
    dcx_api = "3.0"

    def build(self, in_channels: int, image_size: int, width: float = 1.0) -> BackboneNet:
        return _build(tv_resnet.Bottleneck, [3, 4, 6, 3], in_channels, image_size, width)
