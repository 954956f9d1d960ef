"""`dcx plugin new`: a package for each kind whose own tests pass right after install and that
`dcx list` shows and `dcx run` uses, hyphenated names included; user errors are one line and exit 2."""

import json

import pytest
from cli_checks import assert_one_line_error
from throwaway import TINY_RUN, Throwaway
from typer.testing import CliRunner

from dcx.cli import app
from dcx.scaffold import class_name

runner = CliRunner()
KINDS = ["clusterer", "online-clusterer", "backbone", "dataset"]
#: The plugin each kind's package is written for in the end-to-end test: hyphens and underscores.
NAMES = {"clusterer": "my-clusterer", "online-clusterer": "t-online", "backbone": "t_backbone", "dataset": "t-dataset"}


@pytest.mark.parametrize("kind", KINDS)
def test_new_writes_an_installable_package(tmp_path, kind):
    result = runner.invoke(app, ["plugin", "new", "my_thing", "--kind", kind, "--dir", str(tmp_path / "pkg")])
    assert result.exit_code == 0, result.output
    pkg = tmp_path / "pkg"
    files = sorted(str(p.relative_to(pkg)) for p in pkg.rglob("*") if p.is_file())
    module = "backbone" if kind == "backbone" else "dataset" if kind == "dataset" else "clusterer"
    assert files == sorted(["README.md", f"dcx_my_thing/{module}.py", "dcx_my_thing/__init__.py", "pyproject.toml",
                            "tests/test_my_thing.py"])
    pyproject = (pkg / "pyproject.toml").read_text()
    assert 'name = "dcx-my-thing"' in pyproject and f'my_thing = "dcx_my_thing.{module}:MyThing"' in pyproject
    assert "parametrize_with_checks([MyThing])" in (pkg / "tests/test_my_thing.py").read_text()


def test_a_hyphenated_name_becomes_an_underscored_module_and_a_normalised_distribution(tmp_path):
    result = runner.invoke(app, ["plugin", "new", "My-Clusterer", "--kind", "clusterer", "--dir", str(tmp_path / "p")])
    assert result.exit_code == 0, result.output
    pkg = tmp_path / "p"
    assert (pkg / "dcx_my_clusterer/clusterer.py").is_file() and (pkg / "tests/test_my_clusterer.py").is_file()
    pyproject = (pkg / "pyproject.toml").read_text()
    assert 'name = "dcx-my-clusterer"' in pyproject and 'packages = ["dcx_my_clusterer"]' in pyproject
    assert 'My-Clusterer = "dcx_my_clusterer.clusterer:MyClusterer"' in pyproject
    source = (pkg / "dcx_my_clusterer/clusterer.py").read_text()
    assert 'class MyClusterer(Clusterer):' in source and 'name = "My-Clusterer"' in source
    assert 'Registry().load("clusterer", "dcx-my-clusterer:My-Clusterer")' in (pkg / "tests/test_my_clusterer.py").read_text()
    for name, cls in (("clusterer", "ClustererPlugin"), ("class", "ClassPlugin"), ("none", "NonePlugin")):
        assert runner.invoke(app, ["plugin", "new", name, "--kind", "clusterer", "--dir", str(tmp_path / name)]).exit_code == 0
        assert f"class {cls}(Clusterer):" in (tmp_path / name / f"dcx_{name}/clusterer.py").read_text()


def test_new_refuses_a_non_empty_dir_a_bad_name_and_a_bad_kind(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    result = runner.invoke(app, ["plugin", "new", "x", "--kind", "clusterer", "--dir", str(tmp_path / "full")])
    assert_one_line_error(result, "exists and is not empty")
    assert [p.name for p in (tmp_path / "full").iterdir()] == ["keep.txt"]
    for kind, example in (("clusterer", "my-clusterer"), ("online-clusterer", "my-online-clusterer"),
                          ("backbone", "my-backbone"), ("dataset", "my-dataset")):
        for bad in ("1x", "a.b", "a:b", "my thing", "_x", "x-", "a__b", "ünï.côde"):
            result = runner.invoke(app, ["plugin", "new", bad, "--kind", kind, "--dir", str(tmp_path / "n")])
            assert_one_line_error(result, f"plugin name {bad!r} must start with a letter", f"e.g. {example}")
        result = runner.invoke(app, ["plugin", "new", "spëctral", "--kind", kind, "--dir", str(tmp_path / "n")])
        assert_one_line_error(result, "'spëctral' must start with a letter and hold only ASCII letters", "e.g. spectral")
    result = runner.invoke(app, ["plugin", "new", "x", "--kind", "colour", "--dir", str(tmp_path / "n")])
    assert_one_line_error(result, "unknown plugin kind 'colour'", "online-clusterer")
    assert not (tmp_path / "n").exists()
    (tmp_path / "empty").mkdir()
    assert runner.invoke(app, ["plugin", "new", "x", "--kind", "dataset", "--dir", str(tmp_path / "empty")]).exit_code == 0


def test_new_warns_when_the_name_is_taken(tmp_path):
    result = runner.invoke(app, ["plugin", "new", "kmeans", "--kind", "clusterer", "--dir", str(tmp_path / "k")])
    assert result.exit_code == 0 and "already provided by dcx" in result.output and "dcx-kmeans:kmeans" in result.output


def test_class_name():
    assert class_name("my_thing") == "MyThing" and class_name("kmeans2") == "Kmeans2"
    assert class_name("my-clusterer") == "MyClusterer"


@pytest.mark.slow
def test_each_kind_passes_its_own_tests_after_install_and_dcx_runs_it(tmp_path):
    env = Throwaway(tmp_path / "site")
    dirs = {kind: tmp_path / kind for kind in KINDS}
    for kind, path in dirs.items():
        assert runner.invoke(app, ["plugin", "new", NAMES[kind], "--kind", kind, "--dir", str(path)]).exit_code == 0
    env.install(*dirs.values())
    listed = env.listed()
    dists = {kind: "dcx-" + NAMES[kind].replace("_", "-") for kind in KINDS}
    for kind, registry_kind in zip(KINDS, ["clusterer", "clusterer", "backbone", "dataset"]):
        row = listed[(registry_kind, NAMES[kind])]
        assert row["status"] == "ok" and row["package"] == dists[kind] and row["version"] == "0.1.0", row
    summary = env.pytest(*(p / "tests" for p in dirs.values()), cwd=tmp_path)
    assert "passed" in summary and "failed" not in summary and "skipped" not in summary, summary
    for kind in ("clusterer", "online-clusterer"):
        out = env.run("dcx", "run", "--clusterer", NAMES[kind], "--backbone", "t_backbone", "--dataset", "t-dataset",
                      "--opt", "t-dataset.size=60", *TINY_RUN, "--out", str(tmp_path / f"run-{kind}"))
        plugins = json.loads(out.stdout)["plugins"]
        assert {k: p["package"] for k, p in plugins.items()} == {
            "clusterer": dists[kind], "backbone": "dcx-t-backbone", "dataset": "dcx-t-dataset"}
