"""`dcx list --options` and `dcx show`: every option of every plugin, with type, default, range and help."""

import json

from typer.testing import CliRunner

from dcx.cli import app
from dcx.core.registry import Registry

runner = CliRunner()


def test_list_options_shows_every_option_of_every_builtin():
    result = runner.invoke(app, ["list", "--options", "--json"])
    assert result.exit_code == 0, result.output
    rows = {(r["kind"], r["name"]): r for r in json.loads(result.stdout)}
    reg = Registry()
    for info in reg.inspect():
        cls = reg.load(info.kind, info.qualified)
        listed = rows[(info.kind, info.name)]["options"]
        assert [o["name"] for o in listed] == [o.name for o in cls.options]
        for o in listed:
            assert set(o) >= {"type", "default", "accepts", "help", "min", "max", "choices"} and o["help"], o
    kmeans = {o["name"]: o for o in rows[("clusterer", "kmeans")]["options"]}
    assert kmeans["niter"] == {**kmeans["niter"], "type": "int", "default": 20, "min": 1, "accepts": "an integer >= 1"}
    assert kmeans["backend"]["choices"] == ["auto", "faiss", "torch"]


def test_list_options_table_names_each_plugin_and_option():
    result = runner.invoke(app, ["list", "--options"], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    for word in ("niter", "fc_dim", "limit", "epsilon", "one of auto, faiss, torch", "(or 'auto')"):
        assert word in result.output, word


def test_show_describes_one_plugin():
    result = runner.invoke(app, ["show", "clusterer", "dcx:swav", "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["qualified"] == "dcx:swav" and info["schedule"] == "online" and info["uses_k"] is True
    assert {o["name"] for o in info["options"]} >= {"k", "epsilon", "proj_dim"}
    result = runner.invoke(app, ["show", "backbone", "alexnet"], env={"COLUMNS": "250"})
    assert result.exit_code == 0 and "fc_dim" in result.output and "min_image_size: 32" in result.output


def test_show_unknown_plugin_is_one_line_exit_2():
    result = runner.invoke(app, ["show", "clusterer", "zzzzzz"])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1
    assert "did you mean" not in result.output
    result = runner.invoke(app, ["show", "colour", "kmeans"])
    assert result.exit_code == 2 and "unknown plugin kind" in result.output
