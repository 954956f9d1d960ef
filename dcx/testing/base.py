"""The machinery of the conformance kit: named checks, the plugin under test, running and skipping.

A check is a function of one rule, registered with ``@check(rule, applies=...)`` in its
module; ``Check.__call__`` turns every failure (a failed assertion, a ``DcxError`` such as
``ContractError``, any other exception) into one ``AssertionError`` that names the check, the
plugin and the rule.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

from dcx.core.contracts import Backbone, Clusterer, Dataset, OnlineClusterer, Plugin

#: Every registered check, in definition order (the order a plugin's checks run and are listed).
CHECKS: list["Check"] = []

#: What a plugin under test may be given as: a class, or an instance whose options are reused.
PluginLike = type | Plugin


@dataclass
class PluginUnderTest:
    """A plugin class plus the options and data root the checks build it with."""

    cls: type
    options: dict[str, Any] = field(default_factory=dict)
    root: Path | None = None

    @classmethod
    def of(cls, plugin: "PluginLike | PluginUnderTest", root: Path | str | None = None) -> "PluginUnderTest":
        if isinstance(plugin, PluginUnderTest):
            return plugin
        if isinstance(plugin, type):
            return cls(plugin, {}, Path(root) if root is not None else None)
        if isinstance(plugin, Plugin):
            return cls(type(plugin), dict(plugin.params), Path(root) if root is not None else None)
        return cls(plugin, {}, None)  # not a class at all: check_plugin_class reports it

    @property
    def label(self) -> str:
        name = getattr(self.cls, "name", "") if isinstance(self.cls, type) else ""
        return name if isinstance(name, str) and name else getattr(self.cls, "__name__", repr(self.cls))

    def new(self, **overrides: Any) -> Any:
        """A fresh instance with the given options, ``overrides`` on top."""
        return self.cls(**{**self.options, **overrides})

    def skips(self) -> dict[str, str]:
        """The checks the class declares it knowingly fails: ``conformance_skip = {name: reason}``."""
        declared = getattr(self.cls, "conformance_skip", None) or {}
        return dict(declared) if isinstance(declared, Mapping) else {}


@dataclass(frozen=True)
class Check:
    """One named rule. Call it with a plugin class (or instance); it returns None or raises AssertionError."""

    name: str
    rule: str
    func: Callable[[PluginUnderTest], None]
    applies: Callable[[type], bool]

    def __call__(self, plugin: "PluginLike | PluginUnderTest", root: Path | str | None = None) -> None:
        subject = PluginUnderTest.of(plugin, root)
        try:
            self.func(subject)
        except AssertionError as exc:
            raise AssertionError(f"{self.name} failed for {subject.label}: {self.rule}: {exc}") from None
        except Exception as exc:  # a plugin's ContractError, TypeError, ...: a failure, named
            raise AssertionError(
                f"{self.name} failed for {subject.label}: {self.rule}: raised {type(exc).__name__}: {exc}"
            ) from exc

    def __repr__(self) -> str:
        return self.name


def check(rule: str, applies: Callable[[type], bool] = lambda cls: True) -> Callable:
    """Register the decorated function as a check named after it, stating ``rule``."""

    def register(func: Callable[[PluginUnderTest], None]) -> Check:
        c = Check(func.__name__, rule, func, applies)
        if any(other.name == c.name for other in CHECKS):
            raise RuntimeError(f"two checks named {c.name}")
        CHECKS.append(c)
        return c

    return register


def _sub(cls: Any, bases: tuple[type, ...]) -> bool:
    return isinstance(cls, type) and issubclass(cls, bases)


def is_plugin(cls: Any) -> bool:
    return _sub(cls, (Plugin,))


def is_clusterer(cls: Any) -> bool:
    return _sub(cls, (Clusterer, OnlineClusterer))


def is_offline(cls: Any) -> bool:
    return _sub(cls, (Clusterer,))


def is_online(cls: Any) -> bool:
    return _sub(cls, (OnlineClusterer,))


def is_backbone(cls: Any) -> bool:
    return _sub(cls, (Backbone,))


def is_dataset(cls: Any) -> bool:
    return _sub(cls, (Dataset,))


def get(name: str) -> Check:
    """The check called ``name``."""
    for c in CHECKS:
        if c.name == name:
            return c
    raise KeyError(f"no conformance check named {name!r}; checks: {', '.join(c.name for c in CHECKS)}")


def checks(plugin: "PluginLike | PluginUnderTest") -> Iterator[Check]:
    """The checks that apply to ``plugin`` (by its kind and schedule), in order."""
    cls = PluginUnderTest.of(plugin).cls
    for c in CHECKS:
        if c.applies(cls):
            yield c


def _skips(subject: PluginUnderTest, skip: Mapping[str, str] | None) -> dict[str, str]:
    out = {**subject.skips(), **(skip or {})}
    known = {c.name for c in CHECKS}
    unknown = sorted(set(out) - known)
    if unknown:
        raise ValueError(f"{subject.label}: unknown check(s) {', '.join(unknown)} in the skip list; "
                         f"checks: {', '.join(sorted(known))}")
    return out


def run_checks(plugin: "PluginLike | PluginUnderTest", skip: Mapping[str, str] | None = None,
               root: Path | str | None = None, only: Callable[[type], bool] | None = None) -> None:
    """Run every applicable check (minus the skipped ones) and raise one AssertionError that lists
    every failure by name, or return None when all pass."""
    subject = PluginUnderTest.of(plugin, root)
    skipped = _skips(subject, skip)
    failures = []
    if only is not None and not only(subject.cls):
        failures.append(f"{subject.label} is not a {getattr(only, '__name__', 'plugin').removeprefix('is_')}")
    for c in checks(subject):
        if c.name in skipped:
            continue
        try:
            c(subject)
        except AssertionError as exc:
            failures.append(str(exc))
    if failures:
        raise AssertionError(f"{len(failures)} conformance check(s) failed for {subject.label}:\n- "
                             + "\n- ".join(failures))


def parametrize_with_checks(plugins: Iterable["PluginLike | PluginUnderTest"], skip: Mapping[str, str] | None = None,
                            root: Path | str | None = None) -> Any:
    """A ``pytest.mark.parametrize`` over (plugin, check): one test id per pair, e.g.
    ``kmeans-check_fit_deterministic``. Checks in ``skip`` or in the class's ``conformance_skip``
    are reported as skipped with their reason::

        @parametrize_with_checks([MyClusterer])
        def test_conformance(plugin, check):
            check(plugin)
    """
    import pytest

    params = []
    for plugin in plugins:
        subject = PluginUnderTest.of(plugin, root)
        skipped = _skips(subject, skip)
        for c in checks(subject):
            marks = [pytest.mark.skip(reason=f"{c.name}: {skipped[c.name]}")] if c.name in skipped else []
            params.append(pytest.param(subject, c, id=f"{subject.label}-{c.name}", marks=marks))
    return pytest.mark.parametrize("plugin, check", params)
