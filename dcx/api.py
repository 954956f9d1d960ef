"""dcx from Python: ``train`` a run, ``load`` one, and use what it trained (docs/api.md).

The CLI's ``run``, ``eval``, ``export``, ``embed``, ``assign`` and ``gallery`` call these same
functions; everything heavy is imported when first used, so ``import dcx`` stays light.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import torch

    from dcx.core.config import RunConfig
    from dcx.core.contracts import ImageSet
    from dcx.evaluation.runs import TrainedNetwork
    from dcx.core.progress import Progress
    from dcx.results.assign import Assignment
    from dcx.results.embed import Embedding
    from dcx.results.gallery import Gallery

__all__ = ["Run", "evaluate", "load", "train"]


class Run:
    """A finished (or checkpointed) run directory: its settings, metrics and trained network."""

    def __init__(self, path: str | Path, device: str | None = None) -> None:
        from dcx.evaluation.runs import read_config

        self.path = Path(path)
        self.device = device
        self.config: RunConfig = read_config(self.path)  # RunDirError when it is not a run
        self._trained: TrainedNetwork | None = None

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r}: {self.config.clusterer} + {self.config.backbone} on {self.config.dataset})"

    @property
    def trained(self) -> "TrainedNetwork":
        """The trained network and its resolved setup, loaded once (RunDirError without a checkpoint)."""
        if self._trained is None:
            from dcx.evaluation.runs import load_network

            self._trained = load_network(self.path, self.device)
        return self._trained

    @property
    def backbone(self) -> "torch.nn.Module":
        """The trained network (Sobel layer included) in eval mode: normalised images -> features."""
        return self.trained.learned

    @property
    def transform(self):
        """PIL image -> the normalised tensor the backbone takes (resize, centre crop, normalise)."""
        from dcx import data as D

        return D.eval_transform(self.trained.setup.config.image_size, self.trained.channels)

    @property
    def metrics(self) -> list[dict]:
        """The rows of metrics.jsonl: one per epoch, then the ``final`` row."""
        from dcx.training.rundir import RunDir

        return RunDir(self.path).metrics()

    @property
    def summary(self) -> dict:
        path = self.path / "summary.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    def images(self, images: Any = None, dataset: str | None = None, options: dict | None = None) -> "ImageSet":
        """What ``embed``/``assign`` read: a folder path, a list of PIL images, an ImageSet, or
        (None) the run's own training images."""
        from dcx.core.contracts import ImageSet
        from dcx.results.source import load_images

        if isinstance(images, ImageSet):
            return images
        if images is None or isinstance(images, (str, Path)):
            return load_images(self.trained, images, dataset, options)
        mode = "L" if self.trained.channels == 1 else "RGB"
        return ImageSet([im.convert(mode) for im in images], None, None, self.trained.channels)

    def embed(self, images: Any = None, layer: str = "features", batch_size: int = 256) -> "np.ndarray":
        """(N, d) float32 features of ``layer`` for readable images, in order (held in memory:
        for a large folder use ``embed_to``)."""
        import numpy as np

        from dcx.results.source import layer_forward, stream_rows

        forward, dims = layer_forward(self.trained, layer)
        parts = [rows for rows, _, _ in stream_rows(self.trained, self.images(images), forward, batch_size)]
        parts = [p for p in parts if len(p)]
        return np.concatenate(parts) if parts else np.empty((0, dims), np.float32)

    def embed_to(self, out: str | Path, images: Any = None, layer: str = "features", half: bool = False,
                 batch_size: int = 256, progress: "Progress | None" = None) -> "Embedding":
        """Stream features.npy + files.csv into the new folder ``out`` (bounded memory)."""
        from dcx.results.embed import embed_to

        return embed_to(self.trained, self.images(images), Path(out), layer, half, batch_size, progress=progress)

    def assign(self, images: Any = None, batch_size: int = 256, progress: "Progress | None" = None) -> "Assignment":
        """Each readable image's cluster (and distance to its centroid) under the run's last clustering."""
        from dcx.results.assign import assign_images

        return assign_images(self.trained, self.images(images), batch_size, progress=progress)

    def assign_to(self, out: str | Path, images: Any = None, batch_size: int = 256,
                  progress: "Progress | None" = None) -> "Assignment":
        """``assign`` written to the new CSV file ``out`` (path, cluster, distance)."""
        from dcx.results.assign import assign_to_csv

        return assign_to_csv(self.trained, self.images(images), Path(out), batch_size, progress=progress)

    def export(self, fmt: str = "torchvision", out: str | Path | None = None, layer: str = "features") -> tuple[Path, Path]:
        """Write the backbone alone (``torchvision``, ``torch-export`` or ``torchscript``) and its
        transform JSON; returns (weights file, JSON file)."""
        from dcx.results.export import export_run

        return export_run(self.trained, fmt, Path(out) if out is not None else None, layer)

    def gallery(self, out: str | Path | None = None, clusters: int = 12, per_cluster: int = 8,
                progress: "Progress | None" = None) -> "Gallery":
        """Write the static HTML page, PNG contact sheet and 2-D map of the largest clusters."""
        from dcx.results.gallery import write_gallery

        return write_gallery(self, Path(out) if out is not None else None, clusters, per_cluster, progress)


def load(run_dir: str | Path, device: str | None = None) -> Run:
    """A run directory written by ``dcx run`` or ``train`` (``device``: cpu, cuda or auto)."""
    return Run(run_dir, device)


def train(config: "RunConfig | dict[str, Any] | str | Path", out: str | Path | None = None,
          progress: "Progress | None" = None, loggers: Sequence[str] | None = None,
          callbacks: Iterable[Any] = ()) -> Run:
    """Train ``config`` (a RunConfig, a dict of its settings, or a TOML file) into ``out``
    (default: runs/<time>-<clusterer>-<backbone>), with ``loggers`` by name; returns the Run."""
    from dcx.core.config import RunConfig
    from dcx.training.rundir import default_run_dir
    from dcx.runs.runner import execute, new_run
    from dcx.results.loggers import create_loggers

    if isinstance(config, (str, Path)):
        config = RunConfig.load(Path(config))
    elif isinstance(config, dict):
        config = RunConfig.from_dict(config)
    path = Path(out) if out is not None else default_run_dir(Path("runs"), config.clusterer.rpartition(":")[2],
                                                              config.backbone.rpartition(":")[2])
    extra = (*callbacks, *create_loggers(loggers or (), path))
    execute(new_run(config, path, progress=progress, callbacks=extra))
    return Run(path)


def evaluate(run: Run | str | Path, protocol: str | Sequence[str] = "all", layers: str | Sequence[str] = "all",
             **kwargs: Any) -> dict:
    """Score a run's layers (linear, knn, cluster) beside its random init; writes eval.json
    (``kwargs``: dataset, data_root, dataset_options, device, save, cluster_runs, cluster_images)."""
    from dcx.evaluation.runs import evaluate_run

    path = run.path if isinstance(run, Run) else Path(run)
    return evaluate_run(path, protocol, layers, **kwargs)
