"""The batched augmentation against torchvision's per-image transforms: the same parameter
distributions (crop areas and aspects, angles, shifts, zooms, shears, elastic displacements, the
probabilities), the same image for the same parameters, and a seed that fixes a batch."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import ks_2samp
from torchvision import transforms as T
from torchvision.transforms import functional as TF

from dcx import data as D
from dcx.core.contracts import CropSpec
from dcx.data import geometry as G
from dcx.data import photometric as P

N = 4000
CPU = torch.device("cpu")


def _same_distribution(a, b) -> None:
    """Two samples of one distribution: a KS test that would flag a shifted or rescaled range."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    assert ks_2samp(a, b).pvalue > 1e-3, (a.mean(), b.mean(), a.std(), b.std())


@pytest.mark.parametrize("scale,side", [((0.5, 1.0), 32), ((0.08, 1.0), 32), ((0.05, 0.14), 32), ((0.5, 1.0), 8)])
def test_crop_boxes_follow_random_resized_crop(scale, side):
    box = G.crop_boxes(N, side, scale, torch.Generator().manual_seed(0), CPU).numpy()
    torch.manual_seed(0)
    img = torch.zeros(1, side, side)
    ref = np.array([T.RandomResizedCrop.get_params(img, list(scale), [3 / 4, 4 / 3]) for _ in range(N)], dtype=float)
    for col in range(4):  # top, left, height, width
        _same_distribution(box[:, col], ref[:, col])
    _same_distribution(box[:, 2] * box[:, 3] / side**2, ref[:, 2] * ref[:, 3] / side**2)
    assert (box[:, 0] + box[:, 2] <= side).all() and (box[:, 1] + box[:, 3] <= side).all() and (box >= 0).all()


def test_affine_parameters_follow_random_affine():
    angle, shift, zoom, shear = G.affine_params(N, 32, torch.Generator().manual_seed(1), CPU)
    torch.manual_seed(1)
    ref = [T.RandomAffine.get_params([-12.0, 12.0], [0.08, 0.08], [0.9, 1.1], [-8.0, 8.0, 0.0, 0.0], [32, 32])
           for _ in range(N)]
    _same_distribution(angle, [r[0] for r in ref])
    _same_distribution(shift[:, 0], [r[1][0] for r in ref])
    _same_distribution(shift[:, 1], [r[1][1] for r in ref])
    _same_distribution(zoom, [r[2] for r in ref])
    _same_distribution(shear, [r[3][0] for r in ref])
    assert angle.abs().max() <= 12 and shift.abs().max() <= round(0.08 * 32) and shear.abs().max() <= 8


def _inside(points: torch.Tensor, side: int) -> torch.Tensor:
    """Bilinear weight of the inside of a ``side``-pixel image at normalised ``points``."""
    u = ((points + 1) * side - 1) / 2
    w = torch.clamp(torch.minimum(1 + u, side - u), 0, 1)
    return w[..., 0] * w[..., 1]


def test_affine_warp_is_torchvisions_for_the_same_parameters():
    """For given parameters the batched warp reads the same pixels as torchvision's ``affine``
    (bilinear), wherever neither reads across the image border."""
    g = torch.Generator().manual_seed(2)
    img = torch.rand(6, 1, 24, 24, generator=g)
    angle, shift, zoom, shear = G.affine_params(6, 24, g, CPU)
    m = G.inverse_affine(angle, shift, zoom, shear, 24).float()
    grid = torch.einsum("nhwj,nij->nhwi", G._base_grid(6, 24, CPU), m[:, :, :2]) + m[:, :, 2].view(6, 1, 1, 2)
    ours = torch.nn.functional.grid_sample(img, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    inside = _inside(grid, 24)
    for i in range(6):
        ref = TF.affine(img[i], float(angle[i]), [int(shift[i, 0]), int(shift[i, 1])], float(zoom[i]),
                        [float(shear[i]), 0.0], interpolation=T.InterpolationMode.BILINEAR)
        full = inside[i] == 1
        assert full.sum() > 200
        assert torch.allclose(ours[i, 0][full], ref[0][full], atol=1e-4)


def test_crop_is_torchvisions_resized_crop():
    img = torch.rand(1, 1, 32, 32, generator=torch.Generator().manual_seed(3))
    geometry = G.Geometry(32, (0.3, 0.6))
    g = torch.Generator().manual_seed(4)
    out = G.warp(img, geometry, g)
    top, left, h, w = (int(v) for v in G.crop_boxes(1, 32, (0.3, 0.6), torch.Generator().manual_seed(4), CPU)[0])
    ref = TF.resized_crop(img[0], top, left, h, w, [32, 32], antialias=False)
    # The outer pixel ring differs by design: it reads the image just beyond the box, where torchvision
    # clamps to the box's edge.
    assert torch.allclose(out[0, :, 1:-1, 1:-1], ref[:, 1:-1, 1:-1], atol=1e-4)


def test_elastic_displacements_follow_elastic_transform():
    size = 28
    field = G.elastic_displacements(400, size, torch.Generator().manual_seed(5), CPU)
    moved = field.abs().amax(dim=(1, 2, 3)) > 0
    assert 0.42 < moved.float().mean() < 0.58  # applied with p 0.5
    torch.manual_seed(5)
    ref = torch.cat([T.ElasticTransform.get_params([float(size)] * 2, [size / 8] * 2, [size, size])
                     for _ in range(200)])
    _same_distribution(field[moved].abs().flatten()[::97], ref.abs().flatten()[::97])


def test_separable_blur_is_torchvisions_gaussian_blur():
    x = torch.rand(3, 2, 20, 20, generator=torch.Generator().manual_seed(6))
    sigma = torch.tensor([0.3, 1.0, 1.9], dtype=torch.float64)
    ours = G.separable_blur(x, G.gaussian_kernel(5, sigma))
    for i in range(3):
        assert torch.allclose(ours[i], TF.gaussian_blur(x[i], [5, 5], [float(sigma[i])] * 2), atol=1e-5)


def test_hue_rotation_is_torchvisions_adjust_hue():
    x = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(7))
    shift = torch.tensor([-0.2, -0.05, 0.1, 0.25])
    ours = P._hue(x, shift)
    for i in range(4):
        assert torch.allclose(ours[i], TF.adjust_hue(x[i], float(shift[i])), atol=1e-5)


def test_colour_jitter_draws_torchvisions_factors_with_p_08():
    """A flat grey image's brightness changes by the drawn factor: over many images the factors of the
    jittered 80 % spread over [0.6, 1.4] (strength 0.4) and the rest stay unchanged."""
    x = torch.full((N, 1, 2, 2), 0.5)
    out = P.colour_jitter(x, 0.4, torch.Generator().manual_seed(8))[:, 0, 0, 0] / 0.5  # contrast keeps flat images
    changed = (out - 1).abs() > 1e-6
    assert 0.77 < changed.float().mean() < 0.83
    _same_distribution(out[changed], np.random.default_rng(0).uniform(0.6, 1.4, int(changed.sum())))


def test_blur_applies_to_half_the_images():
    x = torch.zeros(N, 1, 16, 16)
    x[:, :, 8, 8] = 1
    out = P.gaussian_blur(x, torch.Generator().manual_seed(9))
    blurred = out[:, 0, 8, 8] < 0.999
    assert 0.46 < blurred.float().mean() < 0.54
    assert torch.allclose(out.sum(dim=(1, 2, 3)), torch.ones(N), atol=1e-4)  # reflect padding keeps the mass here


@pytest.mark.parametrize("augment", ["crop", "affine", "elastic"])
def test_a_seed_gives_the_same_batch_and_another_seed_another(augment):
    pixels = (torch.rand(16, 3, 32, 32, generator=torch.Generator().manual_seed(10)) * 255).to(torch.uint8)
    aug = D.train_augment(32, True, 0.5, augment, jitter=0.4)
    a = aug(pixels, torch.Generator().manual_seed(1))[0]
    b = aug(pixels, torch.Generator().manual_seed(1))[0]
    c = aug(pixels, torch.Generator().manual_seed(2))[0]
    assert a.shape == (16, 3, 32, 32) and torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= -1 and a.max() <= 1
    # per-image parameters: the same image twice in a batch gets two different views
    twice = aug(pixels[:1].expand(2, -1, -1, -1), torch.Generator().manual_seed(3))[0]
    assert not torch.equal(twice[0], twice[1])


def test_the_identity_augmentation_is_the_extraction_input():
    pixels = (torch.rand(4, 1, 16, 16, generator=torch.Generator().manual_seed(11)) * 255).to(torch.uint8)
    (out,) = D.train_augment(16, False, 1.0, "crop")(pixels, torch.Generator().manual_seed(0))
    assert torch.allclose(out, D.normalize(pixels), atol=1e-5)  # a crop of the whole image, no warp


def test_multi_crop_gives_large_then_small_views():
    pixels = torch.zeros(8, 1, 32, 32, dtype=torch.uint8)
    views = D.multi_crop(CropSpec(n_large=2, n_small=3), 32, flip=True, min_size=8)(pixels, torch.Generator())
    assert [v.shape[-1] for v in views] == [32, 32, 14, 14, 14]
    assert D.multi_crop(CropSpec(2, 1, small_size_ratio=0.1), 32, True, min_size=12).views[2].geometry.size == 12


def test_flips_mirror_half_the_images():
    ramp = torch.arange(16, dtype=torch.float32).view(1, 1, 1, 16).expand(N, 1, 16, 16) / 15
    out = G.warp(ramp, G.Geometry(16, (1.0, 1.0), flip=True), torch.Generator().manual_seed(12))
    mirrored = out[:, 0, 0, 0] > out[:, 0, 0, -1]
    assert 0.46 < mirrored.float().mean() < 0.54
    assert math.isclose(float(out[~mirrored][0, 0, 0, 0]), 0.0, abs_tol=1e-5)


def test_the_gpu_path_of_photometric_ops_equals_the_cpu_path(monkeypatch):
    """On a GPU every image is computed and ``where`` keeps the chosen (no host sync); on the CPU only
    the chosen are: the same images either way."""
    x = torch.rand(64, 3, 12, 12, generator=torch.Generator().manual_seed(13))
    cpu = P.gaussian_blur(P.colour_jitter(x, 0.8, torch.Generator().manual_seed(1)), torch.Generator().manual_seed(2))
    monkeypatch.setattr(P, "_chosen_rows", P._every_row)
    gpu = P.gaussian_blur(P.colour_jitter(x, 0.8, torch.Generator().manual_seed(1)), torch.Generator().manual_seed(2))
    assert torch.allclose(cpu, gpu, atol=1e-6) and not torch.allclose(cpu, x)


def test_colour_images_change_every_channel_and_grey_images_get_no_colour_ops():
    """Jitter moves each channel of a colour image (hue and saturation too); a one-channel image only
    gets brightness and contrast, which keep a flat image flat; strength 0 changes nothing."""
    red = torch.tensor([0.8, 0.25, 0.25]).view(1, 3, 1, 1).expand(400, 3, 4, 4).clone()
    out = P.colour_jitter(red, 0.8, torch.Generator().manual_seed(14)).mean(dim=(2, 3))
    assert out.std(dim=0).min() > 0.02
    ratio = out[:, 1] / out[:, 2]
    assert (ratio - 1).abs().max() > 0.05  # the hue moved: green and blue no longer equal
    grey = torch.full((400, 1, 4, 4), 0.4)
    flat = P.colour_jitter(grey, 0.8, torch.Generator().manual_seed(15))
    assert torch.allclose(flat, flat[:, :, :1, :1].expand_as(flat))
    pixels = (torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(16)) * 255).to(torch.uint8)
    plain = D.train_augment(16, False, 1.0, "crop", jitter=0.0)(pixels, torch.Generator().manual_seed(0))[0]
    assert torch.allclose(plain, D.normalize(pixels), atol=1e-5)


def test_crops_of_a_small_original_are_drawn_on_its_own_pixel_grid():
    """An 8-px digit decoded at 32 px is cropped as torchvision crops the 8-px original: boxes on the
    8-px grid (the whole image more often than on a 32-px grid), wherever it was decoded."""
    pixels = torch.zeros(N, 1, 32, 32)
    ramp = torch.arange(32, dtype=torch.float32) / 31
    pixels[:] = ramp.view(1, 1, 1, 32)
    g = G.Geometry(32, (0.5, 1.0))
    eight = G.warp(pixels, g, torch.Generator().manual_seed(17), sides=torch.full((N,), 8))
    fine = G.warp(pixels, g, torch.Generator().manual_seed(17))
    whole8 = (eight[:, 0, 0, 0] < 0.02) & (eight[:, 0, 0, -1] > 0.98)
    whole32 = (fine[:, 0, 0, 0] < 0.02) & (fine[:, 0, 0, -1] > 0.98)
    boxes = G.crop_boxes(N, 8, (0.5, 1.0), torch.Generator().manual_seed(0), CPU)
    expected = float((boxes[:, 3] == 8).float().mean())  # full-width crops (the ramp runs along x)
    assert whole8.float().mean() > 2 * whole32.float().mean()
    assert abs(float(whole8.float().mean()) - expected) < 0.03
