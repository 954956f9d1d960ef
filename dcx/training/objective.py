"""The per-step seam of the training loop: what one epoch trains the backbone towards.

The engine has one training loop; each epoch it gets an Objective and calls, per batch,
``before_step`` -> backbone on every view -> ``loss`` -> backward -> ``after_backward`` ->
optimiser steps. Offline clusterers are "targets fixed at the start of the epoch" behind this
seam (``PartitionObjective``); online clusterers supply their own loss (``OnlineObjective``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from dcx.core.contracts import OnlineClusterer, StepContext, TrainingHead
from dcx.data.sampling import UniformLabelSampler


class Objective(ABC):
    """Base: a head, the extra optimisers stepped with the backbone's, a sampler, the hooks."""

    head: nn.Module
    #: Optimisers of the objective's own parameters (the backbone optimiser is the engine's).
    optimizers: list[torch.optim.Optimizer]

    @abstractmethod
    def sampler(self, n_total: int, seed: int) -> torch.utils.data.Sampler:
        """The epoch's draw of ``n_total`` dataset indices."""

    def before_step(self, step: StepContext) -> None:
        pass

    @abstractmethod
    def loss(self, views: Sequence[torch.Tensor], step: StepContext) -> tuple[torch.Tensor, dict]:
        """Scalar loss of one batch from the backbone features of every view, and statistics."""

    def after_backward(self, step: StepContext) -> None:
        pass


class PartitionObjective(Objective):
    """An offline clusterer's epoch: cross-entropy of ``head(features)`` against targets fixed at
    the start of the epoch, images drawn uniformly over the targets (paper §3.3).

    The head has its own SGD without momentum at the constant base rate (the reference's
    ``optimizer_tl``), recreated every epoch; the backbone follows the run's schedule.
    """

    def __init__(self, training_head: TrainingHead, lr: float, weight_decay: float, device: torch.device,
                 make_sampler: Callable[[np.ndarray, int, int], torch.utils.data.Sampler] | None = None) -> None:
        self.head = training_head.module
        self.targets_np = np.asarray(training_head.targets, dtype=np.int64)
        self.targets = torch.as_tensor(self.targets_np)
        self.device = device
        self.optimizers = [torch.optim.SGD(self.head.parameters(), lr=lr, weight_decay=weight_decay)]
        self.criterion = nn.CrossEntropyLoss()
        self._make_sampler = make_sampler or (lambda t, n, s: UniformLabelSampler(t, n, s))

    def sampler(self, n_total: int, seed: int) -> torch.utils.data.Sampler:
        # Several heads: uniform over the first head's clusters.
        first = self.targets_np if self.targets_np.ndim == 1 else self.targets_np[:, 0]
        return self._make_sampler(first, n_total, seed)

    def loss(self, views: Sequence[torch.Tensor], step: StepContext) -> tuple[torch.Tensor, dict]:
        # (B,) targets and (B, k) logits, or (B, h) and (B, k, h) with h heads: cross-entropy's
        # K-dimensional form averages over heads as over images.
        y = self.targets[step.indices].to(self.device, non_blocking=True)
        return self.criterion(self.head(views[0]), y), {}


class OnlineObjective(Objective):
    """An online clusterer's epoch: its head (in the backbone's optimiser) and its own loss."""

    def __init__(self, clusterer: OnlineClusterer, head: nn.Module,
                 make_sampler: Callable[[int, int], torch.utils.data.Sampler]) -> None:
        self.clusterer = clusterer
        self.head = head
        self.optimizers = []
        self._make_sampler = make_sampler

    def sampler(self, n_total: int, seed: int) -> torch.utils.data.Sampler:
        return self._make_sampler(n_total, seed)

    def before_step(self, step: StepContext) -> None:
        self.clusterer.before_step(self.head, step)

    def loss(self, views: Sequence[torch.Tensor], step: StepContext) -> tuple[torch.Tensor, dict]:
        return self.clusterer.loss(self.head, views, step)

    def after_backward(self, step: StepContext) -> None:
        self.clusterer.after_backward(self.head, step)


def forward_views(model: nn.Module, views: list[torch.Tensor]) -> list[torch.Tensor]:
    """Backbone features per view, one forward per resolution (SwAV's multi-crop batching)."""
    if len(views) == 1:
        return [model(views[0])]
    out: list[torch.Tensor | None] = [None] * len(views)
    i = 0
    while i < len(views):
        j = i
        while j < len(views) and views[j].shape[-1] == views[i].shape[-1]:
            j += 1
        feats = model(torch.cat(views[i:j]))
        for n, chunk in enumerate(feats.chunk(j - i)):
            out[i + n] = chunk
        i = j
    return out  # type: ignore[return-value]
