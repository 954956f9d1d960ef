"""The validated run configuration: one schema for flags, --config files and dcx compare."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from cli_checks import assert_one_line_error
from typer.testing import CliRunner

from dcx.cli import app
from dcx.core.config import RunConfig

runner = CliRunner()


@pytest.mark.parametrize(
    "flags, words",
    [
        (["--batch-size", "0"], ["--batch-size must be >= 1", "got '0'"]),
        (["--passes", "0"], ["--passes must be >= 1"]),
        (["--width", "-1"], ["--width must be > 0"]),
        (["--width", "0"], ["--width must be > 0"]),
        (["--seed", "-1"], ["--seed must be >= 0"]),
        (["--workers", "-1"], ["--workers must be >= 0"]),
        (["--epochs", "two"], ["--epochs must be an integer"]),
        (["--lr", "nan"], ["--lr must be a finite number"]),
        (["--lr-schedule", "linear"], ["--lr-schedule must be one of cosine or constant"]),
        (["--device", "tpu"], ["--device must be cpu, cuda, cuda:N or auto"]),
        (["--opt", "pic.nnn=3"], ["options given for 'pic'", "not part of this run"]),
        (["--opt", "kmeans.niter=0"], ["kmeans", "'niter'", ">= 1"]),
    ],
)
def test_bad_run_settings_exit_2_with_one_line_and_no_folder(tmp_path, flags, words):
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", *flags, "--out", str(out)])
    assert_one_line_error(result, *words)
    assert not out.exists()


def test_bad_value_in_a_config_file_is_one_line_naming_the_file(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text('epochs = "two"\n')
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", "--config", str(config), "--out", str(out)])
    assert_one_line_error(result, str(config), "epochs must be an integer", "'two'")
    assert not out.exists()
    config.write_text("epochz = 2\n")
    assert_one_line_error(runner.invoke(app, ["run", "--config", str(config), "--out", str(out)]), "unknown setting 'epochz'")


def _flags(command: str) -> set[str]:
    text = runner.invoke(app, [command, "--help"], env={"COLUMNS": "250", "TERMINAL_WIDTH": "250"}).output
    return set(re.findall(r"--[a-z][a-z0-9-]*", text))


def test_compare_offers_every_run_training_option():
    run_flags, compare_flags = _flags("run"), _flags("compare")
    training = {"--" + name.replace("_", "-") for name in RunConfig.cli_fields("run")} - {"--clusterer"}
    assert training <= run_flags
    assert training <= compare_flags, training - compare_flags
    assert "--seeds" in compare_flags and "--config" in compare_flags and "--opt" in compare_flags


def test_enumerated_settings_list_their_choices_in_help():
    text = runner.invoke(app, ["run", "--help"], env={"COLUMNS": "250", "TERMINAL_WIDTH": "250"}).output
    assert "cosine|constant" in text


def test_there_is_one_training_step_in_the_engine_and_no_branch_on_the_clusterer_kind():
    source = (Path(__file__).parents[1] / "dcx" / "training" / "engine.py").read_text()
    assert source.count("backward()") == 1
    assert "OnlineClusterer" not in source and ".offline" not in source and "self.online" not in source
    assert len(source.splitlines()) < 300


def test_config_round_trips_through_toml(tmp_path):
    cfg = RunConfig(k=7, epochs=3, width=0.5, options={"kmeans": {"niter": 5}})
    path = tmp_path / "c.toml"
    path.write_bytes(cfg.to_toml())
    assert RunConfig.load(path) == cfg
