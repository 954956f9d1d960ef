"""A dataset's images as uint8 pixels at the training size: decoded once into one tensor when they
fit the memory budget, else decoded again on every read by the loader's workers; batches for
training (indices from a sampler, unreadable images dropped) and for extraction (unreadable
images blank, so every row exists)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch

from dcx.core.contracts import ImageSet
from dcx.core.progress import NullProgress, Progress
from dcx.data.loading import IndexedImages, loader
from dcx.data.transforms import decode_transform, normalize

Batch = tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]  # (pixels, indices, indices that failed)
#: The memory-mapped decoded images of ``cache`` stores (in the run directory while it trains), one per rank.
CACHE_FILE = "images-rank{rank}.u8.npy"


class DecodeWithSide:
    """One image -> (uint8 pixels at the training size, its original's shorter side): the grid its
    training crops are drawn on (``geometry.warp``)."""

    def __init__(self, size: int) -> None:
        self.transform = decode_transform(size)

    def __call__(self, img) -> tuple[torch.Tensor, torch.Tensor]:
        return self.transform(img), torch.tensor(min(img.size), dtype=torch.int32)


def _cache_file(folder: Path) -> Path:
    rank = torch.distributed.get_rank() if torch.distributed.is_available() and torch.distributed.is_initialized() else 0
    return folder / CACHE_FILE.format(rank=rank)


class DecodedImages:
    """``images`` at side ``size`` as uint8 (C, size, size) tensors.

    When N x C x size² bytes fit in ``memory_gb`` the whole set is decoded once, on first use, into
    one tensor (``pixels``) on ``device`` (a GPU's memory: batches never cross the bus again), and
    every later epoch and extraction slices it. Above it, with ``cache``, they are decoded once into
    a uint8 memory map in ``scratch`` (the run directory; a temporary folder until one is set), read
    back through the page cache; otherwise each batch is decoded again through ``workers`` loader
    processes.
    """

    def __init__(self, images: ImageSet, size: int, workers: int = 0, memory_gb: float = 2.0,
                 progress: Progress | None = None, device: torch.device | None = None, cache: bool = False) -> None:
        self.source = IndexedImages(images, DecodeWithSide(size), blank=size)
        self.n, self.channels, self.size = len(images), images.channels, size
        self.workers = workers
        fits = self.n * images.channels * size * size <= memory_gb * 1024**3
        #: Decoded once (in memory, or in the memory map of ``cache``) rather than on every read.
        self.in_memory = fits or cache
        self.mapped = cache and not fits
        self.scratch: Path | None = None
        self._tmp: tempfile.TemporaryDirectory | None = None
        self.progress = progress or NullProgress()
        self.device = device or torch.device("cpu")
        self._pixels: torch.Tensor | None = None
        self._readable: torch.Tensor | None = None
        self._sides: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.n

    def _decode_all(self) -> None:
        shape = (self.n, self.channels, self.size, self.size)
        pixels = torch.from_numpy(self._map(shape)) if self.mapped else torch.empty(shape, dtype=torch.uint8)
        readable = torch.ones(self.n, dtype=torch.bool)
        sides = torch.empty(self.n, dtype=torch.int32)
        with self.progress.task("decode images", self.n) as advance:
            for (x, side), idx, failed in loader(self.source, 256, self.workers):
                pixels[idx] = x
                sides[idx] = side
                readable[failed] = False
                advance(len(idx))
        self._pixels, self._readable = (pixels if self.mapped else pixels.to(self.device)), readable
        self._sides = sides

    def _map(self, shape: tuple[int, ...]) -> np.ndarray:
        if self.scratch is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="dcx-images-")
            self.scratch = Path(self._tmp.name)
        return np.lib.format.open_memmap(_cache_file(self.scratch), mode="w+", dtype=np.uint8, shape=shape)

    def close(self) -> None:
        """Remove the memory-mapped images, if any."""
        self._pixels = None
        if self.mapped and self.scratch is not None:
            _cache_file(self.scratch).unlink(missing_ok=True)
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    @property
    def pixels(self) -> torch.Tensor:
        """(N, C, size, size) uint8, decoded on first use (in-memory sets only)."""
        if self._pixels is None:
            self._decode_all()
        return self._pixels  # type: ignore[return-value]

    def training(self, batches: Iterable[list[int]], pin_memory: bool = False) -> Iterator[tuple[Batch, torch.Tensor]]:
        """(uint8 batch, indices, failed indices), original sides, for the index lists ``batches``;
        images that fail to decode are left out (pixels None when all of a batch failed)."""
        if not self.in_memory:
            yield from self._streamed(batches, pin_memory)
            return
        pixels, readable, sides = self.pixels, self._readable, self._sides
        for batch in batches:
            idx = torch.as_tensor(batch, dtype=torch.long)
            ok = readable[idx]
            failed, idx = idx[~ok], idx[ok]
            x = pixels.index_select(0, idx.to(pixels.device)) if len(idx) else None
            yield (x, idx, failed), sides[idx]

    def _streamed(self, batches: Iterable[list[int]], pin_memory: bool) -> Iterator[tuple[Batch, torch.Tensor]]:
        for (x, sides), idx, failed in loader(self.source, 0, self.workers, batch_sampler=batches,
                                              pin_memory=pin_memory):
            if len(failed):  # decoded as blanks: training leaves them out
                keep = ~torch.isin(idx, failed)
                x, idx, sides = (x[keep] if keep.any() else None), idx[keep], sides[keep]
            yield (x, idx, failed), sides

    def extraction(self, indices: range, batch_size: int, pin_memory: bool = False) -> Iterator[Batch]:
        """Normalised float batches of ``indices`` in order, a blank image for each unreadable one."""
        if not self.in_memory:
            for (x, _), idx, failed in loader(self.source, batch_size, self.workers, sampler=list(indices),
                                              pin_memory=pin_memory):
                yield normalize(x), idx, failed
            return
        pixels, readable = self.pixels, self._readable
        for start in range(indices.start, indices.stop, batch_size):
            idx = torch.arange(start, min(start + batch_size, indices.stop))
            yield normalize(pixels[idx.to(pixels.device)]), idx, idx[~readable[idx]]
