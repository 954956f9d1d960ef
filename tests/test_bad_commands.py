"""The bad-input matrix, second pass (issue 38), for the commands around a run: version, config
files, dcx cluster / eval / report / compare / plugin new, and image folders. One case per item:
exit code, one error line (no traceback), and nothing overwritten. Run directories, resume and
signals are in test_bad_runs.py."""

from __future__ import annotations

from functools import partial

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
