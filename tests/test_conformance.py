import numpy as np
import pytest

from dcx.core.contracts import Clusterer, Partition
from dcx.core.registry import Registry
from dcx.testing import check_backbone, check_clusterer, check_dataset

REG = Registry()


@pytest.mark.parametrize("name", ["kmeans", "pic", "sinkhorn", "swav", "dcv2"])
def test_builtin_clusterers_conform(name):
    check_clusterer(REG.load("clusterer", name))


@pytest.mark.parametrize("name", ["alexnet", "vgg16", "resnet18"])
def test_builtin_backbones_conform(name):
    check_backbone(REG.load("backbone", name))


def test_digits_conforms():
    images = check_dataset(REG.load("dataset", "digits"))
    assert len(images) == 1797 and images.num_classes == 10


class ConstantClusterer(Clusterer):
    name = "constant"

    def fit(self, features, context):
        return Partition(np.zeros(len(features), dtype=np.int64), 1)


class NoSuper(Clusterer):
    name = "nosuper"

    def __init__(self, **options):
        self.params = {}

    def fit(self, features, context):
        return Partition(np.zeros(len(features), dtype=np.int64), 1)


def test_checks_catch_broken_plugins():
    with pytest.raises(AssertionError, match="constant: did not recover 5 planted clusters"):
        check_clusterer(ConstantClusterer)
    with pytest.raises(AssertionError, match="nosuper: accepted an unknown option"):
        check_clusterer(NoSuper)
