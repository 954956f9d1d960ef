"""Any folder tree of images; class sub-folders give labels, a flat folder is unlabelled."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from dcx.core.contracts import Dataset, ImageSet, RunDefaults
from dcx.core.errors import InputError
from dcx.core.options import Option

log = logging.getLogger(__name__)

EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


class _FileImages:
    """Sequence of PIL images read lazily from verified paths."""

    def __init__(self, paths: list[Path], mode: str) -> None:
        self.paths = paths
        self.mode = mode

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> Image.Image:
        with Image.open(self.paths[i]) as img:
            return img.convert(self.mode)


class ImageFolder(Dataset):
    """Images under ``--data-root``: ``root/<class>/*.png`` (labelled) or ``root/*.png`` (not).

    Every file is opened and verified once at load: an unreadable or corrupt image is skipped,
    counted and logged, so a bad file never stops a run.
    """

    name = "imagefolder"
    defaults = RunDefaults(image_size=64, k=100, epochs=20, batch_size=64, width=0.5, passes=2)
    options = (Option("grayscale", bool, False, "read images as one channel"),)

    def splits(self) -> tuple[str, ...]:
        return ("all",)

    def load(self, root: Path | None = None, split: str = "all", download: bool = False) -> ImageSet:
        if root is None:
            raise InputError("imagefolder needs --data-root pointing to a folder of images")
        root = Path(root)
        if not root.is_dir():
            raise InputError(f"--data-root {root} is not a folder: pass the folder that holds your images")
        files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in EXTENSIONS)
        if not files:
            raise InputError(f"no images ({', '.join(sorted(EXTENSIONS))}) found under {root}")
        good: list[Path] = []
        skipped = 0
        for path in files:
            try:
                with Image.open(path) as img:
                    img.verify()
                good.append(path)
            except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
                skipped += 1
                log.warning("skipping unreadable image %s (%s)", path, exc)
        if skipped:
            log.warning("skipped %d unreadable image(s) of %d under %s", skipped, len(files), root)
        if not good:
            raise InputError(f"none of the {len(files)} images under {root} could be read")
        parents = [p.parent for p in good]
        labelled = all(p != root for p in parents)
        labels = classes = None
        if labelled:
            classes = sorted({str(p.relative_to(root).parts[0]) for p in good})
            index = {c: i for i, c in enumerate(classes)}
            labels = np.array([index[p.relative_to(root).parts[0]] for p in good], dtype=np.int64)
        mode = "L" if self.params["grayscale"] else "RGB"
        return ImageSet(_FileImages(good, mode), labels, classes, channels=1 if mode == "L" else 3, skipped=skipped)
