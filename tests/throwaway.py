"""Install packages into a throw-away folder on top of the current environment, and run
``python -m ...`` there: how the tests try third-party plugin packages without a network."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

#: A run that takes a few seconds (its --out is added by the caller).
TINY_RUN = ["--epochs", "1", "--passes", "1", "--width", "0.125", "--batch-size", "16", "--k", "5", "--no-probe",
            "--no-report", "--quiet", "--json"]


class Throwaway:
    """A ``pip install --target`` folder; ``run`` puts it first on PYTHONPATH."""

    def __init__(self, target: Path) -> None:
        self.target = Path(target)

    def install(self, *packages: Path) -> None:
        self.run("pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index", "--target",
                 str(self.target), *map(str, packages))

    def run(self, module: str, *args: str, cwd: Path | None = None, check: bool = True) -> subprocess.CompletedProcess:
        env = {**os.environ, "PYTHONPATH": str(self.target)}
        out = subprocess.run([sys.executable, "-m", module, *args], env=env, cwd=cwd, capture_output=True, text=True)
        if check:
            assert out.returncode == 0, f"python -m {module} {' '.join(args)}:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
        return out

    def listed(self) -> dict[tuple[str, str], dict]:
        """``dcx list --json`` rows by (kind, name), for rows whose name is unique."""
        return {(r["kind"], r["name"]): r for r in json.loads(self.run("dcx", "list", "--json").stdout)}

    def pytest(self, *paths: Path, cwd: Path) -> str:
        """Run the packages' own tests; returns pytest's summary line."""
        out = self.run("pytest", "-q", "-p", "no:cacheprovider", "--import-mode=importlib", *map(str, paths), cwd=cwd)
        return out.stdout.strip().splitlines()[-1]
