"""Agglomerative clustering as an offline dcx clusterer (scikit-learn's AgglomerativeClustering)."""

from __future__ import annotations

import numpy as np
from sklearn.cluster import AgglomerativeClustering

from dcx.core.contracts import Clusterer, FitContext, Partition
from dcx.core.errors import InputError
from dcx.algorithms.arrays import check_finite
from dcx.core.options import Option


class Agglomerative(Clusterer):
    """Bottom-up merging of the PCA-whitened, L2-normalised features into k clusters.

    Agglomerative clustering needs O(n^2) memory, so above ``sample`` rows it clusters a seeded
    random subset and gives every row the cluster of its nearest subset centroid.
    """

    name = "agglomerative"
    dcx_api = "3.0"  # the contract this was written for: another major version will not load it
    options = (
        Option("k", int, 100, "number of clusters (--k sets it)", min=1),
        Option("linkage", str, "ward", "merge criterion", choices=("ward", "average", "complete", "single")),
        Option("sample", int, 5000, "rows clustered directly; the others join the nearest centroid", min=2),
    )

    def fit(self, features: np.ndarray, context: FitContext) -> Partition:
        check_finite(features)  # NaN/inf: an InputError, not garbage labels
        x = np.asarray(features, dtype=np.float64)  # a converted copy when needed; never written to
        k, n = self.params["k"], len(x)
        if k > n:
            raise InputError(f"agglomerative: k={k} is larger than the {n} rows; lower --k")
        subset = np.arange(n)
        if n > self.params["sample"]:
            subset = np.sort(np.random.default_rng(context.seed).choice(n, self.params["sample"], replace=False))
        model = AgglomerativeClustering(n_clusters=min(k, len(subset)), linkage=self.params["linkage"])
        sub_labels = model.fit_predict(x[subset])
        centroids = np.stack([x[subset][sub_labels == c].mean(axis=0) for c in range(model.n_clusters_)])
        if len(subset) == n:
            labels = sub_labels
        else:
            sq = (x**2).sum(1, keepdims=True) - 2 * x @ centroids.T + (centroids**2).sum(1)
            labels = sq.argmin(axis=1)
        return Partition(
            labels=labels.astype(np.int64),
            n_clusters=k,
            centroids=np.vstack([centroids, np.zeros((k - len(centroids), x.shape[1]))]).astype(np.float32),
            stats={"clustered_directly": int(len(subset)), "linkage": self.params["linkage"]},
        )
