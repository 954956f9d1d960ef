"""Checks of backbones: BackboneNet shape and blocks, smallest input, channels, Sobel, init, gradients.

Networks are built narrow (``WIDTH``) at the smallest side the checks need, on a batch of 2.
"""

from __future__ import annotations

import torch

from dcx.core.contracts import Backbone, BackboneNet
from dcx.training.network import build_network
from dcx.testing.base import PluginUnderTest, check, is_backbone

WIDTH = 0.25
#: Side of the inputs of the checks that are not about the smallest input.
SIDE = 32


def _side(p: PluginUnderTest) -> int:
    return max(SIDE, int(p.cls.min_image_size))


def _build(p: PluginUnderTest, channels: int, side: int, seed: int = 0) -> BackboneNet:
    backbone: Backbone = p.new()
    torch.manual_seed(seed)
    net = backbone.build(channels, side, WIDTH)
    assert isinstance(net, BackboneNet), f"build must return a dcx.core.contracts.BackboneNet, got {type(net).__name__}"
    return net


def _forward(net: torch.nn.Module, channels: int, side: int) -> torch.Tensor:
    net.eval()
    with torch.no_grad():
        out = net(torch.randn(2, channels, side, side, generator=torch.Generator().manual_seed(0)))
    return out


def _assert_features(net: BackboneNet, out: torch.Tensor, what: str) -> None:
    assert tuple(out.shape) == (2, net.feature_dim), (
        f"{what}: forward gave {tuple(out.shape)}, expected (2, feature_dim={net.feature_dim})")
    assert torch.isfinite(out).all(), f"{what}: non-finite features"


@check("build returns a BackboneNet whose forward gives (B, feature_dim) finite features", applies=is_backbone)
def check_backbone_build(p: PluginUnderTest) -> None:
    net = _build(p, 3, _side(p))
    assert isinstance(net.feature_dim, int) and net.feature_dim > 0, f"feature_dim is {net.feature_dim!r}"
    _assert_features(net, _forward(net, 3, _side(p)), f"{_side(p)} px")


@check("the named blocks are non-empty and unique; forward_blocks returns each (or the ones asked), in order",
       applies=is_backbone)
def check_backbone_blocks(p: PluginUnderTest) -> None:
    net = _build(p, 3, _side(p))
    names = list(net.block_names)
    assert names and len(set(names)) == len(names), f"block names {names}"
    x = torch.randn(2, 3, _side(p), _side(p))
    net.eval()
    with torch.no_grad():
        blocks = net.forward_blocks(x)
        assert list(blocks) == names, f"forward_blocks gave {list(blocks)}, expected {names}"
        assert all(isinstance(v, torch.Tensor) and v.shape[0] == 2 for v in blocks.values()), "block outputs must be (B, ...)"
        first = net.forward_blocks(x, names[:1])
    assert list(first) == names[:1], f"forward_blocks(x, {names[:1]}) gave {list(first)}"


@check("the backbone builds and runs at its declared min_image_size", applies=is_backbone)
def check_backbone_min_image_size(p: PluginUnderTest) -> None:
    side = int(p.cls.min_image_size)
    assert side >= 1, f"min_image_size is {side}"
    net = _build(p, 3, side)
    _assert_features(net, _forward(net, 3, side), f"min_image_size {side} px")


@check("the backbone accepts any in_channels (1 for grayscale, 3 for colour)", applies=is_backbone)
def check_backbone_channels(p: PluginUnderTest) -> None:
    for channels in (1, 3):
        net = _build(p, channels, _side(p))
        _assert_features(net, _forward(net, channels, _side(p)), f"{channels} input channel(s)")


@check("the backbone runs with and without the Sobel input layer (which feeds it 2 channels)", applies=is_backbone)
def check_backbone_sobel(p: PluginUnderTest) -> None:
    for sobel in (True, False):
        torch.manual_seed(0)
        net = build_network(p.new(), 3, _side(p), WIDTH, sobel)
        out = _forward(net, 3, _side(p))
        assert tuple(out.shape) == (2, net.feature_dim), f"sobel={sobel}: forward gave {tuple(out.shape)}"


@check("initialisation depends on torch's seed alone: same seed, same weights; another seed, other weights",
       applies=is_backbone)
def check_backbone_init_seeded(p: PluginUnderTest) -> None:
    a, b, c = (_build(p, 3, _side(p), seed) for seed in (0, 0, 1))
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa), "the same torch seed gave other weights"
    assert any(not torch.equal(sa[k], sc[k]) for k in sa if sa[k].is_floating_point()), (
        "another torch seed gave the same weights: do not seed inside build")


@check("training sends gradients to every trainable parameter and nonzero gradients to the input",
       applies=is_backbone)
def check_backbone_gradients(p: PluginUnderTest) -> None:
    net = _build(p, 3, _side(p))
    net.train()
    x = torch.randn(4, 3, _side(p), _side(p), requires_grad=True)
    net(x).square().mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0, "no gradient reaches the input"
    unused = [n for n, q in net.named_parameters() if q.requires_grad and q.grad is None]
    assert not unused, f"parameters without gradient (unused in forward): {', '.join(unused[:5])}"
