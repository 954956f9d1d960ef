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
  merged along the bank's kNN graph into k/2 and k/4 groups (``dcx.algorithms.merge``, the same coarse targets
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

from dcx.algorithms.bank import MemoryBank, group_means
from dcx.core.contracts import CropSpec, EpochContext, OnlineClusterer, StepContext, TrainSpec
from dcx.core.errors import InputError
from dcx.algorithms.merge import coarser, merge_options, merged_labels_from_rank0
from dcx.core.options import Option
from dcx.algorithms.projection import (
    ProjectionHead, crop_options, crop_spec, hidden_width, nearest_prototype, projection_options, unwrap,
)

log = logging.getLogger(__name__)


class DCv2Head(ProjectionHead):
    """Projection to unit embeddings, scored by ``heads`` prototype sets (the k-means centroids), then
    the merged sets' (their groups' mean embeddings)."""

    def __init__(self, feature_dim: int, hidden_dim: int, proj_dim: int, k: int, heads: int,
                 merged: Sequence[int] = ()) -> None:
        super().__init__(feature_dim, hidden_dim, proj_dim)
        self.prototypes = nn.ModuleList(nn.Linear(proj_dim, k, bias=False) for _ in range(heads))
        self.merged_prototypes = nn.ModuleList(nn.Linear(proj_dim, g, bias=False) for g in merged)

    def prototype_sets(self) -> list[nn.Linear]:
        return [*self.prototypes, *self.merged_prototypes]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(unit embeddings (B, proj_dim), prototype scores per set [(B, K)], the merged sets last)."""
        z = self.embed(x)
        return z, [p(z) for p in self.prototype_sets()]


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
        *projection_options("reference"),
        *crop_options("reference"),
        *merge_options("set", 2, 0.5, "further prototype sets: the first head's clusters merged along the "
                       "bank's kNN graph into k * merge_scale**j groups (j = 1, 2, ...), prototypes = the groups' mean "
                       "embeddings (kmeans.merged_heads for DeepCluster-v2; not in the reference; 0 = the reference's "
                       "heads only; docs/decisions.md D45)"),
    )

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._crops = crop_spec(self.name, self.params)
        self.bank: MemoryBank | None = None  # (n_large, N, proj_dim): last embeddings of each image's large crops
        self.assignments: torch.Tensor | None = None  # (heads, N): this epoch's targets
        self._reset_stats()

    # ------------------------------------------------------------------ engine hooks

    def crops(self) -> CropSpec:
        return self._crops

    def build_head(self, spec: TrainSpec) -> nn.Module:
        p = self.params
        if p["k"] > spec.num_samples:
            raise InputError(f"dcv2: k={p['k']} prototypes for {spec.num_samples} images: lower --k")
        return DCv2Head(spec.feature_dim, hidden_width(p, spec.feature_dim), p["proj_dim"], p["k"], p["heads"],
                        self._merged_sizes())

    @torch.no_grad()
    def start_epoch(self, head: nn.Module, context: EpochContext) -> None:
        """Cluster the bank: assignments for this epoch, centroids into the prototypes."""
        h = unwrap(head, DCv2Head, self.name)
        dev = h.prototypes[0].weight.device
        p = self.params
        if self.bank is None:
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
        # The first head's clusters, merged along the kNN graph of its bank (the first large crop's).
        merged = self._merged_labels(bank[0], assignments[0], context) if p["merged_heads"] else []
        for protos, labels in zip(h.merged_prototypes, merged):
            protos.weight.copy_(group_means(bank[0], labels, protos.weight.shape[0]))
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
        for protos in unwrap(head, DCv2Head, self.name).prototype_sets():
            protos.weight.grad = None

    def assign(self, head: nn.Module, features: torch.Tensor) -> torch.Tensor:
        """Hard labels (B,): the nearest prototype of the first head (head in eval mode)."""
        h = unwrap(head, DCv2Head, self.name)
        return nearest_prototype(h, h.prototypes[0], features)

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

    def _merged_sizes(self) -> list[int]:
        """Groups of each merged set: k * merge_scale**j, at least 2 (or k when k < 2)."""
        p = self.params
        return [coarser(p["k"], p["merge_scale"], j) for j in range(1, p["merged_heads"] + 1)]

    def _merged_labels(self, rows: torch.Tensor, labels: torch.Tensor, context: EpochContext) -> list[torch.Tensor]:
        """One head's merged sets' (N,) labels: its clusters merged along the kNN graph of its bank ``rows``.

        Rank 0 builds the graph and merges; the sum over ranks hands every rank its labels (the
        others contribute zeros), as the kmeans plugin does.
        """
        all_reduce = context.all_reduce if context.world_size > 1 else None
        return list(merged_labels_from_rank0(rows, labels, self.params["k"], self._merged_sizes(),
                                             self.params["neighbours"], int(context.seed), context.rank, all_reduce,
                                             labels.device))

    def _reset_stats(self) -> None:
        self._loss_sum = torch.zeros(())
        self._batches = 0
