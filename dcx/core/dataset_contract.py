"""The dataset plugin contract (re-exported by ``dcx.core.contracts``): what ``load`` returns and the
run defaults a dataset suggests."""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Sequence

import numpy as np

from dcx.core.plugin import Plugin


@dataclass(frozen=True)
class RunDefaults:
    """Run settings a dataset suggests when the user gives none (e.g. small images, small nets)."""

    image_size: int = 224
    k: int = 10000
    epochs: int = 100
    batch_size: int = 256
    width: float = 1.0
    passes: int = 1
    #: Train with horizontal flips; None: the dataset's ``flip_invariant``.
    flip: bool | None = None
    #: Training augmentation ("crop", "affine", "elastic"; see ``dcx.data.train_transform``);
    #: None: the engine's rule by image size (``dcx.training.setup.default_augment``).
    augment: str | None = None
    #: Photometric jitter strength (``--jitter``): 0 (the reference) unless intensity and colour
    #: never decide a class here, as on glyphs (docs/decisions.md D07).
    jitter: float = 0.0
    #: The fixed Sobel input layer (``--sobel``); None: the backbone's (AlexNet: on). False where colour
    #: tells the classes apart, which Sobel throws away (``photos``; docs/decisions.md D08).
    sobel: bool | None = None
    #: Image-steps these defaults were sized to (a folder's time budget, ``dcx.datasets.folder``);
    #: None: not sized to a budget. An online clusterer then trains within it (``run_defaults``).
    budget: float | None = None


@dataclass
class ImageSet:
    """A loaded dataset: ``images[i]`` is a PIL image; ``labels`` is None when unlabelled."""

    images: Sequence[Any]
    labels: np.ndarray | None
    classes: list[str] | None
    channels: int
    skipped: int = 0  # unreadable files left out

    def __len__(self) -> int:
        return len(self.images)

    @property
    def num_classes(self) -> int | None:
        return None if self.labels is None else int(len(np.unique(self.labels)))


class Dataset(Plugin):
    """Loads images (+ labels when known). Transforms are the engine's business."""

    #: Horizontal flips keep the meaning of an image (False for digits and characters).
    flip_invariant: ClassVar[bool] = True
    #: ``load`` reads ``root`` (``--data-root``); False for images that ship with the plugin (a root is refused).
    reads_root: ClassVar[bool] = True
    defaults: ClassVar[RunDefaults] = RunDefaults()

    @abstractmethod
    def load(self, root: Path | None, split: str = "train", download: bool = False) -> ImageSet:
        """``split`` is one of ``splits()``; return an ImageSet."""

    def splits(self) -> tuple[str, ...]:
        """Splits this dataset has; ('all',) when it has no train/test split of its own."""
        return ("train", "test")

    def run_defaults(self, images: ImageSet) -> RunDefaults:
        """The defaults for these loaded images (a folder can pick its image size from the data)."""
        return self.defaults
