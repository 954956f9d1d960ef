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
#: Rows a slot keeps in arrival order before they are scattered into the bank.
PENDING_ROWS = 16_384
#: torch's GRAIN_SIZE: element-wise copies up to this many elements run on the calling thread.
_GRAIN = 32_768


class MemoryBank:
    """(slots, N, d) embeddings, one slot per large crop; ``rows[s][i]`` is image i's last embedding in slot s.

    A training step's write is a slice copy into a per-slot buffer in arrival order, as the reference's
    (``main_deepclusterv2.py`` writes its bank and an index array by position); the buffer is scattered
    into the rows by index when it fills or the rows are read. An indexed write per step cost ~4x the
    reference's slice copy (docs/benchmarks.md "Sinkhorn and per-step ops under load").
    """

    def __init__(self, rows: torch.Tensor) -> None:
        if rows.dim() != 3:
            raise ValueError(f"a memory bank holds (slots, N, d) rows, got shape {tuple(rows.shape)}")
        self._rows = rows
        self._written: torch.Tensor | None = None  # (N,) rows this rank wrote since start_epoch
        self._pending: list[tuple[torch.Tensor, torch.Tensor]] = []  # per slot: (rows (cap, d), indices (cap,))
        self._count: list[int] = []  # per slot: buffered rows

    @property
    def rows(self) -> torch.Tensor:
        """(slots, N, d), every write so far included."""
        self._flush()
        return self._rows

    @rows.setter
    def rows(self, value: torch.Tensor) -> None:
        self._flush()
        if value.shape != self._rows.shape or value.dtype != self._rows.dtype or value.device != self._rows.device:
            self._pending, self._count = [], []  # reallocated at the next write
        self._rows = value

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
        self._written = torch.zeros(self._rows.shape[1], dtype=torch.bool, device=self._rows.device)

    def write(self, slot: int, indices: torch.Tensor, z: torch.Tensor) -> None:
        """Image ``indices[j]``'s embedding in ``slot`` becomes ``z[j]`` (the latest write of an image wins).

        Called every step, so kept lean: no autograd context (``z`` is detached) and no thread switch
        below torch's grain of 32,768 elements, where a copy never enters the thread pool."""
        if not self._pending:
            self._allocate()
        buf, idx = self._pending[slot]
        b, c = indices.shape[0], self._count[slot]
        if c + b > self._cap:
            with torch.no_grad():
                self._flush_slot(slot)
                c = 0
                if b > self._cap:  # a batch larger than the buffer: scatter it directly
                    self._scatter(slot, indices.to(self._rows.device), z.detach().to(self._rows.dtype))
                    return
        if z.requires_grad:
            z = z.detach()
        if z.numel() > _GRAIN:
            with one_thread_if_small(z.numel(), z.device):  # never wait on a busy core
                buf[c : c + b] = z
                idx[c : c + b] = indices
        else:
            buf[c : c + b] = z
            idx[c : c + b] = indices
        self._count[slot] = c + b

    def _allocate(self) -> None:
        slots, n, d = self._rows.shape
        cap = self._cap = min(n, PENDING_ROWS)
        dev = self._rows.device
        # zeros, not empty: pages touched once here, not on the first steps' writes
        self._pending = [(torch.zeros(cap, d, dtype=self._rows.dtype, device=dev),
                          torch.zeros(cap, dtype=torch.long, device=dev)) for _ in range(slots)]
        self._count = [0] * slots

    def _flush(self) -> None:
        for slot in range(len(self._pending)):
            self._flush_slot(slot)

    @torch.no_grad()
    def _flush_slot(self, slot: int) -> None:
        c = self._count[slot]
        if c == 0:
            return
        buf, idx = self._pending[slot]
        self._scatter(slot, idx[:c], buf[:c])
        self._count[slot] = 0

    def _scatter(self, slot: int, indices: torch.Tensor, z: torch.Tensor) -> None:
        # Several passes per epoch write an image more than once: keep each index's last row only
        # (index_copy_ leaves the winner of duplicates undefined).
        uniq, inverse = torch.unique(indices, return_inverse=True)
        order = torch.arange(len(indices), device=indices.device)
        last = torch.full((len(uniq),), -1, dtype=torch.long, device=indices.device).scatter_reduce_(
            0, inverse, order, "amax")
        self._rows[slot].index_copy_(0, uniq, z[last])
        if self._written is not None:
            self._written[uniq] = True

    @torch.no_grad()
    def sync(self, all_reduce: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Every rank gets the rows each rank wrote since ``start_epoch`` (the mean where several
        wrote one, as a distributed sampler's padding repeats a few images)."""
        self._flush()
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
