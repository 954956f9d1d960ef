"""Put images into a run's last clustering: offline clusterers through the saved preprocessing and
centroids (``clustering.npz``), online ones through the plugin's ``assign`` with the trained head."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dcx.core.contracts import ImageSet, OnlineClusterer, TrainSpec
from dcx.core.errors import InputError, RunDirError
from dcx.evaluation.runs import TrainedNetwork
from dcx.training.layers import FEATURES
from dcx.core.progress import Progress
from dcx.training.rundir import ASSIGNMENTS
from dcx.results.clustering import CLUSTERING, Clustering, file_names, write_assignments_csv
from dcx.results.embed import check_new_output
from dcx.results.source import layer_forward, stream_rows


@dataclass
class Assignment:
    """Each readable image's cluster and distance to its centroid (None: an online clusterer's
    ``assign`` gives labels only); ``index`` maps rows to the dataset's images."""

    labels: np.ndarray
    distances: np.ndarray | None
    index: np.ndarray
    names: list[str] | None
    skipped: int
    rows: np.ndarray | None = None  # the preprocessed rows, when asked for (gallery's map)

    def paths(self) -> list[str]:
        return [self.names[i] for i in self.index] if self.names is not None else [str(i) for i in self.index]


def assign_images(trained: TrainedNetwork, images: ImageSet, batch_size: int = 256, workers: int | None = None,
                  progress: Progress | None = None, keep_rows: bool = False) -> Assignment:
    """The cluster of every readable image of ``images`` under the run's last clustering."""
    online = isinstance(trained.setup.clusterer, OnlineClusterer)
    if online:
        head = _online_head(trained)
        forward, clustering = layer_forward(trained, FEATURES)[0], None
    else:
        clustering = Clustering.load(trained.run_dir / CLUSTERING)
        forward = layer_forward(trained, clustering.layer)[0]
    labels, dists, index, kept, skipped = [], [], [], [], 0
    for rows, idx, failed in stream_rows(trained, images, forward, batch_size, workers, progress, "assign"):
        skipped += len(failed)
        if not len(idx):
            continue
        index.append(idx)
        if online:
            with torch.no_grad():
                x = torch.from_numpy(rows).to(trained.setup.device)
                labels.append(trained.setup.clusterer.assign(head, x).cpu().numpy().astype(np.int64))
            if keep_rows:
                kept.append(rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12))
            continue
        pre = clustering.preprocess(rows)
        lab, dist = clustering.nearest(pre)
        labels.append(lab)
        dists.append(dist)
        if keep_rows:
            kept.append(pre)
    if not index:
        raise InputError(f"none of the {len(images)} images could be read: nothing to assign")
    cat = np.concatenate
    return Assignment(cat(labels), cat(dists) if dists else None, cat(index), file_names(images), skipped,
                      cat(kept) if keep_rows else None)


def _online_head(trained: TrainedNetwork) -> torch.nn.Module:
    """The online clusterer's head (projection + prototypes) as the checkpoint saved it."""
    state = trained.state.get("head") or {}
    if not state:
        raise RunDirError(f"{trained.run_dir / 'checkpoint.pt'} holds no clusterer head: the run cannot assign images")
    s, model = trained.setup, trained.learned
    n = _training_images(trained.run_dir)
    spec = TrainSpec(model.feature_dim, n, s.device, preactivation=model.net.relu_head)
    head = s.clusterer.build_head(spec).to(s.device)
    head.load_state_dict(state)
    return head.eval()


def _training_images(run_dir: Path) -> int:
    """How many images the run trained on (its assignments' length; a head is sized by it)."""
    path = Path(run_dir) / ASSIGNMENTS
    if path.is_file():
        return int(np.load(path, mmap_mode="r").shape[0])
    return 1 << 20


def assign_to_csv(trained: TrainedNetwork, images: ImageSet, out: Path, batch_size: int = 256,
                  workers: int | None = None, progress: Progress | None = None) -> Assignment:
    """``assign_images`` written to ``out`` (path, cluster, distance); ``out`` must not exist."""
    out = check_new_output(out)
    result = assign_images(trained, images, batch_size, workers, progress)
    write_assignments_csv(out, result.paths(), result.labels, result.distances)
    return result
