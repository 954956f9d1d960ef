"""`dcx list`: every plugin found through entry points, with its package, version and status."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

from dcx.cli.ui import handle_errors, print_json, setup_logging


@handle_errors
def list_plugins(
    kind: str = typer.Option(None, "--kind", help="only one kind: clusterer, backbone or dataset"),
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
) -> None:
    """List clusterers, backbones and datasets; a plugin that fails to import is shown as broken."""
    from dcx.core.registry import Registry

    setup_logging(quiet=True)
    infos = Registry().inspect(kind)
    if as_json:
        print_json([i.to_dict() for i in infos])
        return
    table = Table(title="dcx plugins")
    for col in ("kind", "name", "package", "version", "status"):
        table.add_column(col)
    colours = {"ok": "green", "broken": "red", "incompatible": "red", "duplicate": "yellow"}
    for i in infos:
        status = f"[{colours.get(i.status, 'white')}]{i.status}[/]"
        if i.schedule:
            status += f" ({i.schedule})"
        if i.error:
            status += f": {i.error}"
        table.add_row(i.kind, i.name, i.package, i.version, status)
    Console().print(table)
