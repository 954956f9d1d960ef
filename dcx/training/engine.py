"""The alternation engine: one training loop for every clusterer, in one process or many.

Each epoch gets an Objective (``dcx.training.objective``), then ``train_epoch`` runs the one step:
offline clusterers (DeepCluster, PIC, SeLa) are extract -> preprocess -> fit -> build_head, then
the loop trains towards targets fixed for the epoch; online clusterers (SwAV, DeepCluster-v2)
label each batch inside ``loss``. Writing the run directory and logging are callbacks.

Distributed (``torchrun``): the backbone is wrapped in DistributedDataParallel and the heads'
gradients are averaged over ranks; every rank draws the same global batches and trains on its
part of each (``data.ShardedBatches``); extraction is sharded by rank and gathered in dataset
order; PCA statistics are summed over ranks; a ``distributed`` clusterer splits its own work,
any other fits on rank 0 and its partition is broadcast. Only rank 0 gets the run-dir writer.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch
from torch import nn

from dcx import data as D
from dcx.training.callbacks import Callback, EpochLog, RunDirWriter
from dcx.core.contracts import API_VERSION, StepContext, TrainSpec
from dcx.training.epochs import epochs_for
from dcx.core.errors import DcxError, RunDirError
from dcx.training.extraction import FeatureExtractor
from dcx.training.diagnostics import summarize
from dcx.training.environment import prefers_channels_last
from dcx.training.objective import Objective, forward_views
from dcx.core.progress import NullProgress, Progress
from dcx.training.rundir import RunDir
from dcx.training.schedule import StepSchedule, build_scheduler, follow

if TYPE_CHECKING:  # pragma: no cover
    from dcx.training.setup import Setup

log = logging.getLogger(__name__)

#: Layout of checkpoint.pt; a checkpoint of another format is refused with a message.
#: 3: the epoch kind's head and clusterer state (dcx 0.2); 2: dcx 0.1.
CHECKPOINT_FORMAT = 3
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class Engine:
    """Runs the alternation for a resolved Setup; side effects go through ``callbacks``."""

    def __init__(self, s: Setup, progress: Progress | None = None, callbacks: Sequence[Callback] = ()) -> None:
        self.s, self.cfg, self.world = s, s.config, s.world
        self.progress = progress or NullProgress()
        self.callbacks: list[Callback] = [EpochLog(), *callbacks]
        self.n = len(s.images)
        self.device = s.device
        self.cuda = self.device.type == "cuda"
        #: Images that failed to decode when read (skipped in training, blank in extraction).
        self.unreadable: set[int] = set()
        #: The images at the training size, decoded once when they fit ``--image-memory-gb`` (or ``--image-cache``).
        self.images = D.DecodedImages(s.images, self.cfg.image_size, self.cfg.workers, self.cfg.image_memory_gb,
                                      self.progress, self.device, self.cfg.image_cache)
        self.extract = FeatureExtractor(s.model, self.images, self.device, self.world, self.cfg.batch_size,
                                        self.cfg.workers, self.cfg.feature_memory_gb, self._autocast, self.progress,
                                        self._note_unreadable)
        model = s.model
        self.channels_last = prefers_channels_last(self.device)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        self.spec = TrainSpec(model.feature_dim, self.n, self.device, preactivation=model.net.relu_head,
                              rank=self.world.rank, world_size=self.world.size)
        self.epochs = epochs_for(s, self.spec, self.extract)
        self._callbacks = list(self.callbacks)  # run() adds the run-dir writer
        self.epochs.on_clustering = lambda *args: [cb.on_clustering(self, *args) for cb in self._callbacks]
        self.batches = D.TrainingBatches(self.images, self.epochs.augment(self.channels_last), self.device)
        params = list(model.parameters())
        if self.epochs.head is not None:
            params += list(self.epochs.head.parameters())
        self.net: nn.Module = self._wrap(model)
        if self.cfg.compile:  # the training step's backbone; extraction runs the eager model
            self.net = torch.compile(self.net)
        # Reference optimiser (deepcluster main.py): SGD lr 0.05, momentum 0.9, weight decay 1e-5.
        self.optimizer = torch.optim.SGD(
            [p for p in params if p.requires_grad], lr=self.cfg.lr, momentum=self.cfg.momentum,
            weight_decay=self.cfg.weight_decay,
        )
        self.steps_per_epoch = self.epochs.steps_per_epoch = self._steps_per_epoch()
        self.scheduler = build_scheduler(self.optimizer, self.cfg.lr_schedule, self.cfg.epochs,
                                         self.steps_per_epoch, self.cfg.warmup_epochs)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.cfg.precision == "fp16")
        self.start_epoch = 0
        self.history: list[dict] = []  # metrics rows of epochs run before a resume
        self.seconds_before = 0.0  # training time of the run before this process resumed it
        self._t_start = time.perf_counter()

    @property
    def labels(self) -> np.ndarray | None:
        """The last pseudo-labels (the final ones after ``run``)."""
        return self.epochs.labels

    def _wrap(self, model: nn.Module) -> nn.Module:
        """The module the training step runs: DistributedDataParallel in a multi-process run."""
        if not self.world.distributed:
            return model
        if self.cfg.sync_bn:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            self.s.model = model
        ids = [self.device.index] if self.cuda else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def images_per_epoch(self) -> int:
        """Images drawn per epoch: ``passes`` backbone passes over the data; a step that sees every image
        in several views gets passes // views image passes (at least one): the same backbone budget."""
        return self.n * max(1, self.cfg.passes // self.epochs.views)

    def _steps_per_epoch(self) -> int:
        n_total, bs = self.images_per_epoch(), self.cfg.batch_size
        return n_total // bs if n_total > bs or self.world.distributed else 1

    def state(self, epoch: int) -> dict:
        return {
            "format": CHECKPOINT_FORMAT,
            "api": API_VERSION,
            "config": self.cfg.to_dict(),
            "epoch": epoch,
            "model": self.s.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            **self.epochs.state_dict(),
            "labels": torch.from_numpy(self.labels) if self.labels is not None else torch.empty(0, dtype=torch.long),
            "torch_rng": torch.get_rng_state(),
            "seconds": self.seconds_before + time.perf_counter() - self._t_start,
        }

    def restore(self, state: dict) -> None:
        """Continue from a checkpoint (written by any world size: weights are the same on every rank)."""
        if state.get("format") != CHECKPOINT_FORMAT:
            raise RunDirError(
                f"checkpoint format {state.get('format', 1)} is not this dcx's ({CHECKPOINT_FORMAT}): "
                "finish or evaluate the run with the dcx version that wrote it (format 2: dcx 0.1.0), or start a new run"
            )
        try:
            self.s.model.load_state_dict(state["model"])
            self.epochs.load_state_dict(state)
        except RuntimeError as exc:  # shapes differ: the config no longer builds the network it saved
            first = str(exc).splitlines()[-1].strip() if str(exc) else type(exc).__name__
            raise RunDirError(
                f"the checkpoint does not fit the network this run's config.toml builds ({first}); a plugin "
                "default may have changed since it was written: finish the run with the dcx version that "
                "wrote it, or start a new run"
            ) from None
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        # The schedule follows the current config (a resume may add epochs).
        follow(self.scheduler, StepSchedule(self.cfg.lr_schedule, self.cfg.epochs, self.steps_per_epoch,
                                            self.cfg.warmup_epochs))
        self.epochs.labels = state["labels"].numpy() if state["labels"].numel() else None
        torch.set_rng_state(state["torch_rng"])
        self.start_epoch = int(state["epoch"])
        self.seconds_before = float(state.get("seconds", 0.0))

    def run(self, run_dir: RunDir | None = None) -> dict:
        """Train from ``start_epoch`` to ``epochs``, then measure the final features."""
        cfg = self.cfg
        callbacks = list(self.callbacks)
        if run_dir is not None:
            self.extract.scratch = self.images.scratch = self.extract.scratch or run_dir.path
            if self.world.is_main:
                self.history = [r for r in run_dir.metrics()
                                if r.get("epoch", 0) < self.start_epoch and r.get("phase") != "final"]
                callbacks.append(RunDirWriter(run_dir, cfg.save_every_epoch))
        rows, self._callbacks = list(self.history), callbacks
        self._t_start = time.perf_counter()
        try:
            for cb in callbacks:
                cb.on_fit_start(self)
            for epoch in range(self.start_epoch, cfg.epochs):
                seed = D.derive_seed(cfg.seed, epoch, 3) if not self.world.distributed else \
                    D.derive_seed(cfg.seed, epoch, 3, self.world.rank)
                torch.manual_seed(seed)  # augmentations: resumable exactly
                row = self.run_epoch(epoch)
                if not math.isfinite(row["loss"]):
                    kept = f"the run dir keeps epoch {epoch - 1}" if epoch > 0 else "no epoch was completed"
                    raise DcxError(f"training diverged at epoch {epoch} (loss {row['loss']}): lower --lr; {kept}")
                warnings = self.epochs.warnings(row, rows[-1] if rows else None)
                if warnings:
                    row["warnings"] = warnings
                rows.append(row)
                for cb in callbacks:
                    cb.on_epoch_end(self, row)
            final = self.epochs.final(cfg.epochs)
            rows.append(final)
            summary = self.summary(rows, self.seconds_before + time.perf_counter() - self._t_start)
            for cb in callbacks:
                cb.on_fit_end(self, final, summary)
        finally:
            self.extract.close()
            self.images.close()
        return summary

    def run_epoch(self, epoch: int) -> dict:
        """One epoch: its objective (clustering first for offline clusterers), training, measures."""
        t0 = time.perf_counter()
        objective, row = self.epochs.begin(epoch)
        t = time.perf_counter()
        row["loss"] = self.train_epoch(epoch, objective)
        row["time_train"] = time.perf_counter() - t
        row.update(self.batches.time_split(row["time_train"]))
        self.epochs.finish(epoch, row)
        row["time_epoch"] = time.perf_counter() - t0
        return row

    def train_epoch(self, epoch: int, objective: Objective) -> float:
        """The one training loop: every clusterer's step goes through ``objective``. Returns the
        mean loss over the epoch's steps (and ranks)."""
        device, world = self.device, self.world
        n_total = self.images_per_epoch()
        base = objective.sampler(n_total, D.derive_seed(self.cfg.seed, epoch, 1))
        batches = self.batches.epoch(D.ShardedBatches(base, self.cfg.batch_size, world.rank, world.size,
                                                      drop_last=n_total > self.cfg.batch_size),
                                     D.derive_seed(self.cfg.seed, epoch, 2, world.rank))
        optimizers = [self.optimizer, *objective.optimizers]
        step_callbacks = [cb for cb in self._callbacks if cb.wants_steps]  # a host sync per step each
        self.net.train()
        objective.head.train()
        total = torch.zeros((), dtype=torch.float64, device=device)  # no host sync per step
        steps = 0
        for cb in self._callbacks:
            cb.on_train_epoch_start(self, epoch)
        with self.progress.task(f"train epoch {epoch}", len(batches)) as advance:
            for i, (views, idx, failed) in enumerate(batches):
                self._note_unreadable(failed)
                if views is None:  # every image of this batch failed to decode
                    advance(1)
                    continue
                step = StepContext(epoch=epoch, step=epoch * len(batches) + i, steps_per_epoch=len(batches),
                                   indices=idx, rank=world.rank, world_size=world.size)
                objective.before_step(step)
                with self._autocast():
                    feats = forward_views(self.net, views)
                    loss, _ = objective.loss(feats, step)
                for opt in optimizers:
                    opt.zero_grad(set_to_none=True)
                self.scaler.scale(loss).backward()
                if world.distributed:  # the backbone's gradients were averaged by DDP in backward
                    self._average_grads(objective.head)
                for opt in optimizers:
                    self.scaler.unscale_(opt)  # the clusterer's hook sees true gradients (fp16)
                objective.after_backward(step)
                for opt in optimizers:
                    self.scaler.step(opt)
                self.scaler.update()
                self.scheduler.step()
                total += loss.detach().double()
                steps += 1
                for cb in step_callbacks:
                    cb.on_train_step(self, step, float(loss.detach()))
                advance(1)
        for cb in self._callbacks:
            cb.on_train_epoch_end(self, epoch)
        if world.distributed:
            self._sync_buffers(objective.head)
            stats = torch.stack([total, torch.tensor(float(steps), dtype=torch.float64, device=device)])
            total, steps = world.all_reduce(stats)
            return float(total) / max(float(steps), 1.0)
        return float(total) / max(steps, 1)

    def _autocast(self):
        if self.cfg.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=_DTYPES[self.cfg.precision])

    def _average_grads(self, head: nn.Module) -> None:
        """Average the head's gradients over ranks (DDP does the backbone's during backward)."""
        for p in head.parameters():
            if p.grad is not None:
                self.world.all_reduce(p.grad)
                p.grad /= self.world.size

    def _sync_buffers(self, head: nn.Module) -> None:
        """Rank 0's BatchNorm running statistics everywhere, so every rank extracts the same features."""
        for module in (self.s.model, head):
            for b in module.buffers():
                self.world.broadcast(b)

    def _note_unreadable(self, indices: torch.Tensor) -> None:
        if len(indices):
            self.unreadable.update(int(i) for i in indices)

    def summary(self, rows: list[dict], seconds: float) -> dict:
        return summarize(rows, self.cfg, self.n, seconds, self.world.size,
                         int(self.s.images.skipped) + len(self.unreadable), self.device)
