"""The two kinds of epoch behind one interface, so the engine's loop never asks which it runs.

An offline epoch (DeepCluster, PIC, SeLa) extracts and clusters before training and trains towards
targets fixed for the epoch; an online epoch (SwAV, DeepCluster-v2) lets the clusterer label each
batch inside the step, then extracts and assigns after training, for the diagnostics. Both:
``begin`` gives the epoch's Objective and the start of its metrics row, ``finish`` completes the row
after training, ``final`` measures the trained network.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch
from torch import nn

from dcx import data as D
from dcx.training.clustering import cluster
from dcx.core.contracts import EpochContext, OnlineClusterer, Partition, TrainingHead, TrainSpec
from dcx.training.diagnostics import health_warnings, partition_row
from dcx.core.errors import ContractError
from dcx.training.extraction import FeatureExtractor
from dcx.training.objective import Objective, OnlineObjective, PartitionObjective

if TYPE_CHECKING:  # pragma: no cover
    from dcx.training.setup import Setup


class Epochs(ABC):
    """What the loop needs of an epoch kind; ``labels`` are the last epoch's pseudo-labels."""

    #: Health rules for offline labels (the loss against fixed targets) apply.
    offline: bool = True
    #: Crops of each image one training step sees.
    views: int = 1
    #: A head the backbone's optimiser trains with it (online clusterers), else None.
    head: nn.Module | None = None
    #: Optimiser steps per epoch (set by the engine once the batches are known).
    steps_per_epoch: int = 0
    #: Called after each offline clustering with (epoch, partition, rows clustered, fitted PCA or None);
    #: the engine hands it to its callbacks (e.g. the clustering.npz writer of ``dcx assign``).
    on_clustering: Callable[..., None] = staticmethod(lambda *args: None)

    def __init__(self, s: Setup, spec: TrainSpec, extract: FeatureExtractor) -> None:
        self.s, self.cfg, self.spec, self.extract = s, s.config, spec, extract
        self.world, self.device = s.world, s.device
        self.n = len(s.images)
        self.truth = s.images.labels
        self.labels: np.ndarray | None = None

    @abstractmethod
    def augment(self, channels_last: bool = False) -> D.Augment:
        """The training augmentation of a uint8 batch (its views)."""

    @abstractmethod
    def begin(self, epoch: int) -> tuple[Objective, dict[str, Any]]:
        """This epoch's objective and the start of its metrics row."""

    def finish(self, epoch: int, row: dict[str, Any]) -> None:
        """Complete ``row`` after the epoch trained (every rank: collectives allowed)."""

    @abstractmethod
    def final(self, epoch: int) -> dict[str, Any]:
        """The trained network's row (no training): what the run produced."""

    def warnings(self, row: dict[str, Any], previous: dict[str, Any] | None) -> list[str]:
        return health_warnings(row, previous, offline=self.offline)

    def state_dict(self) -> dict[str, Any]:
        return {"head": self.head.state_dict() if self.head is not None else {},
                "clusterer": self.s.clusterer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.head is not None and state["head"]:
            self.head.load_state_dict(state["head"])
        self.s.clusterer.load_state_dict(state.get("clusterer", {}))

    def diagnose(self, labels: np.ndarray, n_clusters: int, features: np.ndarray, epoch: int,
                 whitened: np.ndarray | None = None) -> dict[str, Any]:
        return partition_row(labels, n_clusters, self.labels, self.truth, features, whitened,
                             self.cfg.probe and self.world.is_main, self.cfg.seed, epoch, self.cfg.pca_dim)


class OfflineEpochs(Epochs):
    """Extract -> PCA-whitening + L2 -> fit -> diagnostics -> ``build_head``, then train towards the
    targets, images drawn uniformly over them (paper §3.3)."""

    def __init__(self, s: Setup, spec: TrainSpec, extract: FeatureExtractor) -> None:
        super().__init__(s, spec, extract)
        s.clusterer.prepare(spec)

    def augment(self, channels_last: bool = False) -> D.Augment:
        cfg = self.cfg
        min_scale = cfg.crop_scale or D.MIN_CROP_SCALE[cfg.image_size > 64]
        return D.train_augment(cfg.image_size, cfg.flip, min_scale, cfg.augment, cfg.jitter, channels_last)

    def begin(self, epoch: int) -> tuple[Objective, dict[str, Any]]:
        t = time.perf_counter()
        feats = self.extract(f"extract epoch {epoch}")
        t_extract = time.perf_counter() - t
        part, timings, whitened = self._cluster(feats, epoch)
        row = {"epoch": epoch, "phase": "train", **self.diagnose(part.labels, part.n_clusters, feats, epoch, whitened)}
        self.labels = part.labels
        objective = self._objective(part)
        row.update(time_extract=t_extract, **timings, clusterer=dict(part.stats))
        return objective, row

    def final(self, epoch: int) -> dict[str, Any]:
        t = time.perf_counter()
        feats = self.extract("extract final")
        row: dict[str, Any] = {"epoch": epoch, "phase": "final", "time_extract": time.perf_counter() - t}
        part, timings, whitened = self._cluster(feats, epoch)
        row.update(timings, clusterer=dict(part.stats))
        row.update(self.diagnose(part.labels, part.n_clusters, feats, epoch, whitened))
        self.labels = part.labels
        return row

    def _cluster(self, feats: np.ndarray, epoch: int) -> tuple[Partition, dict, np.ndarray | None]:
        """(partition, timings, the whitened rows or None: the diagnostics' probe whitens itself)."""
        cfg, clusterer = self.cfg, self.s.clusterer
        part, timings, rows, pca = cluster(feats, clusterer, cfg.clusterer, epoch, cfg.seed, cfg.pca_dim,
                                           self.labels, self.device, self.world)
        self.on_clustering(epoch, part, rows, pca)
        return part, timings, rows if pca is not None else None

    def _objective(self, part: Partition) -> PartitionObjective:
        head = self.s.clusterer.build_head(part, self.spec)
        self._check_training_head(head)
        if self.world.distributed:  # every rank starts the head from rank 0's weights
            for p in head.module.parameters():
                self.world.broadcast(p.data)
        # The head's own SGD at the backbone's base rate, as the reference's optimizer_tl.
        return PartitionObjective(head, self.cfg.lr, self.cfg.weight_decay, self.device)

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


class OnlineEpochs(Epochs):
    """``start_epoch`` -> train on the clusterer's own loss over its crops -> ``end_epoch`` ->
    extract and ``assign`` for the diagnostics."""

    offline = False

    def __init__(self, s: Setup, spec: TrainSpec, extract: FeatureExtractor) -> None:
        super().__init__(s, spec, extract)
        self.clusterer: OnlineClusterer = s.clusterer
        self.crops = self.clusterer.crops()
        self.views = self.crops.views
        self.head = self.clusterer.build_head(spec).to(self.device)

    def augment(self, channels_last: bool = False) -> D.Augment:
        cfg = self.cfg
        return D.multi_crop(self.crops, cfg.image_size, cfg.flip, self.s.backbone.min_image_size, cfg.augment,
                            cfg.jitter, channels_last)

    def begin(self, epoch: int) -> tuple[Objective, dict[str, Any]]:
        self.clusterer.start_epoch(self.head, self._context(epoch))
        n = self.n

        def sampler(n_total: int, seed: int) -> torch.utils.data.Sampler:
            return torch.utils.data.RandomSampler(range(n), num_samples=n_total,
                                                  generator=torch.Generator().manual_seed(seed))

        return OnlineObjective(self.clusterer, self.head, sampler), {"epoch": epoch, "phase": "train"}

    def finish(self, epoch: int, row: dict[str, Any]) -> None:
        self.clusterer.end_epoch(self.head, self._context(epoch))
        t = time.perf_counter()
        feats = self.extract(f"extract epoch {epoch}")
        row["time_extract"] = time.perf_counter() - t
        t = time.perf_counter()
        labels = self._assign(feats)
        row["time_cluster"] = time.perf_counter() - t
        row.update(self.diagnose(labels, int(self.cfg.k or labels.max() + 1), feats, epoch + 1))
        self.labels = labels
        row["clusterer"] = self.clusterer.epoch_stats()

    def final(self, epoch: int) -> dict[str, Any]:
        t = time.perf_counter()
        feats = self.extract("extract final")
        row: dict[str, Any] = {"epoch": epoch, "phase": "final", "time_extract": time.perf_counter() - t}
        labels = self._assign(feats)
        row.update(self.diagnose(labels, int(self.cfg.k), feats, epoch))
        self.labels = labels
        return row

    def _context(self, epoch: int) -> EpochContext:
        world = self.world
        return EpochContext(
            epoch=epoch, seed=D.derive_seed(self.cfg.seed, epoch), steps_per_epoch=self.steps_per_epoch, num_samples=self.n,
            device=self.device,
            features=lambda: torch.from_numpy(np.asarray(self.extract(f"extract for {self.cfg.clusterer}"))).to(self.device),
            rank=world.rank, world_size=world.size, all_reduce=world.all_reduce if world.distributed else None,
        )

    @torch.no_grad()
    def _assign(self, feats: np.ndarray) -> np.ndarray:
        self.head.eval()
        out = []
        for s in range(0, len(feats), 1024):
            x = torch.from_numpy(np.asarray(feats[s : s + 1024])).to(self.device)
            out.append(self.clusterer.assign(self.head, x).cpu())
        self.head.train()
        return torch.cat(out).numpy().astype(np.int64)


def epochs_for(s: Setup, spec: TrainSpec, extract: FeatureExtractor) -> Epochs:
    """The epoch kind of ``s``'s clusterer (the one place that asks)."""
    kind = OnlineEpochs if isinstance(s.clusterer, OnlineClusterer) else OfflineEpochs
    return kind(s, spec, extract)
