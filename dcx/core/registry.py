"""Plugin discovery through Python entry points (``importlib.metadata``), loaded lazily by name.

Built-ins are registered in ``pyproject.toml`` exactly like third-party plugins. Every plugin is
addressed as ``NAME`` when one package provides that name and always as ``PACKAGE:NAME`` (the
distribution name, ``-``/``_``/``.`` and case equivalent); a bare name that several packages
provide is refused, never resolved by sys.path order. Listing a kind imports each of its
plugins to report its status; a broken plugin is reported, never fatal. A plugin class must declare
the ``dcx_api`` it was written for; ``create`` turns a hook call that does not fit the plugin's
signature into one ``PluginContractError``.
"""

from __future__ import annotations

import difflib
import importlib.metadata as md
import inspect
import logging
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable

from packaging.utils import canonicalize_name

from dcx.core import contracts
from dcx.core.contracts import API_VERSION, Backbone, Clusterer, Dataset, OnlineClusterer, Plugin
from dcx.core.errors import AmbiguousPluginError, PluginContractError, PluginLoadError, PluginNotFoundError

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
#: Separates the package from the plugin name in a qualified name (``dcx:kmeans``).
QUALIFIER = ":"
#: Characters a plugin name cannot hold: ``:`` qualifies it, ``.`` separates ``--opt NAME.KEY``.
RESERVED_CHARS = (QUALIFIER, ".", "=", " ")
#: Minimum similarity (difflib ratio) for a "did you mean" suggestion.
SUGGEST_CUTOFF = 0.6
#: Status of a plugin class that declares no ``dcx_api`` of its own.
NO_API = "no dcx_api"
#: Where a plugin author reads what to change for this API version.
CHANGES = 'docs/plugins.md "Changes by API version"'


@dataclass(frozen=True)
class PluginRef:
    """Which plugin a name resolved to: its canonical bare name and the package that provides it."""

    kind: str
    name: str
    package: str
    version: str

    @property
    def qualified(self) -> str:
        return f"{self.package}{QUALIFIER}{self.name}"

    def provenance(self) -> dict[str, str]:
        """What a run records about the plugin it used (``config.toml``, ``summary.json``)."""
        return {"name": self.name, "package": self.package, "version": self.version}

    def refers_to(self, key: str) -> bool:
        """Whether ``key`` (bare or qualified, e.g. an ``--opt`` owner) names this plugin."""
        package, sep, name = key.partition(QUALIFIER)
        if not sep:
            return key == self.name
        return name == self.name and same_package(package, self.package)


def same_package(a: str, b: str) -> bool:
    """Distribution names compare as pip does: case-insensitive, ``-``, ``_`` and ``.`` equal."""
    return canonicalize_name(a) == canonicalize_name(b)


@dataclass
class PluginInfo:
    """One discovered entry point and what loading it gave."""

    kind: str
    name: str
    target: str
    package: str
    version: str
    status: str = "unchecked"  # ok | broken | incompatible | no dcx_api | unchecked
    error: str = ""
    schedule: str = ""
    #: Other packages that provide the same bare name (then only the qualified name works).
    clashes: list[str] = field(default_factory=list)

    @property
    def qualified(self) -> str:
        return f"{self.package}{QUALIFIER}{self.name}"

    def ref(self) -> PluginRef:
        return PluginRef(self.kind, self.name, self.package, self.version)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "qualified": self.qualified}


def _dist_of(ep: md.EntryPoint) -> tuple[str, str]:
    """(distribution name, version); an entry point without a distribution (injected in tests)
    is attributed to its top-level module."""
    dist = getattr(ep, "dist", None)
    if dist is None:
        return ep.value.split(":")[0].split(".")[0] or "?", "?"
    return dist.metadata["Name"] or "?", dist.version or "?"


class Registry:
    """Entry-point registry. ``entry_points`` can be injected (tests); default: the environment."""

    def __init__(self, entry_points: Callable[[str], Iterable[md.EntryPoint]] | None = None) -> None:
        self._entry_points = entry_points or (lambda group: md.entry_points(group=group))
        self._infos: dict[str, list[PluginInfo]] = {}
        self._eps: dict[tuple[str, str, str], md.EntryPoint] = {}  # (kind, canonical package, name)
        self._loaded: dict[tuple[str, str, str], type[Plugin]] = {}

    def _check_kind(self, kind: str) -> None:
        if kind not in GROUPS:
            raise PluginNotFoundError(f"unknown plugin kind {kind!r}; kinds: {', '.join(GROUPS)}")

    def _discover(self, kind: str) -> list[PluginInfo]:
        self._check_kind(kind)
        if kind not in self._infos:
            infos: list[PluginInfo] = []
            for ep in self._entry_points(GROUPS[kind]):
                package, version = _dist_of(ep)
                key = (kind, canonicalize_name(package), ep.name)
                if key in self._eps:  # the same distribution seen twice on sys.path: Python imports the first
                    log.debug("%s %s of %s found twice; using %s", kind, ep.name, package, self._eps[key].value)
                    continue
                self._eps[key] = ep
                infos.append(PluginInfo(kind, ep.name, ep.value, package, version))
            for info in infos:
                info.clashes = [o.package for o in infos if o.name == info.name and o is not info]
            self._infos[kind] = infos
        return self._infos[kind]

    def names(self, kind: str) -> list[str]:
        """Every bare name of ``kind``, sorted, without importing anything."""
        return sorted({i.name for i in self._discover(kind)})

    def providers(self, kind: str, name: str) -> list[PluginInfo]:
        """The entry points that provide the bare ``name`` (two or more: a clash)."""
        return [i for i in self._discover(kind) if i.name == name]

    def available(self, kind: str) -> list[str]:
        """What a user can type: bare names when unique, every qualified form of a clash."""
        out = []
        for info in self._discover(kind):
            out.append(info.qualified if info.clashes else info.name)
        return sorted(set(out))

    def resolve(self, kind: str, name: str) -> PluginRef:
        """The plugin ``name`` (``NAME`` or ``PACKAGE:NAME``) refers to, without importing it.

        PluginNotFoundError (with a close suggestion) when nothing matches; AmbiguousPluginError
        when a bare name is provided by several packages.
        """
        return self._info(kind, name).ref()

    def _info(self, kind: str, name: str) -> PluginInfo:
        infos = self._discover(kind)
        package, sep, bare = name.partition(QUALIFIER)
        if sep:
            found = [i for i in infos if i.name == bare and same_package(i.package, package)]
        else:
            found = [i for i in infos if i.name == name]
        if len(found) == 1:
            return found[0]
        if found:
            found.sort(key=lambda i: canonicalize_name(i.package))
            packages = [i.package for i in found]
            raise AmbiguousPluginError(
                f"{kind} '{name}' is provided by {len(found)} packages ({', '.join(packages)}): choose one with "
                + " or ".join(f"'{i.qualified}'" for i in found)
            )
        available = self.available(kind)
        candidates = sorted({i.qualified for i in infos}) if sep else sorted({i.name for i in infos})
        close = difflib.get_close_matches(name, candidates, n=1, cutoff=SUGGEST_CUTOFF)
        if sep and not close:
            close = [i.qualified for i in infos if i.name == bare][:1]
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise PluginNotFoundError(f"unknown {kind} '{name}'{hint}; available: {', '.join(available) or 'none'}")

    def load(self, kind: str, name: str) -> type[Plugin]:
        """Import and return the plugin class ``name`` refers to; PluginNotFoundError /
        AmbiguousPluginError / PluginLoadError (broken or incompatible) otherwise."""
        info = self._info(kind, name)
        key = (kind, canonicalize_name(info.package), info.name)
        if key in self._loaded:
            return self._loaded[key]
        if info.status not in ("unchecked", "ok"):
            raise PluginLoadError(_load_error(info))
        try:
            obj = self._eps[key].load()
        except Exception as exc:  # a broken third-party plugin must not take the CLI down
            info.status, info.error = "broken", f"{type(exc).__name__}: {exc}"
            raise PluginLoadError(_load_error(info)) from exc
        status, problem = check_plugin_class(kind, obj, info.name)
        if problem:
            info.status, info.error = status, problem
            raise PluginLoadError(_load_error(info))
        info.status, info.schedule = "ok", getattr(obj, "schedule", "")
        self._loaded[key] = obj
        return obj

    def create(self, kind: str, name: str, options: dict[str, Any] | None = None) -> Any:
        """Load and instantiate with validated options; its contract hooks are guarded (``guard_hooks``)."""
        cls, info = self.load(kind, name), self._info(kind, name)
        missing = sorted(getattr(cls, "__abstractmethods__", ()))
        if missing:  # instantiating would raise a bare TypeError
            raise PluginContractError(f"{_owner(info, cls)}: {cls.__name__} does not implement "
                                      f"{', '.join(missing)}, which the contract requires; see {CHANGES}")
        return guard_hooks(cls(**(options or {})), info)

    def inspect(self, kind: str | None = None) -> list[PluginInfo]:
        """Every discovered plugin with its status; imports each one (broken ones are reported)."""
        out: list[PluginInfo] = []
        for k in ([kind] if kind else list(GROUPS)):
            for info in self._discover(k):
                if info.status == "unchecked":
                    try:
                        self.load(k, info.qualified)
                    except PluginLoadError:
                        pass
                out.append(info)
        return out


def _load_error(info: PluginInfo) -> str:
    if info.status == "broken":
        return (f"{info.kind} '{info.name}' from {info.package} failed to import ({info.error}); "
                "reinstall or fix that package")
    what = "cannot be used" if info.status == NO_API else "is incompatible"
    return f"{info.kind} '{info.name}' from {info.package} {info.version} {what}: {info.error}"


def declared_api(cls: type) -> str | None:
    """The ``dcx_api`` declared in the body of ``cls`` or of a base class from its own top-level
    package; None when only dcx's contract or another package's class (dcx's built-ins too) gives one."""
    top = cls.__module__.partition(".")[0]
    for c in cls.__mro__:
        if c.__module__ == contracts.__name__:
            break
        if "dcx_api" in vars(c) and c.__module__.partition(".")[0] == top:
            return str(vars(c)["dcx_api"])
    return None


def check_plugin_class(kind: str, obj: Any, name: str | None = None) -> tuple[str, str]:
    """("ok", "") when ``obj`` is a usable plugin class of ``kind`` registered as ``name``, else its
    status and the reason. The class declares its own ``name`` and ``dcx_api``; the registry writes neither."""
    bases = _BASES[kind]
    if not (isinstance(obj, type) and issubclass(obj, bases)):
        names = " or ".join(f"dcx.core.contracts.{b.__name__}" for b in bases)
        return "incompatible", f"{obj!r} is not a subclass of {names}"
    api = declared_api(obj)
    if api is None:
        return NO_API, (f"{obj.__name__} declares no dcx_api in its class body, so the API it was written for is "
                        f"unknown; this dcx provides API {API_VERSION}: port it, then declare dcx_api = "
                        f'"{API_VERSION}" (see {CHANGES})')
    if api.split(".")[0] != API_VERSION.split(".")[0]:
        return "incompatible", f"written for dcx API {api}, this dcx provides API {API_VERSION} (see {CHANGES})"
    problem = _name_problem(obj, name)
    return ("incompatible", problem) if problem else ("ok", "")


def _name_problem(obj: type, name: str | None) -> str:
    declared = getattr(obj, "name", "")
    if not isinstance(declared, str) or not declared:
        return f"{obj.__name__} declares no `name`: set the class attribute name = {name or 'my_plugin'!r}"
    if name is not None and declared != name:
        return f"{obj.__name__} declares name {declared!r} but its entry point is {name!r}: make them equal"
    bad = [c for c in RESERVED_CHARS if c in declared]
    if bad:
        return f"name {declared!r} contains {bad[0]!r}, which dcx reserves ({QUALIFIER} qualifies, . separates --opt keys)"
    return ""


class _Hook:
    """A plugin's bound hook: a call whose arguments do not bind to the plugin's signature (a
    plugin written for another contract) raises PluginContractError; other errors pass unchanged."""

    __slots__ = ("method", "owner")

    def __init__(self, method: Any, owner: str) -> None:
        self.method, self.owner = method, owner

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return self.method(*args, **kwargs)
        except TypeError as exc:
            if not _call_mismatch(self.method, exc, args, kwargs):
                raise
            raise PluginContractError(f"{self.owner}: {self.method.__name__}() does not take the arguments dcx "
                                      f"passes ({exc}); see {CHANGES}") from None

    def __reduce__(self) -> tuple:  # pickles as the plain bound method (data-loader workers)
        return getattr, (self.method.__self__, self.method.__name__)


def _call_mismatch(method: Any, exc: TypeError, args: tuple, kwargs: dict) -> bool:
    """Whether ``exc`` was raised by the call itself: the arguments do not bind to the signature."""
    try:
        inspect.signature(method).bind(*args, **kwargs)
    except TypeError:
        return True
    except ValueError:  # no signature (a builtin): the traceback ends in the calling frame
        return exc.__traceback__ is not None and exc.__traceback__.tb_next is None
    return False


def _owner(info: PluginInfo, cls: type) -> str:
    """The plugin, its package and the API versions, as a contract error names them."""
    return (f"{info.kind} '{info.name}' from {info.package} {info.version} (declares dcx_api {declared_api(cls)}; "
            f"this dcx provides {API_VERSION})")


def guard_hooks(plugin: Any, info: PluginInfo) -> Any:
    """Wrap, on the instance, every hook the contract declares (``fit``, ``build_head``, ``loss``,
    ``load``, ...) in a ``_Hook`` naming the plugin, its package and its declared API; returns ``plugin``."""
    owner = _owner(info, type(plugin))
    hooks = {n for base in type(plugin).__mro__ if base.__module__ == contracts.__name__
             for n, v in vars(base).items() if inspect.isfunction(v) and not n.startswith("_")}
    for hook in sorted(hooks):
        method = getattr(plugin, hook, None)
        if inspect.ismethod(method) and method.__self__ is plugin:
            try:
                setattr(plugin, hook, _Hook(method, owner))
            except AttributeError:  # __slots__ without __dict__: left unguarded
                return plugin
    return plugin
