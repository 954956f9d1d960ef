"""The run's last clustering, kept so that new images can be put into it: preprocessing (PCA
mean, projection with whitening folded in, L2) and one centroid per cluster, in ``clustering.npz``.

Clusterers without centroids (PIC, SeLa) get the mean of each cluster's preprocessed rows.
``ClusteringWriter`` writes the file at every clustering and, at the end of a run over a dataset
with file names, ``assignments.csv`` (path, cluster per head, distance to the centroid).
"""

from __future__ import annotations

import csv
import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from dcx.training.callbacks import Callback
from dcx.core.errors import RunDirError
from dcx.training.rundir import RunDir, atomic_write

if TYPE_CHECKING:  # pragma: no cover
    from dcx.core.contracts import Partition
    from dcx.training.engine import Engine
    from dcx.algorithms.pca import PCAWhitening

log = logging.getLogger(__name__)

CLUSTERING = "clustering.npz"
ASSIGNMENTS_CSV = "assignments.csv"


@dataclass
class Clustering:
    """Preprocessing + centroids of one clustering; ``assign`` puts rows of the same layer into it."""

    centroids: np.ndarray  # (k, d') float32, in the preprocessed space
    mean: np.ndarray | None = None  # (d,) PCA mean; None: the rows are clustered as they are
    components: np.ndarray | None = None  # (d, d') projection (whitening folded in)
    l2: bool = False
    epoch: int = 0
    layer: str = "features"
    from_clusterer: bool = True  # False: centroids are cluster means (PIC, SeLa)

    @classmethod
    def of(cls, part: "Partition", rows: np.ndarray, pca: "PCAWhitening | None", epoch: int, layer: str) -> "Clustering":
        """From a fit: the clusterer's centroids when it gives them, else each cluster's mean row."""
        given = part.centroids is not None and np.asarray(part.centroids).shape == (part.n_clusters, rows.shape[1])
        centroids = np.asarray(part.centroids, np.float32) if given else cluster_means(rows, part.labels, part.n_clusters)
        if pca is None:
            return cls(centroids, epoch=epoch, layer=layer, from_clusterer=given)
        return cls(centroids, pca.mean_, pca.components_, pca.l2, epoch, layer, given)

    def preprocess(self, x: np.ndarray) -> np.ndarray:
        """Rows as the clusterer saw them: (x - mean) @ components, L2-normalised."""
        y = np.asarray(x, dtype=np.float32)
        if self.components is not None:
            y = (y - self.mean) @ self.components
            if self.l2:
                y = y / np.maximum(np.linalg.norm(y, axis=1, keepdims=True), 1e-12)
        return y

    def nearest(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(labels, Euclidean distances) of preprocessed ``rows`` to their nearest centroid."""
        import torch

        x, c = torch.from_numpy(np.ascontiguousarray(rows, np.float32)), torch.from_numpy(self.centroids)
        d2 = (x * x).sum(1, keepdim=True) - 2 * x @ c.T + (c * c).sum(1)
        best, labels = d2.min(1)
        return labels.numpy().astype(np.int64), best.clamp_min(0).sqrt().numpy()

    def save(self, path: Path) -> None:
        buf = io.BytesIO()
        arrays: dict[str, Any] = dict(centroids=self.centroids, l2=self.l2, epoch=self.epoch, layer=self.layer,
                                      from_clusterer=self.from_clusterer)
        if self.components is not None:
            arrays.update(mean=self.mean, components=self.components)
        np.savez(buf, **arrays)
        atomic_write(path, buf.getvalue())

    @classmethod
    def load(cls, path: Path) -> "Clustering":
        if not Path(path).is_file():
            raise RunDirError(f"{path} not found: the run predates saved clusterings; assign needs a run trained "
                              "by this dcx (dcx run) with an offline clusterer, or an online one's checkpoint")
        with np.load(path) as z:
            pre = "components" in z
            return cls(z["centroids"], z["mean"] if pre else None, z["components"] if pre else None, bool(z["l2"]),
                       int(z["epoch"]), str(z["layer"]), bool(z["from_clusterer"]))


def cluster_means(rows: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """(k, d) mean row of each cluster (zeros for an empty one)."""
    sums = np.zeros((k, rows.shape[1]), dtype=np.float64)
    np.add.at(sums, labels, rows)
    counts = np.bincount(labels, minlength=k)[:, None]
    return (sums / np.maximum(counts, 1)).astype(np.float32)


def write_assignments_csv(path: Path, names: Sequence[str], labels: np.ndarray,
                          distances: np.ndarray | None = None) -> None:
    """path, cluster (per head: cluster, cluster_1, ...), distance; written atomically."""
    labels = labels.reshape(len(labels), -1)
    heads = ["cluster"] + [f"cluster_{h}" for h in range(1, labels.shape[1])]
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["path", *heads, "distance"])
    for i, name in enumerate(names):
        dist = "" if distances is None else f"{float(distances[i]):.6g}"
        w.writerow([name, *labels[i].tolist(), dist])
    atomic_write(Path(path), out.getvalue().encode())


def file_names(images: Any) -> list[str] | None:
    """The relative file name of each image of an ImageSet, when its dataset has files."""
    seq = getattr(images, "images", images)
    files = getattr(seq, "files", None)
    return list(files) if files is not None else None


class ClusteringWriter(Callback):
    """Writes clustering.npz at every clustering and assignments.csv at the end (main process)."""

    def __init__(self, run_dir: RunDir) -> None:
        self.run_dir = run_dir
        self.last: Clustering | None = None
        self.labels: np.ndarray | None = None
        self.distances: np.ndarray | None = None

    def on_clustering(self, engine: "Engine", epoch: int, part: "Partition", rows: np.ndarray,
                      pca: "PCAWhitening | None") -> None:
        if not engine.world.is_main:
            return
        self.last = Clustering.of(part, rows, pca, epoch, "features")  # offline clusterers cluster the output
        self.last.save(self.run_dir.path / CLUSTERING)
        labels = part.labels if part.more_labels is None else np.column_stack([part.labels, part.more_labels])
        self.labels = labels
        centre = self.last.centroids[part.labels]
        self.distances = np.sqrt(((np.asarray(rows, np.float32) - centre) ** 2).sum(1))

    def on_fit_end(self, engine: "Engine", final: dict[str, Any], summary: dict[str, Any]) -> None:
        names = file_names(engine.s.images)
        if not engine.world.is_main or names is None or engine.labels is None:
            return
        online = self.labels is None or len(self.labels) != len(engine.labels)
        labels = engine.labels if online else self.labels
        write_assignments_csv(self.run_dir.path / ASSIGNMENTS_CSV, names, labels, None if online else self.distances)
