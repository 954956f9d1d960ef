"""Typed, validated plugin options: declared once by the plugin, given as --opt KEY=VALUE or TOML."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

from dcx.core.errors import OptionError

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
_KINDS = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
#: The value types an option can have (what `coerce` converts command-line strings to).
TYPES = tuple(_KINDS)


@dataclass(frozen=True)
class Option:
    """One option a plugin accepts: name, type (int/float/str/bool), default and constraints."""

    name: str
    type: type
    default: Any
    help: str = ""
    choices: tuple | None = None
    min: float | None = None
    max: float | None = None
    nullable: bool = False  # None is accepted and means "decide from the data"

    def describe(self) -> str:
        """The accepted values in words, for error messages, `dcx list --options` and `dcx show`."""
        if self.choices is not None:
            text = "one of " + ", ".join(map(str, self.choices))
        else:
            text = _KINDS.get(self.type, self.type.__name__)
            bounds = []
            if self.min is not None:
                bounds.append(f">= {self.min}")
            if self.max is not None:
                bounds.append(f"<= {self.max}")
            if bounds:
                text += " " + " and ".join(bounds)
        return text + (" (or 'auto')" if self.nullable else "")

    def shown_default(self) -> str:
        """The default as a user would type it: 'auto' for a nullable None."""
        if self.default is None:
            return "auto" if self.nullable else "none"
        if isinstance(self.default, bool):
            return str(self.default).lower()
        return str(self.default)

    def to_dict(self) -> dict[str, Any]:
        """Everything about the option, JSON-ready (`dcx list --options --json`, `dcx show --json`)."""
        return {
            "name": self.name, "type": self.type.__name__, "default": self.default, "help": self.help,
            "accepts": self.describe(), "choices": list(self.choices) if self.choices is not None else None,
            "min": self.min, "max": self.max, "nullable": self.nullable,
        }

    def coerce(self, owner: str, value: Any) -> Any:
        """Convert a string or Python value to this option's type, or raise OptionError."""
        bad = OptionError(
            f"{owner}: option '{self.name}' must be {self.describe()}, got {value!r}"
        )
        if value is None or (self.nullable and isinstance(value, str) and value.lower() in {"auto", "none"}):
            if self.nullable:
                return None
            raise bad
        try:
            if self.type is bool:
                if isinstance(value, bool):
                    out = value
                elif str(value).lower() in _TRUE:
                    out = True
                elif str(value).lower() in _FALSE:
                    out = False
                else:
                    raise ValueError
            elif self.type is int:
                if isinstance(value, bool):
                    raise ValueError
                if isinstance(value, float) and not value.is_integer():
                    raise ValueError
                out = int(value) if not isinstance(value, str) else int(value.strip())
            elif self.type is float:
                if isinstance(value, bool):
                    raise ValueError
                out = float(value)
            else:
                out = str(value)
        except (TypeError, ValueError):
            raise bad from None
        if self.choices is not None and out not in self.choices:
            raise bad
        if self.min is not None and out < self.min:
            raise bad
        if self.max is not None and out > self.max:
            raise bad
        return out


def resolve(owner: str, declared: Sequence[Option], given: Mapping[str, Any]) -> dict[str, Any]:
    """Validate `given` against `declared`; return every option with defaults filled in."""
    by_name = {o.name: o for o in declared}
    for key in given:
        if key not in by_name:
            hint = difflib.get_close_matches(key, list(by_name), n=1)
            accepted = ", ".join(by_name) or "none"
            did = f"did you mean '{hint[0]}'? " if hint else ""
            raise OptionError(f"{owner}: unknown option '{key}'; {did}accepted: {accepted}")
    out = {}
    for opt in declared:
        out[opt.name] = opt.coerce(owner, given[opt.name]) if opt.name in given else opt.default
    return out


def parse_assignments(items: Iterable[str]) -> dict[str, dict[str, str]]:
    """Parse `--opt PLUGIN.KEY=VALUE` strings (PLUGIN bare or PACKAGE:NAME) into {PLUGIN: {KEY: VALUE}}."""
    out: dict[str, dict[str, str]] = {}
    for item in items:
        head, sep, value = item.partition("=")
        plugin, dot, key = head.strip().rpartition(".")  # PLUGIN may be PACKAGE:NAME, a package may hold dots
        if not sep or not dot or not plugin or not key:
            raise OptionError(f"--opt expects PLUGIN.KEY=VALUE (e.g. kmeans.niter=30), got {item!r}")
        out.setdefault(plugin, {})[key] = value.strip()
    return out
