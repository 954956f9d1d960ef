"""A run directory belongs to its run: resume with its own settings, one writer, nothing lost."""

from __future__ import annotations

import json
import os
import stat
import tomllib
from functools import partial

import pytest
from cli_checks import assert_one_line_error
from typer.testing import CliRunner

from dcx.cli import app
from dcx.training.rundir import RunDir, RunLock

runner = CliRunner()
one_line_error = partial(assert_one_line_error, warnings_may_precede=True)
TINY = ["--dataset", "digits", "--opt", "digits.limit=120", "--k", "10", "--epochs", "1", "--passes", "1",
        "--width", "0.125", "--opt", "alexnet.fc_dim=32", "--batch-size", "32", "--no-probe"]
QUIET = ["--quiet", "--no-report"]


def _snapshot(path):
    return {p.relative_to(path): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "run"
    result = runner.invoke(app, ["run", *TINY, *QUIET, "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


def _copy(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_resume_with_more_epochs_continues_with_the_runs_own_settings(finished, tmp_path):
    run = _copy(finished, tmp_path / "run")
    before = (run / "config.toml").read_text().splitlines()
    result = runner.invoke(app, ["run", "--resume", str(run), "--epochs", "2", *QUIET])
    assert result.exit_code == 0, result.output
    after = (run / "config.toml").read_text().splitlines()
    assert [line for line in after if not line.startswith("epochs")] == [l for l in before if not l.startswith("epochs")]
    assert "epochs = 2" in after and "epochs = 1" in before
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["phase"]) for r in rows] == [(0, "train"), (1, "train"), (2, "final")]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["epochs"] == 2 and summary["images"] == 120  # the run's 120 images, not the default 1,797
    first = json.loads((finished / "summary.json").read_text())["seconds"]
    assert summary["seconds"] > first  # the whole run's training time, not only the resumed part


def test_resume_with_a_changed_setting_is_refused_and_changes_nothing(finished, tmp_path):
    run = _copy(finished, tmp_path / "run")
    before = _snapshot(run)
    result = runner.invoke(app, ["run", "--resume", str(run), "--k", "20"])
    one_line_error(result, "--k cannot change when resuming", "run: 10", "given: 20")
    result = runner.invoke(app, ["run", "--resume", str(run), "--opt", "alexnet.fc_dim=64"])
    one_line_error(result, "alexnet.fc_dim cannot change")
    result = runner.invoke(app, ["run", "--resume", str(run), "--epochs", "0"])
    one_line_error(result, "--epochs must be >= 1")
    assert _snapshot(run) == before
    result = runner.invoke(app, ["run", "--resume", str(run), "--dataset", "digits", "--k", "10", *QUIET])  # same values
    assert result.exit_code == 0, result.output


def test_resume_on_a_folder_that_is_not_a_run_is_refused(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "config.toml").write_text("")  # a user's own file, not a dcx run
    (folder / "notes.txt").write_text("keep me")
    before = _snapshot(folder)
    one_line_error(runner.invoke(app, ["run", "--resume", str(tmp_path / "nothing")]), "is not a folder")
    (folder / "config.toml").unlink()
    before = _snapshot(folder)
    one_line_error(runner.invoke(app, ["run", "--resume", str(folder)]), "is not a dcx run")
    assert _snapshot(folder) == before


def test_a_second_writer_is_refused_naming_the_holder(finished, tmp_path):
    run = _copy(finished, tmp_path / "run")
    with RunLock(run):
        result = runner.invoke(app, ["run", "--resume", str(run), "--epochs", "2", *QUIET])
        one_line_error(result, "is in use by pid", str(os.getpid()))
    result = runner.invoke(app, ["run", "--resume", str(run), "--epochs", "2", *QUIET])  # released: fine
    assert result.exit_code == 0, result.output


def test_a_kill_between_metrics_row_and_checkpoint_resumes_to_one_row_per_epoch(tmp_path, monkeypatch):
    out = tmp_path / "run"
    real = RunDir.save_checkpoint

    def killed(self, state):
        if state["epoch"] == 2:  # the row of epoch 1 is written, its checkpoint is not
            raise KeyboardInterrupt
        real(self, state)

    monkeypatch.setattr(RunDir, "save_checkpoint", killed)
    result = runner.invoke(app, ["run", *TINY, "--epochs", "3", *QUIET, "--out", str(out)])
    one_line_error(result, "interrupted", f"dcx run --resume {out}", code=130)
    rows = [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows == [0, 1]  # a stale row for epoch 1 without its checkpoint
    monkeypatch.setattr(RunDir, "save_checkpoint", real)
    result = runner.invoke(app, ["run", "--resume", str(out), *QUIET])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["phase"]) for r in rows] == [(0, "train"), (1, "train"), (2, "train"), (3, "final")]


def test_a_failure_before_the_first_epoch_leaves_no_folder(tmp_path, monkeypatch):
    from dcx.training.engine import Engine

    out = tmp_path / "run"

    def boom(self, epoch):
        raise KeyboardInterrupt

    monkeypatch.setattr(Engine, "run_epoch", boom)
    result = runner.invoke(app, ["run", *TINY, *QUIET, "--out", str(out)])
    one_line_error(result, "interrupted before the first epoch finished; nothing was kept", code=130)
    assert not out.exists()
    result = runner.invoke(app, ["run", *TINY, *QUIET, "--out", str(out)])  # the same --out works next time
    assert result.exit_code == 130 and not out.exists()


def test_divergence_at_epoch_0_says_no_epoch_was_kept(tmp_path):
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", *TINY, "--lr", "1e30", *QUIET, "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert "diverged" in result.output or "NaN" in result.output
    assert "keeps the last good epoch" not in result.output
    assert not out.exists()


def test_out_that_is_a_file_is_one_line(tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    one_line_error(runner.invoke(app, ["run", *TINY, "--out", str(target)]), "is a file")
    assert target.read_text() == "x"


def test_run_files_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        out = tmp_path / "run"
        assert runner.invoke(app, ["run", *TINY, *QUIET, "--out", str(out)]).exit_code == 0
    finally:
        os.umask(old)
    for name in ("config.toml", "metrics.jsonl", "checkpoint.pt", "summary.json", "assignments.npy"):
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o644, name


def test_the_checkpoint_records_its_config_and_api(finished):
    state = RunDir(finished).load_checkpoint()
    assert state["api"].startswith("3.") and state["config"]["k"] == 10
    assert tomllib.loads((finished / "config.toml").read_text())["k"] == 10


def test_a_run_that_used_a_removed_setting_is_refused_naming_it(finished, tmp_path):
    """A config that used a removed setting at another value than dcx trains at now is refused in one
    line naming it and the last dcx version that had it; at that value it is dropped silently."""
    run = _copy(finished, tmp_path / "run")
    toml = (run / "config.toml").read_text()
    (run / "config.toml").write_text("warp = 2.0\n" + toml)  # a top-level key: before the tables
    result = runner.invoke(app, ["run", "--resume", str(run), "--epochs", "3", *QUIET])
    assert result.exit_code == 2 and "setting 'warp' = 2.0 was removed after dcx 0.1.0" in result.output
    (run / "config.toml").write_text("warp = 1.0\n" + toml)
    from dcx.runs.runner import read_run_config

    assert "warp" not in read_run_config(run).to_dict()


def test_a_removed_plugin_option_is_refused_and_a_third_partys_kept():
    from dcx.core.config import RunConfig
    from dcx.core.errors import InputError

    with pytest.raises(InputError, match=r"option swav.heads = 3 was removed after dcx 0.1.0"):
        RunConfig.from_dict({"clusterer": "swav", "options": {"swav": {"heads": 3}}})
    assert RunConfig.from_dict({"clusterer": "swav", "options": {"swav": {"heads": 1}}}).options == {"swav": {}}
    theirs = {"clusterer": "swav", "plugins": {"clusterer": {"name": "swav", "package": "their-pkg", "version": "1"}},
              "options": {"swav": {"heads": 3}}}
    assert RunConfig.from_dict(theirs).options == {"swav": {"heads": 3}}


def test_a_checkpoint_of_the_previous_format_is_refused_in_one_line(finished, tmp_path):
    import torch

    run = _copy(finished, tmp_path / "run")
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    state["format"], state["api"] = 2, "2.0"
    torch.save(state, run / "checkpoint.pt")
    result = runner.invoke(app, ["run", "--resume", str(run), "--epochs", "3", *QUIET])
    assert result.exit_code == 2 and "dcx 0.1.0" in result.output and "Traceback" not in result.output
