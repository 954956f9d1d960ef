"""SwAV (Caron et al., NeurIPS 2020): online codes by Sinkhorn-Knopp and swapped prediction.

Per batch: the large crops' prototype scores give equipartitioned codes
(``dcx.core.sinkhorn.swav_codes``); every other view predicts each code through a softmax with
temperature. Hyper-parameters follow the reference ``main_swav.py`` ImageNet recipe except where
a comment at the option says why and cites the digits measurement (epsilon, proj_dim, crops).

``merged_heads`` further prototype sets (not in the reference) are DeepCluster-v2's merged sets
for SwAV: a memory bank keeps each image's last embedding (first large crop, by
``StepContext.indices``); at the start of every epoch the bank's first-set prototype labels
(equal-size, as the codes) are merged along the bank's kNN graph into k/4 groups
(``dcx.core.merge``), the groups' mean embeddings become the set's prototypes and every crop of
image i is trained, by cross-entropy at the temperature, to predict i's group.

``neighbour_weight`` > 0 (not in the reference) adds neighbour codes: with the same bank, every view
of image i also predicts the Sinkhorn codes of one of i's ``neighbours`` nearest images in the bank
(drawn per step; the neighbour's bank embedding scored by the current prototypes), NNCLR's
nearest-neighbour positive (Dwibedi et al., ICCV 2021) in SwAV's swapped prediction: images that are
neighbours are pulled onto the same prototypes, as the merged heads pull neighbouring clusters together.

``cluster_heads`` > 0 (not in the reference) adds DeepCluster's objective beside the codes: each epoch,
k-means(k) of the whole dataset's backbone features, preprocessed as the kmeans clusterer's, and a
fresh linear classifier per clustering on the features, trained by cross-entropy from every view;
``cluster_weight`` scales them against a prototype set's swapped loss and ``cluster_until`` stops them
after that fraction of the run's epochs (docs/recipes.md, "The DeepCluster head, lighter or earlier").
"""

from __future__ import annotations

import logging
import math
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dcx.core.bank import MemoryBank, bank_neighbours, group_means, sample_neighbours
from dcx.core.contracts import CropSpec, EpochContext, OnlineClusterer, StepContext, TrainSpec, linear_head
from dcx.core.errors import InputError
from dcx.core.features import preprocess
from dcx.core.kmeans import kmeans
from dcx.core.merge import coarser, from_rank0, merge_options, merged_labels_from_rank0
from dcx.core.options import Option
from dcx.core.sinkhorn import balanced_argmax, swav_codes

log = logging.getLogger(__name__)

#: An epoch's mean loss above this fraction of ln K counts as "stuck at ln K" (collapse guard):
#: collapsed embeddings give uniform codes, and the cross-entropy to uniform codes is >= ln K.
_NEAR_LN_K = 0.95


class SwAVHead(nn.Module):
    """Projection MLP (Linear-BN-ReLU-Linear, or one Linear) -> L2-normalise -> ``heads`` prototype sets
    (no bias), then the merged sets' fixed prototypes."""

    def __init__(self, feature_dim: int, hidden_dim: int, proj_dim: int, k: int, heads: int = 1,
                 head_scale: float = 1.0, merged: Sequence[int] = (), cluster_heads: int = 0,
                 preactivation: bool = False, feature_relu: bool = False) -> None:
        super().__init__()
        # With feature_relu, a pre-activation (AlexNet's fc7) gets its ReLU first, as DeepCluster's classifier;
        # without it fc7 and the projection's first Linear compose into one linear map that shapes all of fc7.
        self.activation = nn.ReLU() if preactivation and feature_relu else nn.Identity()
        if hidden_dim > 0:
            self.projection: nn.Module = nn.Sequential(
                nn.Linear(feature_dim, hidden_dim),
                nn.BatchNorm1d(hidden_dim),
                nn.ReLU(inplace=True),
                nn.Linear(hidden_dim, proj_dim),
            )
        else:
            self.projection = nn.Linear(feature_dim, proj_dim)
        self.prototypes = nn.Linear(proj_dim, k, bias=False)
        # Further sets apart from the first, so a one-set head keeps the state-dict keys it always had.
        # Set j has k * head_scale**j prototypes (at least 2): 1 gives every set k (DeepCluster-v2's sets).
        self.more_prototypes = nn.ModuleList(nn.Linear(proj_dim, coarser(k, head_scale, j), bias=False)
                                             for j in range(1, heads))
        # The merged sets' prototypes are group means set each epoch, never trained (as DeepCluster-v2's).
        self.merged_prototypes = nn.ModuleList(nn.Linear(proj_dim, g, bias=False) for g in merged)
        # DeepCluster's classifiers on the backbone's features (not the projection), re-initialised each epoch.
        self.classifiers = nn.ModuleList(linear_head(feature_dim, k, preactivation) for _ in range(cluster_heads))
        self.normalize_prototypes()

    def prototype_sets(self) -> list[nn.Linear]:
        """The sets with Sinkhorn codes (the merged sets apart)."""
        return [self.prototypes, *self.more_prototypes]

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.projection(self.activation(x)), dim=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(unit embeddings (B, proj_dim), prototype scores (B, K) of each set, then the merged sets', then
        the classifiers' logits)."""
        z = self.embed(x)
        scores = [protos(z) for protos in [*self.prototype_sets(), *self.merged_prototypes]]
        return z, scores + [classify(x) for classify in self.classifiers]

    @torch.no_grad()
    def reset_classifiers(self) -> None:
        """DeepCluster's fresh top layer for each clustering (paper §3.3): N(0, 0.01), zero bias."""
        for c in self.classifiers:
            nn.init.normal_(c[-1].weight, 0.0, 0.01)
            nn.init.zeros_(c[-1].bias)

    @torch.no_grad()
    def normalize_prototypes(self) -> None:
        for protos in self.prototype_sets():
            protos.weight.copy_(F.normalize(protos.weight, dim=1))


def _unwrap(head: nn.Module) -> SwAVHead:
    """The SwAVHead inside a DistributedDataParallel (or similar ``.module``) wrapper."""
    inner = getattr(head, "module", head)
    if not isinstance(inner, SwAVHead):
        raise InputError(f"swav got a {type(inner).__name__} head; pass the module that build_head returned")
    return inner


def _distributed_hooks(step: StepContext):
    """(sum, max) all-reduce callables for swav_codes in a multi-process run, else (None, None)."""
    if step.world_size <= 1 or not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return None, None
    dist = torch.distributed

    def reduce(op):
        def run(t: torch.Tensor) -> torch.Tensor:
            dist.all_reduce(t, op=op)
            return t

        return run

    return reduce(dist.ReduceOp.SUM), reduce(dist.ReduceOp.MAX)


class SwAV(OnlineClusterer):
    """SwAV: prototypes, Sinkhorn codes of the large crops, swapped prediction over multi-crop views."""

    name = "swav"
    dcx_api = "3.0"
    options = (
        Option("k", int, 3000, "number of prototypes (SwAV ImageNet: 3000; ~10x the classes on small data)", min=2),
        # eps 0.02, not SwAV's 0.05: at K=100, B=64 the scores of a fresh head spread only ~0.1,
        # so eps 0.05 gives near-uniform codes (entropy 4.1 of ln K = 4.6), the loss stays at
        # ln K and the features collapse (mean cosine of embeddings 0.35 -> 0.65, digits NMI 0.24
        # after 56 steps); eps 0.02 gives entropy ~2, cosine 0.17, NMI 0.41 (0.01: NMI 0.41, worse probe).
        Option("epsilon", float, 0.02, "Sinkhorn entropy eps (SwAV: 0.05; raise it for large K and batch)", min=1e-4),
        # DeepCluster-v2's 3 prototype sets (SwAV's MultiPrototypes), the k-means clusterer's 3 heads.
        Option("heads", int, 1, "prototype sets, each with its own Sinkhorn codes; the loss is their mean "
               "(SwAV: 1; DeepCluster-v2: 3)", min=1),
        Option("head_scale", float, 1.0, "prototype set j has k * head_scale**j prototypes: 1 gives every set k "
               "(DeepCluster-v2); 0.25 with heads=2 adds a set of k/4 beside the k (coarser codes)", min=0.01, max=1.0),
        Option("sinkhorn_iters", int, 3, "Sinkhorn-Knopp iterations per batch (SwAV: 3)", min=1),
        Option("temperature", float, 0.1, "softmax temperature of the predictions (SwAV: 0.1)", min=1e-4),
        # SwAV's 128. A smaller auto rule, min(128, k // 3), won the first 56 steps on digits
        # (proj 32: k-means probe 0.39 vs 0.24) but loses trained runs: digits, 10 rounds of 3
        # passes, seeds 0-2: best block 0.890, 0.874, 0.869 at 128 vs 0.874, 0.845, 0.821 at 33
        # (docs/recipes.md, "Clusterers compared").
        Option("proj_dim", int, 128, "projection / prototype dimension (SwAV: 128)", min=1),
        Option(
            "hidden_dim", int, None,
            "projection MLP hidden width; 0 = a single Linear; auto = feature dim clipped to [proj_dim, 2048] "
            "(SwAV: 2048 for ResNet-50's 2048-d features)",
            min=0, nullable=True,
        ),
        Option("n_large", int, 2, "large crops; codes come from these (SwAV: 2)", min=1),
        # 0 small crops, not SwAV's 6: the engine clamps small crops to the backbone's minimum
        # input (32 px for ResNet), i.e. to full size on 32-px digits, so 2 "small" crops doubled
        # the cost (146 s vs ~65 s per digits epoch) without being multi-crop. Use them at >= 96 px.
        Option("n_small", int, 0, "small crops, predictors only (SwAV: 6 at 96 px; only useful when "
               "small_size_ratio * image side is above the backbone's minimum input)", min=0),
        # 0.5, not SwAV's 0.14 (tuned for 224-px photos): a 14% crop of an 8x8 digit rarely shows
        # the digit, so the two views share nothing; 0.5 is the engine's own minimum crop scale
        # for images <= 64 px. Digits, eps 0.05, 56 steps: NMI 0.24 / probe 0.20 vs 0.20 / 0.17.
        Option("large_min_scale", float, 0.5, "RandomResizedCrop min area of large crops (SwAV: 0.14 at 224 px)",
               min=0.0, max=1.0),
        Option("small_min_scale", float, 0.05, "min area of small crops (SwAV: 0.05)", min=0.0, max=1.0),
        Option("small_max_scale", float, 0.14, "max area of small crops (SwAV: 0.14)", min=0.0, max=1.0),
        Option("small_size_ratio", float, 96 / 224, "small crop side / image side (SwAV: 96/224)", min=0.01, max=1.0),
        Option(
            "freeze_prototypes_steps", int, None,
            "optimiser steps the prototypes stay fixed; auto = the first epoch (SwAV: 313 = one ImageNet epoch)",
            min=0, nullable=True,
        ),
        # 2: SwAV's colour distortion is 0.8 (SimCLR's strength 1), twice the 0.4 that digits and
        # characters declare for k-means; on digits SwAV gains at 0.8 (docs/recipes.md, "Photometric
        # jitter"), k-means loses. Datasets that declare none (their class is intensity) stay at none.
        Option("jitter_scale", float, 2.0, "the views' photometric jitter as a multiple of the dataset's declared "
               "strength when --jitter is not given (2: SwAV's 0.8 on digits; 0 stays 0)", min=0.0),
        # 2: twice the k-means-equal passes (12 of its 2 views per round where the dataset declares 3)
        # raised the best block on digits, textures and photos, 9 of 9 seed pairs (docs/recipes.md,
        # "SwAV at twice its steps"); DeepCluster-v2 did not gain from the same doubling.
        Option("passes_scale", float, 2.0, "backbone passes per round as a multiple of the dataset's passes times "
               "the views, when --passes is not given (2: twice a one-view k-means run's image passes)", min=0.1),
        Option("queue_length", int, 0, "past embeddings added to the codes' batch when batch < k; 0 = off (SwAV: 3840)", min=0),
        Option("queue_start_epoch", int, 15, "epoch from which the queue fills (SwAV: 15)", min=0),
        *merge_options("set", 0, 0.25, "further prototype sets: each image's first-set prototype (equal-size "
                       "assignment of a memory bank of its last embedding), merged along the bank's kNN graph into "
                       "k * merge_scale**j groups (j = 1, 2, ...), prototypes = the groups' mean embeddings, trained by "
                       "cross-entropy to the image's group (dcv2.merged_heads for SwAV; not in the reference; "
                       "docs/recipes.md, \"A merged set for SwAV\": 1 lost on digits)"),
        Option("neighbour_weight", float, 0.0, "weight of the neighbour codes beside the swapped codes: every view "
               "also predicts the codes of one of its image's `neighbours` nearest images in a memory bank of last "
               "embeddings (NNCLR's neighbour positive; not in the reference; 0 = off; docs/recipes.md, \"Screens on an "
               "Intel Xeon\": 1 and 0.5 did not gain on digits)", min=0.0),
        # Off: with the ReLU, digits seeds 0-2 lost 0.026 on the best block (0.873 vs 0.899; docs/recipes.md,
        # "The projection's input"): fc7's negative half, which the k-means evaluation also sees, went untrained.
        Option("feature_relu", bool, False, "apply the backbone's ReLU to pre-activation features (AlexNet's fc7) "
               "before the projection (the cluster heads' classifiers always do, as DeepCluster's; "
               "docs/recipes.md: lost on digits)"),
        Option("cluster_heads", int, 0, "DeepCluster heads beside the prototypes: each epoch, that many k-means(k) "
               "clusterings of the whole dataset's backbone features (PCA-256, whitening, L2, as the kmeans clusterer), "
               "each with a fresh linear classifier on the features that every view trains towards its image's "
               "cluster (not in the reference; 0 = off)", min=0),
        Option("cluster_weight", float, 1.0, "weight of each cluster head's cross-entropy against one prototype "
               "set's swapped loss (1: the heads count as sets)", min=0.0),
        Option("cluster_until", float, 1.0, "fraction of the run's epochs (from the first, rounded up) in which the "
               "cluster heads cluster and train; after them the loss is SwAV's alone and no k-means runs (1 = every "
               "epoch)", min=1e-6, max=1.0),
    )

    def __init__(self, **options) -> None:
        super().__init__(**options)
        p = self.params
        if p["small_min_scale"] > p["small_max_scale"]:
            raise InputError(
                f"swav: small_min_scale={p['small_min_scale']} exceeds small_max_scale={p['small_max_scale']}"
            )
        self._queue: torch.Tensor | None = None  # (n_large, length, proj_dim), newest first
        self._queue_filled = 0
        self._queue_used = False
        self._hinted_queue = False
        self.bank: MemoryBank | None = None  # (1, N, proj_dim): each image's last first-large-crop embedding
        self.merged_targets: torch.Tensor | None = None  # (merged_heads, N): this epoch's merged groups
        self.neighbour_table: torch.Tensor | None = None  # (N, neighbours): this epoch's bank kNN graph
        self.cluster_targets: torch.Tensor | None = None  # (cluster_heads, N): this epoch's k-means labels
        self._cluster_epochs: int | None = None  # epochs in which the cluster heads train (None: every one)
        self._seed = 0
        self._reset_stats()

    # ------------------------------------------------------------------ engine hooks

    def crops(self) -> CropSpec:
        p = self.params
        return CropSpec(
            n_large=p["n_large"],
            n_small=p["n_small"],
            large_scale=(p["large_min_scale"], 1.0),
            small_scale=(p["small_min_scale"], p["small_max_scale"]),
            small_size_ratio=p["small_size_ratio"],
            jitter_scale=p["jitter_scale"],
            passes_scale=p["passes_scale"],
        )

    def build_head(self, spec: TrainSpec) -> nn.Module:
        """The projection MLP + unit-norm prototypes; its parameters join the backbone's optimiser."""
        p = self.params
        feature_dim, num_samples = spec.feature_dim, spec.num_samples
        proj = p["proj_dim"]
        hidden = p["hidden_dim"]
        if hidden is None:
            hidden = min(max(feature_dim, proj), 2048)
        if p["k"] > num_samples:
            log.warning("swav: %d prototypes for %d images: most will stay unused; lower --k", p["k"], num_samples)
        if p["cluster_heads"] > 0 and p["cluster_until"] < 1.0:
            if spec.epochs is None:
                log.warning("swav: cluster_until=%g needs the run's epochs (TrainSpec.epochs); the cluster heads "
                            "train in every epoch", p["cluster_until"])
            else:
                self._cluster_epochs = math.ceil(p["cluster_until"] * spec.epochs)
        return SwAVHead(feature_dim, hidden, proj, p["k"], p["heads"], p["head_scale"], self._merged_sizes(),
                        p["cluster_heads"], spec.preactivation, p["feature_relu"])

    @torch.no_grad()
    def start_epoch(self, head: nn.Module, context: EpochContext) -> None:
        """With cluster heads: k-means of the features and fresh classifiers; with merged sets: merge the
        bank's equal-size first-set labels into this epoch's groups; with neighbour codes: the bank's kNN graph."""
        p = self.params
        if self._clustering(context.epoch):
            self._cluster(_unwrap(head), context)
        if p["merged_heads"] == 0 and p["neighbour_weight"] == 0:
            return
        h = _unwrap(head)
        dev = h.prototypes.weight.device
        if self.bank is None:
            self.bank = MemoryBank.from_features(h, context.features().to(dev), 1)
        self.bank.start_epoch(dev)
        self._seed = int(context.seed)
        rows = self.bank.rows[0]
        all_reduce = context.all_reduce if context.world_size > 1 else None
        if p["neighbour_weight"] > 0:
            self.neighbour_table = bank_neighbours(rows, p["neighbours"], int(context.seed), context.rank, all_reduce)
        if p["merged_heads"] == 0:
            return
        # Equal-size labels, as SwAV's equipartitioned codes: on the nearest prototype the merged set
        # collapsed (docs/recipes.md, "A merged set for SwAV").
        labels = balanced_argmax(rows @ F.normalize(h.prototypes.weight, dim=1).t())
        merged = merged_labels_from_rank0(rows, labels, p["k"], self._merged_sizes(), p["neighbours"],
                                          int(context.seed), context.rank, all_reduce, dev,
                                          graph=self.neighbour_table if p["neighbour_weight"] > 0 else None)
        for protos, groups in zip(h.merged_prototypes, merged):
            protos.weight.copy_(group_means(rows, groups, protos.weight.shape[0]))
        self.merged_targets = merged

    @torch.no_grad()
    def end_epoch(self, head: nn.Module, context: EpochContext) -> None:
        """Each rank wrote the bank rows of its own images: merge them on every rank."""
        if context.world_size > 1 and context.all_reduce is not None and self.bank is not None:
            self.bank.sync(context.all_reduce)

    def before_step(self, head: nn.Module, step: StepContext) -> None:
        """L2-normalise the prototypes (SwAV does this before every forward pass)."""
        _unwrap(head).normalize_prototypes()

    def after_backward(self, head: nn.Module, step: StepContext) -> None:
        """Drop the prototypes' gradient while frozen, so the optimiser skips them (SwAV); the merged
        sets' prototypes are group means and never take a step."""
        h = _unwrap(head)
        for protos in h.merged_prototypes:
            protos.weight.grad = None
        if self._global_step(step) < self._freeze_steps(step):
            for protos in h.prototype_sets():
                protos.weight.grad = None

    def loss(self, head: nn.Module, views: Sequence[torch.Tensor], step: StepContext) -> tuple[torch.Tensor, dict]:
        """Swapped prediction: for each large crop s, cross-entropy of its codes q_s against
        softmax(scores_t / T) of every other view t, averaged over t, then over s (main_swav.py), then
        over the prototype sets (DeepCluster-v2's heads); neighbour codes (weight w) add every view's
        cross-entropy to the codes of its image's drawn neighbour, the set's loss (swapped + w
        neighbour) / (1 + w); each merged set adds the cross-entropy of every view to its image's group."""
        p = self.params
        n_views, n_large = len(views), p["n_large"]
        if n_views < max(2, n_large):
            raise InputError(f"swav needs at least {max(2, n_large)} views (large crops first), got {n_views}")
        bs = views[0].shape[0]
        if any(v.shape[0] != bs for v in views):
            raise InputError(f"swav: views have batch sizes {[v.shape[0] for v in views]}; all must be equal")
        # One pass over all crops, as SwAV: the projection's BatchNorm sees every view together.
        z, all_scores = head(torch.cat(list(views)))
        n_sets = len(_unwrap(head).prototype_sets())
        n_classifiers = p["cluster_heads"]
        scores = all_scores[:n_sets]
        merged_scores = all_scores[n_sets:len(all_scores) - n_classifiers]
        logits = all_scores[len(all_scores) - n_classifiers:]
        queue = self._queue_for(step, z)
        neighbours = self._neighbour_rows(step) if p["neighbour_weight"] > 0 else None
        loss = z.new_zeros((), dtype=torch.float32)
        neighbour_loss = z.new_zeros((), dtype=torch.float32)
        for h, head_scores in enumerate(scores):
            logp = F.log_softmax(head_scores.float() / p["temperature"], dim=1).view(n_views, bs, -1)
            logp_total = logp.sum(dim=0)
            protos = _unwrap(head).prototype_sets()[h]
            head_codes = self._codes(protos, queue, head_scores.detach(), bs, step)
            for s, q in enumerate(head_codes):
                # sum over t != s of -<q_s, log p_t>, averaged over the batch and the n_views - 1 views
                loss = loss - (q * (logp_total - logp[s])).sum(dim=1).mean() / (n_views - 1)
            if neighbours is not None:
                # every view predicts the codes of its image's drawn neighbour, averaged over views and batch
                q_nb = self._codes(protos, None, neighbours @ protos.weight.detach().t(), bs, step, n_crops=1)[0]
                neighbour_loss = neighbour_loss - (q_nb * logp).sum(dim=2).mean()
            if h == 0:
                codes = head_codes  # the first set's codes feed the epoch's statistics
        if neighbours is not None:
            w = p["neighbour_weight"]  # the neighbour term counts like one large crop's swapped term, weighted
            loss = (loss + n_large * w * neighbour_loss) / (1 + w)
        if merged_scores or logits:
            merged_loss = self._merged_loss(merged_scores, n_views, step) if merged_scores else 0.0
            if logits and self._clustering(step.epoch):
                cluster_loss, w = self._cluster_loss(logits, n_views, step), p["cluster_weight"]
            else:  # after cluster_until: a zero term keeps the classifiers in the graph (a head in DDP uses them all)
                cluster_loss, w = sum(out.float().sum() for out in logits) * 0.0, 0.0
            n_terms = len(scores) + len(merged_scores) + w * len(logits)
            loss = (loss / n_large + merged_loss + w * cluster_loss) / n_terms
        else:
            loss = loss / (n_large * len(scores))
        # the first large crop's embeddings, for the merged sets and neighbour codes (which checked the indices)
        if self.bank is not None and step.indices is not None:
            self.bank.write(0, step.indices.to(self.bank.rows.device), z[:bs])
        if queue is not None:  # after every set's codes: each scored the same queue
            with torch.no_grad():
                self._push(queue, z.detach(), bs)

        with torch.no_grad():
            q_all = torch.cat(codes)
            entropy = -torch.special.xlogy(q_all, q_all).sum(dim=1)
            if self._usage.device != q_all.device:  # accumulate where the codes live: no copies per step
                self._usage, self._entropy_sum, self._loss_sum = (
                    t.to(q_all.device) for t in (self._usage, self._entropy_sum, self._loss_sum)
                )
            self._usage += torch.bincount(q_all.argmax(dim=1), minlength=q_all.shape[1])
            self._entropy_sum += entropy.sum()
            self._loss_sum += loss.detach()
            self._rows += len(q_all)
            self._batches += 1
            self._last_epoch = step.epoch
        # Tensors, not floats: a .item() per step would stall the GPU queue (epoch_stats syncs once).
        return loss, {"loss": loss.detach(), "code_entropy": entropy.mean()}

    @torch.no_grad()
    def assign(self, head: nn.Module, features: torch.Tensor) -> torch.Tensor:
        """Hard labels (B,): the nearest unit prototype of each projected feature (head in eval mode)."""
        h = _unwrap(head)
        dev = h.prototypes.weight.device
        was_training = h.training
        h.eval()
        try:
            z = h.embed(features.to(dev))  # the first prototype set labels
            w = F.normalize(h.prototypes.weight, dim=1)
            return (z @ w.t()).argmax(dim=1).to(features.device)
        finally:
            h.train(was_training)

    def epoch_stats(self) -> dict:
        """Prototypes used (argmax of codes), mean code entropy and mean loss since the last call."""
        if self._batches == 0:
            return {}
        k = self.params["k"]
        used = int((self._usage > 0).sum())
        rows = self._rows
        loss = float(self._loss_sum) / self._batches
        stats = {
            "prototypes_used": used,
            "prototype_usage": used / k,
            "code_entropy": float(self._entropy_sum) / rows,
            "loss": loss,
            "ln_k": math.log(k),
            "queue_used": self._queue_used,
        }
        # Collapse guard (SwAV on small data): codes on few prototypes, or no information in them.
        reachable = min(k, rows)
        if used < reachable / 2:
            log.warning(
                "swav: only %d of %d prototypes received codes this epoch (collapse?): lower --k or "
                "swav.epsilon, or enable swav.queue_length", used, k,
            )
        if self._last_epoch >= 1 and loss >= _NEAR_LN_K * math.log(k):
            log.warning(
                "swav: mean loss %.3f has not dropped below ln k = %.3f (collapse?): lower swav.epsilon (e.g. 0.03), "
                "use the queue when the batch is smaller than k, or train longer", loss, math.log(k),
            )
        self._reset_stats()
        return stats

    def state_dict(self) -> dict[str, Any]:
        """The feature queue and the merged sets' bank (when on): without them a resumed run would
        restart the queue empty and merge the initial network's embeddings."""
        state: dict[str, Any] = {}
        if self._queue is not None:
            state.update(queue=self._queue.detach().cpu().clone(), queue_filled=self._queue_filled,
                         queue_used=self._queue_used)
        if self.bank is not None:
            state["bank"] = self.bank.rows.detach().cpu().clone()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if "queue" in state:
            self._queue = state["queue"].clone()
            self._queue_filled = int(state["queue_filled"])
            self._queue_used = bool(state["queue_used"])
        if "bank" in state:
            self.bank = MemoryBank(state["bank"].clone())

    # ------------------------------------------------------------------ internals

    def _clustering(self, epoch: int) -> bool:
        """Whether the cluster heads cluster and train in this epoch."""
        return self.params["cluster_heads"] > 0 and (self._cluster_epochs is None or epoch < self._cluster_epochs)

    def _merged_sizes(self) -> list[int]:
        """Groups of each merged set: k * merge_scale**j, at least 2."""
        p = self.params
        return [coarser(p["k"], p["merge_scale"], j) for j in range(1, p["merged_heads"] + 1)]

    def _merged_loss(self, merged_scores: Sequence[torch.Tensor], n_views: int, step: StepContext) -> torch.Tensor:
        """Sum over the merged sets of the cross-entropy, at the temperature, of every view's scores
        against its image's group."""
        self._check_bank(step, self.merged_targets, "merged_heads")
        idx = step.indices.to(self.merged_targets.device)
        loss = merged_scores[0].new_zeros((), dtype=torch.float32)
        for j, scores in enumerate(merged_scores):
            targets = self.merged_targets[j][idx].repeat(n_views)
            loss = loss + F.cross_entropy(scores.float() / self.params["temperature"], targets)
        return loss

    @torch.no_grad()
    def _cluster(self, h: SwAVHead, context: EpochContext) -> None:
        """This epoch's k-means labels of the dataset's features (rank 0 clusters, every rank receives them)
        and fresh classifiers for them."""
        p = self.params
        feats = context.features()  # on every rank: the extraction may be collective

        def compute():
            x = preprocess(feats.float().cpu().numpy(), dim=256)
            return np.stack([kmeans(x, p["k"], 20, int(context.seed) + j, device=context.device).labels
                             for j in range(p["cluster_heads"])])

        self.cluster_targets = from_rank0(compute, (p["cluster_heads"], context.num_samples), context.rank,
                                          context.all_reduce if context.world_size > 1 else None,
                                          h.prototypes.weight.device)
        # Fresh weights, as DeepCluster's new top layer; the optimiser's momentum for them carries over and
        # decays within ~10 steps (the engine keeps one optimiser for the run).
        h.reset_classifiers()

    def _cluster_loss(self, logits: Sequence[torch.Tensor], n_views: int, step: StepContext) -> torch.Tensor:
        """Sum over the classifiers of the cross-entropy of every view's logits against its image's cluster."""
        if step.indices is None:
            raise InputError("swav.cluster_heads needs the dataset indices of each batch (StepContext.indices)")
        if self.cluster_targets is None:
            raise InputError("swav: loss called before start_epoch clustered the features")
        idx = step.indices.to(self.cluster_targets.device)
        loss = logits[0].new_zeros((), dtype=torch.float32)
        for j, out in enumerate(logits):
            loss = loss + F.cross_entropy(out.float(), self.cluster_targets[j][idx].repeat(n_views))
        return loss

    def _neighbour_rows(self, step: StepContext) -> torch.Tensor:
        """(B, proj_dim) bank embeddings of one drawn neighbour of each image of the batch."""
        self._check_bank(step, self.neighbour_table, "neighbour_weight")
        drawn = sample_neighbours(self.neighbour_table, step.indices, self._seed, step.step, step.rank)
        return self.bank.rows[0][drawn].float()

    def _check_bank(self, step: StepContext, built: torch.Tensor | None, option: str) -> None:
        if step.indices is None:
            raise InputError(f"swav.{option} needs the dataset indices of each batch (StepContext.indices)")
        if built is None or self.bank is None:
            raise InputError("swav: loss called before start_epoch built from the memory bank")

    def _codes(self, prototypes: nn.Linear, queue: torch.Tensor | None, scores: torch.Tensor, bs: int,
               step: StepContext, n_crops: int | None = None) -> list[torch.Tensor]:
        """Sinkhorn codes (B, K) of one prototype set for each of ``n_crops`` (default: the large
        crops) blocks of B rows of ``scores``, with the queue's embeddings prepended once it is full."""
        p = self.params
        reduce_sum, reduce_max = _distributed_hooks(step)
        if not self._hinted_queue and p["queue_length"] == 0 and bs * step.world_size < p["k"]:
            # A warning, not an automatic queue: SwAV needs batch (+ queue) >= k for codes that
            # use every prototype, but whether a queue of stale embeddings helps a 10-epoch
            # digits run is unmeasured; K <= batch (e.g. --k 64) or swav.queue_length are the fixes.
            log.warning("swav: batch %d < k=%d prototypes: each batch's codes cannot use every prototype; "
                        "lower --k to the batch size or set swav.queue_length (SwAV: 3840)",
                        bs * step.world_size, p["k"])
            self._hinted_queue = True
        codes = []
        with torch.no_grad():
            for s in range(p["n_large"] if n_crops is None else n_crops):
                out = scores[s * bs : (s + 1) * bs].float()
                if queue is not None and self._queue_filled >= queue.shape[1]:
                    if not self._queue_used:
                        log.info("swav: feature queue of %d full; codes now use it", queue.shape[1])
                        self._queue_used = True
                    out = torch.cat([queue[s] @ prototypes.weight.t().float(), out])
                q = swav_codes(out, eps=p["epsilon"], n_iter=p["sinkhorn_iters"],
                               all_reduce=reduce_sum, all_reduce_max=reduce_max)
                codes.append(q[-bs:])
        return codes

    def _queue_for(self, step: StepContext, z: torch.Tensor) -> torch.Tensor | None:
        """The queue, created when its start epoch is reached (each rank holds length / world_size rows)."""
        p = self.params
        if p["queue_length"] == 0 or step.epoch < p["queue_start_epoch"]:
            return None
        length = max(1, p["queue_length"] // max(1, step.world_size))
        if self._queue is None or self._queue.shape[1] != length:
            self._queue = torch.zeros(p["n_large"], length, z.shape[1], device=z.device)
            self._queue_filled = 0
        elif self._queue.device != z.device:  # restored from a checkpoint (read on the CPU)
            self._queue = self._queue.to(z.device)
        return self._queue

    def _push(self, queue: torch.Tensor, z: torch.Tensor, bs: int) -> None:
        """Shift the queue and put this batch's large-crop embeddings in front (SwAV's order)."""
        length = queue.shape[1]
        m = min(bs, length)
        for s in range(self.params["n_large"]):
            if m < length:
                queue[s, m:] = queue[s, :-m].clone()
            queue[s, :m] = z[s * bs : s * bs + m].float()
        self._queue_filled = min(length, self._queue_filled + m)

    def _freeze_steps(self, step: StepContext) -> int:
        steps = self.params["freeze_prototypes_steps"]
        return step.steps_per_epoch if steps is None else steps

    @staticmethod
    def _global_step(step: StepContext) -> int:
        # The engine counts StepContext.step across epochs (epoch * steps_per_epoch + i).
        return step.step

    def _reset_stats(self) -> None:
        self._usage = torch.zeros(self.params["k"], dtype=torch.long)
        self._entropy_sum = torch.zeros(())
        self._loss_sum = torch.zeros(())
        self._rows = 0
        self._batches = 0
        self._last_epoch = 0
