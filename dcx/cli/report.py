"""`dcx report`: a run's curves as one PNG and its numbers as a short markdown file."""

from __future__ import annotations

from pathlib import Path

import typer

from dcx.cli.ui import handle_errors, setup_logging


@handle_errors
def report(
    run_dir: Path = typer.Argument(..., help="a run directory written by dcx run"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="warnings and errors only"),
) -> None:
    """Write report.png (NMI to labels / to the previous epoch, loss, cluster sizes, timings, linear
    probe learned vs random when eval.json exists) and report.md into RUN_DIR."""
    from dcx.runs.report import write_report
    from dcx.training.rundir import writing

    setup_logging(quiet)
    with writing(run_dir):
        png, md = write_report(run_dir)
    if not quiet:
        typer.echo(f"wrote {md} and {png}")
