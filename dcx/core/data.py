"""Transforms and loaders: deterministic for extraction, augmented (or multi-crop) for training."""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torchvision import transforms as T

from dcx.core.contracts import CropSpec, ImageSet

MEAN, STD = 0.5, 0.5  # images are scaled to [-1, 1]; Sobel and BN make the exact choice immaterial


def _tail(channels: int) -> list:
    return [T.ToTensor(), T.Normalize([MEAN] * channels, [STD] * channels)]


def eval_transform(image_size: int, channels: int) -> Callable:
    """Resize + centre crop: the deterministic transform of feature extraction (paper §4)."""
    return T.Compose([T.Resize(image_size), T.CenterCrop(image_size), *_tail(channels)])


def train_transform(image_size: int, channels: int, flip: bool, min_scale: float) -> Callable:
    """RandomResizedCrop (+ horizontal flip when the dataset allows it), as the reference."""
    steps = [T.RandomResizedCrop(image_size, scale=(min_scale, 1.0), antialias=True)]
    if flip:
        steps.append(T.RandomHorizontalFlip())
    return T.Compose([*steps, *_tail(channels)])


class MultiCrop:
    """SwAV multi-crop: ``n_large`` crops at ``image_size`` then ``n_small`` smaller ones."""

    def __init__(self, spec: CropSpec, image_size: int, channels: int, flip: bool, min_size: int = 8) -> None:
        # Small crops never go below what the backbone accepts (a 14-px crop breaks AlexNet).
        small = max(min_size, int(round(image_size * spec.small_size_ratio)))
        large_t = train_transform(image_size, channels, flip, spec.large_scale[0])
        large_t.transforms[0] = T.RandomResizedCrop(image_size, scale=spec.large_scale, antialias=True)
        small_t = train_transform(small, channels, flip, spec.small_scale[0])
        small_t.transforms[0] = T.RandomResizedCrop(small, scale=spec.small_scale, antialias=True)
        self.transforms = [large_t] * spec.n_large + [small_t] * spec.n_small
        self.n_large = spec.n_large

    def __call__(self, img) -> list[torch.Tensor]:
        return [t(img) for t in self.transforms]


class IndexedImages(torch.utils.data.Dataset):
    """(transformed image, index) pairs; the index looks up pseudo-labels that change per epoch."""

    def __init__(self, images: ImageSet, transform: Callable) -> None:
        self.images = images.images
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.transform(self.images[i]), i


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
) -> torch.utils.data.DataLoader:
    """A DataLoader whose randomness comes from ``seed`` only (reproducible with workers too)."""
    gen = torch.Generator().manual_seed(int(seed))
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, shuffle=shuffle if sampler is None else False,
        num_workers=workers, worker_init_fn=_seed_worker, generator=gen, drop_last=drop_last,
        pin_memory=pin_memory, persistent_workers=False,
    )


def derive_seed(*parts: int) -> int:
    """A 31-bit seed derived from the run seed and e.g. the epoch, stable across runs."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0] % (2**31 - 1))
