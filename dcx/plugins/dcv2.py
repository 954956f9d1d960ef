"""DeepCluster-v2 (Caron et al., NeurIPS 2020, the SwAV paper §4 and ``main_deepclusterv2.py``).

Online k-means pseudo-labels with a memory bank:

* a projection head maps backbone features to unit embeddings, scored by ``heads`` sets of
  prototypes (linear, no bias);
* during epoch e the bank stores, per image (``StepContext.indices``), the embeddings of its
  large crops;
* at the start of epoch e+1 (``start_epoch``) spherical k-means on the bank gives every image an
  assignment per head (each head clusters the bank of one large crop, in turn) and the centroids
  become the prototypes; during the epoch every crop of image i is trained, by cross-entropy at
  temperature T, to predict i's assignments;
* ``merged_heads`` further prototype sets (not in the reference) take the first head's clusters
  merged along the bank's kNN graph into k/2 and k/4 groups (``dcx.core.merge``, the same coarse targets
  the kmeans plugin trains), with the groups' mean embeddings as prototypes.

Before the first epoch the bank holds the initial network's embeddings of every image. The
reference fills it with one pass of augmented crops; here ``EpochContext.features()`` gives the
evaluation-transform features, which the engine extracts anyway (one deterministic pass).

Written with the public plugin contract (``dcx.core.contracts``) and dcx.core helpers only, as a third
party would.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from dcx.core.contracts import CropSpec, EpochContext, OnlineClusterer, StepContext, TrainSpec
from dcx.core.errors import InputError
from dcx.core.bank import MemoryBank, group_means
from dcx.core.merge import coarser, merge_options, merged_labels_from_rank0
from dcx.core.options import Option

log = logging.getLogger(__name__)


class DCv2Head(nn.Module):
    """Projection (Linear-BN-ReLU-Linear, or one Linear) -> L2-normalise -> ``heads`` prototype layers."""

    def __init__(self, feature_dim: int, hidden_dim: int, proj_dim: int, k: int, heads: int,
                 merged: Sequence[int] = (), relu: bool = False) -> None:
        super().__init__()
        # With feature_relu, a pre-activation (AlexNet's fc7) gets its ReLU first, as DeepCluster's classifier;
        # without it fc7 and the projection's first Linear compose into one linear map that shapes all of fc7.
        self.activation = nn.ReLU() if relu else nn.Identity()
        if hidden_dim > 0:
            self.projection: nn.Module = nn.Sequential(
                nn.Linear(feature_dim, hidden_dim), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True),
                nn.Linear(hidden_dim, proj_dim),
            )
        else:
            self.projection = nn.Linear(feature_dim, proj_dim)
        self.prototypes = nn.ModuleList(nn.Linear(proj_dim, k, bias=False) for _ in range(heads))
        # A separate list, so a head without merged sets keeps the state-dict keys it always had.
        self.merged_prototypes = nn.ModuleList(nn.Linear(proj_dim, g, bias=False) for g in merged)

    def prototype_sets(self) -> list[nn.Linear]:
        return [*self.prototypes, *self.merged_prototypes]

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.projection(self.activation(x)), dim=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(unit embeddings (B, proj_dim), prototype scores per set [(B, K)], the merged sets last)."""
        z = self.embed(x)
        return z, [p(z) for p in self.prototype_sets()]


def _unwrap(head: nn.Module) -> DCv2Head:
    inner = getattr(head, "module", head)  # DistributedDataParallel and similar wrappers
    if not isinstance(inner, DCv2Head):
        raise InputError(f"dcv2 got a {type(inner).__name__} head; pass the module that build_head returned")
    return inner


@torch.no_grad()
def spherical_kmeans(
    x: torch.Tensor, k: int, iters: int, generator: torch.Generator,
    all_reduce=None, init: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """k-means on unit rows by cosine: centroids renormalised each step, empty clusters keep their
    centroid (DeepCluster-v2). ``all_reduce`` sums per-cluster sums and counts across ranks.
    Returns (unit centroids (k, d), labels (n,))."""
    if init is None:
        init = x[torch.randperm(len(x), generator=generator)[:k].to(x.device)]
    c = F.normalize(init.clone(), dim=1)
    for _ in range(iters):
        labels = (x @ c.t()).argmax(dim=1)
        sums = torch.zeros_like(c).index_add_(0, labels, x)
        counts = torch.bincount(labels, minlength=k).to(x.dtype)
        if all_reduce is not None:
            all_reduce(sums)
            all_reduce(counts)
        nonempty = counts > 0
        c[nonempty] = F.normalize(sums[nonempty] / counts[nonempty, None], dim=1)
    return c, (x @ c.t()).argmax(dim=1)


class DeepClusterV2(OnlineClusterer):
    """DeepCluster-v2: k-means on a memory bank of embeddings every epoch, prototypes = centroids."""

    name = "dcv2"
    dcx_api = "3.0"
    options = (
        Option("k", int, 3000, "prototypes per head (DeepCluster-v2 ImageNet: 3000; ~10x the classes on small data)", min=2),
        Option("heads", int, 3, "k-means heads, each with its own prototypes and assignments (reference: 3)", min=1),
        Option("temperature", float, 0.1, "softmax temperature of the predictions (reference: 0.1)", min=1e-4),
        Option("kmeans_iters", int, 10, "spherical k-means iterations on the bank per epoch (reference: 10)", min=1),
        Option("proj_dim", int, 128, "projection / prototype dimension (reference: 128)", min=2),
        Option("hidden_dim", int, None, "projection MLP hidden width; 0 = one Linear; auto = the feature dim "
               "clipped to [proj_dim, 2048] (reference: 2048)", min=0, nullable=True),
        Option("feature_relu", bool, False, "apply the backbone's ReLU to pre-activation features (AlexNet's fc7) "
               "before the projection (DeepCluster's classifier does; off as swav.feature_relu, which lost on digits)"),
        Option("n_large", int, 2, "large crops; the bank stores these (reference: 2)", min=1),
        Option("n_small", int, 0, "small crops, predictors only (reference: 6 at 96 px; only useful when "
               "small_size_ratio * image side is above the backbone's minimum input)", min=0),
        Option("large_min_scale", float, 0.5, "RandomResizedCrop min area of large crops (reference: 0.14 at 224 px; "
               "0.5 = the engine's minimum for images <= 64 px)", min=0.0, max=1.0),
        Option("small_min_scale", float, 0.05, "min area of small crops (reference: 0.05)", min=0.0, max=1.0),
        Option("small_max_scale", float, 0.14, "max area of small crops (reference: 0.14)", min=0.0, max=1.0),
        Option("small_size_ratio", float, 96 / 224, "small crop side / image side (reference: 96/224)",
               min=0.01, max=1.0),
        *merge_options("set", 2, 0.5, "further prototype sets: the first head's clusters merged along the "
                       "bank's kNN graph into k * merge_scale**j groups (j = 1, 2, ...), prototypes = the groups' mean "
                       "embeddings (kmeans.merged_heads for DeepCluster-v2; not in the reference; 0 = the reference's "
                       "heads only; docs/recipes.md, \"Merged prototype sets\": two sets of k/2 and k/4 gained on digits "
                       "and textures over one of k/4, which gained over none)"),
        Option("merge_every_head", bool, False, "merged sets for every k-means head's clusters (heads x merged_heads "
               "sets, each head's on the bank of its crop), not only the first head's"),
        Option("cluster_on", str, "crops", "what each epoch's k-means clusters: 'crops' = the bank of the last "
               "epoch's large-crop embeddings (reference); 'images' = every image's plain view (evaluation transform) "
               "embedded at the epoch's start, as DeepCluster clusters (the engine's end-of-epoch features, no extra pass)",
               choices=("crops", "images")),
        Option("train_prototypes", bool, False, "let gradients update the prototypes between clusterings "
               "(reference: never; they are the centroids)"),
    )

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        p = self.params
        if p["small_min_scale"] > p["small_max_scale"]:
            raise InputError(f"dcv2: small_min_scale={p['small_min_scale']} exceeds small_max_scale={p['small_max_scale']}")
        self.bank: MemoryBank | None = None  # (n_large, N, proj_dim): last embeddings of each image's large crops
        self.assignments: torch.Tensor | None = None  # (heads, N): this epoch's targets
        self._reset_stats()

    # ------------------------------------------------------------------ engine hooks

    def crops(self) -> CropSpec:
        p = self.params
        return CropSpec(n_large=p["n_large"], n_small=p["n_small"], large_scale=(p["large_min_scale"], 1.0),
                        small_scale=(p["small_min_scale"], p["small_max_scale"]),
                        small_size_ratio=p["small_size_ratio"])

    def build_head(self, spec: TrainSpec) -> nn.Module:
        p = self.params
        if p["k"] > spec.num_samples:
            raise InputError(f"dcv2: k={p['k']} prototypes for {spec.num_samples} images: lower --k")
        hidden = p["hidden_dim"] if p["hidden_dim"] is not None else min(max(spec.feature_dim, p["proj_dim"]), 2048)
        return DCv2Head(spec.feature_dim, hidden, p["proj_dim"], p["k"], p["heads"], self._merged_sizes(),
                        spec.preactivation and p["feature_relu"])

    @torch.no_grad()
    def start_epoch(self, head: nn.Module, context: EpochContext) -> None:
        """Cluster the bank: assignments for this epoch, centroids into the prototypes."""
        h = _unwrap(head)
        dev = h.prototypes[0].weight.device
        p = self.params
        if self.bank is None or p["cluster_on"] == "images":
            self.bank = MemoryBank.from_features(h, context.features().to(dev), p["n_large"])
        self.bank.start_epoch(dev)
        bank = self.bank.rows
        gen = torch.Generator().manual_seed(int(context.seed))
        assignments = []
        for i, protos in enumerate(h.prototypes):
            crop = i % p["n_large"]  # heads take the large crops' banks in turn (reference)
            centroids, labels = spherical_kmeans(bank[crop], p["k"], p["kmeans_iters"], gen, context.all_reduce)
            protos.weight.copy_(centroids)
            assignments.append(labels)
        merged = []
        merging = len(h.prototypes) if p["merge_every_head"] else 1  # heads whose clusters are merged
        for i in range(merging if p["merged_heads"] else 0):
            crop = i % p["n_large"]  # (heads on the same crop's bank each build its kNN graph: an option measured to lose)
            merged += [(crop, labels) for labels in self._merged_labels(bank[crop], assignments[i], context)]
        for protos, (crop, labels) in zip(h.merged_prototypes, merged):
            protos.weight.copy_(group_means(bank[crop], labels, protos.weight.shape[0]))
            assignments.append(labels)
        self.assignments = torch.stack(assignments)

    @torch.no_grad()
    def end_epoch(self, head: nn.Module, context: EpochContext) -> None:
        """Each rank wrote the bank rows of its own images: merge them on every rank."""
        if context.world_size > 1 and context.all_reduce is not None and self.bank is not None:
            self.bank.sync(context.all_reduce)

    def before_step(self, head: nn.Module, step: StepContext) -> None:
        if self.assignments is None:
            raise InputError("dcv2: loss called before start_epoch clustered the memory bank")

    def loss(self, head: nn.Module, views: Sequence[torch.Tensor], step: StepContext) -> tuple[torch.Tensor, dict]:
        """Mean over heads of the cross-entropy, at temperature T, of every view's prototype scores
        against its image's assignment; the large crops' embeddings go into the bank."""
        p = self.params
        if step.indices is None:
            raise InputError("dcv2 needs the dataset indices of each batch (StepContext.indices)")
        bs = views[0].shape[0]
        z, scores = head(torch.cat(list(views)))
        idx = step.indices.to(self.assignments.device)
        loss = z.new_zeros((), dtype=torch.float32)
        for hid, s in enumerate(scores):
            targets = self.assignments[hid][idx].repeat(len(views))
            loss = loss + F.cross_entropy(s.float() / p["temperature"], targets)
        loss = loss / len(scores)
        with torch.no_grad():
            for crop in range(p["n_large"]):
                self.bank.write(crop, idx, z[crop * bs : (crop + 1) * bs])
            self._loss_sum += loss.detach().to(self._loss_sum.device)
            self._batches += 1
        return loss, {}

    def after_backward(self, head: nn.Module, step: StepContext) -> None:
        """The prototypes are the centroids: no gradient step moves them (reference)."""
        if not self.params["train_prototypes"]:
            for protos in _unwrap(head).prototype_sets():
                protos.weight.grad = None

    @torch.no_grad()
    def assign(self, head: nn.Module, features: torch.Tensor) -> torch.Tensor:
        """Hard labels (B,): the nearest prototype of the first head (head in eval mode)."""
        h = _unwrap(head)
        dev = h.prototypes[0].weight.device
        was = h.training
        h.eval()
        try:
            z = h.embed(features.to(dev))
            return (z @ F.normalize(h.prototypes[0].weight, dim=1).t()).argmax(dim=1).to(features.device)
        finally:
            h.train(was)

    def epoch_stats(self) -> dict:
        """Clusters used by the first head's assignments, mean loss; warns on collapse."""
        if self.assignments is None or self._batches == 0:
            return {}
        k = self.params["k"]
        counts = torch.bincount(self.assignments[0].cpu(), minlength=k)
        used = int((counts > 0).sum())
        stats = {
            "clusters_used": used,
            "largest_cluster_share": float(counts.max()) / max(1, int(counts.sum())),
            "loss": float(self._loss_sum) / self._batches,
            "ln_k": math.log(k),
        }
        if used < min(k, len(self.assignments[0])) / 2:
            log.warning("dcv2: the bank's k-means used only %d of %d clusters (collapse?): lower --k or the lr", used, k)
        self._reset_stats()
        return stats

    def state_dict(self) -> dict[str, Any]:
        """The memory bank: what the next epoch's k-means clusters (the prototypes are in the head)."""
        if self.bank is None:
            return {}
        return {"bank": self.bank.rows.detach().cpu().clone()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state:
            self.bank = MemoryBank(state["bank"].clone())

    # ------------------------------------------------------------------ internals

    def _merged_sizes(self, per_head: bool = False) -> list[int]:
        """Groups of each merged set: k * merge_scale**j, at least 2 (or k when k < 2); all heads'
        sets unless ``per_head``."""
        p = self.params
        sizes = [coarser(p["k"], p["merge_scale"], j) for j in range(1, p["merged_heads"] + 1)]
        return sizes if per_head or not p["merge_every_head"] else sizes * p["heads"]

    def _merged_labels(self, rows: torch.Tensor, labels: torch.Tensor, context: EpochContext) -> list[torch.Tensor]:
        """One head's merged sets' (N,) labels: its clusters merged along the kNN graph of its bank ``rows``.

        Rank 0 builds the graph and merges; the sum over ranks hands every rank its labels (the
        others contribute zeros), as the kmeans plugin does.
        """
        all_reduce = context.all_reduce if context.world_size > 1 else None
        return list(merged_labels_from_rank0(rows, labels, self.params["k"], self._merged_sizes(per_head=True),
                                             self.params["neighbours"], int(context.seed), context.rank, all_reduce,
                                             labels.device))

    def _reset_stats(self) -> None:
        self._loss_sum = torch.zeros(())
        self._batches = 0
