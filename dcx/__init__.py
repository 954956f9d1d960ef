"""dcx: self-supervised visual feature learning by pseudo-labels."""

__version__ = "0.1.0"
