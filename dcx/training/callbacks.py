"""Side effects of a run behind callbacks (as PyTorch Lightning): the engine trains and measures,
callbacks write the run directory and log. In a distributed run only rank 0 gets the writer."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from dcx.training.rundir import RunDir

if TYPE_CHECKING:  # pragma: no cover
    from dcx.training.engine import Engine

log = logging.getLogger("dcx.training.engine")


class Callback:
    """Hooks of a run; every method is optional. ``wants_steps``: call ``on_train_step`` (it costs
    a host sync per step, so the engine reads the loss only when some callback wants it)."""

    wants_steps = False

    def on_fit_start(self, engine: "Engine") -> None:
        """Before the first epoch of this process (after a checkpoint was restored)."""

    def on_train_epoch_start(self, engine: "Engine", epoch: int) -> None:
        """Before the first training step of an epoch (after its clustering)."""

    def on_train_epoch_end(self, engine: "Engine", epoch: int) -> None:
        """After the last training step of an epoch (before its measures)."""

    def on_train_step(self, engine: "Engine", step: Any, loss: float) -> None:
        """After a training step (``StepContext``) with its loss; only when ``wants_steps``."""

    def on_clustering(self, engine: "Engine", epoch: int, part: Any, rows: Any, pca: Any) -> None:
        """After an offline clustering: its Partition, the rows it clustered, the fitted PCA (or None)."""

    def on_epoch_end(self, engine: "Engine", row: dict[str, Any]) -> None:
        """After an epoch's metrics row is complete; ``engine.state()`` is the checkpoint of it."""

    def on_fit_end(self, engine: "Engine", final: dict[str, Any], summary: dict[str, Any]) -> None:
        """After the final extraction (row ``final``) and the summary."""


class EpochLog(Callback):
    """One log line per epoch: loss, clusters, NMI to labels and to the previous epoch; health warnings."""

    def on_epoch_end(self, engine: "Engine", row: dict[str, Any]) -> None:
        for warning in row.get("warnings", []):
            log.warning("epoch %d: %s", row["epoch"], warning)
        log.info(
            "epoch %d: loss %.3f, %d clusters (%d empty)%s%s", row["epoch"], row["loss"], row["nonempty"], row["empty"],
            f", NMI labels {row['nmi_labels']:.3f}" if "nmi_labels" in row else "",
            f", NMI prev {row['nmi_prev']:.3f}" if "nmi_prev" in row else "",
        )


class RunDirWriter(Callback):
    """Writes metrics.jsonl rows, the checkpoint after every epoch, assignments and summary.json.

    The metrics row of an epoch is written before its checkpoint; a resume truncates rows
    written after the checkpoint it restores (``RunDir.truncate_metrics``).
    """

    def __init__(self, run_dir: RunDir, save_every_epoch: bool = False) -> None:
        self.run_dir = run_dir
        self.save_every_epoch = save_every_epoch

    def on_fit_start(self, engine: "Engine") -> None:
        """Drop rows written after the checkpoint being resumed (a kill between row and checkpoint)."""
        if (self.run_dir.path / "metrics.jsonl").exists():
            self.run_dir.truncate_metrics(engine.start_epoch)

    def on_epoch_end(self, engine: "Engine", row: dict[str, Any]) -> None:
        self.run_dir.append_metrics(row)
        if self.save_every_epoch and engine.labels is not None:
            self.run_dir.save_assignments(engine.labels, row["epoch"])
        self.run_dir.save_checkpoint(engine.state(row["epoch"] + 1))

    def on_fit_end(self, engine: "Engine", final: dict[str, Any], summary: dict[str, Any]) -> None:
        self.run_dir.append_metrics(final)
        if engine.labels is not None:
            self.run_dir.save_assignments(engine.labels)
        self.run_dir.save_summary(summary)
