"""An epoch's training batches on the device: uint8 pixels from ``DecodedImages``, moved once, augmented
there as a batch from a seeded generator, with the epoch's time split into data (decode + augment)
and waits (on loader workers)."""

from __future__ import annotations

import time
from typing import Iterator, Sized

import torch

from dcx.data.decoded import DecodedImages
from dcx.data.transforms import Augment

Views = list[torch.Tensor]


class TrainingBatches:
    """Augmented views of the batches a batch sampler draws, on ``device``.

    ``seed`` fixes every augmentation parameter of the epoch (a generator on the device), so an
    epoch repeats exactly on the same machine kind; ``time_split`` gives the seconds spent in data
    work and in waits since the last call.
    """

    def __init__(self, images: DecodedImages, augment: Augment, device: torch.device) -> None:
        self.images, self.augment, self.device = images, augment, device
        self.cuda = device.type == "cuda"
        self._data = self._wait = 0.0
        self._images = 0
        self._events: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []

    def epoch(self, batch_sampler: Sized, seed: int) -> "_Epoch":
        return _Epoch(self, batch_sampler, seed)

    def _iterate(self, batch_sampler: Sized, seed: int) -> Iterator[tuple[Views | None, torch.Tensor, torch.Tensor]]:
        gen = torch.Generator(device=self.device).manual_seed(int(seed))
        source = iter(self.images.training(batch_sampler, pin_memory=self.cuda))
        waits_on_workers = self.images.workers > 0 and not self.images.in_memory
        while True:
            t0 = time.perf_counter()
            try:
                (pixels, idx, failed), sides = next(source)
            except StopIteration:
                return
            t1 = time.perf_counter()
            if waits_on_workers:
                self._wait += t1 - t0
            else:
                self._data += t1 - t0
            if pixels is None:
                yield None, idx, failed
                continue
            if self.cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
            views = self.augment(pixels.to(self.device, non_blocking=True), gen, sides)
            self._images += len(idx)
            if self.cuda:
                end.record()
                self._events.append((start, end))
            else:
                self._data += time.perf_counter() - t1
            yield views, idx, failed

    def time_split(self, seconds: float) -> dict[str, float]:
        """{time_data, time_step, time_wait, images_per_s} of ``seconds`` of training since the last call;
        on CUDA the augmentation's device time (one synchronisation, here, not per step)."""
        if self._events:
            torch.cuda.synchronize(self.device)
            self._data += sum(s.elapsed_time(e) for s, e in self._events) / 1000
        data, wait, images = self._data, self._wait, self._images
        self._data = self._wait = 0.0
        self._images, self._events = 0, []
        return {"time_data": data, "time_step": max(0.0, seconds - data - wait), "time_wait": wait,
                "images_per_s": images / seconds if seconds > 0 else 0.0}


class _Epoch:
    def __init__(self, owner: TrainingBatches, batch_sampler: Sized, seed: int) -> None:
        self.owner, self.batch_sampler, self.seed = owner, batch_sampler, seed

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def __iter__(self):
        return self.owner._iterate(self.batch_sampler, self.seed)
