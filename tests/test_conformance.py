"""The conformance kit: every built-in passes every check; the kit's API behaves as documented."""

import numpy as np
from PIL import Image

from dcx.core.registry import Registry
from dcx.testing import check_dataset, parametrize_with_checks

REG = Registry()
BUILTINS = [REG.load(kind, name) for kind, name in [
    ("clusterer", "kmeans"), ("clusterer", "pic"), ("clusterer", "sinkhorn"), ("clusterer", "swav"), ("clusterer", "dcv2"),
    ("backbone", "alexnet"), ("backbone", "vgg16"), ("backbone", "resnet18"), ("backbone", "resnet50"),
    ("dataset", "digits"),
]]


@parametrize_with_checks(BUILTINS)
def test_builtins_pass_every_check(plugin, check):
    check(plugin)


def test_imagefolder_passes_every_check(tmp_path):
    rng = np.random.default_rng(0)
    for c, level in enumerate((30, 220)):  # two visibly different classes
        (tmp_path / f"class{c}").mkdir()
        for i in range(12):
            pixels = np.clip(level + rng.normal(0, 10, (16, 16, 3)), 0, 255).astype(np.uint8)
            pixels[: 4 + 2 * c] = 255 - level
            Image.fromarray(pixels).save(tmp_path / f"class{c}" / f"{i}.png")
    images = check_dataset(REG.load("dataset", "imagefolder"), root=tmp_path)
    assert len(images) == 24 and images.classes == ["class0", "class1"]


def test_digits_loads_whole():
    images = check_dataset(REG.load("dataset", "digits"))
    assert len(images) == 1797 and images.num_classes == 10


def test_kmeans_with_several_heads_passes_every_clusterer_check():
    """(N, heads) targets and a (B, outputs, heads) head are within the contract the kit checks."""
    from dcx.testing import check_clusterer
    from dcx.testing.base import PluginUnderTest

    check_clusterer(PluginUnderTest(REG.load("clusterer", "kmeans"), {"heads": 3}))
    check_clusterer(PluginUnderTest(REG.load("clusterer", "kmeans"), {"heads": 1, "merged_heads": 2}))
