"""The alternation engine: one loop, two schedules.

Offline (per epoch, DeepCluster/PIC/SeLa): extract -> preprocess -> clusterer.fit -> relabel +
uniform sampler -> fresh head -> train -> metrics -> checkpoint.
Online (per batch, SwAV): the clusterer labels each batch inside the training step and owns the
head and the loss; once per epoch the engine extracts features for the same diagnostics.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from dcx.core import data as D
from dcx.core.config import RunConfig
from dcx.core.contracts import Backbone, Clusterer, Dataset, FitContext, ImageSet, OnlineClusterer, StepContext
from dcx.core.errors import ContractError, DcxError, InputError
from dcx.core.features import PCAWhitening, check_finite, extract, l2_normalize
from dcx.core.kmeans import kmeans
from dcx.core.metrics import cluster_sizes, nmi
from dcx.core.network import FeatureNet, build_network, classifier_head
from dcx.core.progress import NullProgress, Progress
from dcx.core.registry import Registry
from dcx.core.rundir import RunDir
from dcx.core.sampling import UniformLabelSampler, relabel

log = logging.getLogger(__name__)

#: Minimum RandomResizedCrop scale for training (reference: torchvision's default 0.08).
MIN_CROP_SCALE = {True: 0.08, False: 0.5}  # keyed by "image larger than 64 px"


LR_SCHEDULES = ("constant", "cosine")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("--device cuda asked for but no CUDA device is available: use --device cpu or auto")
    if name not in ("cpu",) and not name.startswith("cuda"):
        raise InputError(f"unknown --device {name!r}: use cpu, cuda, cuda:N or auto")
    return torch.device(name)


@dataclass
class Setup:
    """A run's resolved configuration and the objects built from it (shared with evaluation)."""

    config: RunConfig
    dataset: Dataset
    images: ImageSet
    backbone: Backbone
    clusterer: Clusterer | OnlineClusterer
    model: FeatureNet
    device: torch.device
    split: str
    extra: dict[str, Any] = field(default_factory=dict)


def setup(config: RunConfig, registry: Registry | None = None, load_images: bool = True) -> Setup:
    """Resolve defaults, load plugins and data, build the randomly initialised network.

    Every user error (unknown plugin, bad option, k > N, missing data) surfaces here, before a
    run directory is created. The network is initialised from ``config.seed`` alone, so the same
    config always yields the same random-init network (the "Random" baseline of evaluation).
    """
    registry = registry or Registry()
    opts = config.options
    dataset = registry.create("dataset", config.dataset, opts.get(config.dataset))
    backbone = registry.create("backbone", config.backbone, opts.get(config.backbone))
    clusterer_cls = registry.load("clusterer", config.clusterer)
    d = dataset.defaults
    cfg = config.merged({})
    cfg.image_size = cfg.image_size or d.image_size
    cfg.epochs = cfg.epochs if cfg.epochs is not None else d.epochs
    cfg.batch_size = cfg.batch_size or d.batch_size
    cfg.width = cfg.width or d.width
    cfg.passes = cfg.passes or d.passes
    cfg.sobel = backbone.sobel_default if cfg.sobel is None else cfg.sobel
    for name, value, low in (("epochs", cfg.epochs, 0), ("batch-size", cfg.batch_size, 1), ("passes", cfg.passes, 1)):
        if value < low:
            raise InputError(f"--{name} must be >= {low}, got {value}")
    if cfg.image_size < backbone.min_image_size:
        raise InputError(f"{backbone.name} needs --image-size >= {backbone.min_image_size}, got {cfg.image_size}")
    if not math.isfinite(cfg.lr) or cfg.lr <= 0:
        raise InputError(f"--lr must be a positive number, got {cfg.lr}")
    if cfg.lr_schedule not in LR_SCHEDULES:
        raise InputError(f"--lr-schedule must be one of {', '.join(LR_SCHEDULES)}, got {cfg.lr_schedule!r}")
    # The run-level --k feeds the clusterer's own `k` option unless --opt NAME.k already did.
    c_opts = dict(opts.get(config.clusterer, {}))
    declares_k = any(o.name == "k" for o in clusterer_cls.options)
    if declares_k and "k" not in c_opts:
        c_opts["k"] = cfg.k if cfg.k is not None else d.k
    elif cfg.k is not None and not clusterer_cls.uses_k:
        log.warning("%s chooses its own number of clusters: --k %d is ignored", config.clusterer, cfg.k)
    clusterer = registry.create("clusterer", config.clusterer, c_opts)
    cfg.k = clusterer.params.get("k", cfg.k)
    # Store every used plugin's validated options (typed, defaults filled) so config.toml
    # reproduces the run even if a default changes later. None ("auto") is left out.
    for key, plugin in ((cfg.dataset, dataset), (cfg.backbone, backbone), (cfg.clusterer, clusterer)):
        cfg.options[key] = {k: v for k, v in plugin.params.items() if v is not None}
    images = dataset.load(cfg.data_root, _train_split(dataset), cfg.download) if load_images else None
    if images is not None:
        if len(images) < 2:
            raise InputError(f"dataset {cfg.dataset} has {len(images)} image(s): need at least 2")
        k = clusterer.params.get("k")
        if k is not None and k > len(images):
            raise InputError(f"k={k} is larger than the dataset ({len(images)} images): lower --k")
    device = resolve_device(cfg.device)
    channels = images.channels if images is not None else 3
    torch.manual_seed(cfg.seed)
    model = build_network(backbone, channels, cfg.image_size, cfg.width, cfg.sobel).to(device)
    return Setup(cfg, dataset, images, backbone, clusterer, model, device, _train_split(dataset))


def _train_split(dataset: Dataset) -> str:
    splits = dataset.splits()
    return "train" if "train" in splits else splits[0]


def probe_nmi(x: np.ndarray, labels: np.ndarray, seed: int, restarts: int = 10) -> float:
    """NMI to ``labels`` of k-means(#classes) on ``x``: how well these features cluster by class.

    The best of ``restarts`` k-means runs by objective, so the probe is not a coin toss.
    """
    k = int(len(np.unique(labels)))
    best = min((kmeans(x, k, 20, seed + r) for r in range(restarts)), key=lambda r: r.objective)
    return nmi(labels, best.labels)


class Engine:
    """Runs the alternation for a resolved Setup, writing to an optional RunDir."""

    def __init__(self, s: Setup, progress: Progress | None = None) -> None:
        self.s = s
        self.cfg = s.config
        self.progress = progress or NullProgress()
        self.online = isinstance(s.clusterer, OnlineClusterer)
        self.n = len(s.images)
        self.truth = s.images.labels
        channels = s.images.channels
        self.eval_set = D.IndexedImages(s.images, D.eval_transform(self.cfg.image_size, channels))
        flip = s.dataset.flip_invariant
        if self.online:
            train_t = D.MultiCrop(s.clusterer.crops(), self.cfg.image_size, channels, flip, s.backbone.min_image_size)
        else:
            min_scale = MIN_CROP_SCALE[self.cfg.image_size > 64]
            train_t = D.train_transform(self.cfg.image_size, channels, flip, min_scale)
        self.train_set = D.IndexedImages(s.images, train_t)
        model = s.model
        self.head: nn.Module | None = None
        params = list(model.parameters())
        if self.online:
            self.head = s.clusterer.build_head(model.feature_dim, self.n).to(s.device)
            params += list(self.head.parameters())
        elif s.clusterer.keeps_head:
            self.head = classifier_head(model.feature_dim, self.cfg.k, model.net.relu_head).to(s.device)
        # Reference optimiser (deepcluster main.py): SGD lr 0.05, momentum 0.9, weight decay 1e-5.
        self.optimizer = torch.optim.SGD(
            [p for p in params if p.requires_grad], lr=self.cfg.lr, momentum=self.cfg.momentum,
            weight_decay=self.cfg.weight_decay,
        )
        self.labels: np.ndarray | None = None
        self.start_epoch = 0

    # ------------------------------------------------------------------ checkpointing

    def state(self, epoch: int) -> dict:
        return {
            "epoch": epoch,
            "model": self.s.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "head": self.head.state_dict() if self.head is not None else {},
            "labels": torch.from_numpy(self.labels) if self.labels is not None else torch.empty(0, dtype=torch.long),
            "torch_rng": torch.get_rng_state(),
        }

    def restore(self, state: dict) -> None:
        self.s.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.head is not None and state["head"]:
            self.head.load_state_dict(state["head"])
        self.labels = state["labels"].numpy() if state["labels"].numel() else None
        torch.set_rng_state(state["torch_rng"])
        self.start_epoch = int(state["epoch"])

    # ------------------------------------------------------------------ phases

    def _set_lr(self, optimizers: tuple[torch.optim.Optimizer, ...], progress: float) -> None:
        """Learning rate at ``progress`` epochs into the run: constant (reference) or cosine to 0."""
        lr = self.cfg.lr
        if self.cfg.lr_schedule == "cosine":
            lr *= 0.5 * (1 + math.cos(math.pi * progress / max(self.cfg.epochs, 1)))
        for opt in optimizers:
            for group in opt.param_groups:
                group["lr"] = lr

    def extract_features(self, desc: str = "extract") -> np.ndarray:
        batches = D.loader(self.eval_set, max(self.cfg.batch_size, 128), self.cfg.workers)
        with self.progress.task(desc, self.n) as advance:
            feats = extract(self.s.model, batches, self.n, self.s.device, on_batch=advance)
        check_finite(feats, "backbone features")
        return feats

    def diagnostics(
        self, labels: np.ndarray, n_clusters: int, features: np.ndarray, epoch: int, whitened: np.ndarray | None = None
    ) -> dict:
        """Cluster sizes, NMI to the previous labels and to the true labels, and the k-means probe.

        The probe is reported on two views of the same features, because they can disagree
        (docs/algorithms "Evaluation preprocessing changes conclusions"): ``probe_nmi`` on
        L2-normalised features, ``probe_nmi_whitened`` on the PCA-whitened + L2 features that
        offline clusterers see.
        """
        row: dict[str, Any] = dict(cluster_sizes(labels, n_clusters))
        if self.labels is not None and len(self.labels) == len(labels):
            row["nmi_prev"] = nmi(labels, self.labels)
        if self.truth is not None:
            row["nmi_labels"] = nmi(self.truth, labels)
            if self.cfg.probe:
                t = time.perf_counter()
                seed = D.derive_seed(self.cfg.seed, epoch, 7)
                if whitened is None:
                    whitened = PCAWhitening(dim=self.cfg.pca_dim).fit_transform(features)
                row["probe_nmi"] = probe_nmi(l2_normalize(features), self.truth, seed)
                row["probe_nmi_whitened"] = probe_nmi(whitened, self.truth, seed)
                row["time_probe"] = time.perf_counter() - t
        return row

    def _cluster(self, feats: np.ndarray, epoch: int, seed: int) -> tuple[np.ndarray, int, dict, dict, np.ndarray | None]:
        timings: dict[str, float] = {}
        t = time.perf_counter()
        x = feats
        whitened = None
        if self.s.clusterer.wants_preprocessing:
            x = whitened = PCAWhitening(dim=self.cfg.pca_dim).fit_transform(feats)
        timings["time_preprocess"] = time.perf_counter() - t
        t = time.perf_counter()
        ctx = FitContext(
            epoch=epoch, seed=seed, device=self.s.device, previous_labels=self.labels,
            raw_features=feats if self.s.clusterer.keeps_head else None,
            head=self.head if self.s.clusterer.keeps_head else None,
        )
        part = self.s.clusterer.fit(x, ctx).validate(self.n, self.cfg.clusterer)
        timings["time_cluster"] = time.perf_counter() - t
        return part.labels, part.n_clusters, dict(part.stats), timings, whitened

    def _train_offline(self, labels: np.ndarray, n_clusters: int, epoch: int) -> float:
        model, device = self.s.model, self.s.device
        if self.s.clusterer.keeps_head:
            head = self.head
            if head[-1].out_features != n_clusters:
                raise ContractError(
                    f"clusterer '{self.cfg.clusterer}' keeps its head but returned {n_clusters} clusters "
                    f"instead of {head[-1].out_features}: fix the plugin"
                )
            targets = torch.as_tensor(labels)  # the kept head's outputs are the clusterer's own ids
        else:
            # A new top layer every epoch (paper §3.3), sized from what the clusterer returned:
            # cluster ids carry no meaning across epochs and PIC's count changes.
            relabelled, kept = relabel(labels)
            head = classifier_head(model.feature_dim, len(kept), model.net.relu_head).to(device)
            targets = torch.as_tensor(relabelled)
        head_opt = torch.optim.SGD(head.parameters(), lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)
        n_total = self.n * self.cfg.passes
        sampler = UniformLabelSampler(targets.numpy(), n_total, D.derive_seed(self.cfg.seed, epoch, 1))
        batches = D.loader(self.train_set, self.cfg.batch_size, self.cfg.workers, sampler=sampler,
                           seed=D.derive_seed(self.cfg.seed, epoch, 2), drop_last=n_total > self.cfg.batch_size)
        criterion = nn.CrossEntropyLoss()
        model.train()
        head.train()
        total, steps = 0.0, 0
        with self.progress.task(f"train epoch {epoch}", len(batches)) as advance:
            for i, (x, idx) in enumerate(batches):
                # The schedule is the backbone's; the fresh head keeps the reference's constant rate,
                # or it could not fit the new pseudo-labels once the backbone's rate is near 0.
                self._set_lr((self.optimizer,), epoch + i / len(batches))
                y = targets[idx].to(device)
                loss = criterion(head(model(x.to(device))), y)
                self.optimizer.zero_grad(set_to_none=True)
                head_opt.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
                head_opt.step()
                total += loss.item()
                steps += 1
                advance(1)
        return total / max(steps, 1)

    def _train_online(self, epoch: int) -> tuple[float, dict]:
        model, device, head, clusterer = self.s.model, self.s.device, self.head, self.s.clusterer
        # --passes counts backbone passes over the data: an online clusterer sees every image in
        # several views per step, so it gets passes // views image passes (at least one). Same
        # backbone budget as an offline run, which keeps `dcx compare` fair.
        crops = clusterer.crops()
        n_total = self.n * max(1, self.cfg.passes // (crops.n_large + crops.n_small))
        sampler = torch.utils.data.RandomSampler(
            self.train_set, num_samples=n_total, generator=torch.Generator().manual_seed(D.derive_seed(self.cfg.seed, epoch, 1))
        )
        batches = D.loader(self.train_set, self.cfg.batch_size, self.cfg.workers, sampler=sampler,
                           seed=D.derive_seed(self.cfg.seed, epoch, 2), drop_last=n_total > self.cfg.batch_size)
        model.train()
        head.train()
        total, steps = 0.0, 0
        stats: dict = {}
        with self.progress.task(f"train epoch {epoch}", len(batches)) as advance:
            for i, (views, _) in enumerate(batches):
                step = StepContext(epoch=epoch, step=epoch * len(batches) + i, steps_per_epoch=len(batches))
                self._set_lr((self.optimizer,), epoch + i / len(batches))
                clusterer.before_step(head, step)
                feats = _forward_views(model, [v.to(device) for v in views])
                loss, stats = clusterer.loss(head, feats, step)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                clusterer.after_backward(head, step)
                self.optimizer.step()
                total += loss.item()
                steps += 1
                advance(1)
        return total / max(steps, 1), stats

    @torch.no_grad()
    def _assign_online(self, feats: np.ndarray) -> np.ndarray:
        self.head.eval()
        out = []
        for s in range(0, len(feats), 1024):
            x = torch.from_numpy(feats[s : s + 1024]).to(self.s.device)
            out.append(self.s.clusterer.assign(self.head, x).cpu())
        self.head.train()
        return torch.cat(out).numpy().astype(np.int64)

    # ------------------------------------------------------------------ the loop

    def run(self, run_dir: RunDir | None = None) -> dict:
        cfg = self.cfg
        rows: list[dict] = run_dir.metrics() if run_dir is not None else []
        t_run = time.perf_counter()
        for epoch in range(self.start_epoch, cfg.epochs):
            torch.manual_seed(D.derive_seed(cfg.seed, epoch, 3))  # augmentations: resumable exactly
            row = self._online_epoch(epoch) if self.online else self._offline_epoch(epoch)
            if not math.isfinite(row["loss"]):
                raise DcxError(f"training diverged at epoch {epoch} (loss {row['loss']}): lower --lr; the run dir keeps the last good epoch")
            rows.append(row)
            log.info(
                "epoch %d: loss %.3f, %d clusters (%d empty)%s%s", epoch, row["loss"], row["nonempty"], row["empty"],
                f", NMI labels {row['nmi_labels']:.3f}" if "nmi_labels" in row else "",
                f", NMI prev {row['nmi_prev']:.3f}" if "nmi_prev" in row else "",
            )
            if run_dir is not None:
                run_dir.append_metrics(row)
                if cfg.save_every_epoch:
                    run_dir.save_assignments(self.labels, epoch)
                run_dir.save_checkpoint(self.state(epoch + 1))
        final = self._final_row(cfg.epochs)
        rows.append(final)
        summary = self.summary(rows, time.perf_counter() - t_run)
        if run_dir is not None:
            run_dir.append_metrics(final)
            if self.labels is not None:
                run_dir.save_assignments(self.labels)
            run_dir.save_summary(summary)
        return summary

    def _offline_epoch(self, epoch: int) -> dict:
        t0 = time.perf_counter()
        feats = self.extract_features(f"extract epoch {epoch}")
        t_extract = time.perf_counter() - t0
        labels, n_clusters, stats, timings, whitened = self._cluster(feats, epoch, D.derive_seed(self.cfg.seed, epoch))
        row = {"epoch": epoch, "phase": "train", **self.diagnostics(labels, n_clusters, feats, epoch, whitened)}
        self.labels = labels
        t = time.perf_counter()
        loss = self._train_offline(labels, n_clusters, epoch)
        row.update(loss=loss, time_extract=t_extract, **timings, time_train=time.perf_counter() - t)
        row["time_epoch"] = time.perf_counter() - t0
        row["clusterer"] = stats
        return row

    def _online_epoch(self, epoch: int) -> dict:
        t0 = time.perf_counter()
        loss, _ = self._train_online(epoch)
        t_train = time.perf_counter() - t0
        t = time.perf_counter()
        feats = self.extract_features(f"extract epoch {epoch}")
        t_extract = time.perf_counter() - t
        t = time.perf_counter()
        labels = self._assign_online(feats)
        t_cluster = time.perf_counter() - t
        k = int(self.cfg.k or labels.max() + 1)
        row = {"epoch": epoch, "phase": "train", **self.diagnostics(labels, k, feats, epoch + 1)}
        self.labels = labels
        row.update(loss=loss, time_train=t_train, time_extract=t_extract, time_cluster=t_cluster,
                   time_epoch=time.perf_counter() - t0, clusterer=self.s.clusterer.epoch_stats())
        return row

    def _final_row(self, epoch: int) -> dict:
        """Diagnostics of the trained network's features (no training): what the run produced."""
        t = time.perf_counter()
        feats = self.extract_features("extract final")
        row: dict[str, Any] = {"epoch": epoch, "phase": "final", "time_extract": time.perf_counter() - t}
        whitened = None
        if self.online:
            labels, n_clusters = self._assign_online(feats), int(self.cfg.k)
        else:
            labels, n_clusters, stats, timings, whitened = self._cluster(feats, epoch, D.derive_seed(self.cfg.seed, epoch))
            row.update(timings, clusterer=stats)
        row.update(self.diagnostics(labels, n_clusters, feats, epoch, whitened))
        self.labels = labels
        return row

    def summary(self, rows: list[dict], seconds: float) -> dict:
        train_rows = [r for r in rows if r.get("phase") == "train"]
        out: dict[str, Any] = {
            "clusterer": self.cfg.clusterer, "backbone": self.cfg.backbone, "dataset": self.cfg.dataset,
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
