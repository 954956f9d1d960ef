"""Images into batches: (image, index, readable) items, unreadable images skipped or blanked and
counted, batches sharded over ranks, loaders whose randomness comes from the run seed alone."""

from __future__ import annotations

import logging
import weakref
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image

from dcx.core.contracts import ImageSet
from dcx.core.errors import UnreadableImage

log = logging.getLogger(__name__)


#: Unreadable images already warned about, per image sequence: one warning per file in this process,
#: however many passes and loaders (training, extraction) read it.
_WARNED: "weakref.WeakKeyDictionary[Any, set[int]]" = weakref.WeakKeyDictionary()


def _warned_for(images: Any) -> set[int]:
    try:
        return _WARNED.setdefault(images, set())
    except TypeError:  # not weakly referenceable or hashable (a list, an array): one set per loader
        return set()


class IndexedImages(torch.utils.data.Dataset):
    """(transformed image, index, readable) triples; the index looks up pseudo-labels that change
    per epoch.

    An image that fails to decode when read (``UnreadableImage``) is logged and either dropped
    from its batch (training: ``blank=None``) or replaced by a blank image of ``blank``'s size
    (extraction, where every row must exist); batches report the indices that failed.
    """

    def __init__(self, images: ImageSet, transform: Callable, blank: int | None = None) -> None:
        self.images = images.images
        self.transform = transform
        self.mode = "L" if images.channels == 1 else "RGB"
        self.blank = blank
        self.warned = _warned_for(self.images)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        try:
            return self.transform(self.images[i]), i, True
        except UnreadableImage as exc:
            if i not in self.warned:
                self.warned.add(i)
                log.warning("skipping image %d: %s", i, exc)
            if self.blank is None:
                return None, i, False
            return self.transform(Image.new(self.mode, (self.blank, self.blank), 128)), i, False


def collate(batch: list[tuple[Any, int, bool]]) -> tuple[Any, torch.Tensor, torch.Tensor]:
    """Stack the readable samples: (images or list of views, their indices, indices that failed)."""
    failed = torch.tensor([i for _, i, ok in batch if not ok], dtype=torch.long)
    kept = [(x, i) for x, i, _ in batch if x is not None]
    idx = torch.tensor([i for _, i in kept], dtype=torch.long)
    if not kept:
        return None, idx, failed
    first = kept[0][0]
    if isinstance(first, (list, tuple)):
        views = [torch.stack([x[v] for x, _ in kept]) for v in range(len(first))]
        return views, idx, failed
    return torch.stack([x for x, _ in kept]), idx, failed


class ShardedBatches(torch.utils.data.Sampler[list[int]]):
    """Global batches of ``batch_size`` indices drawn from ``base`` (the same order on every rank,
    from the run seed); each rank takes its contiguous ``batch_size / world_size`` part of each.

    Step i of an N-process run sees exactly the images of step i of a one-process run with the
    same global batch. A last incomplete global batch is dropped when ``drop_last`` (always when
    there are several ranks: they must take the same number of steps).
    """

    def __init__(self, base: torch.utils.data.Sampler, batch_size: int, rank: int = 0, world_size: int = 1,
                 drop_last: bool = True) -> None:
        self.base = base
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.per_rank = batch_size // world_size
        self.drop_last = drop_last or world_size > 1

    def __len__(self) -> int:
        n = len(self.base)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self):
        order = list(self.base)
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            if len(batch) < self.batch_size and self.drop_last:
                return
            yield batch[self.rank * self.per_rank : (self.rank + 1) * self.per_rank] if self.world_size > 1 else batch


def _seed_worker(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)


def loader(
    dataset: torch.utils.data.Dataset,
    batch_size: int,
    workers: int,
    sampler: torch.utils.data.Sampler | None = None,
    shuffle: bool = False,
    seed: int = 0,
    drop_last: bool = False,
    pin_memory: bool = False,
    batch_sampler: torch.utils.data.Sampler | None = None,
) -> torch.utils.data.DataLoader:
    """A DataLoader whose randomness comes from ``seed`` only (reproducible with workers too)."""
    gen = torch.Generator().manual_seed(int(seed))
    if batch_sampler is not None:
        return torch.utils.data.DataLoader(
            dataset, batch_sampler=batch_sampler, num_workers=workers, worker_init_fn=_seed_worker, generator=gen,
            pin_memory=pin_memory, persistent_workers=False, collate_fn=collate,
        )
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, shuffle=shuffle if sampler is None else False,
        num_workers=workers, worker_init_fn=_seed_worker, generator=gen, drop_last=drop_last,
        pin_memory=pin_memory, persistent_workers=False, collate_fn=collate,
    )


def derive_seed(*parts: int) -> int:
    """A 31-bit seed derived from the run seed and e.g. the epoch, stable across runs."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0] % (2**31 - 1))
