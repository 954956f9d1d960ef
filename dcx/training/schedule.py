"""Learning-rate schedules per optimiser step, as ``torch.optim.lr_scheduler.LambdaLR`` factors.

Linear warm-up from 0 (SwAV / DeepCluster-v2: 10 epochs), then constant (the DeepCluster
reference) or a cosine decay to 0 at the end of the run (docs/decisions.md D12). The factor is a
picklable object whose settings travel in the scheduler's ``state_dict``, so a checkpoint restores
it too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class StepSchedule:
    """Factor of the base learning rate at optimiser step ``step`` (0-based, counted over the run)."""

    kind: str  # "cosine" | "constant"
    epochs: int
    steps_per_epoch: int
    warmup_epochs: float = 0.0

    @property
    def warmup_steps(self) -> int:
        return int(round(self.warmup_epochs * self.steps_per_epoch))

    def __call__(self, step: int) -> float:
        warm = self.warmup_steps
        if step < warm:
            return (step + 1) / warm
        if self.kind == "constant":
            return 1.0
        return self._cosine(step)

    def _cosine(self, step: int) -> float:
        warm = self.warmup_steps
        # Progress in epochs after the warm-up, as epoch + i / steps (bit-identical to the
        # per-epoch formula a run without warm-up used before schedules went through torch).
        s = step - warm
        progress = s // self.steps_per_epoch + (s % self.steps_per_epoch) / self.steps_per_epoch
        span = max(self.epochs - warm / self.steps_per_epoch, 1e-12)
        return 0.5 * (1 + math.cos(math.pi * min(progress / span, 1.0)))


def build_scheduler(
    optimizer: torch.optim.Optimizer, kind: str, epochs: int, steps_per_epoch: int, warmup_epochs: float = 0.0,
) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR over ``optimizer`` stepped once per optimiser step."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, StepSchedule(kind, epochs, max(1, steps_per_epoch), warmup_epochs)
    )


def follow(scheduler: torch.optim.lr_scheduler.LambdaLR, schedule: StepSchedule) -> None:
    """Put a restored scheduler on ``schedule`` (a resume may add epochs); its restored step count
    says where on it the run is."""
    optimizer = scheduler.optimizer
    scheduler.lr_lambdas = [schedule] * len(optimizer.param_groups)
    for group, base in zip(optimizer.param_groups, scheduler.base_lrs):
        group["lr"] = base * schedule(scheduler.last_epoch)
    scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]
