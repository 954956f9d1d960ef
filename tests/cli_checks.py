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
