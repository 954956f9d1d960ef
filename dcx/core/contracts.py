"""The public plugin API: what a clusterer, a backbone and a dataset promise to the engine.

Third-party packages implement these classes and register them under the entry-point groups
``dcx.clusterers``, ``dcx.backbones`` and ``dcx.datasets``. ``dcx.testing`` checks conformance.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Mapping, Sequence

import numpy as np

from dcx.core.dataset_contract import Dataset, ImageSet, RunDefaults
from dcx.core.errors import ContractError
from dcx.core.plugin import API_VERSION, Plugin

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

    from dcx.core.backbone_net import BackboneNet

__all__ = [
    "API_VERSION", "Backbone", "BackboneNet", "Clusterer", "CropSpec", "Dataset", "EpochContext", "FitContext",
    "ImageSet", "OnlineClusterer", "Partition", "Plugin", "RunDefaults", "StatefulPlugin", "StepContext",
    "TrainSpec", "TrainingHead", "linear_head", "linear_heads",
]

# torch is imported when a network is built, not with the contract (`dcx cluster` and `dcx list` need
# none): BackboneNet is served from its module on first use, the classifier heads import theirs when called.


def __getattr__(name: str) -> Any:
    if name == "BackboneNet":
        from dcx.core.backbone_net import BackboneNet

        return BackboneNet
    raise AttributeError(f"module 'dcx.core.contracts' has no attribute {name!r}")


def linear_head(feature_dim: int, n_outputs: int, preactivation: bool = False) -> "nn.Module":
    """DeepCluster's classifier head (``dcx.core.heads.linear_head``); torch is imported on the call,
    not when a plugin imports this name (a plugin module is loaded by `dcx cluster` too)."""
    from dcx.core import heads

    return heads.linear_head(feature_dim, n_outputs, preactivation)


def linear_heads(feature_dim: int, n_outputs: int, heads: int, preactivation: bool = False) -> "nn.Module":
    """``heads`` classifier heads in one module (``dcx.core.heads.linear_heads``); torch imported on the call."""
    from dcx.core import heads as _heads

    return _heads.linear_heads(feature_dim, n_outputs, heads, preactivation)


def _cpu() -> "torch.device":
    import torch

    return torch.device("cpu")


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
    #: (n, h - 1) labels of further clusterings of the same rows (several heads, as DeepCluster-v2),
    #: ids in the same 0..n_clusters-1; None: one clustering.
    more_labels: np.ndarray | None = None

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
        more = None
        if self.more_labels is not None:
            more = np.asarray(self.more_labels)
            if more.ndim != 2 or more.shape[0] != n or not np.issubdtype(more.dtype, np.integer) or (
                    n and more.size and (more.min() < 0 or more.max() >= self.n_clusters)):
                raise ContractError(f"clusterer '{owner}' returned more_labels of shape {more.shape} ({more.dtype}), "
                                    f"expected ({n}, h) integers in 0..{self.n_clusters - 1}: fix the plugin")
            more = more.astype(np.int64, copy=False)
        return Partition(labels.astype(np.int64, copy=False), int(self.n_clusters), self.centroids, dict(self.stats),
                         more)


@dataclass(frozen=True)
class TrainSpec:
    """What the engine tells a clusterer about the run before training starts.

    ``preactivation``: the features are a pre-activation (AlexNet/VGG fc7 before its ReLU), so a
    classifier head on them applies ReLU first, exactly as the reference network does (``linear_head``).
    A projection MLP may take them as they are.
    """

    feature_dim: int
    num_samples: int
    device: torch.device = field(default_factory=_cpu)
    preactivation: bool = False
    rank: int = 0
    world_size: int = 1


@dataclass
class TrainingHead:
    """What the backbone learns to predict in one offline epoch: a head and a target per image.

    ``targets[i]`` is the head output that image ``i`` is trained towards (0..outputs-1). With
    several heads, ``targets`` is (n, h) and the module returns (B, outputs, h); the loss is the
    mean over heads.
    """

    module: nn.Module
    targets: np.ndarray


@dataclass
class FitContext:
    """What the engine tells an offline clusterer besides the features.

    ``features`` holds every row on every rank. For a ``distributed`` clusterer in a
    multi-process run, ``rows`` is this rank's block of them and ``all_reduce`` sums a tensor over
    ranks in place (one process: ``rows`` covers everything and ``all_reduce`` is None).
    """

    epoch: int = 0
    seed: int = 0
    device: torch.device | str = "cpu"  # a torch.device in runs; "cpu" where no network exists (dcx cluster)
    previous_labels: np.ndarray | None = None
    rank: int = 0
    world_size: int = 1
    all_reduce: Callable[[torch.Tensor], torch.Tensor] | None = None
    rows: slice | None = None


class StatefulPlugin(Plugin):
    """A plugin whose state survives a resume: the engine saves ``state_dict()`` in every
    checkpoint and hands it back to ``load_state_dict`` (tensors, numbers, strings, lists and
    dicts only: checkpoints are read with ``torch.load(weights_only=True)``)."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state:
            raise ContractError(
                f"{self.name or type(self).__name__}: checkpoint holds plugin state {sorted(state)} but the plugin "
                "does not implement load_state_dict"
            )


class Clusterer(StatefulPlugin):
    """Offline clusterer: once per epoch, an (N, d) float32 matrix -> a Partition.

    Per epoch the engine calls ``fit`` on the (preprocessed) features of every image, then
    ``build_head`` for the head and targets it trains the backbone on for that epoch.
    """

    schedule: ClassVar[str] = "offline"
    #: PCA-whitening + L2 (core.preprocess) is applied before ``fit`` when True.
    wants_preprocessing: ClassVar[bool] = True
    #: In a multi-process run, every rank calls ``fit`` and the clusterer splits the work itself
    #: (``FitContext.rows`` / ``all_reduce``); when False, rank 0 fits and the engine broadcasts.
    distributed: ClassVar[bool] = False
    #: Whether the ``k`` run option is meaningful (PIC ignores it and chooses its own count).
    uses_k: ClassVar[bool] = True

    def run_defaults(self, defaults: RunDefaults) -> RunDefaults:
        """The run defaults (the dataset's) this clusterer trains at where the user sets none;
        called once by ``setup``. Default: the dataset's, unchanged."""
        return defaults

    def prepare(self, spec: TrainSpec) -> None:
        """Once, before the first epoch (and before a checkpoint is restored): allocate state."""

    @abstractmethod
    def fit(self, features: np.ndarray, context: FitContext) -> Partition:
        """Cluster the rows of ``features``; randomness only from ``context.seed``."""

    def build_head(self, partition: Partition, spec: TrainSpec) -> TrainingHead:
        """This epoch's head and targets. Default: DeepCluster's fresh linear head (paper §3.3)
        over the non-empty clusters, renumbered 0..m-1: cluster ids mean nothing across epochs."""
        from dcx.core.heads import linear_head

        kept, targets = np.unique(partition.labels, return_inverse=True)
        head = linear_head(spec.feature_dim, len(kept), spec.preactivation).to(spec.device)
        return TrainingHead(head, targets.astype(np.int64))


@dataclass(frozen=True)
class CropSpec:
    """Multi-crop views for online clusterers (SwAV): codes come from the large crops only."""

    n_large: int = 2
    n_small: int = 0
    large_scale: tuple[float, float] = (0.14, 1.0)
    small_scale: tuple[float, float] = (0.05, 0.14)
    small_size_ratio: float = 96 / 224  # SwAV: 224-px large and 96-px small crops

    @property
    def views(self) -> int:
        """Crops of each image one training step sees."""
        return self.n_large + self.n_small


@dataclass
class StepContext:
    """Where the training loop is, for the per-batch hooks.

    ``step`` counts optimiser steps since the start of the run (not of the epoch); ``indices``
    are the dataset indices of the batch's images (this rank's part in a distributed run), so a
    clusterer can keep per-image state such as a memory bank.
    """

    epoch: int
    step: int
    steps_per_epoch: int
    indices: torch.Tensor | None = None
    rank: int = 0
    world_size: int = 1


@dataclass
class EpochContext:
    """What an online clusterer gets at the start of each epoch.

    ``features()`` extracts the backbone features (N, feature_dim) of every image with the
    deterministic evaluation transform, in dataset order, on every rank (one pass over the data, only
    if called), e.g. to fill a memory bank before the first epoch.
    """

    epoch: int
    seed: int
    steps_per_epoch: int
    num_samples: int
    device: torch.device
    features: Callable[[], torch.Tensor]
    rank: int = 0
    world_size: int = 1
    all_reduce: Callable[[torch.Tensor], torch.Tensor] | None = None


class OnlineClusterer(StatefulPlugin):
    """Online clusterer: labels each batch inside the training step and owns head and loss.

    The engine calls ``start_epoch`` at the start of every epoch, then per batch:
    ``before_step`` -> backbone on every view -> ``loss`` -> backward -> ``after_backward`` ->
    optimiser step, then ``end_epoch``. ``assign`` gives hard labels for diagnostics (NMI to
    labels, cluster usage) once per epoch. In a distributed run ``head`` may be wrapped
    (DistributedDataParallel: the module is ``head.module``).
    """

    schedule: ClassVar[str] = "online"
    uses_k: ClassVar[bool] = True

    def crops(self) -> CropSpec:
        return CropSpec()

    def run_defaults(self, defaults: RunDefaults) -> RunDefaults:
        """The run defaults (the dataset's) this clusterer trains at where the user sets none; called
        once by ``setup``. Default: every image seen as often per round as in a one-view k-means
        run (``passes`` counts views) or, where the defaults were sized to a time budget, the
        k-means run's view-passes in fewer rounds of at least one image pass each."""
        views = self.crops().views
        if defaults.budget is None:
            return replace(defaults, passes=defaults.passes * views)
        passes = views * max(1, defaults.passes // views)
        epochs = max(2, math.ceil(defaults.epochs * defaults.passes / passes))
        return replace(defaults, passes=passes, epochs=epochs)

    @abstractmethod
    def build_head(self, spec: TrainSpec) -> nn.Module:
        """The trainable head (e.g. projection + prototypes); joins the backbone's optimiser."""

    def start_epoch(self, head: nn.Module, context: EpochContext) -> None:
        """Hook before an epoch's first step (e.g. cluster a memory bank into prototypes)."""

    def end_epoch(self, head: nn.Module, context: EpochContext) -> None:
        """Hook after an epoch's last step, on every rank (collectives allowed: e.g. merge the
        per-rank parts of a memory bank), before the checkpoint is taken."""

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


class Backbone(Plugin):
    """Builds a randomly initialised BackboneNet; never downloads weights."""

    #: Whether the paper puts a fixed Sobel layer in front by default (AlexNet/VGG: yes).
    sobel_default: ClassVar[bool] = False
    #: Smallest input side the network accepts.
    min_image_size: ClassVar[int] = 32

    @abstractmethod
    def build(self, in_channels: int, image_size: int, width: float = 1.0) -> BackboneNet:
        """``width`` scales channel counts (1.0 = the paper's network)."""
