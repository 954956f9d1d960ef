"""The contract version as a third-party author meets it: a plugin must declare ``dcx_api`` in its
own class; one written for another API, or declaring none, is listed and refused with one line;
a hook that does not take what dcx passes (an unported online clusterer) is one line too."""

import importlib.metadata as md
import json
import os
import subprocess
import sys

import pytest

from dcx.core.contracts import API_VERSION, OnlineClusterer
from dcx.core.errors import PluginContractError
from dcx.core.registry import NO_API, PluginInfo, declared_api, guard_hooks
from fake_plugins import write_distribution

#: An online clusterer as written for API 1.0: ``build_head(feature_dim, num_samples)``.
OLD_ONLINE = '''
from torch import nn
from dcx.core.contracts import OnlineClusterer

class OldOnline(OnlineClusterer):
    """Written for dcx API 1.0."""

    name = "{name}"
    {api}

    def build_head(self, feature_dim, num_samples):
        return nn.Linear(feature_dim, 5)

    def loss(self, head, views, step):
        return head(views[0]).logsumexp(1).mean(), {{}}

    def assign(self, head, features):
        return head(features).argmax(1)
'''
#: (distribution, plugin name, dcx_api line) of three packages an author did not port.
UNPORTED = [("dcx-old-online", "oldonline", 'dcx_api = "2.0"'),
            ("dcx-no-api", "noapi", "options = ()"),
            ("dcx-misported", "misported", f'dcx_api = "{API_VERSION}"')]
RUN = ["--dataset", "digits", "--opt", "digits.limit=60", "--epochs", "1", "--passes", "1", "--width", "0.125",
       "--batch-size", "16", "--k", "5", "--no-probe", "--no-report", "--quiet"]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A folder holding the three unported packages as installed distributions (dist-info)."""
    root = tmp_path_factory.mktemp("site")
    for dist, name, api in UNPORTED:
        module = dist.replace("-", "_") + "_mod"
        write_distribution(root, dist, "0.4.0", {"dcx.clusterers": {name: f"{module}:OldOnline"}},
                           {module: OLD_ONLINE.format(name=name, api=api)})
    return root


def _dcx(site, *args):
    env = {**os.environ, "PYTHONPATH": str(site)}
    return subprocess.run([sys.executable, "-m", "dcx", *args], env=env, capture_output=True, text=True)


def _one_line(out, *words):
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert "Traceback" not in out.stderr + out.stdout, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), out.stderr
    for w in words:
        assert w in lines[0], lines[0]


def test_dcx_list_marks_a_plugin_of_another_api_and_one_that_declares_none(site):
    out = _dcx(site, "list", "--kind", "clusterer", "--json")
    assert out.returncode == 0, out.stderr
    rows = {r["name"]: r for r in json.loads(out.stdout)}
    old, none = rows["oldonline"], rows["noapi"]
    assert old["status"] == "incompatible" and f"written for dcx API 2.0, this dcx provides API {API_VERSION}" in old["error"]
    assert none["status"] == NO_API and "declares no dcx_api in its class body" in none["error"]
    assert 'Changes by API version' in old["error"] and 'Changes by API version' in none["error"]
    assert rows["misported"]["status"] == "ok" and rows["kmeans"]["status"] == "ok"
    table = _dcx(site, "list", "--kind", "clusterer")
    assert "no dcx_api" in table.stdout and "incompatible" in table.stdout


@pytest.mark.slow
@pytest.mark.parametrize("name, words", [
    ("oldonline", ["'oldonline' from dcx-old-online 0.4.0 is incompatible", "API 2.0", f"API {API_VERSION}"]),
    ("noapi", ["'noapi' from dcx-no-api 0.4.0 cannot be used: OldOnline declares no dcx_api", f"API {API_VERSION}"]),
    ("misported", ["'misported' from dcx-misported 0.4.0 (declares dcx_api 3.0; this dcx provides 3.0)",
                   "build_head() missing 1 required positional argument: 'num_samples'"]),
])
def test_dcx_run_refuses_an_unported_plugin_with_one_line(site, tmp_path, name, words):
    out = _dcx(site, "run", "--clusterer", name, *RUN, "--out", str(tmp_path / "run"))
    _one_line(out, *words, 'docs/plugins.md "Changes by API version"')


class _Online(OnlineClusterer):
    """A hook that raises a TypeError of its own (a bug inside the plugin), and one that fits."""

    name = "typeerror"
    dcx_api = API_VERSION

    def build_head(self, spec):
        return len(spec) + 1  # TypeError inside the plugin: object of type 'int' has no len()

    def loss(self, head, views, step):
        return sum(views), {}

    def assign(self, head, features):
        return features


def test_only_a_call_that_does_not_fit_the_signature_becomes_a_contract_error():
    plugin = guard_hooks(_Online(), PluginInfo("clusterer", "typeerror", "x:_Online", "dcx-t", "1.0"))
    with pytest.raises(PluginContractError, match=r"^clusterer 'typeerror' from dcx-t 1.0 .*assign\(\) takes 3 "):
        plugin.assign(None, 1, 2)
    with pytest.raises(TypeError, match="has no len") as err:
        plugin.build_head(3)
    assert not isinstance(err.value, PluginContractError)
    assert plugin.loss(None, [1, 2], None) == (3, {})
    import pickle

    back = pickle.loads(pickle.dumps(plugin))
    assert type(back) is _Online and back.loss(None, [2, 2], None) == (4, {})


def test_a_missing_abstract_hook_is_a_contract_error_not_a_type_error():
    from dcx.core.registry import Registry

    fake = [md.EntryPoint("lossless", "test_plugin_api:_NoLoss", "dcx.clusterers")]
    registry = Registry(lambda group: [e for e in fake if e.group == group])
    with pytest.raises(PluginContractError, match=r"\(declares dcx_api 3.0; this dcx provides 3.0\): _NoLoss does "
                                                  r"not implement assign, loss, which the contract requires"):
        registry.create("clusterer", "lossless")


class _NoLoss(OnlineClusterer):
    """Implements build_head only."""

    name = "lossless"
    dcx_api = API_VERSION

    def build_head(self, spec):
        return None


def test_dcx_api_counts_only_in_the_plugin_s_own_package():
    from broken_plugins import GoodOffline, InheritsApi, NoApi, WrongShape

    assert declared_api(GoodOffline) == API_VERSION and declared_api(WrongShape) == API_VERSION  # same module
    assert declared_api(NoApi) is None and declared_api(InheritsApi) is None  # dcx's own declaration does not count
