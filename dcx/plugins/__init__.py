"""Built-in clusterers, registered under the `dcx.clusterers` entry-point group. One per file."""
