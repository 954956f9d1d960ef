"""dcx's conformance kit on both plugins (one test per check), and discovery once installed."""

from dcx.core.registry import Registry
from dcx.testing import parametrize_with_checks

from dcx_agglomerative import Agglomerative, LeNet


@parametrize_with_checks([Agglomerative, LeNet])
def test_conformance(plugin, check):
    check(plugin)


def test_subsampling_path_conforms_too():
    """Above `sample` rows the clusterer takes another code path: check it as well."""
    from dcx.testing import check_clusterer

    check_clusterer(Agglomerative(sample=50))


def test_dcx_finds_both_plugins():
    registry = Registry()
    assert registry.load("clusterer", "dcx-agglomerative:agglomerative") is Agglomerative
    assert registry.load("backbone", "dcx-agglomerative:lenet") is LeNet
