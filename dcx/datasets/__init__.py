"""Built-in datasets, registered under the `dcx.datasets` entry-point group."""
