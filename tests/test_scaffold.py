"""`dcx plugin new`: a package for each kind whose own tests pass right after install and that
`dcx list` shows and `dcx run` uses; user errors are one line and exit 2."""

import json

import pytest
from cli_checks import assert_one_line_error
from throwaway import TINY_RUN, Throwaway
from typer.testing import CliRunner

from dcx.cli import app
from dcx.scaffold import class_name

runner = CliRunner()
KINDS = ["clusterer", "online-clusterer", "backbone", "dataset"]


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


def test_new_refuses_a_non_empty_dir_a_bad_name_and_a_bad_kind(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    result = runner.invoke(app, ["plugin", "new", "x", "--kind", "clusterer", "--dir", str(tmp_path / "full")])
    assert_one_line_error(result, "exists and is not empty")
    assert [p.name for p in (tmp_path / "full").iterdir()] == ["keep.txt"]
    for bad in ("1x", "my-thing", "class", "a.b"):
        result = runner.invoke(app, ["plugin", "new", bad, "--kind", "clusterer", "--dir", str(tmp_path / "n")])
        assert_one_line_error(result, "must be a Python identifier")
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


@pytest.mark.slow
def test_each_kind_passes_its_own_tests_after_install_and_dcx_runs_it(tmp_path):
    env = Throwaway(tmp_path / "site")
    dirs = {kind: tmp_path / kind for kind in KINDS}
    for kind, path in dirs.items():
        name = "t_" + kind.replace("-", "_")
        assert runner.invoke(app, ["plugin", "new", name, "--kind", kind, "--dir", str(path)]).exit_code == 0
    env.install(*dirs.values())
    listed = env.listed()
    for kind, registry_kind in zip(KINDS, ["clusterer", "clusterer", "backbone", "dataset"]):
        row = listed[(registry_kind, "t_" + kind.replace("-", "_"))]
        assert row["status"] == "ok" and row["package"] == "dcx-t-" + kind and row["version"] == "0.1.0", row
    summary = env.pytest(*(p / "tests" for p in dirs.values()), cwd=tmp_path)
    assert "passed" in summary and "failed" not in summary and "skipped" not in summary, summary
    for clusterer in ("t_clusterer", "t_online_clusterer"):
        out = env.run("dcx", "run", "--clusterer", clusterer, "--backbone", "t_backbone", "--dataset", "t_dataset",
                      "--opt", "t_dataset.size=60", *TINY_RUN, "--out", str(tmp_path / clusterer))
        plugins = json.loads(out.stdout)["plugins"]
        assert {kind: p["package"] for kind, p in plugins.items()} == {
            "clusterer": "dcx-t-" + clusterer[2:].replace("_", "-"), "backbone": "dcx-t-backbone",
            "dataset": "dcx-t-dataset"}
