"""Run directory: atomic writes, metrics.jsonl, checkpoints and resume.

Every file is written to a temporary name in the same directory and renamed into place, so an
interrupted run leaves either the previous complete file or the new complete file, never half.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dcx.core.errors import RunDirError

CONFIG = "config.toml"
METRICS = "metrics.jsonl"
CHECKPOINT = "checkpoint.pt"
SUMMARY = "summary.json"
ASSIGNMENTS = "assignments.npy"


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file + fsync + rename (atomic on POSIX)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_npy(path: Path, array: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, array)
    atomic_write(path, buf.getvalue())


def save_json(path: Path, obj: Any) -> None:
    atomic_write(path, (json.dumps(obj, indent=2, default=_jsonable) + "\n").encode())


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def default_run_dir(root: Path, clusterer: str, backbone: str) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    path = Path(root) / f"{stamp}-{clusterer}-{backbone}"
    n = 1
    while path.exists():
        n += 1
        path = Path(root) / f"{stamp}-{clusterer}-{backbone}-{n}"
    return path


class RunDir:
    """One run's directory. ``metrics.jsonl`` is rewritten whole (atomically) on each append."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def create(self, config_toml: bytes, resume: bool = False) -> None:
        if self.path.exists() and any(self.path.iterdir()) and not resume:
            if (self.path / CHECKPOINT).exists():
                raise RunDirError(f"{self.path} already holds a run: pass --resume to continue it or choose another --out")
            raise RunDirError(f"{self.path} exists and is not empty: choose another --out")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RunDirError(f"cannot create run directory {self.path}: {exc.strerror}") from None
        atomic_write(self.path / CONFIG, config_toml)

    def metrics(self) -> list[dict]:
        path = self.path / METRICS
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def append_metrics(self, row: dict) -> None:
        rows = self.metrics() + [row]
        text = "".join(json.dumps(r, default=_jsonable) + "\n" for r in rows)
        atomic_write(self.path / METRICS, text.encode())

    def truncate_metrics(self, upto_epoch: int) -> None:
        """Drop rows of epochs >= ``upto_epoch`` (written after the checkpoint we resume from)."""
        rows = [r for r in self.metrics() if r.get("epoch", 0) < upto_epoch]
        atomic_write(self.path / METRICS, "".join(json.dumps(r) + "\n" for r in rows).encode())

    def save_checkpoint(self, state: dict) -> None:
        buf = io.BytesIO()
        torch.save(state, buf)
        atomic_write(self.path / CHECKPOINT, buf.getvalue())

    def load_checkpoint(self) -> dict | None:
        path = self.path / CHECKPOINT
        if not path.exists():
            return None
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise RunDirError(f"cannot read {path} ({type(exc).__name__}): start a new run with another --out") from None

    def save_assignments(self, labels: np.ndarray, epoch: int | None = None) -> None:
        name = ASSIGNMENTS if epoch is None else f"assignments/epoch_{epoch:03d}.npy"
        save_npy(self.path / name, labels)

    def save_summary(self, summary: dict) -> None:
        save_json(self.path / SUMMARY, summary)

    def read_json(self, name: str) -> dict:
        path = self.path / name
        if not path.exists():
            raise RunDirError(f"{path} not found: is {self.path} a finished dcx run directory?")
        return json.loads(path.read_text())
