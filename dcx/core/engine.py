"""The alternation engine: one training loop for every clusterer, in one process or many.

Each epoch gets an Objective (``dcx.core.objective``), then ``train_epoch`` runs the one step:
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
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from dcx.core import data as D
from dcx.core.callbacks import Callback, EpochLog, RunDirWriter
from dcx.core.contracts import (
    API_VERSION, EpochContext, FitContext, OnlineClusterer, Partition, StepContext, TrainingHead, TrainSpec,
)
from dcx.core.diagnostics import health_warnings, partition_row
from dcx.core.environment import environment
from dcx.core.errors import ContractError, DcxError, RunDirError
from dcx.core.features import PCAWhitening, check_finite, extract
from dcx.core.layers import FEATURES, pooled_layer
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
#: Name of the memory-mapped feature file in the run directory (features over the memory budget).
FEATURES_FILE = "features.f32.npy"
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class Engine:
    """Runs the alternation for a resolved Setup; side effects go through ``callbacks``."""

    def __init__(self, s: Setup, progress: Progress | None = None, callbacks: Sequence[Callback] = ()) -> None:
        self.s = s
        self.cfg = s.config
        self.world = s.world
        self.progress = progress or NullProgress()
        self.callbacks: list[Callback] = [EpochLog(), *callbacks]
        self.online = isinstance(s.clusterer, OnlineClusterer)
        self.n = len(s.images)
        self.truth = s.images.labels
        self.device = s.device
        channels = s.images.channels
        self.eval_set = D.IndexedImages(s.images, D.eval_transform(self.cfg.image_size, channels),
                                        blank=self.cfg.image_size)
        #: What offline clusterers' features come from when --cluster-views > 1 (else the eval set).
        self.cluster_set: D.IndexedImages | None = None
        if self.online:
            crops = s.clusterer.crops()
            self.views = crops.views
            train_t = D.MultiCrop(crops, self.cfg.image_size, channels, s.flip, s.backbone.min_image_size,
                                  self.cfg.augment, self.cfg.warp, self.cfg.jitter)
        else:
            self.views = self.cfg.views or 1
            min_scale = self.cfg.crop_scale or MIN_CROP_SCALE[self.cfg.image_size > 64]
            train_t = D.train_transform(self.cfg.image_size, channels, s.flip, min_scale, self.cfg.augment,
                                        warp=self.cfg.warp, jitter=self.cfg.jitter)
            if self.cfg.cluster_views > 1:  # what is clustered: plain + augmented views, averaged
                self.cluster_set = D.IndexedImages(
                    s.images, D.PlainAndAugmented(self.eval_set.transform, train_t, self.cfg.cluster_views),
                    blank=self.cfg.image_size)
            if self.views > 1:  # every view of an image is trained towards its one pseudo-label
                train_t = D.SameCrops(train_t, self.views)
        self.train_set = D.IndexedImages(s.images, train_t)
        model = s.model
        self.cuda = self.device.type == "cuda"
        if self.cuda:
            model.to(memory_format=torch.channels_last)  # faster convolutions with tensor cores
        self.spec = TrainSpec(model.feature_dim, self.n, self.device, preactivation=model.net.relu_head,
                              rank=self.world.rank, world_size=self.world.size, epochs=self.cfg.epochs)
        # What offline clusterers cluster: the network's output, or one block pooled as dcx eval pools it.
        self._cluster_input: nn.Module | None = None
        self._cluster_dim = model.feature_dim
        if self.cfg.cluster_layer != FEATURES and not self.online:
            self._cluster_input, self._cluster_dim = pooled_layer(model, self.cfg.cluster_layer, self.cfg.image_size,
                                                                   channels, self.device)
        self.head: nn.Module | None = None
        params = list(model.parameters())
        if self.online:
            self.head = s.clusterer.build_head(self.spec).to(self.device)
            params += list(self.head.parameters())
        else:
            s.clusterer.prepare(self.spec)
        self.net: nn.Module = self._wrap(model)
        # Reference optimiser (deepcluster main.py): SGD lr 0.05, momentum 0.9, weight decay 1e-5.
        self.optimizer = torch.optim.SGD(
            [p for p in params if p.requires_grad], lr=self.cfg.lr, momentum=self.cfg.momentum,
            weight_decay=self.cfg.weight_decay,
        )
        self.steps_per_epoch = self._steps_per_epoch()
        self.scheduler = build_scheduler(self.optimizer, self.cfg.lr_schedule, self.cfg.epochs,
                                         self.steps_per_epoch, self.cfg.warmup_epochs)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.cfg.precision == "fp16")
        self.labels: np.ndarray | None = None
        self.start_epoch = 0
        self.history: list[dict] = []  # metrics rows of epochs run before a resume
        self.seconds_before = 0.0  # training time of the run before this process resumed it
        #: Images that failed to decode when read (skipped in training, blank in extraction).
        self.unreadable: set[int] = set()
        #: Where features over the memory budget are memory-mapped (the run directory when known).
        self.scratch: Path | None = None
        self._tmp: tempfile.TemporaryDirectory | None = None
        #: The last epoch's end-of-epoch features: the network has not changed until the next epoch
        #: trains, so an online clusterer's ``EpochContext.features()`` reuses them (no second pass).
        self._features_now: np.ndarray | None = None
        self._callbacks = list(self.callbacks)  # run() adds the run-dir writer
        self._t_start = time.perf_counter()

    def _wrap(self, model: nn.Module) -> nn.Module:
        """The module the training step runs: DistributedDataParallel in a multi-process run."""
        if not self.world.distributed:
            return model
        if self.cfg.sync_bn:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            self.s.model = model
        ids = [self.device.index] if self.cuda else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)

    # ------------------------------------------------------------------ sizes

    def images_per_epoch(self) -> int:
        """Images drawn per epoch: ``passes`` backbone passes over the data. An online clusterer
        sees every image in several views per step (as does an offline one with ``--views``), so it
        gets passes // views image passes (at least one): the same backbone budget per pass, which
        keeps ``dcx compare`` fair."""
        return self.n * max(1, self.cfg.passes // self.views)

    def _steps_per_epoch(self) -> int:
        n_total, bs = self.images_per_epoch(), self.cfg.batch_size
        return n_total // bs if n_total > bs or self.world.distributed else 1

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
            "scaler": self.scaler.state_dict(),
            "head": self.head.state_dict() if self.head is not None else {},
            "clusterer": self.s.clusterer.state_dict(),
            "labels": torch.from_numpy(self.labels) if self.labels is not None else torch.empty(0, dtype=torch.long),
            "torch_rng": torch.get_rng_state(),
            "seconds": self.seconds_before + time.perf_counter() - self._t_start,
        }

    def restore(self, state: dict) -> None:
        """Continue from a checkpoint (written by any world size: weights are the same on every rank)."""
        if state.get("format") != CHECKPOINT_FORMAT:
            raise RunDirError(
                f"checkpoint format {state.get('format', 1)} is not this dcx's ({CHECKPOINT_FORMAT}): "
                "finish or evaluate the run with the dcx version that wrote it, or start a new run"
            )
        try:
            self.s.model.load_state_dict(state["model"])
            if self.head is not None and state["head"]:
                self.head.load_state_dict(state["head"])
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
        # The schedule follows the current config (a resume may add epochs); the restored step
        # count says where on it the run is.
        schedule = StepSchedule(self.cfg.lr_schedule, self.cfg.epochs, self.steps_per_epoch, self.cfg.warmup_epochs)
        self.scheduler.lr_lambdas = [schedule] * len(self.optimizer.param_groups)
        for group, base in zip(self.optimizer.param_groups, self.scheduler.base_lrs):
            group["lr"] = base * schedule(self.scheduler.last_epoch)
        self.scheduler._last_lr = [g["lr"] for g in self.optimizer.param_groups]
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
            self.scratch = self.scratch or run_dir.path
            if self.world.is_main:
                self.history = [r for r in run_dir.metrics()
                                if r.get("epoch", 0) < self.start_epoch and r.get("phase") != "final"]
                callbacks.append(RunDirWriter(run_dir, cfg.save_every_epoch))
        rows = list(self.history)
        self._callbacks = callbacks
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
                warnings = health_warnings(row, rows[-1] if rows else None, offline=not self.online)
                if warnings:
                    row["warnings"] = warnings
                rows.append(row)
                for cb in callbacks:
                    cb.on_epoch_end(self, row)
            final = self._final_row(cfg.epochs)
            rows.append(final)
            summary = self.summary(rows, self.seconds_before + time.perf_counter() - self._t_start)
            for cb in callbacks:
                cb.on_fit_end(self, final, summary)
        finally:
            self._drop_scratch()
        return summary

    def run_epoch(self, epoch: int) -> dict:
        """One epoch: get the objective (clustering first for offline clusterers), train, measure."""
        t0 = time.perf_counter()
        if self.online:
            objective = self._online_objective(epoch)
            self._features_now = None  # training moves the network
            row: dict[str, Any] = {"epoch": epoch, "phase": "train"}
        else:
            # With --cluster-views the rows (and this epoch's diagnostics of them) are view averages.
            feats = self.extract_features(f"extract epoch {epoch}", cluster_epoch=epoch)
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
            self.s.clusterer.end_epoch(self.head, self._epoch_context(epoch))
            t = time.perf_counter()
            feats = self._features_now = self.extract_features(f"extract epoch {epoch}")
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
        """The one training loop: every clusterer's step goes through ``objective``. Returns the
        mean loss over the epoch's steps (and ranks)."""
        device, world = self.device, self.world
        n_total = self.images_per_epoch()
        base = objective.sampler(n_total, D.derive_seed(self.cfg.seed, epoch, 1))
        batches = D.loader(
            self.train_set, self.cfg.batch_size, self.cfg.workers, seed=D.derive_seed(self.cfg.seed, epoch, 2),
            pin_memory=self.cuda,
            batch_sampler=D.ShardedBatches(base, self.cfg.batch_size, world.rank, world.size,
                                           drop_last=n_total > self.cfg.batch_size),
        )
        optimizers = [self.optimizer, *objective.optimizers]
        step_callbacks = [cb for cb in self._callbacks if cb.wants_steps]
        self.net.train()
        objective.head.train()
        total = torch.zeros((), dtype=torch.float64, device=device)  # no host sync per step
        steps = 0
        with self.progress.task(f"train epoch {epoch}", len(batches)) as advance:
            for i, (views, idx, failed) in enumerate(batches):
                self._note_unreadable(failed)
                if views is None:  # every image of this batch failed to decode
                    advance(1)
                    continue
                views = views if isinstance(views, list) else [views]
                step = StepContext(epoch=epoch, step=epoch * len(batches) + i, steps_per_epoch=len(batches),
                                   indices=idx, rank=world.rank, world_size=world.size)
                objective.before_step(step)
                with self._autocast():
                    feats = _forward_views(self.net, [self._to_device(v) for v in views])
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
        if world.distributed:
            self._sync_buffers(objective.head)
            stats = torch.stack([total, torch.tensor(float(steps), dtype=torch.float64, device=device)])
            total, steps = world.all_reduce(stats)
            return float(total) / max(float(steps), 1.0)
        return float(total) / max(steps, 1)

    def _to_device(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.cuda and x.ndim == 4 else x

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

    # ------------------------------------------------------------------ objectives

    def _partition_objective(self, part: Partition) -> PartitionObjective:
        head = self.s.clusterer.build_head(part, self.spec)
        self._check_training_head(head)
        if self.world.distributed:  # every rank starts the head from rank 0's weights
            for p in head.module.parameters():
                self.world.broadcast(p.data)
        head_lr = self.cfg.lr if self.cfg.head_lr is None else self.cfg.head_lr
        return PartitionObjective(head, head_lr, self.cfg.weight_decay, self.device,
                                  label_smoothing=self.cfg.label_smoothing)

    def _epoch_context(self, epoch: int) -> EpochContext:
        return EpochContext(
            epoch=epoch, seed=D.derive_seed(self.cfg.seed, epoch), steps_per_epoch=self.steps_per_epoch,
            num_samples=self.n, device=self.device,
            features=lambda: torch.from_numpy(np.asarray(
                self._features_now if self._features_now is not None
                else self.extract_features(f"extract for {self.cfg.clusterer}"))).to(self.device),
            rank=self.world.rank, world_size=self.world.size,
            all_reduce=self.world.all_reduce if self.world.distributed else None,
        )

    def _online_objective(self, epoch: int) -> OnlineObjective:
        self.s.clusterer.start_epoch(self.head, self._epoch_context(epoch))

        def sampler(n_total: int, seed: int) -> torch.utils.data.Sampler:
            gen = torch.Generator().manual_seed(seed)
            return torch.utils.data.RandomSampler(self.train_set, num_samples=n_total, generator=gen)

        return OnlineObjective(self.s.clusterer, self.head, sampler)

    def _check_training_head(self, head: TrainingHead) -> None:
        name = self.cfg.clusterer
        if not isinstance(head, TrainingHead) or not isinstance(head.module, nn.Module):
            raise ContractError(f"clusterer '{name}': build_head must return a TrainingHead(module, targets): fix the plugin")
        targets = np.asarray(head.targets)
        if (targets.ndim not in (1, 2) or targets.shape[0] != self.n or not np.issubdtype(targets.dtype, np.integer)
                or (targets < 0).any()):
            raise ContractError(
                f"clusterer '{name}': build_head returned targets of shape {targets.shape} ({targets.dtype}), "
                f"expected ({self.n},) or ({self.n}, heads) non-negative integers: fix the plugin"
            )
        with torch.no_grad():
            was = head.module.training
            head.module.eval()
            out = head.module(torch.zeros(2, self.spec.feature_dim, device=self.device))
            head.module.train(was)
        if out.ndim != targets.ndim + 1 or tuple(out.shape[2:]) != targets.shape[1:] or int(targets.max()) >= out.shape[1]:
            want = "(batch, outputs)" if targets.ndim == 1 else f"(batch, outputs, {targets.shape[1]})"
            raise ContractError(
                f"clusterer '{name}': build_head's head returns {tuple(out.shape)[1:]} per batch for targets reaching "
                f"{int(targets.max())}, expected {want}: fix the plugin"
            )

    # ------------------------------------------------------------------ extraction

    def _note_unreadable(self, indices: torch.Tensor) -> None:
        if len(indices):
            self.unreadable.update(int(i) for i in indices)

    def _feature_array(self, d: int) -> np.ndarray:
        """Where this epoch's (N, d) features go: RAM, or a memory map once over ``feature_memory_gb``."""
        if self.n * d * 4 <= self.cfg.feature_memory_gb * 1024**3:
            return np.empty((self.n, d), dtype=np.float32)
        if self.scratch is None:
            self._tmp = self._tmp or tempfile.TemporaryDirectory(prefix="dcx-features-")
            self.scratch = Path(self._tmp.name)
        path = self.scratch / FEATURES_FILE
        if self.world.is_main:
            np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(self.n, d)).flush()
        self.world.barrier()
        return np.lib.format.open_memmap(path, mode="r+")

    def _drop_scratch(self) -> None:
        if self.world.is_main and self.scratch is not None and (self.scratch / FEATURES_FILE).exists():
            (self.scratch / FEATURES_FILE).unlink(missing_ok=True)
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def extract_features(self, desc: str = "extract", cluster_epoch: int | None = None) -> np.ndarray:
        """(N, d) features of every image, in dataset order, on every rank: the network's output, or
        ``cluster_layer`` for offline clusterers. Each rank extracts its block; blocks meet in a
        shared memory map or by an all-gather. For ``cluster_epoch``'s clustering they are averaged
        over ``cluster_views`` views, augmented from a seed of their own (training's stream is kept)."""
        world = self.world
        block = world.block(self.n)
        out = self._feature_array(self._cluster_dim)
        batch = max(self.cfg.batch_size // world.size, 128)
        augmented = cluster_epoch is not None and self.cluster_set is not None
        seed = D.derive_seed(self.cfg.seed, cluster_epoch, 4, world.rank) if augmented else 0
        batches = D.loader(self.cluster_set if augmented else self.eval_set, batch, self.cfg.workers,
                           pin_memory=self.cuda, seed=seed, sampler=list(range(block.start, block.stop)))
        with self.progress.task(desc, block.stop - block.start) as advance, self._autocast(), \
                torch.random.fork_rng(devices=[], enabled=augmented):
            if augmented:
                torch.manual_seed(seed)  # views augmented in this process (no loader workers)
            feats = extract(self.s.model, batches, self.n, self.device, forward=self._cluster_input, on_batch=advance,
                            on_failed=self._note_unreadable, out=out, expected=block.stop - block.start)
        if world.distributed:
            if isinstance(feats, np.memmap):
                feats.flush()
                world.barrier()
            else:
                feats = world.all_gather_rows(feats[block], self._collective_device())
        check_finite(feats[block] if world.distributed else feats, "backbone features")
        return feats

    def _collective_device(self) -> torch.device:
        return self.device if self.cuda else torch.device("cpu")

    # ------------------------------------------------------------------ clustering and diagnostics

    def _diagnose(self, labels: np.ndarray, n_clusters: int, features: np.ndarray, epoch: int,
                  whitened: np.ndarray | None = None) -> dict:
        return partition_row(labels, n_clusters, self.labels, self.truth, features, whitened,
                             self.cfg.probe and self.world.is_main, self.cfg.seed, epoch, self.cfg.pca_dim)

    def _cluster(self, feats: np.ndarray, epoch: int) -> tuple[Partition, dict, np.ndarray | None]:
        timings: dict[str, Any] = {}
        world = self.world
        t = time.perf_counter()
        x = feats
        whitened = pca = None
        if self.s.clusterer.wants_preprocessing:
            pca = PCAWhitening(dim=self.cfg.pca_dim, whiten=self.cfg.whiten)
            if world.distributed:
                block = world.block(self.n)
                pca.fit(feats, rows=block, all_reduce=world.all_reduce)
                x = world.all_gather_rows(pca.transform(feats, rows=block), self._collective_device())
            else:
                x = pca.fit_transform(feats)
            whitened = x if self.cfg.whiten else None  # the diagnostics' whitened probe whitens itself
        timings["time_preprocess"] = time.perf_counter() - t
        t = time.perf_counter()
        clusterer = self.s.clusterer
        ctx = FitContext(epoch=epoch, seed=D.derive_seed(self.cfg.seed, epoch), device=self.device,
                         previous_labels=self.labels, rank=world.rank, world_size=world.size)
        if world.distributed and clusterer.distributed:
            ctx.rows, ctx.all_reduce = world.block(self.n), world.all_reduce
        part = None
        if clusterer.distributed or world.is_main:
            part = clusterer.fit(x, ctx)
            if not isinstance(part, Partition):
                raise ContractError(f"clusterer '{self.cfg.clusterer}': fit must return a Partition, got {type(part).__name__}")
            part = part.validate(self.n, self.cfg.clusterer)
        if world.distributed and not clusterer.distributed:
            part = world.broadcast_object(part)
        timings["time_cluster"] = time.perf_counter() - t
        for cb in self._callbacks:  # e.g. the clustering.npz writer (dcx assign)
            cb.on_clustering(self, epoch, part, x, pca)
        return part, timings, whitened

    @torch.no_grad()
    def _assign_online(self, feats: np.ndarray) -> np.ndarray:
        self.head.eval()
        out = []
        for s in range(0, len(feats), 1024):
            x = torch.from_numpy(np.asarray(feats[s : s + 1024])).to(self.device)
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
            "processes": self.world.size,
            "skipped_images": int(self.s.images.skipped) + len(self.unreadable),
            "final": rows[-1] if rows else {},
            # what the numbers depend on besides the config (another CPU kind: another trajectory)
            "environment": environment(self.device),
        }
        if train_rows:
            out["first"] = train_rows[0]
            out["final_loss"] = train_rows[-1]["loss"]
        for key in ("probe_nmi", "probe_nmi_whitened"):
            probes = [r[key] for r in rows if key in r]
            if probes:
                out[f"{key}_initial"], out[f"{key}_final"] = probes[0], probes[-1]
        warnings = [f"epoch {r['epoch']}: {w}" for r in rows for w in r.get("warnings", [])]
        if warnings:
            out["warnings"] = warnings
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
