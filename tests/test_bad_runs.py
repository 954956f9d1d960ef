"""The bad-input matrix, second pass (issue 38), for run directories: resume, read-only folders,
a full disk, SIGTERM from a scheduler, and eval / report beside a run that is training. Each case:
exit code, one error line without a traceback, and the run's files unchanged byte for byte where
data could be lost."""

from __future__ import annotations

import errno
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import pytest
from cli_checks import TINY, assert_one_line_error
from typer.testing import CliRunner

from dcx.cli import app
from dcx.training import rundir
from dcx.training.rundir import RunLock

runner = CliRunner()
one_line_error = partial(assert_one_line_error, warnings_may_precede=True)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("bad_runs") / "run"
    result = runner.invoke(app, ["run", *TINY, "--epochs", "2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture
def run(finished, tmp_path):
    return Path(shutil.copytree(finished, tmp_path / "run"))


def snapshot(path: Path) -> dict:
    return {p.relative_to(path): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_resume_without_checkpoint_keeps_the_finished_epochs(run):
    (run / "checkpoint.pt").unlink()
    before = snapshot(run)
    result = runner.invoke(app, ["run", "--resume", str(run), "--epochs", "3", "--quiet", "--no-report"])
    one_line_error(result, "has no checkpoint.pt", "records 2 finished epoch(s)", "restore the checkpoint")
    assert snapshot(run) == before


def test_resume_after_metrics_were_deleted_warns_once(run):
    (run / "metrics.jsonl").unlink()
    result = runner.invoke(app, ["run", "--resume", str(run), "--epochs", "3", "--quiet", "--no-report"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())  # the log's lines wrap at the terminal's width
    assert "Traceback" not in text and text.count("lacks the rows") == 1, text
    assert "lacks the rows of epoch(s) 0-1, which the checkpoint has trained" in text, text


def _deny(monkeypatch, folder: Path) -> None:
    """``folder`` read-only, also for root (which ignores modes): opening a file in it is refused."""
    folder.chmod(0o555)
    real = open

    def denied(path, *args, **kwargs):
        if Path(path).parent == folder:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(rundir, "open", denied, raising=False)


def test_read_only_empty_out_folder_is_one_line(tmp_path, monkeypatch):
    out = tmp_path / "ro"
    out.mkdir()
    _deny(monkeypatch, out)
    result = runner.invoke(app, ["run", *TINY, "--out", str(out)])
    out.chmod(0o755)
    one_line_error(result, f"cannot write to {out}", "Permission denied", "make it writable")
    assert out.is_dir() and not any(out.iterdir())


def test_read_only_run_folder_resume_is_one_line(run, monkeypatch):
    before = snapshot(run)
    _deny(monkeypatch, run)
    result = runner.invoke(app, ["run", "--resume", str(run), "--epochs", "3", "--quiet", "--no-report"])
    run.chmod(0o755)
    one_line_error(result, f"cannot write to {run}", "Permission denied")
    assert snapshot(run) == before


def test_raw_pickle_checkpoint_is_one_line_without_torch_warnings(run):
    (run / "checkpoint.pt").write_bytes(pickle.dumps({"epoch": 1}, protocol=4))
    result = runner.invoke(app, ["run", "--resume", str(run), "--epochs", "3", "--quiet", "--no-report"])
    assert_one_line_error(result, "cannot read", "checkpoint.pt")  # the whole output: no UserWarning lines


def test_disk_full_before_the_first_epoch_says_run_it_again(tmp_path, monkeypatch):
    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", *TINY, "--out", str(out)])
    monkeypatch.undo()
    one_line_error(result, "No space left on device", "free some space and run it again")
    assert "resume" not in result.output and not out.exists()


def test_batch_size_larger_than_the_dataset_is_refused(tmp_path):
    out = tmp_path / "run"
    one_line_error(runner.invoke(app, ["run", *TINY, "--batch-size", "500", "--out", str(out)]),
                   "--batch-size 500 is larger than the dataset (100 images)")
    assert not out.exists()


def test_data_root_for_a_dataset_that_reads_none(tmp_path):
    out = tmp_path / "run"
    one_line_error(runner.invoke(app, ["run", *TINY, "--data-root", str(tmp_path), "--out", str(out)]),
                   "dataset digits reads no folder", "--dataset imagefolder")
    assert not out.exists()


@pytest.mark.parametrize("command", [["eval", "--protocol", "knn", "--no-report"], ["report"]])
def test_eval_and_report_wait_for_the_run_that_holds_the_folder(run, command):
    before = snapshot(run)
    with RunLock(run):
        result = runner.invoke(app, [command[0], str(run), *command[1:], "--quiet"])
    one_line_error(result, "is in use by pid", str(os.getpid()))
    assert snapshot(run) == before


# ----------------------------------------------------------------------------- SIGTERM


def _dcx_run(out: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "dcx", "run", *TINY, "--out", str(out), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _terminate_when(proc: subprocess.Popen, path: Path) -> str:
    """Send SIGTERM once ``path`` exists; the process's output."""
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[0]
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    return proc.communicate(timeout=300)[0]


def test_sigterm_before_the_first_epoch_leaves_no_folder(tmp_path):
    out = tmp_path / "run"
    proc = _dcx_run(out, "--passes", "300")  # a long first epoch: the signal comes before its checkpoint
    output = _terminate_when(proc, out / "config.toml")
    assert proc.returncode == 143, output
    assert output.strip() == "error: terminated before the first epoch finished; nothing was kept", output
    assert not out.exists()


def test_sigterm_after_an_epoch_exits_143_with_the_resume_command(tmp_path):
    out = tmp_path / "run"
    proc = _dcx_run(out, "--epochs", "1000")
    output = _terminate_when(proc, out / "checkpoint.pt")
    assert proc.returncode == 143, output
    assert output.strip().splitlines() == [f"error: terminated; finished epochs are saved in {out}. "
                                           f"Resume with: dcx run --resume {out}"], output
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows and (out / "checkpoint.pt").is_file()
