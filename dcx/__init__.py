"""dcx: self-supervised visual feature learning by pseudo-labels.

``dcx.train``, ``dcx.load``, ``dcx.evaluate`` and ``dcx.Run`` (docs/api.md) are imported on first
use, so ``import dcx`` (and ``dcx --help``) does not import torch.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("dcx")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0.3.0"

_API = ("Run", "evaluate", "load", "train")


def __getattr__(name: str):
    if name in _API:
        from dcx import api

        return getattr(api, name)
    raise AttributeError(f"module 'dcx' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
