"""Assertions shared by the CLI tests: how a user error must look."""

from __future__ import annotations


def assert_one_line_error(result, *words, code: int = 2, warnings_may_precede: bool = False) -> None:
    """Exit ``code``, no traceback, and exactly one line holding ``words``: the whole output, or
    with ``warnings_may_precede`` the one ``error:`` line after a run's warnings."""
    assert result.exit_code == code, result.output
    text = result.output.strip()
    assert "Traceback" not in text, text
    lines = text.splitlines()
    if warnings_may_precede:
        lines = [line for line in lines if line.startswith("error:")]
    assert len(lines) == 1, text
    for w in words:
        assert w in lines[0], text


#: `dcx run` flags of a run of a second or two: 100 digits, one epoch, a narrow AlexNet.
TINY = ["--dataset", "digits", "--opt", "digits.limit=100", "--k", "5", "--epochs", "1", "--passes", "1",
        "--width", "0.125", "--opt", "alexnet.fc_dim=32", "--batch-size", "32", "--no-probe", "--quiet", "--no-report"]
