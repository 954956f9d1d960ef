"""`dcx eval`: score a run's features on a labelled task, beside the same network at random init."""

from __future__ import annotations

import logging
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from dcx.cli.ui import RichProgress, handle_errors, print_json, setup_logging
from dcx.core.config import RunConfig
from dcx.core.errors import InputError
from dcx.core.options import parse_assignments

log = logging.getLogger("dcx.cli")


def rich_table(t) -> Table:
    """An EvalTable for the terminal; the better of each learned/random pair in bold."""
    table = Table(title=t.title)
    for i, col in enumerate(t.columns):
        table.add_column(col, justify="left" if i == 0 else "right")
    learned = [i for i, c in enumerate(t.columns) if c.endswith("learned")]
    for row in t.rows:
        cells = list(row)
        for i in learned:
            j = i + 1
            if j < len(row) and t.columns[j].endswith("random") and "-" not in (row[i], row[j]) and row[i] != row[j]:
                k = i if float(row[i]) > float(row[j]) else j
                cells[k] = f"[bold]{row[k]}[/]"
        table.add_row(*cells)
    return table


def _print(result: dict) -> None:
    from dcx.evaluation import eval_tables

    console = Console()
    for t in eval_tables(result):
        console.print(rich_table(t))
    console.print(f"data: {result['split']}", highlight=False)
    for key, text in result.get("settings", {}).items():
        console.print(f"{key}: {text}", highlight=False)


@handle_errors
def evaluate(
    run_dir: Path = typer.Argument(None, help="a run directory written by dcx run (not with --random)"),
    protocol: str = typer.Option("all", "--protocol", "-p", help="linear | knn | cluster | all (comma list allowed)"),
    layers: str = typer.Option("all", "--layers", "-l", help="comma list of blocks (e.g. conv3,conv4,features) or all"),
    dataset: str = typer.Option(None, "--dataset", "-d", help="labelled dataset to evaluate on (default: the run's)"),
    data_root: str = typer.Option(None, "--data-root", help="folder of --dataset"),
    opt: list[str] = typer.Option([], "--opt", help="plugin option PLUGIN.KEY=VALUE (repeatable)"),
    random: bool = typer.Option(False, "--random", help="evaluate a random-init network alone (needs --backbone)"),
    backbone: str = typer.Option(None, "--backbone", "-b", help="with --random: backbone plugin"),
    seed: int = typer.Option(None, "--seed", help="with --random: initialisation seed (default: 0)"),
    width: float = typer.Option(None, "--width", help="with --random: channel multiplier (default: the dataset's)"),
    image_size: int = typer.Option(None, "--image-size", help="with --random: input side (default: the dataset's)"),
    sobel: bool = typer.Option(None, "--sobel/--no-sobel", help="with --random: Sobel input layer (default: the dataset's, else the backbone's)"),
    device: str = typer.Option(None, "--device", help="cpu | cuda | auto (default: the run's)"),
    cluster_runs: int = typer.Option(
        None, "--cluster-runs", help="k-means seeds averaged per layer by the cluster protocol (default 5); one run's "
        "NMI moves with its seed, so more seeds give a less noisy score (docs/decisions.md D01)"),
    cluster_images: int = typer.Option(
        None, "--cluster-images", help="the cluster protocol's k-means runs on at most this many images, a seeded "
        "sample stratified by class (default 10000; 0: all): its cost grows with the images (docs/decisions.md D60)"),
    out: Path = typer.Option(None, "--out", "-o", help="with --random: also write the result as JSON here"),
    report: bool = typer.Option(True, "--report/--no-report", help="rewrite the run's report.md/png afterwards"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="warnings and errors only"),
    as_json: bool = typer.Option(False, "--json", help="print the result as JSON on stdout"),
) -> None:
    """Linear probe, kNN and k-means scores per layer, learned vs random init (paper Table 1)."""
    from dcx.evaluation import CLUSTER_IMAGES, CLUSTER_RUNS, EVAL_JSON, evaluate_random, evaluate_run
    from dcx.training.rundir import save_json, writing

    setup_logging(quiet)
    layer_list = [n.strip() for n in layers.split(",") if n.strip()]
    if not layer_list:
        raise InputError(f"--layers needs block names (e.g. conv3,conv4,features) or all, got {layers!r}")
    options = parse_assignments(opt)
    cluster_runs = CLUSTER_RUNS if cluster_runs is None else cluster_runs
    cluster_images = CLUSTER_IMAGES if cluster_images is None else cluster_images
    with RichProgress(enabled=not quiet) as bars:
        if random:
            if run_dir is not None:
                raise InputError("--random evaluates a fresh network: drop RUN_DIR, or drop --random to evaluate the run")
            if backbone is None:
                raise InputError("--random needs --backbone NAME (dcx list --kind backbone)")
            cfg = RunConfig(backbone=backbone, dataset=dataset or "digits", data_root=data_root, seed=seed or 0,
                            width=width, image_size=image_size, sobel=sobel, device=device or "auto", options=options)
            result = evaluate_random(cfg, protocol, layer_list, progress=bars, cluster_runs=cluster_runs,
                                     cluster_images=cluster_images)
            if out is not None:
                save_json(out, result)
        else:
            if run_dir is None:
                raise InputError("pass RUN_DIR (a dcx run directory), or --random --backbone NAME for a random network")
            ignored = [n for n, v in (("--backbone", backbone), ("--seed", seed), ("--width", width),
                                      ("--image-size", image_size), ("--sobel", sobel), ("--out", out)) if v is not None]
            if ignored:
                raise InputError(f"{', '.join(ignored)} only apply with --random: a run is evaluated with its own settings")
            with writing(run_dir):  # never beside a run that is still training
                result = evaluate_run(run_dir, protocol, layer_list, dataset, progress=bars, data_root=data_root,
                                      dataset_options=options.get(dataset) if dataset else None, device=device,
                                      cluster_runs=cluster_runs, cluster_images=cluster_images)
                if report:
                    from dcx.runs.report import write_report

                    write_report(run_dir)
    if as_json:
        print_json(result)
    elif not quiet:
        _print(result)
        if not random:
            typer.echo(f"written to {Path(run_dir) / EVAL_JSON}")
