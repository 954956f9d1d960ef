"""A memory bank: the latest embedding of every image, written by dataset index during an epoch.

What DeepCluster-v2 clusters every epoch (its ``main_deepclusterv2.py`` keeps one bank per large
crop), what the online clusterers' merged prototype sets merge (``dcx.core.merge``), with
``group_means`` as their prototypes, and where SwAV's neighbour codes find each image's nearest
images (``bank_neighbours``, ``sample_neighbours``). Each rank
writes the rows of the images it trained; ``sync`` at the epoch's end gives every rank all rows.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import nn

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


@torch.no_grad()
def bank_neighbours(rows: torch.Tensor, m: int, seed: int, rank: int = 0,
                    all_reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """(N, m) dataset indices of every row's m nearest other rows (L2 on the unit rows: the cosine
    order), on ``rows``' device. Rank 0 builds the graph (``dcx.core.knn``: exact, IVF above its size
    threshold) and hands it to every rank (``merge.from_rank0``)."""
    from dcx.core.knn import knn_graph
    from dcx.core.merge import from_rank0

    n = rows.shape[0]
    m = max(1, min(m, n - 1))

    def build() -> np.ndarray:
        found = knn_graph(rows.detach().float().cpu().numpy(), m, metric="l2", seed=seed).indices.astype(np.int64)
        # An approximate index can miss (-1): such a slot falls back to the row itself.
        return np.where(found < 0, np.arange(n)[:, None], found)

    return from_rank0(build, (n, m), rank, all_reduce, rows.device)


def sample_neighbours(table: torch.Tensor, indices: torch.Tensor, seed: int, step: int, rank: int = 0) -> torch.Tensor:
    """One of the ``table`` neighbours of each of ``indices``, drawn uniformly, the same for the same
    (seed, step, rank): a resumed run draws what the uninterrupted one drew."""
    gen = torch.Generator().manual_seed((int(seed) * 1_000_003 + int(step)) * 101 + int(rank))
    column = torch.randint(table.shape[1], (len(indices),), generator=gen).to(table.device)
    return table[indices.to(table.device), column]
