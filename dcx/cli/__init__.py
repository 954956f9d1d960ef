"""The `dcx` command line (typer): parses, builds a config, calls core. No logic of its own."""

from __future__ import annotations

import typer

from dcx.cli.assign import assign
from dcx.cli.cluster import cluster
from dcx.cli.compare import compare
from dcx.cli.embed import embed
from dcx.cli.evaluate import evaluate
from dcx.cli.export import export
from dcx.cli.gallery import gallery
from dcx.cli.listing import list_plugins, show
from dcx.cli.plugin import plugin_app
from dcx.cli.report import report
from dcx.cli.run import run
from dcx.cli.ui import terminate_like_ctrl_c

app = typer.Typer(
    name="dcx", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
    help="Self-supervised visual features by pseudo-labels: DeepCluster, PIC, SeLa, SwAV in one engine.",
)


def _version(value: bool) -> None:
    """``dcx --version``: the installed distribution's version (the source tree's when not installed)."""
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            number = version("dcx")
        except PackageNotFoundError:
            from dcx import __version__ as number
        typer.echo(f"dcx {number}")
        raise typer.Exit()


@app.callback()
def _root(
    show_version: bool = typer.Option(False, "--version", "-V", callback=_version, is_eager=True,
                                      help="print dcx's version and exit"),
) -> None:
    """Self-supervised visual features by pseudo-labels: DeepCluster, PIC, SeLa, SwAV in one engine."""


app.command("run")(run)
app.command("list")(list_plugins)
app.command("show")(show)
app.command("cluster")(cluster)
app.command("eval")(evaluate)
app.command("report")(report)
app.command("compare")(compare)
app.command("export")(export)
app.command("embed")(embed)
app.command("assign")(assign)
app.command("gallery")(gallery)
app.add_typer(plugin_app, name="plugin")


def main() -> None:
    terminate_like_ctrl_c()
    app()
