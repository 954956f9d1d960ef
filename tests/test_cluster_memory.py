"""`dcx cluster` streams its input: through the CLI (not only the library call) it never holds the
file whole, a float64 copy of it, a kNN graph of every row, or torch (~0.5 GB resident on its own).

The 400,000 x 1,024 file of issue 37 is benchmarks/bench_cluster_cli.py; these are the same checks
at a size the test gate affords."""

import json
import subprocess
import sys
import textwrap
import tracemalloc
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from dcx.algorithms import arrays
from dcx.cli import app

runner = CliRunner()


def _features(path: Path, n: int, d: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(20, d)).astype(np.float32)
    x = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, d))
    for a in range(0, n, 5000):
        b = min(n, a + 5000)
        x[a:b] = centres[rng.integers(0, 20, b - a)] + rng.normal(scale=0.5, size=(b - a, d)).astype(np.float32)
    x.flush()
    del x
    return path


def test_cli_cluster_allocates_a_fraction_of_its_input(tmp_path, monkeypatch):
    """Python-side allocations (numpy reports to tracemalloc) stay at the projection plus a chunk:
    reading the 41 MB file whole, or any float64 / contiguous copy of it, would exceed the bound."""
    src = _features(tmp_path / "x.npy", 40_000, 256)
    monkeypatch.setattr(arrays, "CHUNK_BYTES", 1024**2)
    size = src.stat().st_size
    tracemalloc.start()
    try:
        result = runner.invoke(app, ["cluster", str(src), "--k", "50", "--pca-dim", "32", "--out",
                                     str(tmp_path / "labels.npy"), "--json"])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["nonempty"] == 50
    projection = 40_000 * 32 * 4
    assert peak < projection + size // 4, f"peak {peak / 1e6:.1f} MB for a {size / 1e6:.1f} MB input"


def test_cli_cluster_process_imports_no_torch_and_stays_small(tmp_path):
    """In its own process, as a user runs it: no torch import (kmeans's heads are built lazily), no
    merged head over a kNN graph (one labelling is written), and the peak resident memory above
    the process's imports stays well under the file's size."""
    src = _features(tmp_path / "x.npy", 100_000, 512)
    size = src.stat().st_size
    code = textwrap.dedent(f"""
        import json, sys
        def hwm():
            return int(next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).split()[1]) * 1024
        from dcx.cli import app
        import dcx.cli.cluster, faiss, numpy  # what the command imports anyway
        before = hwm()
        try:
            app(['cluster', {str(src)!r}, '--k', '500', '--pca-dim', '64', '--out', {str(tmp_path / 'labels.npy')!r}, '--quiet'])
        except SystemExit as exc:
            assert not exc.code, exc.code
        print(json.dumps({{'torch': 'torch' in sys.modules, 'knn': 'dcx.algorithms.knn' in sys.modules,
                          'before': before, 'peak': hwm()}}))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not info["torch"], "dcx cluster imported torch"
    assert not info["knn"], "dcx cluster built a kNN graph for a merged head it does not write"
    projection, chunk, blas = 100_000 * 64 * 4, arrays.CHUNK_BYTES, 64 * 1024**2  # + faiss/BLAS buffers
    growth = info["peak"] - info["before"]
    assert growth < projection + chunk + blas + size // 4, f"grew {growth / 1e6:.0f} MB on a {size / 1e6:.0f} MB input"
