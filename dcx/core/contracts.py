"""The public plugin API: what a clusterer, a backbone and a dataset promise to the engine.

Third-party packages implement these classes and register them under the entry-point groups
``dcx.clusterers``, ``dcx.backbones`` and ``dcx.datasets``. ``dcx.testing`` checks conformance.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from dcx.core.errors import ContractError
from dcx.core.options import Option, resolve

#: Version of this contract. A plugin declares the version it was written for in ``dcx_api``;
#: a different major version is reported as incompatible and not loaded.
API_VERSION = "1.0"


class Plugin(ABC):
    """Common base: a name, declared options and their validated values in ``self.params``."""

    name: ClassVar[str] = ""
    options: ClassVar[tuple[Option, ...]] = ()
    dcx_api: ClassVar[str] = API_VERSION

    def __init__(self, **options: Any) -> None:
        self.params: dict[str, Any] = resolve(self.name or type(self).__name__, self.options, options)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{type(self).__name__}({args})"


# ----------------------------------------------------------------------------- clusterers


@dataclass(frozen=True)
class Partition:
    """What an offline clusterer returns: one label per row, optional centroids and statistics.

    ``n_clusters`` is the size of the label space (ids ``0..n_clusters-1``; some may be empty).
    It is the clusterer's output, not necessarily the requested k (PIC chooses its own).
    """

    labels: np.ndarray
    n_clusters: int
    centroids: np.ndarray | None = None
    stats: Mapping[str, Any] = field(default_factory=dict)

    def validate(self, n: int, owner: str) -> "Partition":
        """Check the contract for ``n`` input rows; raise ContractError naming ``owner``."""
        labels = np.asarray(self.labels)
        if labels.shape != (n,):
            raise ContractError(
                f"clusterer '{owner}' returned labels of shape {labels.shape}, expected ({n},): fix the plugin"
            )
        if not np.issubdtype(labels.dtype, np.integer):
            raise ContractError(f"clusterer '{owner}' returned {labels.dtype} labels, expected integers")
        if n and (labels.min() < 0 or labels.max() >= self.n_clusters):
            raise ContractError(
                f"clusterer '{owner}' returned labels outside 0..{self.n_clusters - 1}: fix the plugin"
            )
        return Partition(labels.astype(np.int64, copy=False), int(self.n_clusters), self.centroids, dict(self.stats))


@dataclass
class FitContext:
    """What the engine tells an offline clusterer besides the features.

    ``raw_features`` are the backbone outputs before preprocessing and ``head`` is last epoch's
    classifier (only for clusterers with ``keeps_head``, e.g. SeLa labels from head scores).
    In a distributed run every rank calls ``fit`` with the same arguments; ``rank`` and
    ``world_size`` let a clusterer split its own work.
    """

    epoch: int = 0
    seed: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    previous_labels: np.ndarray | None = None
    raw_features: np.ndarray | None = None
    head: nn.Module | None = None
    rank: int = 0
    world_size: int = 1


class Clusterer(Plugin):
    """Offline clusterer: once per epoch, an (N, d) float32 matrix -> a Partition."""

    schedule: ClassVar[str] = "offline"
    #: PCA-whitening + L2 (core.preprocess) is applied before ``fit`` when True.
    wants_preprocessing: ClassVar[bool] = True
    #: Keep the classifier head across epochs (and pass it in FitContext) instead of a fresh one.
    keeps_head: ClassVar[bool] = False
    #: Whether the ``k`` run option is meaningful (PIC ignores it and chooses its own count).
    uses_k: ClassVar[bool] = True

    @abstractmethod
    def fit(self, features: np.ndarray, context: FitContext) -> Partition:
        """Cluster the rows of ``features``; randomness only from ``context.seed``."""


@dataclass(frozen=True)
class CropSpec:
    """Multi-crop views for online clusterers (SwAV): codes come from the large crops only."""

    n_large: int = 2
    n_small: int = 0
    large_scale: tuple[float, float] = (0.14, 1.0)
    small_scale: tuple[float, float] = (0.05, 0.14)
    small_size_ratio: float = 96 / 224  # SwAV: 224-px large and 96-px small crops


@dataclass
class StepContext:
    """Where the training loop is, for online clusterers' per-batch schedule.

    ``step`` counts optimiser steps since the start of the run (not of the epoch).
    """

    epoch: int
    step: int
    steps_per_epoch: int
    rank: int = 0
    world_size: int = 1


class OnlineClusterer(Plugin):
    """Online clusterer: labels each batch inside the training step and owns head and loss.

    The engine calls, per batch: ``before_step`` -> backbone on every view -> ``loss`` ->
    backward -> ``after_backward`` -> optimiser step. ``assign`` gives hard labels for
    diagnostics (NMI to labels, cluster usage) once per epoch.
    """

    schedule: ClassVar[str] = "online"
    uses_k: ClassVar[bool] = True

    def crops(self) -> CropSpec:
        return CropSpec()

    @abstractmethod
    def build_head(self, feature_dim: int, num_samples: int) -> nn.Module:
        """The trainable head (e.g. projection + prototypes); joins the backbone's optimiser."""

    @abstractmethod
    def loss(self, head: nn.Module, views: Sequence[torch.Tensor], step: StepContext) -> tuple[torch.Tensor, dict]:
        """Scalar loss of one batch from the backbone features of every view, and statistics."""

    def before_step(self, head: nn.Module, step: StepContext) -> None:
        """Hook before the forward pass (e.g. L2-normalise prototypes)."""

    def after_backward(self, head: nn.Module, step: StepContext) -> None:
        """Hook between backward and the optimiser step (e.g. freeze prototypes)."""

    @abstractmethod
    def assign(self, head: nn.Module, features: torch.Tensor) -> torch.Tensor:
        """Hard labels (B,) of backbone features, for diagnostics; called under no_grad."""

    def epoch_stats(self) -> dict:
        """Statistics gathered since the last call (cluster usage, code entropy, ...)."""
        return {}


# ----------------------------------------------------------------------------- backbones


class BackboneNet(nn.Module):
    """A network split into named blocks run in order, then a neck giving the feature vector.

    ``forward`` returns (B, feature_dim) features (for AlexNet/VGG: fc7 without its last ReLU).
    ``forward_blocks`` returns the outputs of the named blocks, for per-layer evaluation.
    """

    def __init__(
        self, blocks: Sequence[tuple[str, nn.Module]], neck: nn.Module, feature_dim: int, relu_head: bool = False
    ) -> None:
        super().__init__()
        self.block_names = tuple(name for name, _ in blocks)
        self.blocks = nn.ModuleDict(dict(blocks))
        self.neck = neck
        self.feature_dim = int(feature_dim)
        #: The features are a pre-activation (fc7 before ReLU): the classifier head applies ReLU.
        self.relu_head = relu_head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks.values():
            x = block(x)
        return self.neck(x)

    def forward_blocks(self, x: torch.Tensor, names: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        wanted = set(self.block_names if names is None else names)
        out = {}
        for name, block in self.blocks.items():
            x = block(x)
            if name in wanted:
                out[name] = x
            if len(out) == len(wanted):
                break
        return out


class Backbone(Plugin):
    """Builds a randomly initialised BackboneNet; never downloads weights."""

    #: Whether the paper puts a fixed Sobel layer in front by default (AlexNet/VGG: yes).
    sobel_default: ClassVar[bool] = False
    #: Smallest input side the network accepts.
    min_image_size: ClassVar[int] = 32

    @abstractmethod
    def build(self, in_channels: int, image_size: int, width: float = 1.0) -> BackboneNet:
        """``width`` scales channel counts (1.0 = the paper's network)."""


# ----------------------------------------------------------------------------- datasets


@dataclass(frozen=True)
class RunDefaults:
    """Run settings a dataset suggests when the user gives none (e.g. small images, small nets)."""

    image_size: int = 224
    k: int = 10000
    epochs: int = 100
    batch_size: int = 256
    width: float = 1.0
    passes: int = 1


@dataclass
class ImageSet:
    """A loaded dataset: ``images[i]`` is a PIL image; ``labels`` is None when unlabelled."""

    images: Sequence[Any]
    labels: np.ndarray | None
    classes: list[str] | None
    channels: int
    skipped: int = 0  # unreadable files left out

    def __len__(self) -> int:
        return len(self.images)

    @property
    def num_classes(self) -> int | None:
        return None if self.labels is None else int(len(np.unique(self.labels)))


class Dataset(Plugin):
    """Loads images (+ labels when known). Transforms are the engine's business."""

    #: Horizontal flips keep the meaning of an image (False for digits and characters).
    flip_invariant: ClassVar[bool] = True
    defaults: ClassVar[RunDefaults] = RunDefaults()

    @abstractmethod
    def load(self, root: Path | None, split: str = "train", download: bool = False) -> ImageSet:
        """``split`` is one of ``splits()``; return an ImageSet."""

    def splits(self) -> tuple[str, ...]:
        """Splits this dataset has; ('all',) when it has no train/test split of its own."""
        return ("train", "test")
