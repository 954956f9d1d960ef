"""Run loggers (issue 36): TensorBoard events read back with TensorBoard's own reader, the CSV
files, and a third-party logger plugin from an installed test package receiving the rows."""

from __future__ import annotations

import csv
import json

import pytest
from typer.testing import CliRunner

import dcx
from cli_checks import assert_one_line_error
from dcx.cli import app
from fake_plugins import write_distribution

runner = CliRunner()
pytestmark = pytest.mark.slow

TINY = ["--clusterer", "kmeans", "--backbone", "alexnet", "--dataset", "digits", "--opt", "digits.limit=200",
        "--opt", "alexnet.fc_dim=64", "--k", "10", "--epochs", "2", "--passes", "1", "--batch-size", "32",
        "--image-size", "32", "--width", "0.125", "--no-probe", "--no-report", "-q"]


def test_tensorboard_and_csv_loggers_write_every_epoch_and_step(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    result = runner.invoke(app, ["run", *TINY, "--out", str(out), "--logger", "tensorboard", "--logger", "csv"])
    assert result.exit_code == 0, result.output
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    tags = events.Tags()["scalars"]
    loss = events.Scalars("epoch/loss")
    assert [e.step for e in loss] == [0, 1]
    rows = [r for r in dcx.load(out).metrics if r["phase"] == "train"]
    assert [e.value for e in loss] == pytest.approx([r["loss"] for r in rows], rel=1e-6)
    assert "epoch/nmi_labels" in tags and "final/nmi_labels" in tags
    steps = events.Scalars("train/loss")
    assert len(steps) >= 2 and steps[-1].step > steps[0].step
    epochs = list(csv.DictReader(open(out / "logs" / "epochs.csv")))
    assert [r["phase"] for r in epochs] == ["train", "train", "final"]
    assert float(epochs[0]["loss"]) == pytest.approx(rows[0]["loss"], rel=1e-5)
    assert len(list(csv.DictReader(open(out / "logs" / "steps.csv")))) == len(steps)


def test_unknown_logger_is_one_line_before_anything_is_written(tmp_path):
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", *TINY, "--out", str(out), "--logger", "wandb"])
    assert_one_line_error(result, "unknown logger 'wandb'", "csv", "tensorboard")
    assert not out.exists()


MEMO = '''
import json
from pathlib import Path
from dcx.results.loggers import Logger

class Memo(Logger):
    """Keeps every row it is given in memo.json (what a W&B or MLflow logger would send)."""

    name = "memo"

    def __init__(self, run_dir):
        super().__init__(run_dir)
        self.seen = {"epochs": [], "steps": 0}

    def log_epoch(self, epoch, phase, values):
        self.seen["epochs"].append({"epoch": epoch, "phase": phase, **values})

    def log_step(self, step, epoch, loss):
        self.seen["steps"] += 1

    def close(self):
        (Path(self.run_dir) / "memo.json").write_text(json.dumps(self.seen))
'''


def test_a_logger_plugin_from_another_package_receives_the_rows(tmp_path, monkeypatch):
    write_distribution(tmp_path / "site", "dcx-memo", "1.0", {"dcx.loggers": {"memo": "dcx_memo:Memo"}},
                       {"dcx_memo": MEMO})
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    config = dict(clusterer="kmeans", backbone="alexnet", dataset="digits", k=10, epochs=2, passes=1, batch_size=32,
                  image_size=32, width=0.125, seed=0, probe=False,
                  options={"digits": {"limit": 200}, "alexnet": {"fc_dim": 64}})
    run = dcx.train(config, tmp_path / "run", loggers=["memo"])
    seen = json.loads((run.path / "memo.json").read_text())
    assert [(r["epoch"], r["phase"]) for r in seen["epochs"]] == [(0, "train"), (1, "train"), (2, "final")]
    assert seen["epochs"][1]["loss"] == pytest.approx(run.metrics[1]["loss"])
    assert seen["steps"] == 2 * (200 // 32)
