"""Checks every plugin kind shares: the class, its name, its options, pickling."""

from __future__ import annotations

import pickle

from dcx.core.contracts import API_VERSION, Backbone, Clusterer, Dataset, OnlineClusterer
from dcx.core.errors import OptionError
from dcx.core.options import TYPES, Option
from dcx.core.registry import RESERVED_CHARS, declared_api
from dcx.testing.base import PluginUnderTest, check, is_clusterer, is_plugin

_BASES = (Clusterer, OnlineClusterer, Backbone, Dataset)


@check("a plugin subclasses dcx.core.contracts.Clusterer, OnlineClusterer, Backbone or Dataset")
def check_plugin_class(p: PluginUnderTest) -> None:
    assert isinstance(p.cls, type) and issubclass(p.cls, _BASES), f"{p.cls!r} subclasses none of them"


@check("the class declares its own dcx_api (not inherited from dcx or another package) with this dcx's major "
       "version (" + API_VERSION + ")", applies=is_plugin)
def check_api_version(p: PluginUnderTest) -> None:
    got = declared_api(p.cls)
    assert got is not None, f"no dcx_api in the class body: add dcx_api = {API_VERSION!r}"
    assert got.split(".")[0] == API_VERSION.split(".")[0], f"dcx_api is {got!r} (docs/plugins.md \"Changes by API version\")"


@check("the class declares its own `name`, a non-empty string without ':', '.', '=' or spaces", applies=is_plugin)
def check_name(p: PluginUnderTest) -> None:
    name = p.cls.__dict__.get("name")
    assert name is not None, (
        "no `name` in the class body (an inherited name would clash with the parent's): add name = '...'")
    assert isinstance(name, str) and name, f"name is {name!r}"
    bad = [c for c in RESERVED_CHARS if c in name]
    assert not bad, f"name {name!r} contains {bad[0]!r}"


@check("options are a tuple of Option with unique names, a supported type and a default that meets its own "
       "constraints", applies=is_plugin)
def check_options_declared(p: PluginUnderTest) -> None:
    options = p.cls.options
    assert isinstance(options, tuple), f"options must be a tuple, got {type(options).__name__}"
    names = []
    for opt in options:
        assert isinstance(opt, Option), f"{opt!r} is not a dcx.core.options.Option"
        assert opt.name.isidentifier(), f"option name {opt.name!r} is not an identifier"
        assert opt.type in TYPES, f"option {opt.name}: type {opt.type!r} is not one of int, float, str, bool"
        if opt.choices is not None:
            assert all(type(c) is opt.type for c in opt.choices), f"option {opt.name}: choices {opt.choices} not {opt.type.__name__}"
        if opt.default is None:
            assert opt.nullable, f"option {opt.name}: default None needs nullable=True"
        else:
            try:
                value = opt.coerce(p.label, opt.default)
            except OptionError as exc:
                raise AssertionError(f"default of option {opt.name} is invalid: {exc}") from None
            assert value == opt.default, f"option {opt.name}: default {opt.default!r} is not a {opt.type.__name__}"
        names.append(opt.name)
    assert len(set(names)) == len(names), f"duplicate option names in {names}"


@check("every option has help text (dcx list --options and dcx show print it)", applies=is_plugin)
def check_options_documented(p: PluginUnderTest) -> None:
    missing = [o.name for o in p.cls.options if not str(o.help).strip()]
    assert not missing, f"options without help: {', '.join(missing)}"


@check("an unknown option is refused with OptionError (call super().__init__(**options))", applies=is_plugin)
def check_unknown_option_rejected(p: PluginUnderTest) -> None:
    try:
        p.new(__no_such_option__=1)
    except OptionError:
        return
    raise AssertionError("accepted an unknown option")


@check("the validated options, given back, build the same plugin (config.toml reproduces a run)", applies=is_plugin)
def check_params_reproduce(p: PluginUnderTest) -> None:
    first = p.new()
    given = {k: v for k, v in first.params.items() if v is not None}  # what config.toml stores
    assert set(first.params) == {o.name for o in p.cls.options}, (
        f"params {sorted(first.params)} are not the declared options")
    again = p.cls(**given)
    assert again.params == first.params, f"{again.params} != {first.params}"


@check("an instance pickles and unpickles with the same options (data-loader workers, multiprocessing)",
       applies=is_plugin)
def check_pickles(p: PluginUnderTest) -> None:
    plugin = p.new()
    try:
        back = pickle.loads(pickle.dumps(plugin))
    except Exception as exc:
        raise AssertionError(f"pickling failed: {type(exc).__name__}: {exc}") from None
    assert type(back) is type(plugin) and back.params == plugin.params, "unpickled plugin differs"


@check("uses_k is True exactly when an integer option `k` is declared (--k fills it)", applies=is_clusterer)
def check_k_option(p: PluginUnderTest) -> None:
    k = [o for o in p.cls.options if o.name == "k"]
    if p.cls.uses_k:
        assert k, "uses_k is True but no option `k` is declared: declare Option('k', int, ...) or set uses_k = False"
        assert k[0].type is int, f"option k must be an int, not {k[0].type.__name__}"
    else:
        assert not k, "declares an option `k` but uses_k is False: --k would be ignored"
