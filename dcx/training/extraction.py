"""Feature extraction: eval-mode features of every image, streamed in batches, in dataset order,
in RAM or a memory map above the memory budget, sharded over ranks and gathered on every rank."""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable

import numpy as np

from dcx.algorithms.arrays import check_finite
from dcx.core.errors import InputError

if TYPE_CHECKING:  # pragma: no cover - torch is imported by extraction only
    import torch

    from dcx.training.distributed import World
    from dcx.core.progress import Progress

#: Name of the memory-mapped feature file (features over the memory budget).
FEATURES_FILE = "features.f32.npy"


def extract(
    model: torch.nn.Module,
    batches: Iterable,
    n: int,
    device: torch.device,
    forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
    on_batch: Callable[[int], None] | None = None,
    on_failed: Callable[[torch.Tensor], None] | None = None,
    out: np.ndarray | None = None,
    expected: int | None = None,
) -> np.ndarray:
    """Run ``model`` in eval mode over ``batches`` of (images, indices, failed indices) and stack
    the outputs (N, d), row i for dataset index i; a batch of several views of each image gives
    the mean of their outputs.

    The model's train/eval state is restored afterwards. ``forward`` replaces ``model(x)``
    (e.g. to take an intermediate block); ``on_batch`` receives the batch size (progress);
    ``on_failed`` the indices of images that could not be read (blank rows). ``out`` (e.g. a
    memory map) receives the rows instead of a new array; ``expected`` is how many rows the
    batches hold (default ``n``; one rank's block in a distributed run).
    """
    import torch

    was_training = model.training
    model.eval()
    pos = 0
    expected = n if expected is None else expected
    no_grad = torch.no_grad()
    no_grad.__enter__()
    try:
        for batch in batches:
            x, idx = (batch[0], batch[1]) if isinstance(batch, (tuple, list)) else (batch, None)
            views = x if isinstance(x, (list, tuple)) else [x]  # several views of each image: their mean
            y = sum((forward or model)(v.to(device, non_blocking=True)).reshape(len(v), -1).float() for v in views)
            y = (y / len(views)).cpu().numpy()
            if out is None:
                out = np.empty((n, y.shape[1]), dtype=np.float32)
            if idx is None:
                out[pos : pos + len(y)] = y
            else:
                out[idx.numpy()] = y
            pos += len(y)
            if on_failed is not None and len(batch) > 2 and len(batch[2]):
                on_failed(batch[2])
            if on_batch is not None:
                on_batch(len(y))
    finally:
        no_grad.__exit__(None, None, None)
        model.train(was_training)
    if pos != expected or (out is None and expected):
        raise InputError(f"feature extraction saw {pos} images, expected {expected}: the dataset changed while reading")
    return out if out is not None else np.empty((n, 0), dtype=np.float32)


class FeatureExtractor:
    """(N, d) features of every image of ``images`` (``DecodedImages``, normalised as extraction wants)
    from ``model``, on every rank. Each rank extracts its block of rows; blocks meet in a shared memory
    map (above ``memory_gb``, in ``scratch`` or a temporary folder) or by an all-gather."""

    def __init__(self, model: torch.nn.Module, images, device: torch.device, world: World, batch_size: int,
                 workers: int, memory_gb: float, autocast: Callable[[], contextlib.AbstractContextManager],
                 progress: Progress, on_failed: Callable[[torch.Tensor], None]) -> None:
        self.model, self.images, self.device, self.world = model, images, device, world
        self.batch = max(batch_size // world.size, 128)
        self.workers, self.memory_gb, self.autocast = workers, memory_gb, autocast
        self.progress, self.on_failed = progress, on_failed
        self.n = len(images)
        #: Where features over the memory budget are memory-mapped (the run directory when known).
        self.scratch: Path | None = None
        self._tmp: tempfile.TemporaryDirectory | None = None

    def __call__(self, desc: str = "extract") -> np.ndarray:
        world = self.world
        block = world.block(self.n)
        cuda = self.device.type == "cuda"
        batches = self.images.extraction(range(block.start, block.stop), self.batch, pin_memory=cuda)
        with self.progress.task(desc, block.stop - block.start) as advance, self.autocast():
            feats = extract(self.model, batches, self.n, self.device, on_batch=advance, on_failed=self.on_failed,
                            out=self._array(self.model.feature_dim), expected=block.stop - block.start)
        if world.distributed:
            if isinstance(feats, np.memmap):
                feats.flush()
                world.barrier()
            else:
                import torch

                feats = world.all_gather_rows(feats[block], self.device if cuda else torch.device("cpu"))
        check_finite(feats[block] if world.distributed else feats, "backbone features")
        return feats

    def _array(self, d: int) -> np.ndarray:
        """Where the (N, d) features go: RAM, or a memory map once over ``memory_gb``."""
        if self.n * d * 4 <= self.memory_gb * 1024**3:
            return np.empty((self.n, d), dtype=np.float32)
        if self.scratch is None:
            self._tmp = self._tmp or tempfile.TemporaryDirectory(prefix="dcx-features-")
            self.scratch = Path(self._tmp.name)
        path = self.scratch / FEATURES_FILE
        if self.world.is_main:
            np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(self.n, d)).flush()
        self.world.barrier()
        return np.lib.format.open_memmap(path, mode="r+")

    def close(self) -> None:
        """Remove the memory-mapped features, if any."""
        if self.world.is_main and self.scratch is not None and (self.scratch / FEATURES_FILE).exists():
            (self.scratch / FEATURES_FILE).unlink(missing_ok=True)
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
