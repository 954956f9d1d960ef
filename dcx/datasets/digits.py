"""scikit-learn's embedded handwritten digits (1,797 8x8 images, 10 classes): no download."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from dcx.core.contracts import Dataset, ImageSet, RunDefaults
from dcx.core.errors import InputError
from dcx.core.options import Option


class _ArrayImages:
    """Sequence of PIL images over a uint8 (N, H, W) array, converted on access."""

    def __init__(self, array: np.ndarray) -> None:
        self.array = array

    def __len__(self) -> int:
        return len(self.array)

    def __getitem__(self, i: int) -> Image.Image:
        return Image.fromarray(self.array[i], mode="L")


class Digits(Dataset):
    """``sklearn.datasets.load_digits``: the offline, labelled default dataset.

    It has no official split; ``all`` is the whole set and evaluation makes a seeded
    stratified split. Digits are not flip-invariant, so training uses no flips.
    """

    name = "digits"
    dcx_api = "3.0"
    flip_invariant = False
    reads_root = False
    # Small images need a small net and several passes per clustering round (see
    # docs/algorithms notes "Training steps per clustering round matter most"); k ~ 10x classes.
    defaults = RunDefaults(image_size=32, k=100, epochs=10, batch_size=64, width=0.25, passes=3, jitter=0.4)
    options = (Option("limit", int, None, "keep only the first N images (quick trials, tests)", nullable=True, min=2),)

    def splits(self) -> tuple[str, ...]:
        return ("all",)

    def load(self, root: Path | None = None, split: str = "all", download: bool = False) -> ImageSet:
        from sklearn.datasets import load_digits

        if split not in ("all", "train"):
            raise InputError(f"digits has no '{split}' split (it has only 'all'); evaluation splits it itself")
        bunch = load_digits()
        # Pixel values are 0..16: scale to 0..255 for uint8 images.
        pixels = np.clip(bunch.images * (255.0 / 16.0), 0, 255).astype(np.uint8)
        labels = bunch.target.astype(np.int64)
        limit = self.params["limit"]
        if limit is not None:
            pixels, labels = pixels[:limit], labels[:limit]
        return ImageSet(_ArrayImages(pixels), labels, [str(c) for c in range(10)], channels=1)
