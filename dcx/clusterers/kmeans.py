"""DeepCluster's clusterer: k-means on the preprocessed features (Caron et al. 2018, §3.2-3.3)."""

from __future__ import annotations

import numpy as np

from dcx.core.contracts import Clusterer, FitContext, Partition, TrainingHead, TrainSpec, linear_heads
from dcx.algorithms.kmeans import kmeans
from dcx.algorithms.merge import coarser, merge_options, merged_labels_from_rank0
from dcx.core.options import Option

#: Up to this many rows the defaults add DeepCluster-v2's extra heads and a merged head (3 + 1); above,
#: one head, the paper's (docs/decisions.md D55): there the extra clusterings and the merged head's kNN
#: graph cost as much as the run's k-means several times over, and their gain was measured on 1,797 and
#: 2,400 images only. The same N as the kNN graph's exact limit (``dcx.algorithms.knn.AUTO_EXACT_MAX_N``):
#: a default merged head's graph is exact, never short of its recall target.
EXTRA_HEADS_MAX_N = 20_000
#: The defaults up to EXTRA_HEADS_MAX_N rows (docs/decisions.md D22, D24) and above.
SMALL_N_HEADS, SMALL_N_MERGED_HEADS = 3, 1


def default_heads(n: int) -> tuple[int, int]:
    """(k-means heads, merged heads) of a default run on ``n`` rows: 3 and 1 up to EXTRA_HEADS_MAX_N, else 1 and 0."""
    return (SMALL_N_HEADS, SMALL_N_MERGED_HEADS) if n <= EXTRA_HEADS_MAX_N else (1, 0)


class KMeans(Clusterer):
    """k-means with faiss (GPU index on CUDA) or torch; empty clusters split as in paper §3.3."""

    name = "kmeans"
    dcx_api = "3.0"
    #: In a multi-process run every rank runs the torch Lloyd steps on its block of rows,
    #: summing per-cluster sums and counts over ranks (faiss has no such hook).
    distributed = True
    options = (
        Option("k", int, 100, "number of clusters (paper: 10,000 for ImageNet's 1,000 classes)", min=1),
        Option("niter", int, 20, "Lloyd iterations (reference: 20)", min=1),
        Option("backend", str, "auto", "faiss when importable, else torch", choices=("auto", "faiss", "torch")),
        Option("seed", int, None, "fixed seed for every epoch; default: derived from the run seed per epoch", nullable=True),
        Option("sample", int, None, "train on this many random rows, then assign all (default: all rows, as the "
               "reference)", nullable=True, min=1),
        Option("heads", int, None, "independent k-means clusterings per round, each with its own fresh head; the "
               "loss is their mean (DeepCluster-v2's 3; 1 = the paper); auto = 3 up to 20,000 images, 1 above "
               "(docs/decisions.md D22: 3 gained on digits, textures and photos; D55: the cost at scale)",
               min=1, nullable=True),
        *merge_options("head", None, 0.25, "further heads beside the k-means ones, each the first clustering's k "
                       "clusters merged along the kNN graph between them into k * merge_scale**j groups (j = 1, 2, "
                       "...): coarse partitions purer than k-means into as few (0 = DeepCluster's heads only); auto = "
                       "1 up to 20,000 images, 0 above (docs/decisions.md D24, D55)"),
    )

    def build_head(self, partition: Partition, spec: TrainSpec) -> TrainingHead:
        if partition.more_labels is None:  # one clustering: DeepCluster's fresh head (paper §3.3)
            return super().build_head(partition, spec)
        # Several clusterings: all k ids, one column per head; a merged head keeps k outputs, and the
        # ones no target reaches only learn to stay low.
        targets = np.column_stack([partition.labels, partition.more_labels])
        head = linear_heads(spec.feature_dim, partition.n_clusters, targets.shape[1], spec.preactivation)
        return TrainingHead(head.to(spec.device), targets)

    def fit(self, features: np.ndarray, context: FitContext) -> Partition:
        seed = self.params["seed"] if self.params["seed"] is not None else context.seed
        k = self.params["k"]
        heads, merged_heads = self.heads_for(len(features))
        runs = [kmeans(features, k, self.params["niter"], seed + h, self.params["backend"], context.device,
                       rows=context.rows, all_reduce=context.all_reduce, sample=self.params["sample"])
                for h in range(heads)]
        groups = [coarser(k, self.params["merge_scale"], j) for j in range(1, merged_heads + 1)]
        more = [r.labels for r in runs[1:]] + self._merged(features, runs[0].labels, groups, seed, context)
        res = runs[0]
        return Partition(
            labels=res.labels,
            n_clusters=self.params["k"],
            centroids=res.centroids,
            stats={"objective": res.objective, "iterations": len(res.history), "empty_splits": res.empty_splits, "backend": res.backend},
            more_labels=np.column_stack(more) if more else None,
        )

    def heads_for(self, n: int) -> tuple[int, int]:
        """(k-means heads, merged heads) on ``n`` rows: the options where set, else ``default_heads(n)``."""
        auto_heads, auto_merged = default_heads(n)
        heads, merged = self.params["heads"], self.params["merged_heads"]
        return (auto_heads if heads is None else heads), (auto_merged if merged is None else merged)

    def _merged(self, features: np.ndarray, labels: np.ndarray, sizes: list[int], seed: int,
                context: FitContext) -> list[np.ndarray]:
        """Each merged head's labels: the first head's clusters merged into ``size`` groups along the kNN graph.

        In a multi-process run rank 0 builds the graph and merges, and the sum over ranks hands
        every rank its labels (the others contribute zeros).
        """
        if not sizes:
            return []
        out = merged_labels_from_rank0(features, labels, self.params["k"], sizes, self.params["neighbours"], seed,
                                       context.rank, context.all_reduce, context.device)
        return list(out.cpu().numpy())

