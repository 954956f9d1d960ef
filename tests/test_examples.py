"""examples/dcx-agglomerative, a complete third-party package, installed into a throw-away folder:
dcx lists its plugins, runs them, and the package's own conformance tests pass."""

import json
import shutil
from pathlib import Path

import pytest

from throwaway import TINY_RUN, Throwaway

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "dcx-agglomerative"


@pytest.mark.slow
def test_the_example_package_installs_lists_runs_and_conforms(tmp_path):
    source = tmp_path / "src"
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    env = Throwaway(tmp_path / "site")
    env.install(source)
    listed = env.listed()
    for kind, name in (("clusterer", "agglomerative"), ("backbone", "lenet")):
        row = listed[(kind, name)]
        assert row["status"] == "ok" and row["package"] == "dcx-agglomerative", row
    out = env.run("dcx", "run", "--clusterer", "agglomerative", "--backbone", "lenet", "--opt",
                  "agglomerative.linkage=average", "--opt", "digits.limit=60", *TINY_RUN, "--out", str(tmp_path / "run"))
    summary = json.loads(out.stdout)
    assert summary["plugins"]["clusterer"] == {"name": "agglomerative", "package": "dcx-agglomerative", "version": "0.1.0"}
    assert summary["plugins"]["backbone"]["package"] == "dcx-agglomerative"
    result = env.pytest(source / "tests", cwd=tmp_path)
    assert "passed" in result and "failed" not in result and "skipped" not in result, result
