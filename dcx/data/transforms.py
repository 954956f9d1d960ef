"""Transforms of one image: deterministic for extraction, augmented (crops, affine and elastic warps,
photometric jitter) or multi-crop for training."""

from __future__ import annotations

from typing import Callable

import torch
from torchvision import transforms as T

from dcx.core.contracts import CropSpec

MEAN, STD = 0.5, 0.5  # images are scaled to [-1, 1]; Sobel and BN make the exact choice immaterial


def _tail(channels: int) -> list:
    return [T.ToTensor(), T.Normalize([MEAN] * channels, [STD] * channels)]


def eval_transform(image_size: int, channels: int) -> Callable:
    """Resize + centre crop: the deterministic transform of feature extraction (paper §4)."""
    return T.Compose([T.Resize(image_size), T.CenterCrop(image_size), *_tail(channels)])


AUGMENTS = ("crop", "affine", "elastic")


#: Smallest area of a training crop (reference: torchvision's 0.08), keyed by "image larger than
#: 64 px": small images keep at least half of the image (docs/decisions.md D04).
MIN_CROP_SCALE = {True: 0.08, False: 0.5}


def train_transform(image_size: int, channels: int, flip: bool, min_scale: float, augment: str = "crop",
                    max_scale: float = 1.0, jitter: float = 0.0) -> Callable:
    """RandomResizedCrop (+ horizontal flip when the dataset allows it), as the reference.

    ``augment``: "crop" (the reference), "affine" (+ rotations up to 12 degrees, shifts of 8 %, zoom of
    10 %, shear of 8 degrees: the variation of handwriting), "elastic" (+ elastic warps of alpha = the
    image side, half the time); ``jitter`` > 0 adds SimCLR/SwAV's photometric distortion at that
    strength (colour jitter with p 0.8, Gaussian blur with p 0.5).
    """
    steps: list = [T.RandomResizedCrop(image_size, scale=(min_scale, max_scale), antialias=True)]
    if augment in ("affine", "elastic"):
        steps.append(T.RandomAffine(degrees=12.0, translate=(0.08, 0.08), scale=(0.9, 1.1), shear=8.0))
    if augment == "elastic":
        steps.append(T.RandomApply([T.ElasticTransform(alpha=float(image_size), sigma=image_size / 8)], p=0.5))
    if flip:
        steps.append(T.RandomHorizontalFlip())
    if jitter > 0:
        colour = dict(saturation=jitter, hue=min(jitter / 4, 0.5)) if channels == 3 else {}
        steps.append(T.RandomApply([T.ColorJitter(brightness=jitter, contrast=jitter, **colour)], p=0.8))
        # SimCLR's blur: a kernel of ~10% of the side (odd, at least 3), sigma in [0.1, 2].
        kernel = max(3, image_size // 10 | 1)
        steps.append(T.RandomApply([T.GaussianBlur(kernel, sigma=(0.1, 2.0))], p=0.5))
    return T.Compose([*steps, *_tail(channels)])


class MultiCrop:
    """SwAV multi-crop: ``n_large`` crops at ``image_size`` then ``n_small`` smaller ones."""

    def __init__(self, spec: CropSpec, image_size: int, channels: int, flip: bool, min_size: int = 8,
                 augment: str = "crop", jitter: float = 0.0) -> None:
        # Small crops never go below what the backbone accepts (a 14-px crop breaks AlexNet).
        small = max(min_size, int(round(image_size * spec.small_size_ratio)))
        large_t = train_transform(image_size, channels, flip, spec.large_scale[0], augment, spec.large_scale[1],
                                  jitter)
        small_t = train_transform(small, channels, flip, spec.small_scale[0], augment, spec.small_scale[1], jitter)
        self.transforms = [large_t] * spec.n_large + [small_t] * spec.n_small
        self.n_large = spec.n_large

    def __call__(self, img) -> list[torch.Tensor]:
        return [t(img) for t in self.transforms]
