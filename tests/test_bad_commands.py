"""The bad-input matrix, second pass (issue 38), for the commands around a run: version, config
files, dcx cluster / eval / report / compare / plugin new, and image folders. One case per item:
exit code, one error line (no traceback), and nothing overwritten. Run directories, resume and
signals are in test_bad_runs.py."""

from __future__ import annotations

from functools import partial

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
