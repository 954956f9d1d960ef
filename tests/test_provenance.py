"""Done-when of issue 12: a bare name two packages provide is refused; the qualified name runs and
the run records which package (and version) supplied each plugin."""

import importlib.metadata as md
import json
import sys
import tomllib

import numpy as np
import pytest
from typer.testing import CliRunner

from dcx.cli import app
from fake_plugins import write_distribution

runner = CliRunner()
TINY = ["--opt", "digits.limit=60", "--epochs", "1", "--passes", "1", "--width", "0.125", "--batch-size", "16",
        "--k", "5", "--no-probe", "--no-report", "--quiet"]


@pytest.fixture
def second_kmeans(tmp_path, monkeypatch):
    """An installed package `dcx-other` that registers its own `kmeans`."""
    root = tmp_path / "site"
    write_distribution(root, "dcx-other", "9.1", {"dcx.clusterers": {"kmeans": "other_kmeans:KMeans"}},
                       {"other_kmeans": "from dcx.clusterers.kmeans import KMeans as _K\n\nclass KMeans(_K):\n    dcx_api = \"3.0\"\n"})
    monkeypatch.syspath_prepend(str(root))
    yield
    sys.modules.pop("other_kmeans", None)


def test_a_clashing_bare_name_is_refused_and_the_qualified_one_runs_and_is_recorded(second_kmeans, tmp_path):
    result = runner.invoke(app, ["run", "--clusterer", "kmeans", *TINY, "--out", str(tmp_path / "no")])
    assert result.exit_code == 2, result.output
    line = result.output.strip()
    assert len(line.splitlines()) == 1 and "dcx-other" in line and "dcx:kmeans" in line and "dcx-other:kmeans" in line
    assert not (tmp_path / "no").exists()

    out = tmp_path / "run"
    result = runner.invoke(app, ["run", "--clusterer", "dcx:kmeans", "--opt", "dcx:kmeans.niter=3", *TINY,
                                 "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    dcx = {"name": "kmeans", "package": "dcx", "version": md.version("dcx")}
    config = tomllib.loads((out / "config.toml").read_text())
    assert config["clusterer"] == "dcx:kmeans" and config["plugins"]["clusterer"] == dcx
    assert config["options"]["kmeans"]["niter"] == 3
    assert config["plugins"]["backbone"]["package"] == "dcx" and config["plugins"]["dataset"]["name"] == "digits"
    assert json.loads((out / "summary.json").read_text())["plugins"]["clusterer"] == dcx
    assert json.loads(result.stdout)["plugins"]["clusterer"] == dcx

    again = tmp_path / "again"  # config.toml, with its qualified name, reproduces the run
    result = runner.invoke(app, ["run", "--config", str(out / "config.toml"), "--out", str(again), "--quiet", "--no-report"])
    assert result.exit_code == 0, result.output
    assert (again / "assignments.npy").read_bytes() == (out / "assignments.npy").read_bytes()


def test_options_follow_the_plugin_under_any_of_its_names(second_kmeans, tmp_path):
    result = runner.invoke(app, ["run", "--clusterer", "dcx:kmeans", "--opt", "kmeans.niter=0", *TINY])
    assert result.exit_code == 2 and "kmeans: option 'niter' must be an integer >= 1" in result.output
    result = runner.invoke(app, ["run", "--clusterer", "dcx:kmeans", "--opt", "dcx-other:kmeans.niter=3", *TINY])
    assert result.exit_code == 2 and "options given for 'dcx-other:kmeans', which is not part of this run" in result.output


def test_dcx_list_shows_both_providers(second_kmeans):
    result = runner.invoke(app, ["list", "--kind", "clusterer", "--json"])
    assert result.exit_code == 0, result.output
    rows = [r for r in json.loads(result.stdout) if r["name"] == "kmeans"]
    assert sorted((r["package"], r["qualified"], r["clashes"][0]) for r in rows) == [
        ("dcx", "dcx:kmeans", "dcx-other"), ("dcx-other", "dcx-other:kmeans", "dcx")]


def test_cluster_takes_qualified_names_and_their_options(tmp_path, blobs):
    x, _ = blobs
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "labels.npy"
    result = runner.invoke(app, ["cluster", str(tmp_path / "x.npy"), "--clusterer", "dcx:kmeans", "--k", "6",
                                 "--opt", "kmeans.niter=2", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["iterations"] == 2 and np.load(out).max() < 6
    result = runner.invoke(app, ["cluster", str(tmp_path / "x.npy"), "--clusterer", "kmeans", "--opt", "pic.nnn=3",
                                 "--out", str(out)])
    assert result.exit_code == 2 and "options given for 'pic', which is not the clusterer" in result.output
