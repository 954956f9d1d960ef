"""The files ``dcx plugin new`` writes, as ``string.Template`` texts.

Placeholders: ``$name`` (plugin name), ``$Class``, ``$module`` (import package), ``$file``
(module inside it), ``$test`` (test module), ``$dist`` (distribution name), ``$group`` (entry-point
group), ``$kind`` (registry kind), ``$dcx_requirement``, ``$dcx_api``, ``$title`` and ``$run_flags``.
"""

from __future__ import annotations

PYPROJECT = '''\
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "$dist"
version = "0.1.0"
description = "$title for dcx"
readme = "README.md"
requires-python = ">=3.11"
dependencies = ["$dcx_requirement"]

[project.optional-dependencies]
test = ["pytest>=7"]

# dcx finds the plugin through this entry point, as $dist:$name or, when no other package
# provides a $kind named $name, as $name.
[project.entry-points."$group"]
$name = "$module.$file:$Class"

[tool.setuptools]
packages = ["$module"]

[tool.pytest.ini_options]
testpaths = ["tests"]
'''

README = '''\
# $dist

$title for [dcx](https://github.com/): `$Class` in `$module/$file.py`, registered as the
$kind `$name`.

## Install, test, use

```bash
pip install -e .                 # into the environment that has dcx
python -m pytest tests           # dcx's conformance checks, one test per check
dcx list --kind $kind            # shows $name from $dist
dcx show $kind $name             # its options
dcx run $run_flags
```

If another installed package also provides a $kind named `$name`, dcx refuses the bare name:
use `$dist:$name` (in `--opt`, too: `--opt $dist:$name.KEY=VALUE`).

## Develop

- Options are declared in `options` (`dcx.core.options.Option`): dcx validates `--opt $name.KEY=VALUE`
  and `[options.$name]` in a config file against them; the values are in `self.params`.
- `tests/$test.py` runs every check of `dcx.testing` that applies to a $kind. A check the
  plugin knowingly fails can be skipped with a reason: `conformance_skip = {"check_name": "why"}`
  on the class.
- `dcx_api` is the contract version the plugin was written for, declared in the class body (an
  inherited one does not count): dcx refuses to load it (listed as incompatible) under another
  major version. Change it only after porting the plugin (dcx's docs/plugins.md, "Changes by API
  version").

## Publish

```bash
python -m pip install build twine
python -m build                  # dist/*.whl and dist/*.tar.gz
python -m twine upload dist/*
```
'''

TESTS = '''\
"""dcx's conformance kit on $Class: one test per (plugin, check); run with python -m pytest."""

from dcx.core.registry import Registry
from dcx.testing import parametrize_with_checks

from $module.$file import $Class


@parametrize_with_checks([$Class])
def test_conformance(plugin, check):
    check(plugin)


def test_dcx_finds_the_installed_plugin():
    assert Registry().load("$kind", "$dist:$name") is $Class
'''

INIT = '''\
"""$title for dcx."""

from $module.$file import $Class

__all__ = ["$Class"]
'''

CLUSTERER = '''\
"""$Class: an offline dcx clusterer. Once per epoch it labels the features of every image; the
engine then trains the backbone to predict those labels."""

from __future__ import annotations

import numpy as np

from dcx.core.contracts import Clusterer, FitContext, Partition
from dcx.algorithms.kmeans import kmeans
from dcx.core.options import Option


class $Class(Clusterer):
    """k-means on the PCA-whitened, L2-normalised features; replace the body of ``fit`` with yours."""

    name = "$name"
    dcx_api = "$dcx_api"  # the contract version this was written for (dcx.core.contracts.API_VERSION)
    options = (
        Option("k", int, 100, "number of clusters (--k sets it)", min=1),
        Option("niter", int, 20, "k-means iterations", min=1),
    )

    def fit(self, features: np.ndarray, context: FitContext) -> Partition:
        # dcx.algorithms.kmeans refuses NaN/inf with an InputError and works on a float32 copy, so any
        # array the engine or a user passes is accepted and left unchanged. Every random choice
        # comes from context.seed: the same seed gives the same labels.
        result = kmeans(features, self.params["k"], self.params["niter"], context.seed, device=context.device)
        return Partition(
            labels=result.labels,
            n_clusters=self.params["k"],
            centroids=result.centroids,
            stats={"objective": float(result.objective), "empty_splits": int(result.empty_splits)},
        )
'''

ONLINE_CLUSTERER = '''\
"""$Class: an online dcx clusterer. It labels each batch inside the training step (codes by
Sinkhorn-Knopp over learnable prototypes, as SwAV) and owns its head and its loss."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from dcx.core.contracts import CropSpec, OnlineClusterer, StepContext, TrainSpec
from dcx.core.options import Option
from dcx.algorithms.sinkhorn import swav_codes


class Head(nn.Module):
    """Projection (Linear + BatchNorm, which centres the all-positive pooled features so that
    images spread over the prototypes), L2-normalised, then unit-norm prototypes: scores are cosines."""

    def __init__(self, feature_dim: int, proj_dim: int, k: int) -> None:
        super().__init__()
        self.projection = nn.Sequential(nn.Linear(feature_dim, proj_dim), nn.BatchNorm1d(proj_dim))
        self.prototypes = nn.Linear(proj_dim, k, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.prototypes(F.normalize(self.projection(x), dim=1))


class $Class(OnlineClusterer):
    """Two views of each image; each predicts the other's equipartitioned prototype codes."""

    name = "$name"
    dcx_api = "$dcx_api"  # the contract version this was written for (dcx.core.contracts.API_VERSION)
    options = (
        Option("k", int, 100, "number of prototypes (--k sets it)", min=2),
        Option("proj_dim", int, 32, "projection / prototype dimension", min=2),
        Option("temperature", float, 0.1, "softmax temperature of the predictions", min=1e-3),
        Option("epsilon", float, 0.05, "Sinkhorn entropy regularisation of the codes", min=1e-3),
    )

    def __init__(self, **options) -> None:
        super().__init__(**options)
        self._usage = torch.zeros(self.params["k"], dtype=torch.long)

    def crops(self) -> CropSpec:
        return CropSpec(n_large=2, n_small=0, large_scale=(0.5, 1.0))

    def build_head(self, spec: TrainSpec) -> nn.Module:
        return Head(spec.feature_dim, self.params["proj_dim"], self.params["k"])

    def before_step(self, head: nn.Module, step: StepContext) -> None:
        with torch.no_grad():
            head.prototypes.weight.copy_(F.normalize(head.prototypes.weight, dim=1))

    def loss(self, head: nn.Module, views: Sequence[torch.Tensor], step: StepContext) -> tuple[torch.Tensor, dict]:
        scores = [head(v) for v in views[:2]]
        with torch.no_grad():
            codes = [swav_codes(s.detach().float(), eps=self.params["epsilon"]) for s in scores]
            self._usage += torch.bincount(codes[0].argmax(dim=1).cpu(), minlength=self.params["k"])
        t = self.params["temperature"]
        loss = -0.5 * sum(
            (codes[i] * F.log_softmax(scores[1 - i] / t, dim=1)).sum(dim=1).mean() for i in range(2)
        )
        return loss, {"loss": float(loss.detach())}

    def assign(self, head: nn.Module, features: torch.Tensor) -> torch.Tensor:
        return head(features).argmax(dim=1)

    def epoch_stats(self) -> dict:
        used = int((self._usage > 0).sum())
        self._usage.zero_()
        return {"prototypes_used": used}
'''

BACKBONE = '''\
"""$Class: a small convolutional dcx backbone."""

from __future__ import annotations

from torch import nn

from dcx.core.contracts import Backbone, BackboneNet
from dcx.core.options import Option


class $Class(Backbone):
    """Three conv-BN-ReLU-pool blocks (conv1..conv3, probed by dcx eval), global average pooling."""

    name = "$name"
    dcx_api = "$dcx_api"  # the contract version this was written for (dcx.core.contracts.API_VERSION)
    min_image_size = 8  # three 2x poolings leave 1 pixel
    options = (Option("channels", int, 64, "channels of conv1 at width 1, doubled per block", min=4),)

    def build(self, in_channels: int, image_size: int, width: float = 1.0) -> BackboneNet:
        # in_channels is 2 when the Sobel layer is on; every weight comes from torch's RNG,
        # which the engine seeds: never seed here, never download weights.
        blocks = []
        previous = in_channels
        for i in range(3):
            out = max(8, round(self.params["channels"] * width * 2**i))
            blocks.append((f"conv{i + 1}", nn.Sequential(
                nn.Conv2d(previous, out, 3, padding=1, bias=False),
                nn.BatchNorm2d(out),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            )))
            previous = out
        neck = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        return BackboneNet(blocks, neck, feature_dim=previous)
'''

DATASET = '''\
"""$Class: a generated dcx dataset (no files, no download): a bright square at one of a few
positions per class, on a noisy background."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from dcx.core.contracts import Dataset, ImageSet, RunDefaults
from dcx.core.errors import InputError
from dcx.core.options import Option

SIDE = 32


class _ArrayImages:
    """A sequence of PIL images over a uint8 (N, H, W) array, made on access."""

    def __init__(self, pixels: np.ndarray) -> None:
        self.pixels = pixels

    def __len__(self) -> int:
        return len(self.pixels)

    def __getitem__(self, i: int) -> Image.Image:
        return Image.fromarray(self.pixels[i], mode="L")


class $Class(Dataset):
    """``classes`` classes, ``size`` images per split; labels are the square's position."""

    name = "$name"
    dcx_api = "$dcx_api"  # the contract version this was written for (dcx.core.contracts.API_VERSION)
    flip_invariant = False  # a flip moves the square to another class's position
    defaults = RunDefaults(image_size=SIDE, k=40, epochs=5, batch_size=32, width=0.25, passes=1)
    options = (
        Option("size", int, 400, "images per split", min=2),
        Option("classes", int, 4, "number of classes (square positions)", min=2, max=9),
        Option("seed", int, 0, "seed of the generated images", min=0),
    )

    def splits(self) -> tuple[str, ...]:
        return ("train", "test")

    def load(self, root: Path | None = None, split: str = "train", download: bool = False) -> ImageSet:
        if split not in self.splits():
            raise InputError(f"$name has splits {', '.join(self.splits())}, not {split!r}")
        p = self.params
        rng = np.random.default_rng([p["seed"], self.splits().index(split)])
        labels = np.arange(p["size"]) % p["classes"]
        pixels = rng.normal(40, 15, (p["size"], SIDE, SIDE))
        for i, c in enumerate(labels):
            row, col = divmod(int(c), 3)
            y, x = 2 + 10 * row + rng.integers(-1, 2), 2 + 10 * col + rng.integers(-1, 2)
            pixels[i, max(y, 0) : y + 8, max(x, 0) : x + 8] += 170
        pixels = np.clip(pixels, 0, 255).astype(np.uint8)
        classes = [f"square at {divmod(c, 3)}" for c in range(p["classes"])]
        return ImageSet(_ArrayImages(pixels), labels.astype(np.int64), classes, channels=1)
'''

#: kind -> (registry kind, entry-point group, module file, source template, title)
KINDS: dict[str, tuple[str, str, str, str, str]] = {
    "clusterer": ("clusterer", "dcx.clusterers", "clusterer", CLUSTERER, "An offline clusterer"),
    "online-clusterer": ("clusterer", "dcx.clusterers", "clusterer", ONLINE_CLUSTERER, "An online clusterer"),
    "backbone": ("backbone", "dcx.backbones", "backbone", BACKBONE, "A backbone"),
    "dataset": ("dataset", "dcx.datasets", "dataset", DATASET, "A dataset"),
}
