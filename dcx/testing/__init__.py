"""The conformance kit: named checks that a plugin keeps dcx's contract, in the style of
scikit-learn's estimator checks.

One test id per (plugin, check) from a third-party package's tests::

    from dcx.testing import parametrize_with_checks

    @parametrize_with_checks([MyClusterer])
    def test_conformance(plugin, check):
        check(plugin)

or every check at once, with every failure reported by name::

    from dcx.testing import check_clusterer
    check_clusterer(MyClusterer)

Every failure is an ``AssertionError`` that names the check, the plugin and the rule. A plugin
opts out of a check it knowingly fails with ``conformance_skip = {"check_name": "why"}`` on its
class (or the ``skip`` argument).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

# Importing the check modules registers their checks, in this order: common, clusterers, backbones, datasets.
from dcx.testing import common, clusterers, online, backbones, datasets  # noqa: F401, I001
from dcx.testing.base import (
    CHECKS, Check, PluginLike, PluginUnderTest, checks, get, is_backbone, is_clusterer, is_dataset,
    parametrize_with_checks, run_checks,
)

__all__ = [
    "CHECKS", "Check", "PluginUnderTest", "checks", "get", "parametrize_with_checks", "check_plugin",
    "check_clusterer", "check_backbone", "check_dataset",
]


def check_plugin(plugin: PluginLike, skip: Mapping[str, str] | None = None, root: Path | str | None = None) -> None:
    """Run every check that applies to ``plugin``; one AssertionError lists all failures."""
    run_checks(plugin, skip, root)


def check_clusterer(plugin: PluginLike, skip: Mapping[str, str] | None = None) -> None:
    """Every check of an offline or online clusterer (and that it is one)."""
    run_checks(plugin, skip, only=is_clusterer)


def check_backbone(plugin: PluginLike, skip: Mapping[str, str] | None = None) -> None:
    """Every check of a backbone (and that it is one)."""
    run_checks(plugin, skip, only=is_backbone)


def check_dataset(plugin: PluginLike, root: Path | str | None = None, skip: Mapping[str, str] | None = None):
    """Every check of a dataset read from ``root`` (and that it is one); returns the loaded first split."""
    run_checks(plugin, skip, root, only=is_dataset)
    subject = PluginUnderTest.of(plugin, root)
    instance = subject.new()
    return instance.load(subject.root, instance.splits()[0], False)
