"""`dcx embed`: features of every image of a folder (or dataset) from a run's trained network."""

from __future__ import annotations

from pathlib import Path

import typer

from dcx.cli.ui import RichProgress, handle_errors, setup_logging
from dcx.core.options import parse_assignments


@handle_errors
def embed(
    run_dir: Path = typer.Argument(..., help="a run directory written by dcx run"),
    data_root: Path = typer.Option(None, "--data-root", help="folder of images (default: the run's own images)"),
    dataset: str = typer.Option(None, "--dataset", "-d", help="a dataset plugin instead of a folder"),
    opt: list[str] = typer.Option([], "--opt", help="dataset option PLUGIN.KEY=VALUE (repeatable)"),
    layer: str = typer.Option("features", "--layer", "-l", help="block to embed, pooled as dcx eval pools it"),
    out: Path = typer.Option(Path("embedding"), "--out", "-o", help="new folder for features.npy, files.csv, embed.json"),
    half: bool = typer.Option(False, "--half", help="store float16 features (half the disk)"),
    batch_size: int = typer.Option(256, "--batch-size", min=1, help="images per forward pass"),
    device: str = typer.Option(None, "--device", help="cpu | cuda | auto (default: the run's)"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="warnings and errors only"),
) -> None:
    """Write features.npy (N, d) and files.csv (row, path, label) for a folder; dcx cluster reads the .npy."""
    from dcx.api import load

    setup_logging(quiet)
    run = load(run_dir, device)
    options = parse_assignments(opt)
    images = run.images(data_root, dataset, options.get(dataset or "imagefolder"))
    with RichProgress(enabled=not quiet) as bars:
        result = run.embed_to(out, images, layer, half, batch_size, progress=bars)
    if not quiet:
        skipped = f" ({result.skipped} unreadable image(s) skipped)" if result.skipped else ""
        typer.echo(f"{result.rows} x {result.dims} features of {result.layer} written to {result.out}{skipped}")
