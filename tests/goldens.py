"""Golden runs: the exact numbers of a default ``dcx run`` per built-in clusterer, per machine kind.

A refactoring must leave them bit-identical (metrics without timings, the trained weights, the
final assignments). They depend on the CPU's kernels (``machine_kind``), so they are recorded per
kind and a machine of another kind skips them. Record this machine's with::

    python tests/goldens.py record [CLUSTERER ...]

and check them with ``pytest -m golden`` (each run is a full default run: minutes).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

GOLDEN_DIR = Path(__file__).parent / "goldens"
CLUSTERERS = ("kmeans", "pic", "sinkhorn", "swav", "dcv2")
#: The run: every default, digits, seed 0, one thread (thread count changes reduction order).
ARGS = ("--dataset", "digits", "--seed", "0", "--no-report", "--quiet")
ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def machine_kind() -> str:
    """What exact numbers depend on besides the code: torch's CPU kernels, numpy's BLAS core, the
    CPU vendor and matrix units, and the torch version."""
    import torch

    from dcx.training.environment import blas_core, cpu_kind

    return "-".join([torch.backends.cpu.get_cpu_capability(), blas_core(), cpu_kind(),
                     "torch" + torch.__version__.split("+")[0]]).replace(" ", "_").replace("/", "_")


def golden_file() -> Path:
    return GOLDEN_DIR / f"{machine_kind()}.json"


def _weights_digest(checkpoint: Path) -> str:
    import torch

    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["model"]
    h = hashlib.sha256()
    for key in sorted(state):
        h.update(key.encode())
        h.update(state[key].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _no_timings(value):
    if isinstance(value, dict):
        return {k: _no_timings(v) for k, v in value.items()
                if not k.startswith("time") and k != "seconds" and not k.endswith("_per_s")}
    if isinstance(value, list):
        return [_no_timings(v) for v in value]
    return value


def numbers(clusterer: str) -> dict:
    """Run ``dcx run --clusterer CLUSTERER`` at its defaults in a subprocess; its exact numbers."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        env = {**os.environ, **ENV}
        subprocess.run([sys.executable, "-m", "dcx", "run", "--clusterer", clusterer, *ARGS, "--out", str(out)],
                       check=True, env=env, stdout=subprocess.DEVNULL)
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
        summary = json.loads((out / "summary.json").read_text())
        labels = np.load(out / "assignments.npy")
        return {
            "rows": _no_timings(rows),
            "best_block": _no_timings(summary.get("best_block")),
            "weights_sha256": _weights_digest(out / "checkpoint.pt"),
            "assignments_sha256": hashlib.sha256(labels.astype(np.int64).tobytes()).hexdigest(),
        }


def load() -> dict:
    path = golden_file()
    return json.loads(path.read_text()) if path.exists() else {}


def record(names: list[str]) -> None:
    values = load()
    for name in names:
        print(f"recording {name} on {machine_kind()}", flush=True)
        values[name] = numbers(name)
        GOLDEN_DIR.mkdir(exist_ok=True)
        golden_file().write_text(json.dumps(values, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] != "record":
        sys.exit("usage: python tests/goldens.py record [CLUSTERER ...]")
    record(sys.argv[2:] or list(CLUSTERERS))
