"""The built-in clusterers, one plugin per file, registered like any third party's (pyproject.toml)."""
