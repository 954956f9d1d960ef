"""Shared machinery of the patch datasets (``textures``, ``photos``): bundled source images and
seeded patch cutting from disjoint horizontal bands, so a train and a test patch never share a pixel.

Nothing here downloads: every source is a file inside an installed package's wheel, found with
``importlib.util.find_spec`` (the package is not even imported).
"""

from __future__ import annotations

import functools
import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Sequence

import numpy as np
from PIL import Image

from dcx.core.contracts import Dataset, ImageSet, RunDefaults
from dcx.core.errors import InputError
from dcx.core.options import Option

#: Each source is resized so that its shorter side is this many pixels before patches are cut,
#: so that a patch covers a comparable share of every photo whatever its resolution.
SOURCE_SIDE = 256
#: Horizontal bands (fractions of the source's height) each split cuts its patches from: the test
#: patches come from the middle 30 % of every source, the training patches from the top and
#: bottom 35 %. Windows lie wholly inside one band, so no pixel is in both splits.
BANDS: dict[str, tuple[tuple[float, float], ...]] = {
    "train": ((0.0, 0.35), (0.65, 1.0)),
    "test": ((0.35, 0.65),),
}


@dataclass(frozen=True)
class Source:
    """One bundled image: a class of a patch dataset."""

    name: str  # the class name
    package: str  # the installed distribution's top-level package that ships the file
    path: str  # relative to the package folder
    licence: str

    def file(self) -> Path:
        return package_file(self.package, self.path)


def package_file(package: str, relative: str) -> Path:
    """The path of a data file shipped inside an installed package, without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise InputError(f"package '{package}' is not installed: pip install it (it ships the images this dataset uses)")
    path = Path(list(spec.submodule_search_locations)[0], relative)
    if not path.is_file():
        raise InputError(
            f"{relative} is not in the installed '{package}' package: install a version that ships it "
            "(dcx never downloads it)"
        )
    return path


class ArrayImages:
    """Sequence of PIL images over a uint8 (N, H, W) or (N, H, W, 3) array, made on access."""

    def __init__(self, array: np.ndarray) -> None:
        self.array = array
        self.mode = "L" if array.ndim == 3 else "RGB"

    def __len__(self) -> int:
        return len(self.array)

    def __getitem__(self, i: int) -> Image.Image:
        return Image.fromarray(self.array[i], mode=self.mode)


@functools.lru_cache(maxsize=32)
def load_source(source: Source, mode: str, side: int = SOURCE_SIDE) -> Image.Image:
    """The source image in ``mode`` ('L' or 'RGB'), resized so its shorter side is ``side``
    (kept in memory, a few MB for all sources: callers only crop it, never modify it)."""
    with Image.open(source.file()) as img:
        img = img.convert(mode)
    w, h = img.size
    scale = side / min(w, h)
    return img.resize((max(side, round(w * scale)), max(side, round(h * scale))), Image.Resampling.BILINEAR)


def cut_patches(
    image: Image.Image,
    bands: Sequence[tuple[float, float]],
    n: int,
    rng: np.random.Generator,
    size: int,
    base: int = 48,
    scale: tuple[float, float] = (0.5, 1.5),
    min_std: float = 4.0,
    tries: int = 30,
) -> np.ndarray:
    """``n`` patches of ``size`` x ``size`` pixels cut at random positions and scales from ``bands``.

    A window's side is ``base`` times a log-uniform factor in ``scale`` (capped by the band's
    height), its position uniform inside one band, the band drawn in proportion to its height.
    A nearly flat window (standard deviation below ``min_std`` grey levels, or below a fifth of the
    source's own) is redrawn up to ``tries`` times, so most patches show structure; the last draw
    is kept otherwise (a uniform wall is part of its photo too). Returns uint8 (n, size, size[, 3]).
    """
    w, h = image.size
    rows = [(int(round(a * h)), int(round(b * h))) for a, b in bands]
    heights = np.array([r1 - r0 for r0, r1 in rows], dtype=float)
    source = np.asarray(image)
    floor = max(min_std, 0.2 * float(source.std()))
    lo, hi = math.log(scale[0]), math.log(scale[1])
    out = np.empty((n, size, size) + source.shape[2:], dtype=np.uint8)
    for i in range(n):
        band = int(rng.choice(len(rows), p=heights / heights.sum()))
        r0, r1 = rows[band]
        for _ in range(tries):
            side = min(int(round(base * math.exp(rng.uniform(lo, hi)))), r1 - r0, w)
            x0 = int(rng.integers(0, w - side + 1))
            y0 = int(rng.integers(r0, r1 - side + 1))
            if source[y0 : y0 + side, x0 : x0 + side].std() >= floor:
                break
        # Crop first: resizing with a box would let the filter reach pixels outside the window.
        patch = image.crop((x0, y0, x0 + side, y0 + side)).resize((size, size), Image.Resampling.BILINEAR)
        out[i] = np.asarray(patch)
    return out


def build_patch_set(
    sources: Sequence[Source],
    mode: str,
    split: str,
    per_class: int,
    seed: int,
    size: int,
    base: int,
    scale: tuple[float, float],
) -> tuple[np.ndarray, np.ndarray]:
    """Patches of every source for one split, in a seeded shuffled order; (images, labels)."""
    if split not in BANDS:
        raise InputError(f"patch datasets have splits train and test, not '{split}'")
    split_code = 0 if split == "train" else 1
    arrays, labels = [], []
    for label, source in enumerate(sources):
        rng = np.random.default_rng([seed, split_code, 1, label])
        image = load_source(source, mode)
        arrays.append(cut_patches(image, BANDS[split], per_class, rng, size, base=base, scale=scale))
        labels.append(np.full(per_class, label, dtype=np.int64))
    images, y = np.concatenate(arrays), np.concatenate(labels)
    order = np.random.default_rng([seed, split_code, 0]).permutation(len(y))
    return images[order], y[order]


class PatchDataset(Dataset):
    """Base of the patch datasets: patches cut at seeded random positions and scales (a
    ``base``-px window times a log-uniform 0.5-1.5, on the source resized to a 256-px shorter
    side), class = source image.

    ``train`` patches come from the top and bottom 35 % of every source, ``test`` patches from the
    middle 30 %: the splits share no pixel. Patches are made in memory at load (about a second);
    the same ``seed`` always gives the same images, in a seeded shuffled order.
    """

    sources: ClassVar[tuple[Source, ...]] = ()
    mode: ClassVar[str] = "L"
    reads_root = False  # cut from photos installed wheels ship
    base: ClassVar[int] = 48
    # 32-px images: a small net and several passes per clustering round, k ~ 10x classes (as digits).
    defaults = RunDefaults(image_size=32, k=100, epochs=10, batch_size=64, width=0.25, passes=3)
    options = (
        Option("per_class", int, 240, "training patches per source image", min=1),
        Option("test_per_class", int, 100, "test patches per source image", min=1),
        Option("size", int, 32, "side of the patches in pixels", min=8, max=256),
        Option("seed", int, 0, "seed of the patch positions and scales (the dataset's identity)", min=0),
        Option("limit", int, None, "keep only the first N images (quick trials, tests)", nullable=True, min=2),
    )

    def splits(self) -> tuple[str, ...]:
        return ("train", "test")

    def load(self, root: Path | None = None, split: str = "train", download: bool = False) -> ImageSet:
        if split not in self.splits():
            raise InputError(f"{self.name} has splits train and test, not '{split}'")
        p = self.params
        per_class = p["per_class"] if split == "train" else p["test_per_class"]
        images, labels = build_patch_set(
            self.sources, self.mode, split, per_class, p["seed"], p["size"], base=self.base, scale=(0.5, 1.5)
        )
        if p["limit"] is not None:
            images, labels = images[: p["limit"]], labels[: p["limit"]]
        channels = 1 if self.mode == "L" else 3
        return ImageSet(ArrayImages(images), labels, [s.name for s in self.sources], channels=channels)
