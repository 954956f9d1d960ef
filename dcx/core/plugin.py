"""The base of every plugin: its name, its declared options and contract version."""

from __future__ import annotations

from abc import ABC
from typing import Any, ClassVar

from dcx.core.options import Option, resolve


#: Version of this contract. A plugin declares the version it was written for in ``dcx_api``, in its
#: own class body; one that declares none or another major version is listed and not loaded.
#: What changed per version: docs/plugins.md "Changes by API version".
API_VERSION = "3.0"


class Plugin(ABC):
    """Common base: a name, declared options and their validated values in ``self.params``."""

    name: ClassVar[str] = ""
    options: ClassVar[tuple[Option, ...]] = ()
    dcx_api: ClassVar[str] = ""  # declared by each plugin class; never inherited from here

    def __init__(self, **options: Any) -> None:
        self.params: dict[str, Any] = resolve(self.name or type(self).__name__, self.options, options)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{type(self).__name__}({args})"
