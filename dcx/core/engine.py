"""The alternation engine: one training loop for every clusterer.

Each epoch gets an Objective (``dcx.core.objective``), then ``train_epoch`` runs the one step:
offline clusterers (DeepCluster, PIC, SeLa) are extract -> preprocess -> fit -> build_head, then
the loop trains towards targets fixed for the epoch; online clusterers (SwAV, DeepCluster-v2)
label each batch inside ``loss``. Writing the run directory and logging are callbacks.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from dcx.core import data as D
from dcx.core.callbacks import Callback, EpochLog, RunDirWriter
from dcx.core.contracts import (
    API_VERSION, EpochContext, FitContext, OnlineClusterer, Partition, StepContext, TrainingHead, TrainSpec,
)
from dcx.core.diagnostics import partition_row
from dcx.core.errors import ContractError, DcxError, RunDirError
from dcx.core.features import PCAWhitening, check_finite, extract
from dcx.core.objective import Objective, OnlineObjective, PartitionObjective
from dcx.core.progress import NullProgress, Progress
from dcx.core.rundir import RunDir
from dcx.core.schedule import StepSchedule, build_scheduler
from dcx.core.setup import Setup

log = logging.getLogger(__name__)

#: Minimum RandomResizedCrop scale for training (reference: torchvision's default 0.08).
MIN_CROP_SCALE = {True: 0.08, False: 0.5}  # keyed by "image larger than 64 px"
#: Layout of checkpoint.pt; a checkpoint of another format is refused with a message.
CHECKPOINT_FORMAT = 2


class Engine:
    """Runs the alternation for a resolved Setup; side effects go through ``callbacks``."""

    def __init__(self, s: Setup, progress: Progress | None = None, callbacks: Sequence[Callback] = ()) -> None:
        self.s = s
        self.cfg = s.config
        self.progress = progress or NullProgress()
        self.callbacks: list[Callback] = [EpochLog(), *callbacks]
        self.online = isinstance(s.clusterer, OnlineClusterer)
        self.n = len(s.images)
        self.truth = s.images.labels
        channels = s.images.channels
        self.eval_set = D.IndexedImages(s.images, D.eval_transform(self.cfg.image_size, channels))
        if self.online:
            crops = s.clusterer.crops()
            self.views = crops.n_large + crops.n_small
            train_t = D.MultiCrop(crops, self.cfg.image_size, channels, s.flip, s.backbone.min_image_size)
        else:
            self.views = 1
            min_scale = MIN_CROP_SCALE[self.cfg.image_size > 64]
            train_t = D.train_transform(self.cfg.image_size, channels, s.flip, min_scale)
        self.train_set = D.IndexedImages(s.images, train_t)
        model = s.model
        self.spec = TrainSpec(model.feature_dim, self.n, s.device, preactivation=model.net.relu_head)
        self.head: nn.Module | None = None
        params = list(model.parameters())
        if self.online:
            self.head = s.clusterer.build_head(self.spec).to(s.device)
            params += list(self.head.parameters())
        else:
            s.clusterer.prepare(self.spec)
        # Reference optimiser (deepcluster main.py): SGD lr 0.05, momentum 0.9, weight decay 1e-5.
        self.optimizer = torch.optim.SGD(
            [p for p in params if p.requires_grad], lr=self.cfg.lr, momentum=self.cfg.momentum,
            weight_decay=self.cfg.weight_decay,
        )
        self.steps_per_epoch = self._steps_per_epoch()
        self.scheduler = build_scheduler(self.optimizer, self.cfg.lr_schedule, self.cfg.epochs,
                                         self.steps_per_epoch, self.cfg.warmup_epochs)
        self.labels: np.ndarray | None = None
        self.start_epoch = 0
        self.history: list[dict] = []  # metrics rows of epochs run before a resume
        self.seconds_before = 0.0  # training time of the run before this process resumed it
        self._t_start = time.perf_counter()

    # ------------------------------------------------------------------ sizes

    def images_per_epoch(self) -> int:
        """Images drawn per epoch: ``passes`` backbone passes over the data. An online clusterer
        sees every image in several views per step, so it gets passes // views image passes (at
        least one): the same backbone budget as an offline run, which keeps ``dcx compare`` fair."""
        return self.n * max(1, self.cfg.passes // self.views)

    def _steps_per_epoch(self) -> int:
        n_total, bs = self.images_per_epoch(), self.cfg.batch_size
        return n_total // bs if n_total > bs else 1  # drop_last once there is more than one batch

    # ------------------------------------------------------------------ checkpointing

    def state(self, epoch: int) -> dict:
        return {
            "format": CHECKPOINT_FORMAT,
            "api": API_VERSION,
            "config": self.cfg.to_dict(),
            "epoch": epoch,
            "model": self.s.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "head": self.head.state_dict() if self.head is not None else {},
            "clusterer": self.s.clusterer.state_dict(),
            "labels": torch.from_numpy(self.labels) if self.labels is not None else torch.empty(0, dtype=torch.long),
            "torch_rng": torch.get_rng_state(),
            "seconds": self.seconds_before + time.perf_counter() - self._t_start,
        }

    def restore(self, state: dict) -> None:
        if state.get("format") != CHECKPOINT_FORMAT:
            raise RunDirError(
                f"checkpoint format {state.get('format', 1)} is not this dcx's ({CHECKPOINT_FORMAT}): "
                "finish or evaluate the run with the dcx version that wrote it, or start a new run"
            )
        self.s.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        # The schedule follows the current config (a resume may add epochs); the restored step
        # count says where on it the run is.
        schedule = StepSchedule(self.cfg.lr_schedule, self.cfg.epochs, self.steps_per_epoch, self.cfg.warmup_epochs)
        self.scheduler.lr_lambdas = [schedule] * len(self.optimizer.param_groups)
        for group, base in zip(self.optimizer.param_groups, self.scheduler.base_lrs):
            group["lr"] = base * schedule(self.scheduler.last_epoch)
        self.scheduler._last_lr = [g["lr"] for g in self.optimizer.param_groups]
        if self.head is not None and state["head"]:
            self.head.load_state_dict(state["head"])
        self.s.clusterer.load_state_dict(state.get("clusterer", {}))
        self.labels = state["labels"].numpy() if state["labels"].numel() else None
        torch.set_rng_state(state["torch_rng"])
        self.start_epoch = int(state["epoch"])
        self.seconds_before = float(state.get("seconds", 0.0))

    # ------------------------------------------------------------------ the loop

    def run(self, run_dir: RunDir | None = None) -> dict:
        """Train from ``start_epoch`` to ``epochs``, then measure the final features."""
        cfg = self.cfg
        callbacks = list(self.callbacks)
        if run_dir is not None:
            self.history = [r for r in run_dir.metrics() if r.get("epoch", 0) < self.start_epoch]
            callbacks.append(RunDirWriter(run_dir, cfg.save_every_epoch))
        rows = list(self.history)
        self._t_start = time.perf_counter()
        for cb in callbacks:
            cb.on_fit_start(self)
        for epoch in range(self.start_epoch, cfg.epochs):
            torch.manual_seed(D.derive_seed(cfg.seed, epoch, 3))  # augmentations: resumable exactly
            row = self.run_epoch(epoch)
            if not math.isfinite(row["loss"]):
                kept = f"the run dir keeps epoch {epoch - 1}" if epoch > 0 else "no epoch was completed"
                raise DcxError(f"training diverged at epoch {epoch} (loss {row['loss']}): lower --lr; {kept}")
            rows.append(row)
            for cb in callbacks:
                cb.on_epoch_end(self, row)
        final = self._final_row(cfg.epochs)
        rows.append(final)
        summary = self.summary(rows, self.seconds_before + time.perf_counter() - self._t_start)
        for cb in callbacks:
            cb.on_fit_end(self, final, summary)
        return summary

    def run_epoch(self, epoch: int) -> dict:
        """One epoch: get the objective (clustering first for offline clusterers), train, measure."""
        t0 = time.perf_counter()
        if self.online:
            objective = self._online_objective(epoch)
            row: dict[str, Any] = {"epoch": epoch, "phase": "train"}
        else:
            feats = self.extract_features(f"extract epoch {epoch}")
            t_extract = time.perf_counter() - t0
            part, timings, whitened = self._cluster(feats, epoch)
            row = {"epoch": epoch, "phase": "train", **self._diagnose(part.labels, part.n_clusters, feats, epoch, whitened)}
            self.labels = part.labels
            objective = self._partition_objective(part)
            row.update(time_extract=t_extract, **timings, clusterer=dict(part.stats))
        t = time.perf_counter()
        loss = self.train_epoch(epoch, objective)
        row["loss"] = loss
        row["time_train"] = time.perf_counter() - t
        if self.online:
            t = time.perf_counter()
            feats = self.extract_features(f"extract epoch {epoch}")
            row["time_extract"] = time.perf_counter() - t
            t = time.perf_counter()
            labels = self._assign_online(feats)
            row["time_cluster"] = time.perf_counter() - t
            k = int(self.cfg.k or labels.max() + 1)
            row.update(self._diagnose(labels, k, feats, epoch + 1))
            self.labels = labels
            row["clusterer"] = self.s.clusterer.epoch_stats()
        row["time_epoch"] = time.perf_counter() - t0
        return row

    def train_epoch(self, epoch: int, objective: Objective) -> float:
        """The one training loop: every clusterer's step goes through ``objective``. Returns the mean loss."""
        model, device = self.s.model, self.s.device
        n_total = self.images_per_epoch()
        batches = D.loader(
            self.train_set, self.cfg.batch_size, self.cfg.workers,
            sampler=objective.sampler(n_total, D.derive_seed(self.cfg.seed, epoch, 1)),
            seed=D.derive_seed(self.cfg.seed, epoch, 2), drop_last=n_total > self.cfg.batch_size,
        )
        optimizers = [self.optimizer, *objective.optimizers]
        model.train()
        objective.head.train()
        total = torch.zeros((), dtype=torch.float64, device=device)  # no host sync per step
        steps = 0
        with self.progress.task(f"train epoch {epoch}", len(batches)) as advance:
            for i, (views, idx) in enumerate(batches):
                views = views if isinstance(views, list) else [views]
                step = StepContext(epoch=epoch, step=epoch * len(batches) + i, steps_per_epoch=len(batches), indices=idx)
                objective.before_step(step)
                feats = _forward_views(model, [v.to(device, non_blocking=True) for v in views])
                loss, _ = objective.loss(feats, step)
                for opt in optimizers:
                    opt.zero_grad(set_to_none=True)
                loss.backward()
                objective.after_backward(step)
                for opt in optimizers:
                    opt.step()
                self.scheduler.step()
                total += loss.detach().double()
                steps += 1
                advance(1)
        return float(total) / max(steps, 1)

    # ------------------------------------------------------------------ objectives

    def _partition_objective(self, part: Partition) -> PartitionObjective:
        head = self.s.clusterer.build_head(part, self.spec)
        self._check_training_head(head)
        return PartitionObjective(head, self.cfg.lr, self.cfg.weight_decay, self.s.device)

    def _online_objective(self, epoch: int) -> OnlineObjective:
        ctx = EpochContext(
            epoch=epoch, seed=D.derive_seed(self.cfg.seed, epoch), steps_per_epoch=self.steps_per_epoch,
            num_samples=self.n, device=self.s.device,
            features=lambda: torch.from_numpy(self.extract_features(f"extract for {self.cfg.clusterer}")).to(self.s.device),
        )
        self.s.clusterer.start_epoch(self.head, ctx)

        def sampler(n_total: int, seed: int) -> torch.utils.data.Sampler:
            gen = torch.Generator().manual_seed(seed)
            return torch.utils.data.RandomSampler(self.train_set, num_samples=n_total, generator=gen)

        return OnlineObjective(self.s.clusterer, self.head, sampler)

    def _check_training_head(self, head: TrainingHead) -> None:
        name = self.cfg.clusterer
        if not isinstance(head, TrainingHead) or not isinstance(head.module, nn.Module):
            raise ContractError(f"clusterer '{name}': build_head must return a TrainingHead(module, targets): fix the plugin")
        targets = np.asarray(head.targets)
        if targets.shape != (self.n,) or not np.issubdtype(targets.dtype, np.integer) or (targets < 0).any():
            raise ContractError(
                f"clusterer '{name}': build_head returned targets of shape {targets.shape} ({targets.dtype}), "
                f"expected ({self.n},) non-negative integers: fix the plugin"
            )
        with torch.no_grad():
            was = head.module.training
            head.module.eval()
            out = head.module(torch.zeros(2, self.spec.feature_dim, device=self.s.device))
            head.module.train(was)
        if out.ndim != 2 or int(targets.max()) >= out.shape[1]:
            raise ContractError(
                f"clusterer '{name}': build_head's head has {tuple(out.shape)[1:]} outputs but targets reach "
                f"{int(targets.max())}: fix the plugin"
            )

    # ------------------------------------------------------------------ phases

    def extract_features(self, desc: str = "extract") -> np.ndarray:
        batches = D.loader(self.eval_set, max(self.cfg.batch_size, 128), self.cfg.workers)
        with self.progress.task(desc, self.n) as advance:
            feats = extract(self.s.model, batches, self.n, self.s.device, on_batch=advance)
        check_finite(feats, "backbone features")
        return feats

    def _diagnose(self, labels: np.ndarray, n_clusters: int, features: np.ndarray, epoch: int,
                  whitened: np.ndarray | None = None) -> dict:
        return partition_row(labels, n_clusters, self.labels, self.truth, features, whitened, self.cfg.probe,
                             self.cfg.seed, epoch, self.cfg.pca_dim)

    def _cluster(self, feats: np.ndarray, epoch: int) -> tuple[Partition, dict, np.ndarray | None]:
        timings: dict[str, Any] = {}
        t = time.perf_counter()
        x = feats
        whitened = None
        if self.s.clusterer.wants_preprocessing:
            x = whitened = PCAWhitening(dim=self.cfg.pca_dim).fit_transform(feats)
        timings["time_preprocess"] = time.perf_counter() - t
        t = time.perf_counter()
        ctx = FitContext(epoch=epoch, seed=D.derive_seed(self.cfg.seed, epoch), device=self.s.device,
                         previous_labels=self.labels)
        part = self.s.clusterer.fit(x, ctx)
        if not isinstance(part, Partition):
            raise ContractError(f"clusterer '{self.cfg.clusterer}': fit must return a Partition, got {type(part).__name__}")
        part = part.validate(self.n, self.cfg.clusterer)
        timings["time_cluster"] = time.perf_counter() - t
        return part, timings, whitened

    @torch.no_grad()
    def _assign_online(self, feats: np.ndarray) -> np.ndarray:
        self.head.eval()
        out = []
        for s in range(0, len(feats), 1024):
            x = torch.from_numpy(feats[s : s + 1024]).to(self.s.device)
            out.append(self.s.clusterer.assign(self.head, x).cpu())
        self.head.train()
        return torch.cat(out).numpy().astype(np.int64)

    def _final_row(self, epoch: int) -> dict:
        """Diagnostics of the trained network's features (no training): what the run produced."""
        t = time.perf_counter()
        feats = self.extract_features("extract final")
        row: dict[str, Any] = {"epoch": epoch, "phase": "final", "time_extract": time.perf_counter() - t}
        whitened = None
        if self.online:
            labels, n_clusters = self._assign_online(feats), int(self.cfg.k)
        else:
            part, timings, whitened = self._cluster(feats, epoch)
            labels, n_clusters = part.labels, part.n_clusters
            row.update(timings, clusterer=dict(part.stats))
        row.update(self._diagnose(labels, n_clusters, feats, epoch, whitened))
        self.labels = labels
        return row

    def summary(self, rows: list[dict], seconds: float) -> dict:
        train_rows = [r for r in rows if r.get("phase") == "train"]
        out: dict[str, Any] = {
            "clusterer": self.cfg.clusterer, "backbone": self.cfg.backbone, "dataset": self.cfg.dataset,
            "plugins": self.cfg.plugins,
            "epochs": self.cfg.epochs, "images": self.n, "seconds": seconds,
            "final": rows[-1] if rows else {},
        }
        if train_rows:
            out["first"] = train_rows[0]
            out["final_loss"] = train_rows[-1]["loss"]
        for key in ("probe_nmi", "probe_nmi_whitened"):
            probes = [r[key] for r in rows if key in r]
            if probes:
                out[f"{key}_initial"], out[f"{key}_final"] = probes[0], probes[-1]
        return out


def _forward_views(model: nn.Module, views: list[torch.Tensor]) -> list[torch.Tensor]:
    """Backbone features per view, one forward per resolution (SwAV's multi-crop batching)."""
    if len(views) == 1:
        return [model(views[0])]
    out: list[torch.Tensor | None] = [None] * len(views)
    i = 0
    while i < len(views):
        j = i
        while j < len(views) and views[j].shape[-1] == views[i].shape[-1]:
            j += 1
        feats = model(torch.cat(views[i:j]))
        for n, chunk in enumerate(feats.chunk(j - i)):
            out[i + n] = chunk
        i = j
    return out  # type: ignore[return-value]
