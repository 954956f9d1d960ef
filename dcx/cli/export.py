"""`dcx export`: the trained backbone alone, for torchvision or as one self-contained program."""

from __future__ import annotations

from pathlib import Path

import typer

from dcx.cli.ui import handle_errors, setup_logging


@handle_errors
def export(
    run_dir: Path = typer.Argument(..., help="a run directory written by dcx run"),
    fmt: str = typer.Option("torchvision", "--format", "-f", help="torchvision (a state dict for torchvision.models) "
                            "| torch-export (a .pt2 program: images -> features) | torchscript (the same, torch.jit)"),
    layer: str = typer.Option("features", "--layer", "-l", help="with torch-export/torchscript: the block whose "
                              "pooled output the program returns (dcx show RUN_DIR lists them)"),
    out: Path = typer.Option(None, "--out", "-o", help="file to write (default: RUN_DIR/backbone-FORMAT.pt[2]); "
                             "the transform goes beside it as .json"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="warnings and errors only"),
) -> None:
    """Write the backbone (no head, no optimiser) and the input transform it expects (JSON)."""
    from dcx.api import load

    setup_logging(quiet)
    weights, meta = load(run_dir, device="cpu").export(fmt, out, layer)
    if not quiet:
        typer.echo(f"written {weights} and {meta}")
