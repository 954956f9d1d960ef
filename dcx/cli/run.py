"""`dcx run`: train one configuration of the alternation engine, or resume a run."""

from __future__ import annotations

import logging
import sys
import tomllib
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from dcx.cli.run_options import build_config, given, with_run_options
from dcx.cli.ui import RichProgress, handle_errors, print_json, setup_logging
from dcx.core.errors import InputError
from dcx.core.options import parse_assignments

log = logging.getLogger("dcx.cli")


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
    best = summary.get("best_block")
    if best:
        table.add_row(f"best block ({best['block']}) k-means NMI: random init vs trained",
                      f"{best['random']:.3f}", f"{best['learned']:.3f} ({best['gain']:+.3f})")
    return table


def _resume_flags(run_flags: dict[str, Any]) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Settings the user gave for a resume: --config's keys (a config file given with --resume is
    read as a set of flags) overridden by explicit flags, and --opt options."""
    flags = dict(run_flags)
    path = flags.pop("config", None)
    options = parse_assignments(flags.pop("opt", None) or [])
    settings: dict[str, Any] = {}
    if path is not None:
        from dcx.core.config import RunConfig

        data = RunConfig.load(path).to_dict()
        raw = tomllib.loads(Path(path).read_text())
        settings.update({k: data[k] for k in raw if k in data and k not in ("options", "out")})
        for plugin, opts in (raw.get("options") or {}).items():
            options.setdefault(plugin, {}).update(opts)
    settings.update(given(flags))
    return settings, options


@handle_errors
@with_run_options("run")
def run(
    run_dir: Optional[Path] = typer.Argument(None, help="with --resume: the run directory to continue"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="run directory (default: runs/<time>-<clusterer>-<backbone>)"),
    resume: bool = typer.Option(False, "--resume", help="continue a run from its checkpoint, with its own settings: "
                                "dcx run --resume RUN_DIR (flags may change only --epochs upwards, --workers, --device, "
                                "--probe, --save-every-epoch)"),
    nproc: int = typer.Option(1, "--nproc", min=1, help="train with N processes on this machine (torchrun "
                              "--standalone --nproc_per_node N -m dcx run ...; --batch-size stays the global batch)"),
    report: bool = typer.Option(True, "--report/--no-report", help="write report.md and report.png at the end"),
    logger: list[str] = typer.Option([], "--logger", help="log every epoch row and step loss: tensorboard | csv | an "
                                     "installed dcx.loggers plugin (repeatable)"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="warnings and errors only"),
    as_json: bool = typer.Option(False, "--json", help="print the summary as JSON on stdout"),
    run_flags: dict = None,
) -> None:
    """Train a backbone on pseudo-labels from a clusterer (DeepCluster: -c kmeans -b alexnet)."""
    from dcx.training import distributed

    world = distributed.world_from_env()
    if nproc > 1:
        if world.distributed:
            raise InputError("--nproc starts processes itself: drop it when launching with torchrun")
        raise typer.Exit(launch(nproc))
    setup_logging(quiet, world.rank)
    distributed.init(world)
    try:
        _run(world, run_dir, out, resume, report, quiet, as_json, run_flags, logger)
    finally:
        distributed.shutdown()


def launch(nproc: int) -> int:
    """``dcx run --nproc N ...`` as ``torchrun --standalone --nproc_per_node N -m dcx run ...``."""
    from torch.distributed.run import main as torchrun

    argv, skip = [], False
    for arg in sys.argv[1:]:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            argv.append(arg)
    try:
        torchrun(["--standalone", "--nproc_per_node", str(nproc), "-m", "dcx", *argv])
    except SystemExit as exc:  # torchrun exits with the failed worker's code
        return int(exc.code or 0)
    except Exception as exc:  # ChildFailedError: a worker printed its own error line
        log.debug("torchrun: %s", exc)
        return 1
    return 0


def _run(world, run_dir, out, resume, report, quiet, as_json, run_flags, loggers=()) -> None:
    from dcx.results.loggers import create_loggers
    from dcx.runs.runner import execute, new_run, resume_run
    from dcx.training.rundir import default_run_dir

    with RichProgress(enabled=not quiet and world.is_main) as bars:
        if resume:
            if run_dir is not None and out is not None and Path(run_dir) != Path(out):
                raise InputError(f"--resume {run_dir} and --out {out} name different folders: pass one of them")
            path = run_dir or out
            if path is None:
                raise InputError("--resume needs the run directory: dcx run --resume RUN_DIR")
            settings, options = _resume_flags(run_flags)
            prepared = resume_run(path, settings, options, progress=bars,
                                  callbacks=tuple(create_loggers(loggers, Path(path))))
            if prepared.resumed_at is not None:
                log.info("resuming %s at epoch %d", path, prepared.resumed_at)
            else:
                log.warning("no checkpoint in %s: starting from epoch 0 with the run's settings", path)
        else:
            if run_dir is not None:
                raise InputError(f"unexpected argument {run_dir}: to continue a run use dcx run --resume {run_dir}")
            cfg = build_config(run_flags)
            bare = lambda name: name.rpartition(":")[2]  # dcx:kmeans -> kmeans: no ':' in folder names
            path = out or default_run_dir(Path("runs"), bare(cfg.clusterer), bare(cfg.backbone))
            path = world.broadcast_object(path)  # every rank uses rank 0's default folder name
            prepared = new_run(cfg, path, progress=bars, callbacks=tuple(create_loggers(loggers, Path(path))))
        log.info("run directory: %s", path)
        summary = execute(prepared)
    if not world.is_main:
        return
    summary["run_dir"] = str(path)
    if report:
        from dcx.runs.report import write_report

        write_report(path)
    if as_json:
        print_json(summary)
    elif not quiet:
        Console().print(summary_table(summary))
        typer.echo(f"run directory: {path}")
