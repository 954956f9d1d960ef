"""dcx: self-supervised visual feature learning by pseudo-labels."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("dcx")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0.2.0"
