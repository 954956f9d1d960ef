"""What images go through: ``decode_transform`` turns one image into uint8 pixels at the training
size (the geometry of extraction, paper §4); ``Augment`` turns a uint8 batch into a training step's
views (crops, affine and elastic warps, flips, photometric jitter), the whole batch at once on its
device (``geometry``, ``photometric``), with torchvision's per-image parameter distributions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torchvision import transforms as T

from dcx.core.contracts import CropSpec
from dcx.data.geometry import Geometry, warp
from dcx.data.photometric import colour_jitter, gaussian_blur

MEAN, STD = 0.5, 0.5  # images are scaled to [-1, 1]; Sobel and BN make the exact choice immaterial


def decode_transform(image_size: int) -> Callable:
    """Resize + centre crop to uint8 (C, S, S): what is decoded once and both trained on and extracted."""
    return T.Compose([T.Resize(image_size), T.CenterCrop(image_size), T.PILToTensor()])


def normalize(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> floats in [-1, 1] (the same operations as ToTensor + Normalize)."""
    return pixels.to(torch.float32).div(255).sub(MEAN).div(STD)


def eval_transform(image_size: int, channels: int) -> Callable:
    """Resize + centre crop + normalise one PIL image: the deterministic transform of extraction."""
    return T.Compose([T.Resize(image_size), T.CenterCrop(image_size), T.ToTensor(),
                      T.Normalize([MEAN] * channels, [STD] * channels)])


AUGMENTS = ("crop", "affine", "elastic")


#: Smallest area of a training crop (reference: torchvision's 0.08), keyed by "image larger than
#: 64 px": small images keep at least half of the image (docs/decisions.md D04).
MIN_CROP_SCALE = {True: 0.08, False: 0.5}


@dataclass(frozen=True)
class View:
    """One view of a training step: its geometry and its photometric jitter strength (0: none)."""

    geometry: Geometry
    jitter: float = 0.0


class Augment:
    """A training step's views of a uint8 batch (n, C, S, S), each with its own draw per image.

    ``augment``: "crop" (RandomResizedCrop, the reference), "affine" (+ rotations up to 12 degrees,
    shifts of 8 %, zoom of 10 %, shear of 8 degrees: the variation of handwriting), "elastic" (+
    elastic warps of alpha = the image side, half the time); flips when the dataset allows them;
    ``jitter`` > 0 adds SimCLR/SwAV's photometric distortion at that strength.
    """

    def __init__(self, views: Sequence[View], channels_last: bool = False) -> None:
        self.views = list(views)
        self.channels_last = channels_last

    def __len__(self) -> int:
        return len(self.views)

    def __call__(self, pixels: torch.Tensor, gen: torch.Generator, sides: torch.Tensor | None = None) -> list[torch.Tensor]:
        """``sides``: each image's original side (``DecodedImages.sides``), the grid its crops are drawn on."""
        x = pixels.to(torch.float32).div(255)
        out = []
        for view in self.views:
            y = warp(x, view.geometry, gen, sides)
            if view.jitter > 0:
                y = gaussian_blur(colour_jitter(y, view.jitter, gen), gen)
            y = y.sub(MEAN).div(STD)
            out.append(y.contiguous(memory_format=torch.channels_last) if self.channels_last else y)
        return out


def _view(size: int, flip: bool, scale: tuple[float, float], augment: str, jitter: float) -> View:
    return View(Geometry(size, scale, affine=augment in ("affine", "elastic"), elastic=augment == "elastic",
                         flip=flip), jitter)


def train_augment(image_size: int, flip: bool, min_scale: float, augment: str = "crop", jitter: float = 0.0,
                  channels_last: bool = False) -> Augment:
    """One view per image: the offline clusterers' training augmentation."""
    return Augment([_view(image_size, flip, (min_scale, 1.0), augment, jitter)], channels_last)


def multi_crop(spec: CropSpec, image_size: int, flip: bool, min_size: int = 8, augment: str = "crop",
               jitter: float = 0.0, channels_last: bool = False) -> Augment:
    """SwAV multi-crop: ``n_large`` crops at ``image_size`` then ``n_small`` smaller ones."""
    # Small crops never go below what the backbone accepts (a 14-px crop breaks AlexNet).
    small = max(min_size, int(round(image_size * spec.small_size_ratio)))
    large = _view(image_size, flip, spec.large_scale, augment, jitter)
    return Augment([large] * spec.n_large + [_view(small, flip, spec.small_scale, augment, jitter)] * spec.n_small,
                   channels_last)
