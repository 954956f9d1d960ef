"""The bad-input matrix (issue 11): every case has its expected outcome - one error line, exit 2
(or the documented handling), no traceback, nothing lost.

Cases covered elsewhere, by file: bad run settings and config files (test_run_config.py),
resume/lock/orphan folders/umask/interrupts (test_run_safety.py), unknown and ambiguous plugin
names (test_registry.py, test_provenance.py), unreadable and odd images (test_folder.py),
a plugin returning the wrong shape (test_engine.py), NaN features in dcx cluster (test_cli.py).
The second pass (issue 38): test_bad_runs.py (run directories, resume, SIGTERM, locks) and
test_bad_commands.py (version, config files, cluster, eval, compare, plugin new, image folders).
"""

from __future__ import annotations

import errno
import os
import pickle
import shutil
from functools import partial

import numpy as np
import pytest
from cli_checks import TINY, assert_one_line_error
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from dcx.cli import app

runner = CliRunner()
one_line_error = partial(assert_one_line_error, warnings_may_precede=True)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bad") / "run"
    assert runner.invoke(app, ["run", *TINY, "--out", str(out)]).exit_code == 0
    return out


# ----------------------------------------------------------------------------- dcx cluster


@pytest.mark.parametrize(
    "args, words",
    [
        (["--pca-dim", "0"], ["--pca-dim must be >= 1"]),
        (["--k", "0"], ["--k must be >= 1"]),
        (["--seed", "-3"], ["--seed must be >= 0"]),
        (["--clusterer", "swav"], ["labels batches while it trains"]),
        (["--clusterer", "pic", "--k", "3"], ["chooses its own number of clusters"]),
        (["--opt", "pic.nnn=3"], ["options given for 'pic'"]),
        (["--clusterer", "sinkhorn", "--k", "5"], ["cannot cluster a feature file"]),
    ],
)
def test_cluster_bad_arguments(tmp_path, blobs, args, words):
    src = tmp_path / "x.npy"
    np.save(src, blobs[0])
    out = tmp_path / "labels.npy"
    one_line_error(runner.invoke(app, ["cluster", str(src), "--out", str(out), *args]), *words)
    assert not out.exists()


def test_cluster_out_is_a_folder(tmp_path, blobs):
    src = tmp_path / "x.npy"
    np.save(src, blobs[0])
    one_line_error(runner.invoke(app, ["cluster", str(src), "--out", str(tmp_path)]), "is a folder")


@pytest.mark.parametrize(
    "make, words",
    [
        (lambda p: np.save(p, np.array([[1e300, 1.0], [2.0, 3.0], [4.0, 5.0]])), ["beyond float32's range"]),
        (lambda p: np.save(p, np.array([[{"a": 1}], [None]], dtype=object), allow_pickle=True), ["Python objects"]),
        (lambda p: p.write_bytes(b"not a numpy file"), ["not a readable .npy"]),
        (lambda p: np.save(p, np.ones((3, 2), dtype=np.complex64)), ["real numbers"]),
        (lambda p: np.save(p, np.array([["a", "b"]])), ["need real numbers"]),
        (lambda p: np.save(p, np.zeros((0, 4), np.float32)), ["empty array"]),
    ],
)
def test_cluster_bad_feature_files(tmp_path, make, words):
    src, out = tmp_path / "x.npy", tmp_path / "labels.npy"
    make(src)
    one_line_error(runner.invoke(app, ["cluster", str(src), "--k", "2", "--out", str(out)]), *words)
    assert not out.exists()


def test_pickled_array_is_never_unpickled(tmp_path):
    """A .npy holding a pickle payload is refused before anything is unpickled."""
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    src = tmp_path / "x.npy"
    np.save(src, np.array([[Payload()]], dtype=object), allow_pickle=True)
    one_line_error(runner.invoke(app, ["cluster", str(src), "--out", str(tmp_path / "l.npy")]), "Python objects")
    assert not marker.exists()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    n=st.integers(0, 40), d=st.integers(0, 8),
    dtype=st.sampled_from(["float16", "float32", "float64", "int8", "int64", "uint8", "bool"]),
    fill=st.sampled_from(["normal", "zeros", "nan", "inf", "huge", "constant"]),
    k=st.integers(-1, 45), pca_dim=st.integers(-1, 12), preprocess=st.booleans(),
)
def test_fuzz_dcx_cluster_never_tracebacks(tmp_path_factory, n, d, dtype, fill, k, pca_dim, preprocess):
    """Whatever the shape, dtype, values, k and --pca-dim: exit 0 or one error line with exit 2."""
    folder = tmp_path_factory.mktemp("fuzz")
    rng = np.random.default_rng(n * 31 + d)
    x = rng.standard_normal((n, d)) * 3
    if fill == "zeros":
        x[:] = 0
    elif fill == "constant":
        x[:] = 7
    elif n and d and fill in ("nan", "inf"):
        x[rng.integers(0, n), rng.integers(0, d)] = np.nan if fill == "nan" else np.inf
    elif fill == "huge":
        x *= 1e250
    with np.errstate(all="ignore"):
        arr = x.astype(dtype)
    src, out = folder / "x.npy", folder / "labels.npy"
    np.save(src, arr)
    args = ["cluster", str(src), "--k", str(k), "--pca-dim", str(pca_dim), "--out", str(out),
            "--preprocess" if preprocess else "--no-preprocess", "--quiet"]
    result = runner.invoke(app, args)
    assert result.exit_code in (0, 2), (args, result.output, result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    if result.exit_code == 0:
        labels = np.load(out)
        assert labels.shape == (n,) and labels.min() >= 0
    else:
        assert len([line for line in result.output.splitlines() if line.startswith("error:")]) == 1, result.output
        assert not out.exists()


# ----------------------------------------------------------------------------- run directories


def test_malicious_checkpoint_is_refused_and_never_executed(finished_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (run / "checkpoint.pt").write_bytes(pickle.dumps(Payload()))
    one_line_error(runner.invoke(app, ["run", "--resume", str(run), "--epochs", "2"]), "cannot read", "checkpoint.pt")
    assert not marker.exists()
    one_line_error(runner.invoke(app, ["eval", str(run), "--protocol", "knn"]), "cannot read")
    assert not marker.exists()


def test_damaged_metrics_file_in_report(finished_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    (run / "metrics.jsonl").write_text('{"epoch": 0, "loss": 1.0}\n{"epoch": 1, "lo')
    one_line_error(runner.invoke(app, ["report", str(run)]), "metrics.jsonl line 2", "damaged")


def test_report_on_a_folder_that_is_not_a_run(tmp_path):
    one_line_error(runner.invoke(app, ["report", str(tmp_path)]), "missing or empty")


def test_disk_full_is_one_line_and_leaves_no_half_written_run(tmp_path, monkeypatch):
    real_fsync = os.fsync

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", *TINY, "--out", str(out)])
    monkeypatch.setattr(os, "fsync", real_fsync)
    one_line_error(result, "No space left on device", "free some space")
    assert not out.exists()


def test_disk_full_during_a_run_keeps_the_last_checkpoint(finished_run, tmp_path, monkeypatch):
    from dcx.training import rundir

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    before = (run / "checkpoint.pt").read_bytes()
    real = rundir.atomic_write

    def full_on_checkpoint(path, data):
        if path.name == "checkpoint.pt":
            raise rundir.RunDirError(f"cannot write {path}: No space left on device: free some space and resume the run")
        real(path, data)

    monkeypatch.setattr(rundir, "atomic_write", full_on_checkpoint)
    result = runner.invoke(app, ["run", "--resume", str(run), "--epochs", "2", "--quiet", "--no-report"])
    one_line_error(result, "No space left on device")
    assert (run / "checkpoint.pt").read_bytes() == before
    assert not list(run.glob(".*.tmp"))


def test_unknown_names_and_empty_or_missing_folders(tmp_path):
    one_line_error(runner.invoke(app, ["run", "--backbone", "alexnett"]), "unknown backbone 'alexnett'", "alexnet")
    one_line_error(runner.invoke(app, ["run", "--dataset", "imagefolder", "--data-root", str(tmp_path / "none")]),
                    "is not a folder")
    (tmp_path / "empty").mkdir()
    one_line_error(runner.invoke(app, ["run", "--dataset", "imagefolder", "--data-root", str(tmp_path / "empty")]),
                    "no images")
    assert not (tmp_path / "runs").exists()


def test_compare_exits_1_when_a_run_failed(tmp_path):
    result = runner.invoke(app, ["compare", "--clusterers", "kmeans", *TINY[:-2], "--lr", "1e30",
                                 "--protocol", "none", "--out", str(tmp_path / "cmp"), "--quiet"])
    assert result.exit_code == 1, result.output
    assert "1 of 1 runs failed" in result.output and "kmeans seed 0" in result.output


def test_compare_refuses_settings_that_would_fail_before_training(tmp_path):
    out = tmp_path / "cmp"
    result = runner.invoke(app, ["compare", "--clusterers", "kmeans", "--dataset", "digits",
                                 "--opt", "digits.limit=100", "--k", "150", "--epochs", "1",
                                 "--protocol", "none", "--out", str(out), "--quiet"])
    one_line_error(result, "k=150 is larger than the dataset")
    assert not out.exists()
