"""Built-in backbones, registered under the `dcx.backbones` entry-point group. One per file."""
