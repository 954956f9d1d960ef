"""``--profile``: a torch.profiler trace of one training epoch, written beside the run's metrics."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dcx.training.callbacks import Callback

if TYPE_CHECKING:  # pragma: no cover
    from dcx.training.engine import Engine

log = logging.getLogger(__name__)


class ProfileEpoch(Callback):
    """Profiles the first epoch this process trains (CPU, and CUDA kernels on a GPU) and writes
    ``trace-epoch<N>.json`` (Chrome trace format: chrome://tracing or ui.perfetto.dev) and
    ``ops-epoch<N>.txt`` (the operators by total time) to ``folder``, on rank 0."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.profiler: Any = None
        self.done = False

    def on_train_epoch_start(self, engine: "Engine", epoch: int) -> None:
        if self.done or not engine.world.is_main:
            return
        import torch.profiler as tp

        activities = [tp.ProfilerActivity.CPU] + ([tp.ProfilerActivity.CUDA] if engine.cuda else [])
        self.profiler = tp.profile(activities=activities, record_shapes=True)
        self.profiler.__enter__()

    def on_train_epoch_end(self, engine: "Engine", epoch: int) -> None:
        if self.profiler is None:
            return
        profiler, self.profiler, self.done = self.profiler, None, True
        profiler.__exit__(None, None, None)
        self.folder.mkdir(parents=True, exist_ok=True)
        trace = self.folder / f"trace-epoch{epoch}.json"
        partial = trace.with_suffix(".json.partial")
        profiler.export_chrome_trace(str(partial))
        os.replace(partial, trace)
        sort = "self_cuda_time_total" if engine.cuda else "self_cpu_time_total"
        table = profiler.key_averages().table(sort_by=sort, row_limit=40)
        (self.folder / f"ops-epoch{epoch}.txt").write_text(table + "\n")
        log.info("profile of epoch %d: %s", epoch, trace)
