"""`dcx run`: train one configuration of the alternation engine."""

from __future__ import annotations

import logging
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from dcx.cli.ui import RichProgress, fail, handle_errors, print_json, setup_logging
from dcx.core.config import RunConfig
from dcx.core.engine import Engine
from dcx.core.setup import setup
from dcx.core.errors import InputError
from dcx.core.options import parse_assignments
from dcx.core.rundir import RunDir, default_run_dir

log = logging.getLogger("dcx.cli")


def build_config(config: Path | None, **flags) -> RunConfig:
    """Defaults < the TOML file < command-line flags (only those given)."""
    base = RunConfig.load(config) if config else RunConfig()
    opts = parse_assignments(flags.pop("opt") or [])
    return base.merged({**flags, "options": opts})


def summary_table(summary: dict) -> Table:
    table = Table(title=f"{summary['clusterer']} + {summary['backbone']} on {summary['dataset']}")
    table.add_column("metric")
    table.add_column("first epoch", justify="right")
    table.add_column("final", justify="right")
    first, final = summary.get("first", {}), summary.get("final", {})
    for key, label in (
        ("probe_nmi", "k-means(#classes) NMI, L2 features"),
        ("probe_nmi_whitened", "k-means(#classes) NMI, PCA-whitened features"),
        ("nmi_labels", "NMI pseudo-labels vs labels"),
        ("nmi_prev", "NMI to previous epoch"),
        ("nonempty", "non-empty clusters"),
        ("loss", "loss"),
    ):
        if key in first or key in final:
            fmt = lambda v: "-" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))
            table.add_row(label, fmt(first.get(key)), fmt(final.get(key, summary.get("final_loss") if key == "loss" else None)))
    return table


@handle_errors
def run(
    clusterer: str = typer.Option(None, "--clusterer", "-c", help="clusterer plugin (dcx list) (default: kmeans)"),
    backbone: str = typer.Option(None, "--backbone", "-b", help="backbone plugin (default: alexnet)"),
    dataset: str = typer.Option(None, "--dataset", "-d", help="dataset plugin (default: digits)"),
    data_root: str = typer.Option(None, "--data-root", help="folder of the dataset"),
    download: bool = typer.Option(None, "--download/--no-download", help="allow torchvision datasets to download"),
    k: int = typer.Option(None, "--k", help="number of clusters (default: the dataset's, 100 for digits)"),
    epochs: int = typer.Option(None, "--epochs", "-e", help="clustering rounds"),
    passes: int = typer.Option(None, "--passes", help="backbone passes over the data per clustering round (online clusterers: divided by their views per image)"),
    batch_size: int = typer.Option(None, "--batch-size"),
    lr: float = typer.Option(None, "--lr", help="SGD learning rate (default: 0.05, the reference)"),
    lr_schedule: str = typer.Option(None, "--lr-schedule", help="cosine (default; decays to 0) or constant (reference)"),
    image_size: int = typer.Option(None, "--image-size", help="input side in pixels"),
    width: float = typer.Option(None, "--width", help="channel multiplier of the backbone (1.0 = paper)"),
    sobel: bool = typer.Option(None, "--sobel/--no-sobel", help="fixed Sobel input layer (default: backbone's)"),
    seed: int = typer.Option(None, "--seed"),
    device: str = typer.Option(None, "--device", help="cpu | cuda | auto"),
    workers: int = typer.Option(None, "--workers", help="data-loading processes"),
    out: Path = typer.Option(None, "--out", "-o", help="run directory (default: runs/<time>-<clusterer>-<backbone>)"),
    config: Path = typer.Option(None, "--config", help="TOML file, e.g. a previous run's config.toml"),
    opt: list[str] = typer.Option([], "--opt", help="plugin option PLUGIN.KEY=VALUE (repeatable)"),
    resume: bool = typer.Option(False, "--resume", help="continue the run in --out from its checkpoint"),
    probe: bool = typer.Option(None, "--probe/--no-probe", help="k-means(#classes) NMI of the features each epoch"),
    save_every_epoch: bool = typer.Option(None, "--save-every-epoch", help="keep each epoch's assignments"),
    report: bool = typer.Option(True, "--report/--no-report", help="write report.md and report.png at the end"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="warnings and errors only"),
    as_json: bool = typer.Option(False, "--json", help="print the summary as JSON on stdout"),
) -> None:
    """Train a backbone on pseudo-labels from a clusterer (DeepCluster: -c kmeans -b alexnet)."""
    setup_logging(quiet)
    cfg = build_config(
        config, clusterer=clusterer, backbone=backbone, dataset=dataset, data_root=data_root, download=download,
        k=k, epochs=epochs, passes=passes, batch_size=batch_size, lr=lr, lr_schedule=lr_schedule,
        image_size=image_size, width=width,
        sobel=sobel, seed=seed, device=device, workers=workers, probe=probe, save_every_epoch=save_every_epoch,
        opt=opt,
    )
    if resume and out is None:
        raise InputError("--resume needs --out RUN_DIR: the run to continue")
    s = setup(cfg)
    path = out or (Path(cfg.out) if cfg.out and resume else default_run_dir(Path("runs"), s.clusterer.name, s.backbone.name))
    s.config.out = str(path)
    run_dir = RunDir(path)
    run_dir.create(s.config.to_toml(), resume=resume)
    engine = Engine(s)
    if resume:
        state = run_dir.load_checkpoint()
        if state is None:
            log.warning("no checkpoint in %s: starting from epoch 0", path)
        else:
            engine.restore(state)
            run_dir.truncate_metrics(engine.start_epoch)
            log.info("resuming %s at epoch %d", path, engine.start_epoch)
    log.info("run directory: %s", path)
    try:
        with RichProgress(enabled=not quiet) as bars:
            engine.progress = bars
            summary = engine.run(run_dir)
    except KeyboardInterrupt:
        raise fail(
            f"interrupted; completed epochs are saved in {path}. Resume with: "
            f"dcx run --config {path / 'config.toml'} --out {path} --resume", 130,
        ) from None
    summary["run_dir"] = str(path)
    if report:
        _write_report(path)
    if as_json:
        print_json(summary)
    elif not quiet:
        Console().print(summary_table(summary))
        typer.echo(f"run directory: {path}")


def _write_report(path: Path) -> None:
    """Write the run's report when the report module is available (dcx report)."""
    try:
        from dcx.core.report import write_report
    except ImportError:
        return
    write_report(path)
