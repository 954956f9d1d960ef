"""`dcx gallery`: a static HTML page and a PNG contact sheet of a run's largest clusters."""

from __future__ import annotations

from pathlib import Path

import typer

from dcx.cli.ui import RichProgress, handle_errors, setup_logging


@handle_errors
def gallery(
    run_dir: Path = typer.Argument(..., help="a run directory written by dcx run"),
    clusters: int = typer.Option(12, "--clusters", "-n", min=1, help="how many of the largest clusters to show"),
    per_cluster: int = typer.Option(8, "--per-cluster", "-m", min=1, help="images nearest each centroid to show"),
    out: Path = typer.Option(None, "--out", "-o", help="new folder for the page (default: RUN_DIR/gallery)"),
    device: str = typer.Option(None, "--device", help="cpu | cuda | auto (default: the run's)"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="warnings and errors only"),
) -> None:
    """Write index.html (opens from disk), contact_sheet.png and a t-SNE map of the clusters."""
    from dcx.api import load

    setup_logging(quiet)
    with RichProgress(enabled=not quiet) as bars:
        result = load(run_dir, device).gallery(out, clusters, per_cluster, progress=bars)
    if not quiet:
        typer.echo(f"{len(result.clusters)} clusters shown: {result.html}")
