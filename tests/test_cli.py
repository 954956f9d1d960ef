import json
import tomllib

import numpy as np
import pytest
from cli_checks import assert_one_line_error
from typer.testing import CliRunner

from dcx.cli import app

runner = CliRunner()
TINY = ["--dataset", "digits", "--opt", "digits.limit=200", "--k", "10", "--epochs", "1", "--passes", "1",
        "--width", "0.125", "--opt", "alexnet.fc_dim=64", "--batch-size", "32", "--quiet", "--no-report"]


def test_unknown_clusterer_exits_2_with_available_and_closest():
    result = runner.invoke(app, ["run", "--clusterer", "kmean"])
    assert_one_line_error(result, "unknown clusterer 'kmean'", "did you mean 'kmeans'", "available: dcv2, kmeans, pic, sinkhorn, swav")


def test_invalid_plugin_option_names_plugin_option_and_accepted_values():
    result = runner.invoke(app, ["run", "--opt", "kmeans.backend=gpu"])
    assert_one_line_error(result, "kmeans", "'backend'", "auto, faiss, torch")


@pytest.fixture
def feature_file(tmp_path, blobs):
    x, _ = blobs
    path = tmp_path / "features.npy"
    np.save(path, x)
    return path


@pytest.mark.parametrize(
    "array, k, words",
    [
        (np.full((20, 4), np.nan, np.float32), 2, ["NaN or inf"]),
        (np.array([[np.inf, 1.0], [1.0, 1.0], [0.0, 0.0]], np.float32), 2, ["NaN or inf"]),
        (np.zeros((5, 4), np.float32), 6, ["k=6 is larger than the number of rows N=5"]),
        (np.zeros(30, np.float32), 2, ["need 2-D"]),
    ],
)
def test_cluster_rejects_bad_input_and_writes_nothing(tmp_path, array, k, words):
    src, out = tmp_path / "bad.npy", tmp_path / "labels.npy"
    np.save(src, array)
    result = runner.invoke(app, ["cluster", str(src), "--k", str(k), "--out", str(out)])
    assert_one_line_error(result, *words)
    assert not out.exists() and not list(tmp_path.glob(".labels*"))


def test_cluster_missing_file(tmp_path):
    result = runner.invoke(app, ["cluster", str(tmp_path / "none.npy"), "--out", str(tmp_path / "o.npy")])
    assert_one_line_error(result, "does not exist")


def test_cluster_writes_labels(feature_file, tmp_path, blobs):
    out = tmp_path / "labels.npy"
    result = runner.invoke(app, ["cluster", str(feature_file), "--k", "6", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    labels = np.load(out)
    assert labels.shape == (600,) and labels.max() < 6
    assert json.loads(result.stdout)["n_clusters"] == 6


def test_list_json_has_every_builtin():
    result = runner.invoke(app, ["list", "--json"])
    assert result.exit_code == 0
    rows = json.loads(result.stdout)
    names = {(r["kind"], r["name"]) for r in rows if r["status"] == "ok"}
    assert {("clusterer", "kmeans"), ("backbone", "alexnet"), ("dataset", "digits")} <= names
    assert all(r["package"] == "dcx" and r["version"] for r in rows if r["name"] == "kmeans")


def test_run_writes_run_dir_and_its_config_reproduces_it(tmp_path):
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", *TINY, "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    for name in ("config.toml", "metrics.jsonl", "assignments.npy", "checkpoint.pt", "summary.json"):
        assert (out / name).is_file(), name
    assert not list(out.glob(".*.tmp"))
    config = tomllib.loads((out / "config.toml").read_text())
    assert config["k"] == 10 and config["options"]["digits"]["limit"] == 200 and config["sobel"] is True
    summary = json.loads(result.stdout)
    assert summary["epochs"] == 1 and "probe_nmi_final" in summary
    again = tmp_path / "again"
    result = runner.invoke(app, ["run", "--config", str(out / "config.toml"), "--out", str(again), "--quiet", "--no-report"])
    assert result.exit_code == 0, result.output
    assert np.array_equal(np.load(out / "assignments.npy"), np.load(again / "assignments.npy"))


def test_existing_run_dir_needs_resume(tmp_path):
    out = tmp_path / "run"
    assert runner.invoke(app, ["run", *TINY, "--out", str(out)]).exit_code == 0
    result = runner.invoke(app, ["run", *TINY, "--out", str(out)])
    assert_one_line_error(result, "--resume")
    result = runner.invoke(app, ["run", *TINY, "--epochs", "2", "--out", str(out), "--resume"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["phase"]) for r in rows] == [(0, "train"), (1, "train"), (2, "final")]
