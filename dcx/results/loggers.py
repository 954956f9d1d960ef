"""Run loggers: every epoch row and each step's loss, where people already look. Plugins of the
``dcx.loggers`` entry-point group (built in: ``csv``, ``tensorboard``); a third party ships its
own (W&B, MLflow) as a ``Logger`` subclass registered under that group."""

from __future__ import annotations

import csv
import importlib.metadata as md
import io
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from dcx.training.callbacks import Callback
from dcx.core.errors import InputError, PluginLoadError
from dcx.training.rundir import atomic_write

if TYPE_CHECKING:  # pragma: no cover
    from dcx.training.engine import Engine

GROUP = "dcx.loggers"


class Logger(Callback):
    """A callback built from the run directory; it sees rows on the main process only.

    Subclasses implement ``log_epoch`` (an epoch's flattened numeric row), ``log_step`` and
    ``close``; ``wants_steps = False`` spares the per-step host sync when steps are not logged.
    """

    name = "logger"
    wants_steps = True

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)

    def log_epoch(self, epoch: int, phase: str, values: dict[str, float]) -> None:
        """One epoch's row (``phase`` train, or final for the trained network's measurements)."""

    def log_step(self, step: int, epoch: int, loss: float) -> None:
        """One training step's loss (``step`` counts from the run's start)."""

    def close(self) -> None:
        """The run ended (normally)."""

    def on_train_step(self, engine: "Engine", step: Any, loss: float) -> None:
        if engine.world.is_main:
            self.log_step(step.step, step.epoch, loss)

    def on_epoch_end(self, engine: "Engine", row: dict[str, Any]) -> None:
        if engine.world.is_main:
            self.log_epoch(int(row["epoch"]), str(row.get("phase", "train")), scalars(row))

    def on_fit_end(self, engine: "Engine", final: dict[str, Any], summary: dict[str, Any]) -> None:
        if engine.world.is_main:
            self.log_epoch(int(final["epoch"]), "final", scalars(final))
            self.close()


def scalars(row: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """The finite numbers of a metrics row, nested keys joined by '/' (lists and text left out)."""
    out: dict[str, float] = {}
    for key, value in row.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(scalars(value, f"{name}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            if key not in ("epoch",):
                out[name] = float(value)
    return out


class CSVLogger(Logger):
    """``logs/epochs.csv`` (one column per metric, rewritten whole each epoch) and ``logs/steps.csv``."""

    name = "csv"

    def __init__(self, run_dir: Path) -> None:
        super().__init__(run_dir)
        self.rows: list[dict[str, Any]] = []
        self._steps = None

    def log_epoch(self, epoch: int, phase: str, values: dict[str, float]) -> None:
        self.rows.append({"epoch": epoch, "phase": phase, **values})
        columns = list(dict.fromkeys(k for r in self.rows for k in r))
        buf = io.StringIO()
        w = csv.DictWriter(buf, columns, lineterminator="\n")
        w.writeheader()
        w.writerows(self.rows)
        atomic_write(self.run_dir / "logs" / "epochs.csv", buf.getvalue().encode())

    def log_step(self, step: int, epoch: int, loss: float) -> None:
        if self._steps is None:
            path = self.run_dir / "logs" / "steps.csv"
            path.parent.mkdir(parents=True, exist_ok=True)
            new = not path.exists()
            self._steps = open(path, "a", newline="")
            if new:
                self._steps.write("step,epoch,loss\n")
        self._steps.write(f"{step},{epoch},{loss:.6g}\n")

    def close(self) -> None:
        if self._steps is not None:
            self._steps.close()
            self._steps = None


class TensorBoardLogger(Logger):
    """TensorBoard event files in ``tensorboard/``: ``epoch/<metric>`` per epoch, ``final/<metric>``,
    ``train/loss`` per step (``torch.utils.tensorboard``; needs the ``tb`` extra)."""

    name = "tensorboard"

    def __init__(self, run_dir: Path) -> None:
        super().__init__(run_dir)
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise InputError("--logger tensorboard needs TensorBoard: pip install 'dcx[tb]'") from None
        self._make = lambda: SummaryWriter(log_dir=str(self.run_dir / "tensorboard"))
        self._writer = None

    @property
    def writer(self):
        if self._writer is None:  # created when the run directory exists
            self._writer = self._make()
        return self._writer

    def log_epoch(self, epoch: int, phase: str, values: dict[str, float]) -> None:
        tag = "final" if phase == "final" else "epoch"
        for key, value in values.items():
            self.writer.add_scalar(f"{tag}/{key}", value, epoch)
        self.writer.flush()

    def log_step(self, step: int, epoch: int, loss: float) -> None:
        self.writer.add_scalar("train/loss", loss, step)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def available() -> dict[str, md.EntryPoint]:
    """Installed loggers by name."""
    return {ep.name: ep for ep in md.entry_points(group=GROUP)}


def create_loggers(names: Iterable[str], run_dir: Path) -> list[Logger]:
    """The named loggers for ``run_dir``; InputError naming the installed ones for an unknown name."""
    found = available()
    out = []
    for name in dict.fromkeys(names):
        if name not in found:
            raise InputError(f"unknown logger '{name}': installed loggers are {', '.join(sorted(found)) or 'none'}")
        try:
            cls = found[name].load()
        except Exception as exc:
            raise PluginLoadError(f"logger '{name}' ({found[name].value}) cannot be imported: {exc}") from None
        if not (isinstance(cls, type) and issubclass(cls, Callback)):
            raise PluginLoadError(f"logger '{name}' ({found[name].value}) is not a dcx Logger: fix the plugin")
        out.append(cls(Path(run_dir)))
    return out
