"""Geometric augmentation of a whole batch: torchvision's RandomResizedCrop, RandomAffine,
ElasticTransform and RandomHorizontalFlip with their own parameters per image, each step one
``grid_sample`` of the whole batch with the per-image chain's interpolation (bilinear crops,
nearest-neighbour affine warps, bilinear elastic warps, zeros outside).

Coordinates are normalised to [-1, 1] (``align_corners=False``). One bilinear resampling of the
composed chain measured to lose on digits (decisions D58): the steps stay separate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

#: torchvision's RandomResizedCrop aspect-ratio range and its number of attempts before falling back.
RATIO = (3 / 4, 4 / 3)
CROP_ATTEMPTS = 10
#: RandomAffine of the "affine" and "elastic" augmentations: the variation of handwriting (decisions D03).
DEGREES, TRANSLATE, ZOOM, SHEAR = 12.0, 0.08, (0.9, 1.1), 8.0
#: ElasticTransform (alpha = the image side, sigma = side / 8), applied to half of the images.
ELASTIC_P = 0.5


@dataclass(frozen=True)
class Geometry:
    """The geometric part of one view's augmentation (a source image of side ``source``)."""

    size: int
    scale: tuple[float, float]
    affine: bool = False
    elastic: bool = False
    flip: bool = False


def _uniform(n: int, low: float, high: float, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.rand(n, generator=gen, device=device, dtype=torch.float64) * (high - low) + low


def crop_boxes(n: int, side: int | torch.Tensor, scale: tuple[float, float], gen: torch.Generator,
               device: torch.device) -> torch.Tensor:
    """(n, 4) integer boxes (top, left, height, width) drawn as ``RandomResizedCrop.get_params`` on a
    square image of ``side`` pixels (one side, or one per image): up to 10 (area, aspect) draws, the
    first that fits, else the whole image."""
    side = torch.as_tensor(side, dtype=torch.float64, device=device).expand(n).reshape(n, 1)
    target = side * side * _uniform(n * CROP_ATTEMPTS, *scale, gen, device).view(n, CROP_ATTEMPTS)
    log_r = _uniform(n * CROP_ATTEMPTS, math.log(RATIO[0]), math.log(RATIO[1]), gen, device).view(n, CROP_ATTEMPTS)
    aspect = torch.exp(log_r)
    w = torch.round(torch.sqrt(target * aspect))
    h = torch.round(torch.sqrt(target / aspect))
    fits = (w > 0) & (w <= side) & (h > 0) & (h <= side)
    first = torch.argmax(fits.to(torch.uint8), dim=1, keepdim=True)  # first attempt that fits
    any_fit = fits.any(dim=1)
    side = side.squeeze(1)
    w = torch.where(any_fit, w.gather(1, first).squeeze(1), side)
    h = torch.where(any_fit, h.gather(1, first).squeeze(1), side)
    u = torch.rand(n, 2, generator=gen, device=device, dtype=torch.float64)
    top = torch.minimum(torch.floor(u[:, 0] * (side - h + 1)), side - h)
    left = torch.minimum(torch.floor(u[:, 1] * (side - w + 1)), side - w)
    return torch.stack([top, left, h, w], dim=1)


def affine_params(n: int, size: int, gen: torch.Generator,
                  device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per image (angle in degrees, (n, 2) whole-pixel shifts, zoom, x-shear in degrees) of
    ``RandomAffine(12, (0.08, 0.08), (0.9, 1.1), 8)`` on a ``size``-pixel image, as its ``get_params``."""
    angle = _uniform(n, -DEGREES, DEGREES, gen, device)
    max_shift = TRANSLATE * size
    shift = torch.round(_uniform(2 * n, -max_shift, max_shift, gen, device).view(n, 2))
    return angle, shift, _uniform(n, *ZOOM, gen, device), _uniform(n, -SHEAR, SHEAR, gen, device)


def inverse_affine(angle: torch.Tensor, shift: torch.Tensor, zoom: torch.Tensor, shear: torch.Tensor,
                   size: int) -> torch.Tensor:
    """(n, 2, 3) output -> input maps in normalised coordinates of torchvision's ``affine`` (centre of
    rotation at the image centre): the inverse of R(angle) · Shear_x(shear) · zoom, then the shift."""
    a, s = torch.deg2rad(angle), torch.deg2rad(shear)
    cos, sin, tan = torch.cos(a), torch.sin(a), torch.tan(s)
    forward = torch.stack([torch.stack([cos, -cos * tan - sin], -1), torch.stack([sin, -sin * tan + cos], -1)], -2)
    m = forward * zoom.view(-1, 1, 1)
    det = (m[:, 0, 0] * m[:, 1, 1] - m[:, 0, 1] * m[:, 1, 0]).view(-1, 1, 1)  # 2x2 inverse: no device sync
    inverse = torch.stack([torch.stack([m[:, 1, 1], -m[:, 0, 1]], -1), torch.stack([-m[:, 1, 0], m[:, 0, 0]], -1)],
                          -2) / det
    t = shift.to(inverse.dtype) * (2.0 / size)  # pixels -> normalised units
    return torch.cat([inverse, -(inverse @ t.unsqueeze(-1))], dim=2)


def gaussian_kernel(size: int, sigma: torch.Tensor) -> torch.Tensor:
    """(len(sigma), size) normalised 1-D Gaussian kernels (torchvision's ``_get_gaussian_kernel1d``)."""
    half = (size - 1) * 0.5
    x = torch.linspace(-half, half, size, device=sigma.device, dtype=sigma.dtype)
    pdf = torch.exp(-0.5 * (x.view(1, -1) / sigma.view(-1, 1)) ** 2)
    return pdf / pdf.sum(dim=1, keepdim=True)


def separable_blur(x: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """Blur each (C, H, W) image of ``x`` with its own 1-D kernel along both axes, reflect padding
    (torchvision's ``gaussian_blur``): one grouped convolution per axis for the whole batch."""
    b, c, h, w = x.shape
    k = kernels.shape[1]
    weight = kernels.to(x.dtype).repeat_interleave(c, dim=0)  # (b*c, k)
    y = F.pad(x.reshape(1, b * c, h, w), (k // 2, k // 2, k // 2, k // 2), mode="reflect")
    y = F.conv2d(y, weight.view(b * c, 1, 1, k), groups=b * c)
    y = F.conv2d(y, weight.view(b * c, 1, k, 1), groups=b * c)
    return y.view(b, c, h, w)


def elastic_displacements(n: int, size: int, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    """(n, size, size, 2) displacements of ``ElasticTransform(alpha=size, sigma=size / 8)`` in
    normalised units (uniform noise in [-1, 1] blurred by the Gaussian of sigma), zero for the half
    of the images it is not applied to."""
    sigma = size / 8
    k = int(8 * sigma + 1)
    k += 1 - k % 2
    noise = torch.rand(n, 2, size, size, generator=gen, device=device) * 2 - 1
    kernel = gaussian_kernel(k, torch.tensor([sigma], device=device, dtype=torch.float64)).expand(n, k)
    field = separable_blur(noise, kernel) * (float(size) / size)  # alpha / size, alpha = size
    applied = torch.rand(n, generator=gen, device=device) < ELASTIC_P
    return (field * applied.view(n, 1, 1, 1)).permute(0, 2, 3, 1)


def _base_grid(n: int, size: int, device: torch.device) -> torch.Tensor:
    c = (torch.arange(size, device=device, dtype=torch.float32) * 2 + 1) / size - 1
    gy, gx = torch.meshgrid(c, c, indexing="ij")
    return torch.stack([gx, gy], dim=-1).expand(n, size, size, 2)


def warp(images: torch.Tensor, g: Geometry, gen: torch.Generator, sides: torch.Tensor | None = None) -> torch.Tensor:
    """``images`` (n, C, S, S) float in [0, 1] -> (n, C, size, size), one geometric draw per image.

    ``sides``: each image's side where it was decoded from (its original's shorter side): crop boxes
    are drawn on that pixel grid, as torchvision's crop of the original (an 8-px digit gets an 8-px
    grid of boxes, however large it was decoded; decisions D58)."""
    n, _, stored, _ = images.shape
    device = images.device
    side = sides.to(device=device, dtype=torch.float64) if sides is not None else torch.full((n,), float(stored),
                                                                                            device=device,
                                                                                            dtype=torch.float64)
    box = crop_boxes(n, side, g.scale, gen, device)
    top, left, h, w = box.to(torch.float32).unbind(1)
    grid_side = side.to(torch.float32).view(n, 1)
    a = torch.stack([w, h], 1) / grid_side  # the box in normalised source coordinates: x -> a·x + b
    b = torch.stack([2 * left + w, 2 * top + h], 1) / grid_side - 1
    base = _base_grid(n, g.size, device)
    out = F.grid_sample(images, base * a.view(n, 1, 1, 2) + b.view(n, 1, 1, 2), mode="bilinear",
                        padding_mode="border", align_corners=False)
    if g.affine:  # RandomAffine's default nearest-neighbour sampling, zeros outside (decisions D58)
        m = inverse_affine(*affine_params(n, g.size, gen, device), g.size).to(torch.float32)
        grid = torch.einsum("nhwj,nij->nhwi", base, m[:, :, :2]) + m[:, :, 2].view(n, 1, 1, 2)
        out = F.grid_sample(out, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    if g.elastic:
        out = F.grid_sample(out, base + elastic_displacements(n, g.size, gen, device), mode="bilinear",
                            padding_mode="zeros", align_corners=False)
    if g.flip:
        flipped = torch.rand(n, generator=gen, device=device) < 0.5
        out = torch.where(flipped.view(n, 1, 1, 1), out.flip(-1), out)
    return out
