"""The run options as command-line flags, generated once from ``RunConfig``'s fields.

``dcx run`` and ``dcx compare`` both take them from here, so they cannot drift apart. Values
arrive as strings and are validated by the schema (pydantic): a bad value is one line naming the
flag, whatever the flag, instead of a parser error box.
"""

from __future__ import annotations

import functools
import inspect
import re
import typing
from pathlib import Path
from typing import Any, Callable, Literal, Optional

import typer

from dcx.core.config import RunConfig, flag_of
from dcx.core.options import parse_assignments

_METAVAR = {int: "INT", float: "NUMBER", str: "TEXT"}
#: Help-panel title of the generated flags: they are the settings config.toml records.
PANEL = "Run settings (recorded in config.toml)"


def _kind(annotation: Any) -> tuple[type, tuple[str, ...] | None]:
    """(base type, choices) of a field annotation such as ``int | None`` or ``Literal[...]``."""
    if typing.get_origin(annotation) is Literal:
        return str, tuple(typing.get_args(annotation))
    args = [a for a in typing.get_args(annotation) if a is not type(None)] or [annotation]
    base = args[0]
    if typing.get_origin(base) is Literal:
        return str, tuple(typing.get_args(base))
    return base, None


def _parameter(name: str) -> inspect.Parameter:
    field = RunConfig.model_fields[name]
    extra = field.json_schema_extra or {}
    flag = flag_of(name)
    base, choices = _kind(field.annotation)
    default = field.default
    # The first clause only: `dcx run --help` stays within two screens; README and docs/ say the rest.
    help_text = re.split(r" \(|; ", field.description or "", maxsplit=1)[0]
    if default not in (None, {}, "") and base is not bool:
        help_text += f" [default: {default}]"
    if base is bool:
        decls = [f"{flag}/--no-{flag[2:]}"]
        annotation: Any = Optional[bool]
        option = typer.Option(None, *decls, help=help_text, show_default=False, rich_help_panel=PANEL)
    else:
        decls = [flag] + ([extra["short"]] if extra.get("short") else [])
        metavar = "|".join(choices) if choices else _METAVAR.get(base, "TEXT")
        annotation = Optional[str]
        option = typer.Option(None, *decls, help=help_text, metavar=metavar, show_default=False,
                              rich_help_panel=PANEL)
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=annotation)


def with_run_options(scope: str, exclude: tuple[str, ...] = ()) -> Callable:
    """Decorate a command: add every RunConfig flag of ``scope`` ('run' or 'train') plus
    ``--config`` and ``--opt``; the command receives them as ``run_flags: dict`` (given ones only)."""
    names = [n for n in RunConfig.cli_fields(scope) if n not in exclude]

    def decorate(fn: Callable) -> Callable:
        own = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
               for p in inspect.signature(fn).parameters.values() if p.name != "run_flags"]
        shared = [_parameter(n) for n in names]
        shared.append(inspect.Parameter(
            "config", inspect.Parameter.KEYWORD_ONLY,
            default=typer.Option(None, "--config", help="TOML file, e.g. a previous run's config.toml",
                                 rich_help_panel=PANEL),
            annotation=Optional[Path]))
        shared.append(inspect.Parameter(
            "opt", inspect.Parameter.KEYWORD_ONLY,
            default=typer.Option([], "--opt", help="plugin option PLUGIN.KEY=VALUE (repeatable), e.g. kmeans.niter=30",
                                 rich_help_panel=PANEL),
            annotation=list[str]))

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            flags = {n: kwargs.pop(n) for n in names}
            flags["config"] = kwargs.pop("config")
            flags["opt"] = kwargs.pop("opt")
            return fn(*args, run_flags=flags, **kwargs)

        wrapper.__signature__ = inspect.Signature(shared + own)  # type: ignore[attr-defined]
        return wrapper

    return decorate


def build_config(flags: dict[str, Any], base: RunConfig | None = None) -> RunConfig:
    """Defaults < ``--config`` file (or ``base``) < the flags given. Validated; one-line errors."""
    flags = dict(flags)
    config_path = flags.pop("config", None)
    opts = parse_assignments(flags.pop("opt", None) or [])
    if base is None:
        base = RunConfig.load(config_path) if config_path else RunConfig()
    return base.merged({**flags, "options": opts})


def given(flags: dict[str, Any]) -> dict[str, Any]:
    """The flags the user actually gave (None and empty --opt are 'not given')."""
    return {k: v for k, v in flags.items() if v not in (None, [], ())}
