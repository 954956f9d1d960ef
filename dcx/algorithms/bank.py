"""A memory bank: the latest embedding of every image, written by dataset index during an epoch.

What DeepCluster-v2 clusters every epoch (its ``main_deepclusterv2.py`` keeps one bank per large
crop) and what its merged prototype sets merge (``dcx.algorithms.merge``), with ``group_means`` as
their prototypes. Each rank
writes the rows of the images it trained; ``sync`` at the epoch's end gives every rank all rows.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from dcx.algorithms.threads import one_thread_if_small

#: Rows embedded per forward pass when the bank is filled from features.
_CHUNK = 4096


class MemoryBank:
    """(slots, N, d) embeddings, one slot per large crop; ``rows[s][i]`` is image i's last embedding in slot s."""

    def __init__(self, rows: torch.Tensor) -> None:
        if rows.dim() != 3:
            raise ValueError(f"a memory bank holds (slots, N, d) rows, got shape {tuple(rows.shape)}")
        self.rows = rows
        self._written: torch.Tensor | None = None  # (N,) rows this rank wrote since start_epoch

    @classmethod
    @torch.no_grad()
    def from_features(cls, head: nn.Module, features: torch.Tensor, slots: int) -> MemoryBank:
        """Every image's ``head.embed(features)`` (in eval mode: the initial network's projection) in
        each slot: the bank before the first epoch."""
        was = head.training
        head.eval()
        try:
            z = torch.cat([head.embed(features[s : s + _CHUNK]) for s in range(0, len(features), _CHUNK)])
        finally:
            head.train(was)
        return cls(z.unsqueeze(0).repeat(slots, 1, 1).contiguous())

    def start_epoch(self, device: torch.device) -> None:
        """Move to ``device`` and start recording which rows this rank writes."""
        self.rows = self.rows.to(device)
        self._written = torch.zeros(self.rows.shape[1], dtype=torch.bool, device=self.rows.device)

    @torch.no_grad()
    def write(self, slot: int, indices: torch.Tensor, z: torch.Tensor) -> None:
        with one_thread_if_small(z.numel(), z.device):  # a per-step op: never wait on a busy core
            self.rows[slot][indices] = z.detach().to(self.rows.dtype)
            if self._written is not None:
                self._written[indices] = True

    @torch.no_grad()
    def sync(self, all_reduce: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Every rank gets the rows each rank wrote since ``start_epoch`` (the mean where several
        wrote one, as a distributed sampler's padding repeats a few images)."""
        if self._written is None:
            return
        mask = self._written.to(self.rows.dtype)
        written = self.rows * mask[None, :, None]
        all_reduce(written)
        all_reduce(mask)
        seen = mask > 0
        self.rows[:, seen] = written[:, seen] / mask[seen][None, :, None]


@torch.no_grad()
def group_means(x: torch.Tensor, labels: torch.Tensor, groups: int) -> torch.Tensor:
    """(groups, d) unit means of the rows of ``x`` per label; a group without rows gets a zero row:
    the prototypes of a merged set."""
    sums = torch.zeros(groups, x.shape[1], dtype=x.dtype, device=x.device).index_add_(0, labels.to(x.device), x)
    return torch.nn.functional.normalize(sums, dim=1)
