"""MNIST, CIFAR-10 and STL-10 from torchvision, read from --data-root; download only if asked."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from dcx.core.contracts import Dataset, ImageSet, RunDefaults
from dcx.core.errors import InputError


class _Images:
    def __init__(self, ds: Any) -> None:
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int):
        return self.ds[i][0]


class _TorchvisionSet(Dataset):
    tv_name: ClassVar[str] = ""
    channels: ClassVar[int] = 3
    split_kw: ClassVar[str] = "train"  # STL-10 uses split="train"/"test"/"unlabeled"

    def load(self, root: Path | None = None, split: str = "train", download: bool = False) -> ImageSet:
        import torchvision

        if split not in self.splits():
            raise InputError(f"{self.name} has splits {', '.join(self.splits())}, not '{split}'")
        root = Path(root) if root is not None else Path("data")
        cls = getattr(torchvision.datasets, self.tv_name)
        kwargs = {"split": split} if self.split_kw == "split" else {"train": split == "train"}
        try:
            ds = cls(str(root), download=download, **kwargs)
        except RuntimeError as exc:
            if download:
                raise InputError(f"could not download {self.name} to {root} ({exc})") from None
            raise InputError(
                f"{self.name} not found under {root}: pass --download to fetch it, or --data-root where it is"
            ) from None
        targets = getattr(ds, "targets", None)
        if targets is None:
            targets = getattr(ds, "labels")
        labels = np.asarray(targets, dtype=np.int64)
        if (labels < 0).any():  # STL-10 'unlabeled' uses -1
            labels = None
        classes = list(getattr(ds, "classes", [])) or None
        return ImageSet(_Images(ds), labels, classes, channels=self.channels)


class MNIST(_TorchvisionSet):
    """MNIST (60k train / 10k test, 28x28 grayscale)."""

    name = "mnist"
    dcx_api = "3.0"
    tv_name = "MNIST"
    channels = 1
    flip_invariant = False
    defaults = RunDefaults(image_size=32, k=100, epochs=10, batch_size=128, width=0.25, passes=1)


class CIFAR10(_TorchvisionSet):
    """CIFAR-10 (50k train / 10k test, 32x32 colour)."""

    name = "cifar10"
    dcx_api = "3.0"
    tv_name = "CIFAR10"
    defaults = RunDefaults(image_size=32, k=100, epochs=50, batch_size=128, width=0.5, passes=1)


class STL10(_TorchvisionSet):
    """STL-10 (5k train, 8k test, 100k unlabelled; 96x96 colour)."""

    name = "stl10"
    dcx_api = "3.0"
    tv_name = "STL10"
    split_kw = "split"
    defaults = RunDefaults(image_size=96, k=100, epochs=50, batch_size=128, width=0.5, passes=1)

    def splits(self) -> tuple[str, ...]:
        return ("train", "test", "unlabeled", "train+unlabeled")
