"""Plugin discovery through Python entry points (``importlib.metadata``), loaded lazily by name.

Built-ins are registered in ``pyproject.toml`` exactly like third-party plugins. Listing a kind
imports each of its plugins to report its status; a broken plugin is reported, never fatal.
"""

from __future__ import annotations

import difflib
import importlib.metadata as md
import logging
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterable

from dcx.core.contracts import API_VERSION, Backbone, Clusterer, Dataset, OnlineClusterer, Plugin
from dcx.core.errors import PluginLoadError, PluginNotFoundError

log = logging.getLogger(__name__)

GROUPS: dict[str, str] = {
    "clusterer": "dcx.clusterers",
    "backbone": "dcx.backbones",
    "dataset": "dcx.datasets",
}
_BASES: dict[str, tuple[type, ...]] = {
    "clusterer": (Clusterer, OnlineClusterer),
    "backbone": (Backbone,),
    "dataset": (Dataset,),
}


@dataclass
class PluginInfo:
    """One discovered entry point and what loading it gave."""

    kind: str
    name: str
    target: str
    package: str
    version: str
    status: str = "unchecked"  # ok | broken | incompatible | duplicate | unchecked
    error: str = ""
    schedule: str = ""

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def _dist_of(ep: md.EntryPoint) -> tuple[str, str]:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return "?", "?"
    return dist.metadata["Name"] or "?", dist.version or "?"


class Registry:
    """Entry-point registry. ``entry_points`` can be injected (tests); default: the environment."""

    def __init__(self, entry_points: Callable[[str], Iterable[md.EntryPoint]] | None = None) -> None:
        self._entry_points = entry_points or (lambda group: md.entry_points(group=group))
        self._infos: dict[str, dict[str, PluginInfo]] = {}
        self._eps: dict[str, dict[str, md.EntryPoint]] = {}
        self._loaded: dict[tuple[str, str], type[Plugin]] = {}

    def _check_kind(self, kind: str) -> None:
        if kind not in GROUPS:
            raise PluginNotFoundError(f"unknown plugin kind {kind!r}; kinds: {', '.join(GROUPS)}")

    def _discover(self, kind: str) -> dict[str, PluginInfo]:
        self._check_kind(kind)
        if kind not in self._infos:
            infos: dict[str, PluginInfo] = {}
            eps: dict[str, md.EntryPoint] = {}
            for ep in self._entry_points(GROUPS[kind]):
                package, version = _dist_of(ep)
                info = PluginInfo(kind, ep.name, ep.value, package, version)
                if ep.name in infos:
                    first = infos[ep.name]
                    if first.target == ep.value:  # the same distribution seen twice on sys.path
                        continue
                    info.status = "duplicate"
                    info.error = f"name already provided by {first.package} ({first.target}); ignored"
                    infos[f"{ep.name}@{package}"] = info
                    continue
                infos[ep.name] = info
                eps[ep.name] = ep
            self._infos[kind] = infos
            self._eps[kind] = eps
        return self._infos[kind]

    def names(self, kind: str) -> list[str]:
        """Names that can be loaded (not duplicates), without importing anything."""
        return sorted(n for n, i in self._discover(kind).items() if i.status != "duplicate")

    def load(self, kind: str, name: str) -> type[Plugin]:
        """Import and return the plugin class; PluginNotFoundError with a suggestion if unknown."""
        key = (kind, name)
        if key in self._loaded:
            return self._loaded[key]
        infos = self._discover(kind)
        if name not in self._eps[kind]:
            available = self.names(kind)
            close = difflib.get_close_matches(name, available, n=1, cutoff=0.0)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise PluginNotFoundError(
                f"unknown {kind} '{name}'{hint} available: {', '.join(available) or 'none'}"
            )
        info = infos[name]
        try:
            obj = self._eps[kind][name].load()
        except Exception as exc:  # a broken third-party plugin must not take the CLI down
            info.status, info.error = "broken", f"{type(exc).__name__}: {exc}"
            raise PluginLoadError(
                f"{kind} '{name}' from {info.package} failed to import ({info.error}); reinstall or fix that package"
            ) from exc
        problem = _check_plugin_class(kind, obj)
        if problem:
            info.status, info.error = "incompatible", problem
            raise PluginLoadError(f"{kind} '{name}' from {info.package} is incompatible: {problem}")
        info.status, info.schedule = "ok", getattr(obj, "schedule", "")
        if not getattr(obj, "name", ""):
            obj.name = name
        self._loaded[key] = obj
        return obj

    def create(self, kind: str, name: str, options: dict[str, Any] | None = None) -> Any:
        """Load and instantiate with validated options."""
        cls = self.load(kind, name)
        instance = cls(**(options or {}))
        return instance

    def inspect(self, kind: str | None = None) -> list[PluginInfo]:
        """Every discovered plugin with its status; imports each one (broken ones are reported)."""
        out: list[PluginInfo] = []
        for k in ([kind] if kind else list(GROUPS)):
            for name, info in self._discover(k).items():
                if info.status == "unchecked":
                    try:
                        self.load(k, name)
                    except PluginLoadError:
                        pass
                out.append(info)
        return out


def _check_plugin_class(kind: str, obj: Any) -> str:
    """Empty string when ``obj`` is a usable plugin class of ``kind``, else the reason."""
    bases = _BASES[kind]
    if not (isinstance(obj, type) and issubclass(obj, bases)):
        names = " or ".join(f"dcx.core.contracts.{b.__name__}" for b in bases)
        return f"{obj!r} is not a subclass of {names}"
    want = API_VERSION.split(".")[0]
    got = str(getattr(obj, "dcx_api", "")).split(".")[0]
    if got != want:
        return f"written for dcx API {getattr(obj, 'dcx_api', '?')}, this dcx provides {API_VERSION}"
    return ""
