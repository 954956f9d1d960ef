"""`dcx list` and `dcx show`: the installed plugins, their providers, status and options."""

from __future__ import annotations

import inspect
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.table import Table

from dcx.cli.ui import handle_errors, print_json, setup_logging
from dcx.core.errors import DcxError

if TYPE_CHECKING:  # pragma: no cover - the registry imports torch; commands import it when run
    from dcx.core.contracts import Plugin
    from dcx.core.registry import PluginInfo, Registry

KINDS = "clusterer, backbone, dataset"

_COLOURS = {"ok": "green", "broken": "red", "incompatible": "red", "no dcx_api": "red"}


def _status(info: PluginInfo) -> str:
    text = f"[{_COLOURS.get(info.status, 'white')}]{info.status}[/]"
    if info.schedule:
        text += f" ({info.schedule})"
    if info.error:
        text += f": {info.error}"
    if info.clashes:
        text += f"; [yellow]'{info.name}' also in {', '.join(info.clashes)}: use {info.qualified}[/]"
    return text


def _options_of(registry: Registry, info: PluginInfo) -> list[dict[str, Any]]:
    if info.status != "ok":
        return []
    return [o.to_dict() for o in registry.load(info.kind, info.qualified).options]


def _options_table(rows: list[tuple[str, Any]], title: str, with_plugin: bool) -> Table:
    table = Table(title=title)
    for col in (["plugin"] if with_plugin else []) + ["option", "default", "accepts", "help"]:
        table.add_column(col, overflow="fold")
    for plugin, opt in rows:
        cells = [opt.name, opt.shown_default(), opt.describe(), opt.help]
        table.add_row(*([plugin] if with_plugin else []), *cells)
    return table


@handle_errors
def list_plugins(
    kind: str = typer.Option(None, "--kind", help=f"only one kind: {KINDS}"),
    options: bool = typer.Option(False, "--options", help="also every option: type, default, accepted values, help"),
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
) -> None:
    """List clusterers, backbones and datasets with the package that provides each; a plugin that
    fails to import is shown as broken, one written for another dcx API (or declaring no dcx_api) as
    incompatible (no dcx_api). A name two packages provide must be given as PACKAGE:NAME."""
    setup_logging(quiet=True)
    from dcx.core.registry import Registry

    registry = Registry()
    infos = registry.inspect(kind)
    if as_json:
        rows = []
        for i in infos:
            row = i.to_dict()
            if options:
                row["options"] = _options_of(registry, i)
            rows.append(row)
        print_json(rows)
        return
    table = Table(title="dcx plugins")
    for col in ("kind", "name", "package", "version", "status"):
        table.add_column(col)
    for i in infos:
        table.add_row(i.kind, i.name, i.package, i.version, _status(i))
    console = Console()
    console.print(table)
    if options:
        rows = []
        for i in infos:
            if i.status == "ok":
                label = f"{i.kind} {i.qualified if i.clashes else i.name}"
                rows += [(label, o) for o in registry.load(i.kind, i.qualified).options]
        console.print(_options_table(rows, "plugin options (--opt PLUGIN.KEY=VALUE)", with_plugin=True))


def describe_class(cls: type[Plugin]) -> dict[str, Any]:
    """What a plugin class declares besides its options: schedule, defaults, sizes, splits; its
    description is the first paragraph of its docstring."""
    from dcx.core.contracts import Backbone, Clusterer, Dataset, OnlineClusterer
    from dcx.core.registry import declared_api

    doc = inspect.getdoc(cls) or ""
    out: dict[str, Any] = {"class": f"{cls.__module__}:{cls.__qualname__}", "dcx_api": declared_api(cls),
                           "description": doc.split("\n\n")[0].replace("\n", " ")}
    if issubclass(cls, (Clusterer, OnlineClusterer)):
        out.update(schedule=cls.schedule, uses_k=cls.uses_k)
        if issubclass(cls, Clusterer):
            out["wants_preprocessing"] = cls.wants_preprocessing
    elif issubclass(cls, Backbone):
        out.update(sobel_default=cls.sobel_default, min_image_size=cls.min_image_size)
    elif issubclass(cls, Dataset):
        out.update(flip_invariant=cls.flip_invariant, reads_root=cls.reads_root, defaults=asdict(cls.defaults))
        try:
            out["splits"] = list(cls().splits())
        except (DcxError, TypeError):
            pass
    return out


@handle_errors
def show(
    kind: str = typer.Argument(..., help=f"one of {KINDS}"),
    name: str = typer.Argument(..., help="NAME or PACKAGE:NAME (dcx list)"),
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
) -> None:
    """One plugin: its provider, what it declares, and every option with type, default, accepted values and help."""
    setup_logging(quiet=True)
    from dcx.core.registry import Registry

    registry = Registry()
    ref = registry.resolve(kind, name)
    cls = registry.load(kind, name)
    details = {"kind": kind, **ref.provenance(), "qualified": ref.qualified, **describe_class(cls),
               "options": [o.to_dict() for o in cls.options]}
    if as_json:
        print_json(details)
        return
    console = Console()
    console.print(f"[bold]{ref.qualified}[/] {kind} {ref.version}: {details['description']}", highlight=False)
    for key, value in details.items():
        if key not in ("kind", "name", "package", "version", "qualified", "description", "options"):
            console.print(f"  {key}: {value}", highlight=False)
    if cls.options:
        console.print(_options_table([(ref.name, o) for o in cls.options], f"{ref.name} options "
                                     f"(--opt {ref.name}.KEY=VALUE)", with_plugin=False))
    else:
        console.print("  no options")
