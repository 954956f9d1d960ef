"""Run directory: atomic writes, metrics.jsonl, checkpoints and resume.

Every file is written to a temporary name in the same directory and renamed into place, so an
interrupted run leaves either the previous complete file or the new complete file, never half.
"""

from __future__ import annotations

import errno
import fcntl
import io
import json
import os
import socket
import tempfile
import warnings
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from dcx.core.errors import DiskFull, RunDirError

CONFIG = "config.toml"
METRICS = "metrics.jsonl"
CHECKPOINT = "checkpoint.pt"
SUMMARY = "summary.json"
ASSIGNMENTS = "assignments.npy"
LOCK = ".lock"


def _file_mode() -> int:
    """0o666 under the process umask: what ``open()`` would give (mkstemp alone gives 0o600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file + fsync + rename (atomic on POSIX).

    The file's mode follows the umask. A full disk (``DiskFull``) or another OS error is a
    RunDirError naming the file; the previous version of the file is left in place.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise RunDirError(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, _file_mode())
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        if exc.errno == errno.ENOSPC:
            raise DiskFull(f"cannot write {path}: {exc.strerror or exc}") from None
        raise RunDirError(f"cannot write {path}: {exc.strerror or exc}") from None
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


class RunLock:
    """An advisory lock (``fcntl.flock``) on a run directory, held for the run's life.

    The kernel releases it when the holder exits, however it exits, so a lock left by a killed
    process is never stale; the file records the holder (pid, host, start) for the message a
    second writer gets.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path) / LOCK
        self._fh = None

    def acquire(self) -> "RunLock":
        try:
            fh = open(self.path, "a+")
        except OSError as exc:  # a read-only or vanished folder
            raise RunDirError(f"cannot write to {self.path.parent} ({exc.strerror or exc}): make it writable, "
                              "or choose another folder") from None
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            fh.close()
            raise RunDirError(
                f"{self.path.parent} is in use by {holder}: wait for that run to finish or stop it first"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} on {socket.gethostname()} since {datetime.now():%Y-%m-%d %H:%M:%S}")
        fh.flush()
        self._fh = fh
        return self

    def release(self) -> None:
        if self._fh is not None:
            self._fh.seek(0)
            self._fh.truncate()
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


@contextmanager
def writing(path: Path) -> Iterator[None]:
    """Hold a run directory's lock while a command other than ``dcx run`` writes into it (eval,
    report), so it never writes beside a run that is training; a folder that is not a run is left
    untouched (the command then says what is wrong with it)."""
    if not (Path(path) / CONFIG).is_file():
        yield
        return
    with RunLock(Path(path)):
        yield


class RunDir:
    """One run's directory. ``metrics.jsonl`` is rewritten whole (atomically) on each append."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def check_new(self) -> None:
        """Raise RunDirError unless ``path`` can become a new run directory (absent or empty)."""
        if self.path.exists() and not self.path.is_dir():
            raise RunDirError(f"--out {self.path} is a file, not a folder: choose another --out")
        if self.path.is_dir() and any(self.path.iterdir()):
            if self.is_run():
                raise RunDirError(f"{self.path} already holds a run: resume it with dcx run --resume {self.path}, "
                                  "or choose another --out")
            raise RunDirError(f"{self.path} exists and is not empty: choose another --out")

    def create(self) -> bool:
        """Make the (new, empty) directory; True when this call created it (so a failure may remove it)."""
        self.check_new()
        existed = self.path.is_dir()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RunDirError(f"cannot create run directory {self.path}: {exc.strerror}") from None
        return not existed

    def is_run(self) -> bool:
        """Whether this folder holds a dcx run (its config.toml)."""
        return (self.path / CONFIG).is_file()

    def write_config(self, config_toml: bytes) -> None:
        atomic_write(self.path / CONFIG, config_toml)

    def metrics(self) -> list[dict]:
        """The rows of metrics.jsonl; a damaged file is a RunDirError naming the line."""
        path = self.path / METRICS
        if not path.exists():
            return []
        rows = []
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError:
                row = None
            if not isinstance(row, dict):
                raise RunDirError(f"{path} line {n} is not a JSON object: the file is damaged; restore or delete it")
            rows.append(row)
        return rows

    def append_metrics(self, row: dict) -> None:
        rows = self.metrics() + [row]
        text = "".join(json.dumps(r, default=_jsonable) + "\n" for r in rows)
        atomic_write(self.path / METRICS, text.encode())

    def truncate_metrics(self, upto_epoch: int) -> None:
        """Drop rows of epochs >= ``upto_epoch`` (written after the checkpoint we resume from)."""
        rows = [r for r in self.metrics() if r.get("epoch", 0) < upto_epoch and r.get("phase") != "final"]
        atomic_write(self.path / METRICS, "".join(json.dumps(r, default=_jsonable) + "\n" for r in rows).encode())

    def save_checkpoint(self, state: dict) -> None:
        import torch

        buf = io.BytesIO()
        torch.save(state, buf)
        atomic_write(self.path / CHECKPOINT, buf.getvalue())

    def load_checkpoint(self) -> dict | None:
        import torch

        path = self.path / CHECKPOINT
        if not path.exists():
            return None
        try:
            with warnings.catch_warnings():  # e.g. a raw pickle's protocol warning: the error below says it
                warnings.simplefilter("ignore")
                state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise RunDirError(f"cannot read {path} ({type(exc).__name__}): start a new run with another --out") from None
        if not isinstance(state, dict):
            raise RunDirError(f"{path} is not a dcx checkpoint: start a new run with another --out")
        return state

    def save_assignments(self, labels: np.ndarray, epoch: int | None = None) -> None:
        name = ASSIGNMENTS if epoch is None else f"assignments/epoch_{epoch:03d}.npy"
        save_npy(self.path / name, labels)

    def save_summary(self, summary: dict) -> None:
        save_json(self.path / SUMMARY, summary)

    def read_json(self, name: str) -> dict:
        path = self.path / name
        if not path.exists():
            raise RunDirError(f"{path} not found: is {self.path} a finished dcx run directory?")
        try:
            data = json.loads(path.read_text())
        except (ValueError, OSError) as exc:
            raise RunDirError(f"{path} is damaged ({exc}): rerun the step that writes it") from None
        if not isinstance(data, dict):
            raise RunDirError(f"{path} is damaged (not a JSON object): rerun the step that writes it")
        return data
