"""Any folder tree of images; class sub-folders give labels, a flat folder is unlabelled.

Loading only lists and sorts file names (and drops empty files by their size): no image is decoded,
so a folder of a million images loads in seconds. A small seeded sample of headers (at most
``PROBE_FILES`` files) decides what the user left out: channels, image size, width, flips. An image
that cannot be decoded when it is read raises ``UnreadableImage``; the engine skips and counts it.
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageOps

from dcx.core.contracts import Dataset, ImageSet, RunDefaults
from dcx.core.errors import InputError, UnreadableImage
from dcx.core.options import Option

log = logging.getLogger(__name__)

EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".pnm"}
#: At most this many files (a seeded sample) are opened at load to pick the defaults.
PROBE_FILES = 200
#: Single-channel modes: 1-bit, 8-bit, 16-bit, 32-bit integer and float grayscale (+ alpha).
GRAY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}


# ----------------------------------------------------------------------------- reading


def to_8bit(img: Image.Image, mode: str) -> Image.Image:
    """Convert any PIL image to 8-bit ``mode`` ('L' or 'RGB') the way a viewer shows it.

    - 16-bit grayscale (``I;16*``) is scaled by its type's range: 0..65535 -> 0..255 (x / 257),
      never clipped. ``I`` (32-bit integer, how some Pillow versions open 16-bit PNGs) is read as
      16-bit when its values lie in 0..65535, else stretched from its own min..max. ``F`` (float)
      is taken as 0..1 when its values lie there, else stretched from its own min..max.
    - Transparency (``RGBA``, ``LA``, ``PA``, palette with a transparent colour) is composited
      on white, as a viewer on a white page shows it.
    - Palette, 1-bit, CMYK, YCbCr: Pillow's own conversion.
    """
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        if img.mode.startswith("I;16"):
            lo, hi = 0.0, 65535.0
        elif img.mode == "I" and arr.size and arr.min() >= 0 and arr.max() <= 65535:
            lo, hi = 0.0, 65535.0
        elif img.mode == "F" and arr.size and arr.min() >= 0 and arr.max() <= 1:
            lo, hi = 0.0, 1.0
        else:
            finite = arr[np.isfinite(arr)]
            lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        scaled = np.clip(np.nan_to_num((arr - lo) * (255.0 / max(hi - lo, 1e-12))), 0, 255)
        img = Image.fromarray(np.round(scaled).astype(np.uint8), mode="L")
    elif img.mode in ("RGBA", "RGBa", "LA", "La", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        img = Image.alpha_composite(Image.new("RGBA", img.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return img if img.mode == mode else img.convert(mode)


def read_image(path: Path, mode: str) -> Image.Image:
    """Decode one file into an 8-bit ``mode`` image, upright (EXIF orientation applied).

    Raises ``UnreadableImage(path, reason)`` when the file cannot be decoded: missing, not an
    image, truncated (nothing global such as ``LOAD_TRUNCATED_IMAGES`` is changed), or larger
    than Pillow's ``Image.MAX_IMAGE_PIXELS`` (its decompression-bomb guard: both the warning above
    the limit and the error above twice the limit are refused here).
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                img.load()
                try:
                    img = ImageOps.exif_transpose(img)
                except Exception as exc:  # a broken EXIF block does not make the pixels unreadable
                    log.debug("ignoring the EXIF orientation of %s (%s)", path, exc)
                return to_8bit(img, mode)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise UnreadableImage(path, f"larger than Pillow's limit of {Image.MAX_IMAGE_PIXELS} pixels ({exc})") from None
    except Exception as exc:  # any decoder failure on a user's file is a skipped file, not a crash
        raise UnreadableImage(path, f"{type(exc).__name__}: {exc}") from None


class _FileImages:
    """Sequence of PIL images read lazily from indexed files (picklable, and light to send to
    DataLoader workers: a root and relative path strings, not a million Path objects).

    ``probe`` holds what the seeded header sample at load found (``FolderProbe``).
    """

    def __init__(self, root: Path, files: list[str], mode: str, probe: "FolderProbe | None" = None) -> None:
        self.root = Path(root)
        self.files = files
        self.mode = mode
        self.probe = probe

    @property
    def paths(self) -> list[Path]:
        return [self.root / f for f in self.files]

    def path(self, i: int) -> Path:
        return self.root / self.files[i]

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> Image.Image:
        return read_image(self.path(i), self.mode)


# ----------------------------------------------------------------------------- indexing


def index_files(root: Path) -> tuple[list[str], int]:
    """The relative paths ('a/b.png') of every image file under ``root`` by extension, sorted; and
    the number of image files left out: empty (zero-byte) ones and links that lead nowhere (broken,
    or a loop). Nothing is opened. Hidden files and folders (names starting with '.', e.g. macOS
    ``._x.jpg`` resource forks) are ignored; symlinked folders are followed once each."""
    found: list[str] = []
    prefix = len(os.path.join(str(root), ""))
    empty = 0
    seen: set[tuple[int, int]] = set()
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            st = folder.stat()
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            entries = list(os.scandir(folder))
        except OSError as exc:
            log.warning("cannot list %s (%s): skipped", folder, exc)
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            image = os.path.splitext(entry.name)[1].lower() in EXTENSIONS
            try:
                if entry.is_dir():
                    stack.append(Path(entry.path))
                elif entry.is_file() and image:
                    if entry.stat().st_size == 0:
                        empty += 1
                        log.warning("skipping empty file %s", entry.path)
                        continue
                    found.append(entry.path[prefix:].replace(os.sep, "/"))
                elif image and entry.is_symlink():  # a link to nothing
                    empty += 1
                    log.warning("skipping %s: a broken link", entry.path)
            except OSError as exc:  # e.g. a link loop
                if image:
                    empty += 1
                log.warning("skipping %s (%s)", entry.path, exc.strerror or exc)
    found.sort()
    return found, empty


class _Paths:
    """``root / files[i]`` on access, without building every Path."""

    def __init__(self, root: Path, files: list[str]) -> None:
        self.root, self.files = root, files

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> Path:
        return self.root / self.files[i]


# ----------------------------------------------------------------------------- defaults from the data


@dataclass(frozen=True)
class FolderProbe:
    """What a seeded sample of at most ``PROBE_FILES`` files says about a folder."""

    sampled: int  # files whose header could be read
    median_side: int  # median of the shorter side of the sampled images
    grayscale: bool  # every sampled image is single-channel (or RGB with equal channels)


def _is_gray(img: Image.Image) -> bool:
    if img.mode in GRAY_MODES:
        return True
    if img.mode == "P":
        palette = np.asarray(img.getpalette("RGB") or [], dtype=np.int16)[: 3 * 256].reshape(-1, 3)
        return bool(palette.size == 0 or (np.ptp(palette, axis=1) <= 2).all())
    # RGB (or CMYK, YCbCr, RGBA) that may hold a gray picture: decode a reduced version and compare
    # channels (JPEG decodes at 1/8 scale through draft, so this stays cheap).
    img.draft("RGB", (64, 64))
    arr = np.asarray(to_8bit(img, "RGB"), dtype=np.int16)
    return bool(np.abs(arr - arr[..., :1]).max() <= 3)


def probe_folder(paths: Sequence[Path], seed: int = 0, max_files: int = PROBE_FILES) -> FolderProbe:
    """Read the headers of a seeded sample of at most ``max_files`` files (sizes and modes only;
    an RGB file is decoded at reduced size to see whether its channels are equal)."""
    rng = np.random.default_rng(seed)
    picks = sorted(rng.choice(len(paths), size=min(max_files, len(paths)), replace=False).tolist())
    sides, gray = [], True
    for i in picks:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(paths[i]) as img:
                    side = min(img.size)
                    is_gray = _is_gray(img) if gray else False
        except Exception as exc:  # an unreadable file tells nothing; it is skipped when read
            log.debug("probe: cannot read %s (%s)", paths[i], exc)
            continue
        sides.append(side)
        gray = gray and is_gray
    sampled = len(sides)
    median = int(np.median(sides)) if sides else 64
    return FolderProbe(sampled=sampled, median_side=median, grayscale=gray and sampled > 0)


def image_size_for(median_side: int) -> int:
    """Input side from the images' median shorter side: rounded to a multiple of 8 (16 above 64
    px), clamped to 32..224 (32: the backbones' minimum; 224: the paper's ImageNet side)."""
    step = 8 if median_side <= 64 else 16
    return int(min(224, max(32, step * round(median_side / step))))


def width_for(image_size: int) -> float:
    """Backbone channel multiplier from the input side: 0.25 up to 48 px, 0.5 up to 96 px, 1.0
    (the paper's network) above: small images carry little detail and train faster on small nets."""
    return 0.25 if image_size <= 48 else 0.5 if image_size <= 96 else 1.0


def scaled_defaults(n_images: int, image_size: int, budget: float = 150_000) -> RunDefaults:
    """Run defaults for ``n_images`` images of side ``image_size``: the one rule to tune.

    - ``k`` ~ 10x the classes on small sets and DeepCluster's 10,000 at ImageNet size:
      ``k = 100 * (N / 2000) ** 0.7`` rounded to 10, within 10..10,000, and at most N / 5
      (at least 2) so clusters are never tiny (2k images -> 100, 20k -> 500, 1.28M -> 9,200).
    - Training budget: a run costs about ``epochs * N * (passes + 0.4)`` image-steps (training
      passes plus one feature extraction per epoch at ~0.4 of a training step), each weighted by
      the pixel cost ``(image_size / 32) ** 2 * (width / 0.25) ** 2`` relative to a 32-px image on a
      0.25-wide AlexNet. ``budget`` = 150,000 such steps is about 5 minutes on 2 quiet CPU cores:
      500-600 steps/s, from the measured digits run (54k training steps in ~2 min, README) and
      issue 9's 20k-image run (720k steps in 1,160 s). Calibrate by a timed run before tuning. Small sets get several passes per clustering round (3 up to
      4,000 images, 2 up to 10,000, 1 above), and as many rounds as the budget allows, 3..10:
      1,797 digits -> 10 x 3 (the digits defaults), 20,000 images -> 5 rounds x 1 pass.
    - batch 64 up to 5,000 images, 128 up to 50,000, 256 above.
    """
    n = max(int(n_images), 1)
    k = int(10 * round(100 * (n / 2000) ** 0.7 / 10))
    k = min(max(10, min(k, 10_000)), max(2, n // 5))
    passes = 3 if n <= 4000 else 2 if n <= 10_000 else 1
    cost = (image_size / 32) ** 2 * (width_for(image_size) / 0.25) ** 2
    epochs = int(max(3, min(10, math.floor(budget / (n * cost * (passes + 0.4))))))
    batch = 64 if n <= 5000 else 128 if n <= 50_000 else 256
    return RunDefaults(
        image_size=image_size, k=k, epochs=epochs, batch_size=batch, width=width_for(image_size), passes=passes,
        budget=budget,
    )


def folder_defaults(n_images: int, probe: FolderProbe) -> RunDefaults:
    """Every default of a folder from its probe: size, width, k/epochs/passes/batch by
    ``scaled_defaults``, and no flips for small grayscale images (at most 64 px: characters,
    digits, glyphs, whose mirror image means something else); other folders flip (None)."""
    size = image_size_for(probe.median_side)
    d = scaled_defaults(n_images, size)
    flip = False if probe.grayscale and probe.median_side <= 64 else None
    return RunDefaults(
        image_size=d.image_size, k=d.k, epochs=d.epochs, batch_size=d.batch_size, width=d.width,
        passes=d.passes, flip=flip, budget=d.budget,
    )


# ----------------------------------------------------------------------------- the plugin


class ImageFolder(Dataset):
    """Images under ``--data-root``: ``root/<class>/*.png`` (labelled) or ``root/*.png`` (not).

    Load lists files by extension and sorts them; it decodes nothing (empty files and broken links
    are left out and counted in ``ImageSet.skipped``). A file that cannot be decoded raises ``UnreadableImage``
    when it is read. ``grayscale`` auto (the default) reads one channel when every image of a
    seeded sample of at most 200 is single-channel; ``run_defaults`` picks image size, width,
    flips and the training budget from the same sample and the number of images.
    """

    name = "imagefolder"
    dcx_api = "3.0"
    # Used only when the images are not loaded; run_defaults(images) decides from the data.
    defaults = RunDefaults(image_size=64, k=100, epochs=10, batch_size=64, width=0.5, passes=2)
    options = (
        Option(
            "grayscale", bool, None,
            "read images as one channel (auto: when every sampled image is grayscale)", nullable=True,
        ),
    )

    def splits(self) -> tuple[str, ...]:
        return ("all",)

    def load(self, root: Path | None = None, split: str = "all", download: bool = False) -> ImageSet:
        if root is None:
            raise InputError("imagefolder needs --data-root pointing to a folder of images")
        root = Path(root)
        if not root.is_dir():
            raise InputError(f"--data-root {root} is not a folder: pass the folder that holds your images")
        files, empty = index_files(root)
        if not files:
            more = f" ({empty} empty file(s) or broken link(s) left out)" if empty else ""
            raise InputError(f"no images ({', '.join(sorted(EXTENSIONS))}) found under {root}{more}")
        if empty:
            log.warning("left out %d empty file(s) or broken link(s) of %d under %s", empty, len(files) + empty, root)
        probe = probe_folder(_Paths(root, files))
        if probe.sampled == 0:
            raise InputError(f"none of the sampled files under {root} is a readable image ({len(files)} files)")
        labels = classes = None
        tops = [f.partition("/") for f in files]
        if all(sep for _, sep, _ in tops):
            classes = sorted({top for top, _, _ in tops})
            index = {c: i for i, c in enumerate(classes)}
            labels = np.array([index[top] for top, _, _ in tops], dtype=np.int64)
        grayscale = self.params["grayscale"]
        if grayscale is None:
            grayscale = probe.grayscale
        mode = "L" if grayscale else "RGB"
        return ImageSet(_FileImages(root, files, mode, probe), labels, classes, channels=1 if grayscale else 3, skipped=empty)

    def run_defaults(self, images: ImageSet) -> RunDefaults:
        probe = getattr(images.images, "probe", None)
        if probe is None:  # not loaded by this plugin: nothing known about the files
            return self.defaults
        return folder_defaults(len(images), probe)
