import importlib.metadata as md
import json
import os
import subprocess
import sys

import pytest

from dcx.core.errors import AmbiguousPluginError, PluginLoadError, PluginNotFoundError
from dcx.core.registry import GROUPS, PluginRef, Registry
from fake_plugins import write_distribution

BUILTINS = {
    "clusterer": {"kmeans", "pic", "sinkhorn", "swav", "dcv2"},
    "backbone": {"alexnet", "vgg16", "resnet18", "resnet50"},
    "dataset": {"digits", "imagefolder", "textures", "photos", "characters", "mnist", "cifar10", "stl10"},
}
#: A second package that also provides `kmeans` (dcx's own, subclassed: it imports and is valid).
SHADOW = {"dcx.clusterers": {"kmeans": "shadow_kmeans:KMeans", "extra": "shadow_kmeans:Extra"}}
SHADOW_SOURCE = """
    from dcx.clusterers.kmeans import KMeans as _Base

    class KMeans(_Base):
        dcx_api = "3.0"

    class Extra(_Base):
        name = "extra"
        dcx_api = "3.0"
"""


def _fake(entries):
    """An entry_points function over (group, name, value) triples (no distribution)."""
    eps = [md.EntryPoint(name, value, group) for group, name, value in entries]
    return lambda group: [e for e in eps if e.group == group]


@pytest.fixture
def shadowed(tmp_path, monkeypatch):
    """A registry that sees dcx and a fake installed package `Shadow-Pkg` 2.3 that also provides kmeans."""
    write_distribution(tmp_path, "Shadow-Pkg", "2.3", SHADOW, {"shadow_kmeans": SHADOW_SOURCE})
    monkeypatch.syspath_prepend(str(tmp_path))
    yield Registry()
    sys.modules.pop("shadow_kmeans", None)


def test_builtins_are_discovered_through_entry_points():
    reg = Registry()
    for kind, names in BUILTINS.items():
        assert names <= set(reg.names(kind))
    infos = {(i.kind, i.name): i for i in reg.inspect("backbone")}
    assert infos[("backbone", "alexnet")].package == "dcx"
    assert infos[("backbone", "alexnet")].status == "ok"


def test_unknown_name_suggests_only_a_close_name():
    with pytest.raises(PluginNotFoundError) as err:
        Registry().load("clusterer", "kmean")
    msg = str(err.value)
    assert "did you mean 'kmeans'" in msg and "available: dcv2, kmeans" in msg and "\n" not in msg
    with pytest.raises(PluginNotFoundError) as err:
        Registry().load("clusterer", "zzzzzz")
    assert "did you mean" not in str(err.value) and "available: dcv2, kmeans, pic, sinkhorn, swav" in str(err.value)


def test_every_plugin_has_a_qualified_name():
    reg = Registry()
    ref = reg.resolve("clusterer", "dcx:kmeans")
    assert ref == PluginRef("clusterer", "kmeans", "dcx", md.version("dcx")) and ref.qualified == "dcx:kmeans"
    assert reg.resolve("clusterer", "kmeans") == ref
    assert reg.load("clusterer", "DCX:kmeans") is reg.load("clusterer", "kmeans")
    with pytest.raises(PluginNotFoundError, match="did you mean 'dcx:kmeans'"):
        reg.resolve("clusterer", "other:kmeans")


def test_loading_is_lazy_and_broken_plugins_are_isolated():
    reg = Registry(_fake([
        ("dcx.clusterers", "kmeans", "dcx.clusterers.kmeans:KMeans"),
        ("dcx.clusterers", "broken", "no_such_module_xyz:Thing"),
        ("dcx.clusterers", "notaplugin", "fake_plugins:NotAPlugin"),
        ("dcx.clusterers", "old", "fake_plugins:OldApi"),
    ]))
    assert reg.names("clusterer") == ["broken", "kmeans", "notaplugin", "old"]  # nothing imported yet
    assert reg.load("clusterer", "kmeans").name == "kmeans"
    with pytest.raises(PluginLoadError, match="failed to import"):
        reg.load("clusterer", "broken")
    status = {i.name: i.status for i in reg.inspect("clusterer")}
    assert status == {"kmeans": "ok", "broken": "broken", "notaplugin": "incompatible", "old": "incompatible"}


def test_the_registry_never_names_a_class():
    reg = Registry(_fake([
        ("dcx.clusterers", "noname", "fake_plugins:NoName"),
        ("dcx.clusterers", "renamed", "dcx.clusterers.kmeans:KMeans"),
    ]))
    with pytest.raises(PluginLoadError, match="NoName declares no `name`: set the class attribute name = 'noname'"):
        reg.load("clusterer", "noname")
    from fake_plugins import NoName

    assert NoName.name == ""
    with pytest.raises(PluginLoadError, match="declares name 'kmeans' but its entry point is 'renamed'"):
        reg.load("clusterer", "renamed")


def test_a_name_two_packages_provide_is_refused_and_both_are_listed(shadowed):
    with pytest.raises(AmbiguousPluginError) as err:
        shadowed.load("clusterer", "kmeans")
    msg = str(err.value)
    assert "\n" not in msg and "dcx, Shadow-Pkg" in msg and "'dcx:kmeans'" in msg and "'Shadow-Pkg:kmeans'" in msg
    assert shadowed.load("clusterer", "dcx:kmeans").__module__ == "dcx.clusterers.kmeans"
    for spelling in ("Shadow-Pkg:kmeans", "shadow_pkg:kmeans", "shadow.pkg:kmeans"):
        assert shadowed.resolve("clusterer", spelling) == PluginRef("clusterer", "kmeans", "Shadow-Pkg", "2.3")
    assert shadowed.load("clusterer", "extra").__module__ == "shadow_kmeans"  # unique: bare works
    rows = [i for i in shadowed.inspect("clusterer") if i.name == "kmeans"]
    assert sorted((i.package, i.status, tuple(i.clashes)) for i in rows) == [
        ("Shadow-Pkg", "ok", ("dcx",)), ("dcx", "ok", ("Shadow-Pkg",))]
    assert "dcx:kmeans" in shadowed.available("clusterer") and "kmeans" not in shadowed.available("clusterer")


def test_dcx_list_shows_a_broken_third_party_distribution(tmp_path):
    # A real installed distribution (dist-info on sys.path) whose entry point cannot import.
    write_distribution(tmp_path, "dcx-broken-plugin", "0.0.1", {"dcx.clusterers": {"exploding": "dcx_broken_plugin_mod:Exploding"}},
                       {"dcx_broken_plugin_mod": "raise RuntimeError('boom at import')\n"})
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    out = subprocess.run([sys.executable, "-m", "dcx", "list", "--json"], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    rows = {(r["kind"], r["name"]): r for r in json.loads(out.stdout)}
    broken = rows[("clusterer", "exploding")]
    assert broken["status"] == "broken" and "boom at import" in broken["error"]
    assert broken["package"] == "dcx-broken-plugin" and broken["version"] == "0.0.1"
    assert broken["qualified"] == "dcx-broken-plugin:exploding"
    for kind, names in BUILTINS.items():
        for name in names:
            assert rows[(kind, name)]["status"] == "ok", rows[(kind, name)]
    assert set(GROUPS) == {r["kind"] for r in rows.values()}
