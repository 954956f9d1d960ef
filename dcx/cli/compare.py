"""`dcx compare`: several clusterers under the same seed, budget and data, side by side."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from dcx.cli.run_options import build_config, with_run_options
from dcx.cli.ui import RichProgress, fail, handle_errors, print_json, setup_logging
from dcx.core.errors import InputError


def _split(text: str, what: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise InputError(f"--{what} needs a comma-separated list, got {text!r}")
    return items


def _once(keys: list, given: list, flag: str) -> None:
    """InputError when two items of ``flag`` are the same (one run would be counted twice)."""
    for i, key in enumerate(keys):
        if key in keys[:i]:
            first = given[keys.index(key)]
            both = f"{first} twice" if first == given[i] else f"{first} and {given[i]}, the same one,"
            raise InputError(f"{flag} lists {both}: give each once (one run would count twice)")


@handle_errors
@with_run_options("run", exclude=("clusterer", "seed"))
def compare(
    clusterers: str = typer.Option(..., "--clusterers", help="comma-separated clusterers, e.g. kmeans,pic"),
    seeds: str = typer.Option("0", "--seeds", "--seed", help="comma-separated seeds; one run per clusterer and seed"),
    protocol: str = typer.Option("knn,cluster", "--protocol", help="dcx eval protocols per run: linear,knn,cluster | all | none"),
    layers: str = typer.Option("all", "--layers", help="layers for the eval protocols"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="comparison directory (default: runs/compare-<time>)"),
    resume: bool = typer.Option(False, "--resume", help="skip finished runs in --out, continue unfinished ones"),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
    as_json: bool = typer.Option(False, "--json", help="print the table as JSON"),
    run_flags: dict = None,
) -> None:
    """Train one run per clusterer (and seed), evaluate each, write a table and one figure."""
    from dcx.runs.compare import (COLUMNS, FIGURE, PAIRED_MEASURES, TABLE_MD, Comparison, _fmt,
                                  compare as run_comparison, environment_lines, paired_differences)
    from dcx.evaluation import check_protocols
    from dcx.core.registry import Registry

    setup_logging(quiet)
    names = _split(clusterers, "clusterers")
    registry = Registry()
    for name in names:  # fail on a typo before hours of training
        registry.load("clusterer", name)
    _once([registry.resolve("clusterer", n).qualified for n in names], names, "--clusterers")
    try:
        seed_list = [int(s) for s in _split(seeds, "seeds")]
    except ValueError:
        raise InputError(f"--seeds must be integers separated by commas, got {seeds!r}") from None
    if any(s < 0 for s in seed_list):
        raise InputError(f"--seeds must be >= 0, got {seeds!r}")
    _once(seed_list, seed_list, "--seeds")
    if resume and out is None:
        raise InputError("--resume needs --out: the comparison directory to continue")
    base = build_config(run_flags)
    protocols = [] if protocol == "none" else check_protocols(protocol)
    layer_arg = layers if layers == "all" else _split(layers, "layers")
    out = out or Path("runs") / f"compare-{datetime.now():%Y%m%d-%H%M%S}"
    cmp = Comparison(names, seed_list, base, protocols, layer_arg)
    with RichProgress(enabled=not quiet) as bars:
        table = run_comparison(cmp, out, resume=resume, progress=bars, registry=registry)
    if as_json:
        print_json(table)
    elif not quiet:
        view = Table(title=f"dcx compare ({out})")
        shown = [(key, header) for key, header in COLUMNS if any(row.get(key) is not None for row in table)]
        for _, header in shown:
            view.add_column(header)
        for row in table:
            view.add_row(*(_fmt(row.get(key)) for key, _ in shown))
        Console().print(view)
        for key, (what, _) in PAIRED_MEASURES.items():
            for name, r in paired_differences(table, names[0], key).items():
                if r["low"] is not None:
                    typer.echo(f"{name} - {names[0]}, {what} paired over seeds {','.join(map(str, r['seeds']))}: "
                               f"{r['mean']:+.3f} [{r['low']:+.3f}, {r['high']:+.3f}] ({r['verdict']})")
        for line in filter(None, environment_lines(table)):
            typer.echo(line)
        typer.echo(f"table: {out / TABLE_MD}  figure: {out / FIGURE}")
    failed = [r for r in table if r.get("status") == "failed"]
    if failed:
        raise fail(f"{len(failed)} of {len(table)} runs failed (see {out / TABLE_MD}): "
                   + "; ".join(f"{r['clusterer']} seed {r['seed']}: {r['error']}" for r in failed), 1)
