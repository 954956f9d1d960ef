"""Conformance checks for plugins, in the spirit of scikit-learn's ``check_estimator``.

A third-party package calls these from its own tests::

    from dcx.testing import check_clusterer
    def test_my_clusterer():
        check_clusterer(MyClusterer)

Each check raises ``AssertionError`` with a message that names the plugin and the broken rule.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from dcx.core.contracts import (
    API_VERSION, Backbone, BackboneNet, Clusterer, Dataset, EpochContext, FitContext, ImageSet, OnlineClusterer,
    Partition, StepContext, TrainSpec,
)
from dcx.core.errors import OptionError
from dcx.core.metrics import nmi
from dcx.core.options import Option


def _fail(plugin: Any, rule: str) -> AssertionError:
    return AssertionError(f"{getattr(plugin, 'name', plugin)!s}: {rule}")


def _check_common(cls: type, base: tuple[type, ...]) -> None:
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise _fail(cls, f"must subclass {' or '.join(b.__name__ for b in base)}")
    if not cls.name:
        raise _fail(cls, "must set a class attribute `name`")
    if str(cls.dcx_api).split(".")[0] != API_VERSION.split(".")[0]:
        raise _fail(cls, f"dcx_api {cls.dcx_api} is incompatible with {API_VERSION}")
    names = [o.name for o in cls.options]
    if len(set(names)) != len(names):
        raise _fail(cls, f"duplicate option names in {names}")
    for opt in cls.options:
        if not isinstance(opt, Option):
            raise _fail(cls, f"options must be dcx.core.options.Option, got {opt!r}")
        if opt.default is not None:
            opt.coerce(cls.name, opt.default)  # a default must satisfy its own constraints
    try:
        cls(__no_such_option__=1)
    except OptionError:
        pass
    else:
        raise _fail(cls, "accepted an unknown option; call super().__init__(**options)")


def _blobs(n: int, d: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    y = np.arange(n) % k
    x = centres[y] + 0.05 * rng.normal(size=(n, d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), y


def check_clusterer(cls: type, n: int = 300, d: int = 16, k: int = 5, seed: int = 0, min_nmi: float = 0.8) -> None:
    """Contract of an offline or online clusterer, on well-separated planted clusters."""
    _check_common(cls, (Clusterer, OnlineClusterer))
    declares_k = any(o.name == "k" for o in cls.options)
    plugin = cls(**({"k": k} if declares_k else {}))
    x, y = _blobs(n, d, k, seed)
    if issubclass(cls, OnlineClusterer):
        _check_online(plugin, x, k)
        return
    torch.manual_seed(seed)
    plugin.prepare(TrainSpec(feature_dim=d, num_samples=n))
    ctx = FitContext(epoch=0, seed=seed)
    part = plugin.fit(x, ctx)
    if not isinstance(part, Partition):
        raise _fail(plugin, f"fit must return a Partition, got {type(part).__name__}")
    part = part.validate(n, plugin.name)
    again = plugin.fit(x, ctx).validate(n, plugin.name)
    if not np.array_equal(part.labels, again.labels):
        raise _fail(plugin, "fit is not deterministic for the same FitContext.seed")
    if cls.wants_preprocessing and nmi(y, part.labels) < min_nmi:
        raise _fail(plugin, f"did not recover {k} planted clusters (NMI {nmi(y, part.labels):.2f} < {min_nmi})")
    if any(not isinstance(key, str) for key in part.stats):
        raise _fail(plugin, "stats keys must be strings")


def _check_online(plugin: OnlineClusterer, x: np.ndarray, k: int) -> None:
    torch.manual_seed(0)
    head = plugin.build_head(TrainSpec(feature_dim=x.shape[1], num_samples=len(x)))
    if not isinstance(head, nn.Module):
        raise _fail(plugin, "build_head must return an nn.Module")
    spec = plugin.crops()
    feats = torch.from_numpy(x[:64])
    views = [(feats + 0.01 * torch.randn_like(feats)).requires_grad_(True) for _ in range(spec.n_large + spec.n_small)]
    plugin.start_epoch(head, EpochContext(epoch=0, seed=0, steps_per_epoch=1, num_samples=len(x),
                                          device=torch.device("cpu"), features=lambda: torch.from_numpy(x)))
    step = StepContext(epoch=0, step=0, steps_per_epoch=1, indices=torch.arange(64))
    plugin.before_step(head, step)
    loss, stats = plugin.loss(head, views, step)
    if not (isinstance(loss, torch.Tensor) and loss.ndim == 0 and torch.isfinite(loss)):
        raise _fail(plugin, "loss must return a finite scalar tensor")
    loss.backward()
    if views[0].grad is None:
        raise _fail(plugin, "loss does not propagate gradients to the backbone features")
    plugin.after_backward(head, step)
    labels = plugin.assign(head, feats)
    if labels.shape != (len(feats),) or labels.dtype not in (torch.int64, torch.int32):
        raise _fail(plugin, "assign must return (B,) integer labels")
    if not isinstance(stats, dict) or not isinstance(plugin.epoch_stats(), dict):
        raise _fail(plugin, "loss stats and epoch_stats must be dicts")


def check_backbone(cls: type, image_size: int = 32, width: float = 0.25) -> None:
    """Contract of a backbone: a BackboneNet with named blocks, any channel count, small inputs."""
    _check_common(cls, (Backbone,))
    plugin = cls()
    for channels in (1, 2, 3):
        torch.manual_seed(0)
        net = plugin.build(channels, max(image_size, cls.min_image_size), width)
        if not isinstance(net, BackboneNet):
            raise _fail(plugin, "build must return a dcx.core.contracts.BackboneNet")
        x = torch.randn(2, channels, max(image_size, cls.min_image_size), max(image_size, cls.min_image_size))
        net.eval()
        with torch.no_grad():
            out = net(x)
            blocks = net.forward_blocks(x)
        if tuple(out.shape) != (2, net.feature_dim):
            raise _fail(plugin, f"forward gave {tuple(out.shape)}, expected (2, feature_dim={net.feature_dim})")
        if list(blocks) != list(net.block_names) or not net.block_names:
            raise _fail(plugin, "forward_blocks must return every named block, in order")
        torch.manual_seed(0)
        twin = plugin.build(channels, max(image_size, cls.min_image_size), width)
        if any(not torch.equal(a, b) for a, b in zip(net.state_dict().values(), twin.state_dict().values())):
            raise _fail(plugin, "initialisation must depend only on torch's seed")


def check_dataset(cls: type, root: Path | None = None, options: dict | None = None) -> ImageSet:
    """Contract of a dataset on ``root``: PIL images of the declared channel count, aligned labels."""
    _check_common(cls, (Dataset,))
    plugin = cls(**(options or {}))
    splits = plugin.splits()
    if not splits:
        raise _fail(plugin, "splits() must name at least one split")
    images = plugin.load(root, splits[0], False)
    if not isinstance(images, ImageSet) or len(images) == 0:
        raise _fail(plugin, "load must return a non-empty ImageSet")
    first = images.images[0]
    if not isinstance(first, Image.Image):
        raise _fail(plugin, f"images[i] must be a PIL image, got {type(first).__name__}")
    if len(first.getbands()) != images.channels:
        raise _fail(plugin, f"image has {len(first.getbands())} bands, ImageSet.channels says {images.channels}")
    if images.labels is not None and len(images.labels) != len(images):
        raise _fail(plugin, "labels must have one entry per image")
    return images
