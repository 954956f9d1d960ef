"""SimCLR/SwAV's photometric distortion of a whole batch, per-image parameters: torchvision's
``RandomApply([ColorJitter], p=0.8)`` (its four adjustments in a random order per image) then
``RandomApply([GaussianBlur(kernel, sigma=(0.1, 2))], p=0.5)``, on float images in [0, 1]."""

from __future__ import annotations

import torch

from dcx.data.geometry import gaussian_kernel, separable_blur

JITTER_P, BLUR_P = 0.8, 0.5
BLUR_SIGMA = (0.1, 2.0)
_GREY = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale weights


def _grey(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 1:
        return x
    r, g, b = x.unbind(1)
    return (_GREY[0] * r + _GREY[1] * g + _GREY[2] * b).unsqueeze(1)


def apply_to(x: torch.Tensor, chosen: torch.Tensor, fn) -> torch.Tensor:
    """``fn`` applied to the ``chosen`` images of ``x`` (``fn`` maps a batch and the chosen rows'
    indices to their new values). On the CPU only the chosen rows are computed; on a GPU every row
    is, and ``torch.where`` keeps the chosen ones: no host-device sync for the row count."""
    return (_chosen_rows if x.device.type == "cpu" else _every_row)(x, chosen, fn)


def _chosen_rows(x: torch.Tensor, chosen: torch.Tensor, fn) -> torch.Tensor:
    rows = chosen.nonzero().squeeze(1)
    return x.index_put((rows,), fn(x[rows], rows)) if len(rows) else x


def _every_row(x: torch.Tensor, chosen: torch.Tensor, fn) -> torch.Tensor:
    return torch.where(chosen.view(-1, 1, 1, 1), fn(x, torch.arange(len(x), device=x.device)), x)


def _blend(x: torch.Tensor, other: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    f = f.view(-1, 1, 1, 1)
    return (f * x + (1 - f) * other).clamp(0, 1)


def _hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the hue of RGB images by ``shift`` turns (torchvision's ``adjust_hue`` via HSV)."""
    r, g, b = x.unbind(1)
    maxc, _ = x.max(dim=1)
    minc, _ = x.min(dim=1)
    eqc = maxc == minc
    cr = maxc - minc
    ones = torch.ones_like(maxc)
    s = cr / torch.where(eqc, ones, maxc)
    cr_div = torch.where(eqc, ones, cr)
    rc, gc, bc = (maxc - r) / cr_div, (maxc - g) / cr_div, (maxc - b) / cr_div
    hr = (maxc == r) * (bc - gc)
    hg = ((maxc == g) & (maxc != r)) * (2.0 + rc - bc)
    hb = ((maxc != g) & (maxc != r)) * (4.0 + gc - rc)
    h = torch.fmod((hr + hg + hb) / 6.0 + 1.0, 1.0)
    h = torch.remainder(h + shift.view(-1, 1, 1), 1.0)
    v = maxc
    i = torch.floor(h * 6.0)
    f = h * 6.0 - i
    i = i.to(torch.int64) % 6
    p = (v * (1.0 - s)).clamp(0, 1)
    q = (v * (1.0 - s * f)).clamp(0, 1)
    t = (v * (1.0 - s * (1.0 - f))).clamp(0, 1)
    table = torch.stack([torch.stack(c, 1) for c in ((v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v),
                                                      (v, p, q))], 1)  # (n, 6, 3, H, W)
    return table.gather(1, i.unsqueeze(1).unsqueeze(2).expand(-1, 1, 3, -1, -1)).squeeze(1)


def colour_jitter(x: torch.Tensor, strength: float, gen: torch.Generator) -> torch.Tensor:
    """``RandomApply([ColorJitter(b=s, c=s, saturation=s, hue=min(s / 4, 0.5))], p=0.8)`` per image;
    one-channel images get brightness and contrast only (as the per-image transform)."""
    n, device = x.shape[0], x.device
    rgb = x.shape[1] == 3
    low = max(0.0, 1 - strength)
    hue = min(strength / 4, 0.5)
    factors = torch.rand(n, 4, generator=gen, device=device) * torch.tensor(
        [1 + strength - low] * 3 + [2 * hue], device=device) + torch.tensor([low] * 3 + [-hue], device=device)
    order = torch.argsort(torch.rand(n, 4, generator=gen, device=device), dim=1)  # a random order per image
    applied = torch.rand(n, generator=gen, device=device) < JITTER_P
    for position in range(4):
        for op in range(4 if rgb else 2):
            x = apply_to(x, applied & (order[:, position] == op),
                         lambda xs, rows, op=op: _adjust(op, xs, factors[rows, op]))
    return x


def _adjust(op: int, x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """ColorJitter's adjustment ``op`` (brightness, contrast, saturation, hue) by per-image factors."""
    if op == 0:
        return _blend(x, torch.zeros_like(x), f)
    if op == 1:
        return _blend(x, _grey(x).mean(dim=(1, 2, 3), keepdim=True), f)
    if op == 2:
        return _blend(x, _grey(x), f)
    return _hue(x, f)


def blur_kernel_size(side: int) -> int:
    """SimCLR's blur kernel: ~10 % of the side, odd, at least 3."""
    return max(3, side // 10 | 1)


def gaussian_blur(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """``RandomApply([GaussianBlur(kernel, sigma=(0.1, 2))], p=0.5)`` with a sigma per image."""
    n, device = x.shape[0], x.device
    sigma = torch.rand(n, generator=gen, device=device, dtype=torch.float64) * (BLUR_SIGMA[1] - BLUR_SIGMA[0]) \
        + BLUR_SIGMA[0]
    applied = torch.rand(n, generator=gen, device=device) < BLUR_P
    k = blur_kernel_size(x.shape[-1])
    return apply_to(x, applied, lambda xs, rows: separable_blur(xs, gaussian_kernel(k, sigma[rows])))
