"""The bad-input matrix, second pass (issue 38), for the commands around a run: version, config
files, dcx cluster / eval / report / compare / plugin new, and image folders. One case per item:
exit code, one error line (no traceback), and nothing overwritten. Run directories, resume and
signals are in test_bad_runs.py."""

from __future__ import annotations

import json
from functools import partial

import numpy as np
import pytest
from cli_checks import assert_one_line_error
from typer.testing import CliRunner

from dcx import __version__
from dcx.cli import app

runner = CliRunner()
one_line_error = partial(assert_one_line_error, warnings_may_precede=True)


def test_version_flag():
    for flag in ("--version", "-V"):
        result = runner.invoke(app, [flag])
        assert result.exit_code == 0, result.output
        assert result.output.strip() == f"dcx {__version__}"


@pytest.mark.parametrize("line, words", [
    ("epochs = true", ["epochs must be an integer", "got True"]),
    ("lr = true", ["lr must be a number"]),
    ("sobel = 1", ["sobel must be true or false"]),
])
def test_config_file_bool_is_not_a_number(tmp_path, monkeypatch, line, words):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.toml").write_text(line + "\n")
    one_line_error(runner.invoke(app, ["run", "--config", "c.toml"]), "config file c.toml", *words)
    assert not (tmp_path / "runs").exists()


def test_image_size_has_an_upper_bound(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    one_line_error(runner.invoke(app, ["run", "--image-size", "100000"]), "--image-size must be <= 1024")
    assert not (tmp_path / "runs").exists()


@pytest.fixture(scope="module")
def odd_folder_run(tmp_path_factory):
    """A 2-epoch run on a folder with a corrupt image, a link loop and a broken link: (output, summary)."""
    from dcx.datasets.characters import write_folder

    tmp = tmp_path_factory.mktemp("odd_folder")
    data = write_folder(tmp / "data", per_class=3, size=16)
    (data / "0" / "broken.png").write_bytes(b"not an image at all")
    (data / "0" / "loop.png").symlink_to("loop.png")
    (data / "0" / "gone.png").symlink_to(tmp / "nowhere.png")
    out = tmp / "run"
    result = runner.invoke(app, ["run", "--dataset", "imagefolder", "--data-root", str(data), "--k", "3",
                                 "--epochs", "2", "--passes", "2", "--batch-size", "8", "--width", "0.125",
                                 "--opt", "alexnet.fc_dim=32", "--no-probe", "--quiet", "--no-report", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return " ".join(result.output.split()), json.loads((out / "summary.json").read_text())  # log lines wrap


def test_an_unreadable_image_warns_once_over_every_pass(odd_folder_run):
    text, _ = odd_folder_run
    assert "Traceback" not in text and text.count("skipping image") == 1, text


def test_link_loops_and_broken_links_count_as_skipped(odd_folder_run):
    text, summary = odd_folder_run
    assert "loop.png" in text and "gone.png" in text, text
    assert summary["skipped_images"] == 3  # the corrupt file, the loop, the broken link


@pytest.mark.parametrize("link", [False, True], ids=["same-path", "through-a-link"])
def test_cluster_out_that_is_the_input_is_refused(tmp_path, blobs, link):
    src = tmp_path / "x.npy"
    np.save(src, blobs[0])
    before = src.read_bytes()
    out = src
    if link:
        out = tmp_path / "labels.npy"
        out.symlink_to(src)
    one_line_error(runner.invoke(app, ["cluster", str(src), "--clusterer", "kmeans", "--k", "5", "--out", str(out)]),
                   "is the features file", "choose another --out")
    assert src.read_bytes() == before


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bad_commands") / "run"
    result = runner.invoke(app, ["run", "--dataset", "digits", "--opt", "digits.limit=100", "--k", "5",
                                 "--epochs", "1", "--passes", "1", "--width", "0.125", "--opt", "alexnet.fc_dim=32",
                                 "--batch-size", "32", "--no-probe", "--quiet", "--no-report", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


@pytest.mark.parametrize("flag, words", [("--layers", "--layers needs block names"),
                                         ("--protocol", "--protocol needs linear, knn, cluster or all")])
def test_eval_refuses_an_empty_list(finished_run, flag, words):
    before = sorted(p.name for p in finished_run.iterdir())
    one_line_error(runner.invoke(app, ["eval", str(finished_run), flag, "", "--quiet"]), words)
    assert sorted(p.name for p in finished_run.iterdir()) == before  # no eval.json


def test_plugin_name_must_be_ascii(tmp_path):
    target = tmp_path / "pkg"
    one_line_error(runner.invoke(app, ["plugin", "new", "spëctral", "--kind", "clusterer", "--dir", str(target)]),
                   "must start with a letter and hold only ASCII letters", "e.g. spectral")
    assert not target.exists()


# ----------------------------------------------------------------------------- dcx compare

COMPARE = ["compare", "--dataset", "digits", "--opt", "digits.limit=100", "--k", "5", "--epochs", "1", "--passes", "1",
           "--width", "0.125", "--opt", "alexnet.fc_dim=32", "--batch-size", "32", "--no-probe", "--protocol", "none",
           "--quiet"]


@pytest.mark.parametrize("args, words", [
    (["--clusterers", "kmeans,kmeans"], ["--clusterers lists kmeans twice"]),
    (["--clusterers", "kmeans,dcx:kmeans"], ["--clusterers lists kmeans and dcx:kmeans, the same one"]),
    (["--clusterers", "kmeans", "--seeds", "0,0"], ["--seeds lists 0 twice"]),
])
def test_compare_refuses_a_run_listed_twice(tmp_path, args, words):
    out = tmp_path / "cmp"
    one_line_error(runner.invoke(app, [*COMPARE, *args, "--out", str(out)]), *words)
    assert not out.exists()


def test_compare_resume_needs_a_comparison(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    for folder in (mine, tmp_path / "absent"):
        one_line_error(runner.invoke(app, [*COMPARE, "--clusterers", "kmeans", "--resume", "--out", str(folder)]),
                       "is not a dcx comparison", "drop --resume")
    assert [p.name for p in mine.iterdir()] == ["notes.txt"] and not (tmp_path / "absent").exists()


def test_compare_out_that_holds_files_is_refused(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    one_line_error(runner.invoke(app, [*COMPARE, "--clusterers", "kmeans", "--out", str(mine)]),
                   "exists and is not empty", "choose another --out")
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]


def test_compare_validates_every_run_before_the_first_trains(tmp_path):
    out = tmp_path / "cmp"
    result = runner.invoke(app, [*COMPARE, "--clusterers", "kmeans,pic", "--opt", "pic.nnn=0", "--out", str(out)])
    one_line_error(result, "pic: option 'nnn' must be an integer >= 1")
    assert not out.exists()  # kmeans did not train first


def test_compare_applies_a_clusterer_option_to_that_clusterers_runs(tmp_path):
    import tomllib

    out = tmp_path / "cmp"
    result = runner.invoke(app, [*COMPARE, "--clusterers", "kmeans,pic", "--opt", "pic.nnn=5", "--out", str(out)])
    assert result.exit_code == 0, result.output
    pic = tomllib.loads((out / "pic-seed0" / "config.toml").read_text())["options"]
    kmeans = tomllib.loads((out / "kmeans-seed0" / "config.toml").read_text())["options"]
    assert pic["pic"]["nnn"] == 5 and "pic" not in kmeans
    assert [r["status"] for r in json.loads((out / "comparison.json").read_text())["runs"]] == ["trained", "trained"]
    (out / "comparison.json").unlink()  # run directories of the comparison, copied elsewhere: --resume takes them
    result = runner.invoke(app, [*COMPARE, "--clusterers", "kmeans,pic", "--opt", "pic.nnn=5", "--resume",
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert [r["status"] for r in json.loads((out / "comparison.json").read_text())["runs"]] == ["skipped", "skipped"]
