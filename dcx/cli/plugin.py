"""`dcx plugin new`: write a third-party plugin package to start from."""

from __future__ import annotations

from pathlib import Path

import typer

from dcx.cli.ui import err_console, handle_errors, setup_logging
from dcx.core.errors import DcxError
from dcx.core.registry import Registry
from dcx.scaffold import new_plugin
from dcx.scaffold.templates import KINDS

plugin_app = typer.Typer(no_args_is_help=True, help="Write plugins: dcx plugin new NAME --kind KIND.")


@plugin_app.command("new")
@handle_errors
def new(
    name: str = typer.Argument(..., help="plugin name: ASCII letters, digits, '-' and '_' (e.g. my-clusterer); "
                               "its module is dcx_NAME with '-' as '_'"),
    kind: str = typer.Option(..., "--kind", help=" | ".join(KINDS)),
    directory: Path = typer.Option(None, "--dir", help="where to write the package (default: ./dcx-NAME); must be new or empty"),
) -> None:
    """Write an installable package with one plugin (filled in, conformant), a README and tests that run dcx's kit."""
    setup_logging(quiet=False)
    made = new_plugin(name, kind, directory)
    try:
        others = [i.package for i in Registry().providers(made.kind, name)]
    except DcxError:
        others = []
    typer.echo(f"wrote {made.dist} ({made.kind} '{name}') to {made.directory}:")
    for path in made.files:
        typer.echo(f"  {path.relative_to(made.directory)}")
    if others:
        err_console.print(f"note: a {made.kind} named '{name}' is already provided by {', '.join(others)}: users will "
                          f"need {made.dist}:{name}", highlight=False)
    typer.echo(f"next: pip install -e {made.directory} && python -m pytest {made.directory / 'tests'}")
