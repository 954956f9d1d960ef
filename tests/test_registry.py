import importlib.metadata as md
import json
import os
import subprocess
import sys
import textwrap

import pytest

from dcx.core.errors import PluginLoadError, PluginNotFoundError
from dcx.core.registry import GROUPS, Registry

BUILTINS = {
    "clusterer": {"kmeans", "pic", "sinkhorn", "swav"},
    "backbone": {"alexnet", "vgg16", "resnet18", "resnet50"},
    "dataset": {"digits", "imagefolder", "textures", "photos", "characters", "mnist", "cifar10", "stl10"},
}


def _fake(entries):
    """An entry_points function over (group, name, value) triples."""
    eps = [md.EntryPoint(name, value, group) for group, name, value in entries]
    return lambda group: [e for e in eps if e.group == group]


def test_builtins_are_discovered_through_entry_points():
    reg = Registry()
    for kind, names in BUILTINS.items():
        assert names <= set(reg.names(kind))
    infos = {(i.kind, i.name): i for i in reg.inspect("backbone")}
    assert infos[("backbone", "alexnet")].package == "dcx"
    assert infos[("backbone", "alexnet")].status == "ok"


def test_unknown_name_suggests_closest_and_lists_available():
    with pytest.raises(PluginNotFoundError) as err:
        Registry().load("clusterer", "kmean")
    msg = str(err.value)
    assert "did you mean 'kmeans'" in msg and "available: kmeans" in msg and "\n" not in msg


def test_loading_is_lazy_and_broken_plugins_are_isolated():
    reg = Registry(_fake([
        ("dcx.clusterers", "good", "dcx.plugins.kmeans:KMeans"),
        ("dcx.clusterers", "broken", "no_such_module_xyz:Thing"),
        ("dcx.clusterers", "notaplugin", "fake_plugins:NotAPlugin"),
        ("dcx.clusterers", "old", "fake_plugins:OldApi"),
    ]))
    assert reg.names("clusterer") == ["broken", "good", "notaplugin", "old"]  # nothing imported yet
    assert reg.load("clusterer", "good").name == "kmeans"
    with pytest.raises(PluginLoadError, match="failed to import"):
        reg.load("clusterer", "broken")
    status = {i.name: i.status for i in reg.inspect("clusterer")}
    assert status == {"good": "ok", "broken": "broken", "notaplugin": "incompatible", "old": "incompatible"}


def test_duplicate_names_keep_the_first_and_report_the_second():
    reg = Registry(_fake([
        ("dcx.backbones", "alexnet", "dcx.backbones.alexnet:AlexNet"),
        ("dcx.backbones", "alexnet", "other_pkg:AlexNet"),
    ]))
    infos = reg.inspect("backbone")
    assert [i.status for i in infos] == ["ok", "duplicate"]
    assert reg.load("backbone", "alexnet").__module__ == "dcx.backbones.alexnet"


def test_dcx_list_shows_a_broken_third_party_distribution(tmp_path):
    # A real installed distribution (dist-info on sys.path) whose entry point cannot import.
    dist = tmp_path / "dcx_broken_plugin-0.0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: dcx-broken-plugin\nVersion: 0.0.1\n")
    (dist / "entry_points.txt").write_text(textwrap.dedent("""
        [dcx.clusterers]
        exploding = dcx_broken_plugin_mod:Exploding
    """))
    (tmp_path / "dcx_broken_plugin_mod.py").write_text("raise RuntimeError('boom at import')\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    out = subprocess.run([sys.executable, "-m", "dcx", "list", "--json"], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    rows = {(r["kind"], r["name"]): r for r in json.loads(out.stdout)}
    broken = rows[("clusterer", "exploding")]
    assert broken["status"] == "broken" and "boom at import" in broken["error"]
    assert broken["package"] == "dcx-broken-plugin" and broken["version"] == "0.0.1"
    for kind, names in BUILTINS.items():
        for name in names:
            assert rows[(kind, name)]["status"] == "ok", rows[(kind, name)]
    assert set(GROUPS) == {r["kind"] for r in rows.values()}
