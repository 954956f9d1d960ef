"""`dcx assign`: each image's cluster under a run's last clustering, as CSV."""

from __future__ import annotations

from pathlib import Path

import typer

from dcx.cli.ui import RichProgress, handle_errors, setup_logging
from dcx.core.options import parse_assignments


@handle_errors
def assign(
    run_dir: Path = typer.Argument(..., help="a run directory written by dcx run"),
    data_root: Path = typer.Option(None, "--data-root", help="folder of images (default: the run's own images)"),
    dataset: str = typer.Option(None, "--dataset", "-d", help="a dataset plugin instead of a folder"),
    opt: list[str] = typer.Option([], "--opt", help="dataset option PLUGIN.KEY=VALUE (repeatable)"),
    out: Path = typer.Option(Path("assign.csv"), "--out", "-o", help="new CSV file: path, cluster, distance"),
    batch_size: int = typer.Option(256, "--batch-size", min=1, help="images per forward pass"),
    device: str = typer.Option(None, "--device", help="cpu | cuda | auto (default: the run's)"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="warnings and errors only"),
) -> None:
    """Put images into the run's clusters: its own preprocessing and centroids (offline clusterers)
    or its prototypes (online ones)."""
    from dcx.api import load

    setup_logging(quiet)
    run = load(run_dir, device)
    options = parse_assignments(opt)
    images = run.images(data_root, dataset, options.get(dataset or "imagefolder"))
    with RichProgress(enabled=not quiet) as bars:
        result = run.assign_to(out, images, batch_size, progress=bars)
    if not quiet:
        skipped = f" ({result.skipped} unreadable image(s) skipped)" if result.skipped else ""
        typer.echo(f"{len(result.labels)} images assigned to {len(set(result.labels.tolist()))} clusters: {out}{skipped}")
