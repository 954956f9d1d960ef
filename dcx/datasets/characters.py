"""``characters``: small grayscale glyph images rendered from fonts that installed wheels ship.

White characters on black, 28x28 by default, each drawn with a seeded random font, size, stroke
thickness, rotation, shear and shift (MNIST-like framing). Fonts: the DejaVu and STIX families in
matplotlib's ``mpl-data/fonts/ttf`` and Pillow's built-in Aileron (``ImageFont.load_default``); no
download. The ``train`` and ``test`` splits use disjoint fonts, so the test asks for generalisation
to unseen type faces, not for recognising near-copies.

Also a writer of an image folder ``root/<class>/*.png`` (what a user's folder of character
images looks like), for tests and docs::

    python -m dcx.datasets.characters OUT_DIR [--per-class 200] [--size 28] [--seed 0]
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import math
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageFont, ImageDraw

from dcx.core.contracts import Dataset, ImageSet, RunDefaults
from dcx.core.errors import InputError
from dcx.core.options import Option
from dcx.datasets._patches import ArrayImages

#: matplotlib's bundled fonts used for glyphs (file names in mpl-data/fonts/ttf), then "aileron"
#: (Pillow's default font). Every fourth one is held out for the test split.
FONTS = (
    "DejaVuSans.ttf",
    "DejaVuSans-Bold.ttf",
    "DejaVuSans-Oblique.ttf",
    "DejaVuSans-BoldOblique.ttf",
    "DejaVuSansMono.ttf",
    "DejaVuSansMono-Bold.ttf",
    "DejaVuSansMono-Oblique.ttf",
    "DejaVuSerif.ttf",
    "DejaVuSerif-Bold.ttf",
    "DejaVuSerif-Italic.ttf",
    "DejaVuSerif-BoldItalic.ttf",
    "STIXGeneral.ttf",
    "STIXGeneralBol.ttf",
    "STIXGeneralItalic.ttf",
    "STIXGeneralBolIta.ttf",
    "aileron",
)
DIGITS = "0123456789"
_SUPERSAMPLE = 4  # glyphs are drawn at 4x the output side, then reduced with an antialiasing filter


def split_fonts(split: str) -> tuple[str, ...]:
    """The fonts of a split: ``test`` has every fourth font of ``FONTS``, ``train`` the others."""
    if split not in ("train", "test"):
        raise InputError(f"characters has splits train and test, not '{split}'")
    return tuple(f for i, f in enumerate(FONTS) if (i % 4 == 3) == (split == "test"))


@functools.lru_cache(maxsize=1024)
def _font(name: str, size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    if name == "aileron":
        try:
            return ImageFont.load_default(size=size)  # Pillow >= 10.1 with FreeType
        except TypeError:  # older Pillow: no sized default font, use DejaVu Sans instead
            name = "DejaVuSans.ttf"
    spec = importlib.util.find_spec("matplotlib")
    if spec is None or not spec.submodule_search_locations:
        raise InputError("characters needs matplotlib installed (it ships the fonts)")
    path = Path(list(spec.submodule_search_locations)[0], "mpl-data", "fonts", "ttf", name)
    if not path.is_file():
        raise InputError(f"font {name} is not in the installed matplotlib: install matplotlib >= 3.7")
    return ImageFont.truetype(str(path), size)


def render(char: str, font: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """One glyph: (size, size) uint8, white on black, with seeded random style and jitter.

    Glyph height 50-80 % of the side, stroke 0-1.5 px (at the output scale), rotation within
    +-15 degrees, shear within +-0.25, shift within +-12 % of the side, ink 170-255.
    """
    big = size * _SUPERSAMPLE
    glyph = _font(font, int(round(big * rng.uniform(0.55, 0.9))))
    canvas = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(canvas)
    stroke = int(round(rng.uniform(0.0, 1.5) * _SUPERSAMPLE))
    ink = int(rng.integers(170, 256))
    draw.text((big / 2, big / 2), char, fill=ink, font=glyph, anchor="mm", stroke_width=stroke, stroke_fill=ink)
    # Fit the drawn glyph's bounding box to a random share of the side, keeping its aspect ratio.
    box = canvas.getbbox()
    if box is None:
        raise InputError(f"font {font} has no glyph for {char!r}")
    glyph_img = canvas.crop(box)
    gw, gh = glyph_img.size
    target = big * rng.uniform(0.5, 0.8)
    scale = target / max(gw, gh)
    glyph_img = glyph_img.resize((max(1, round(gw * scale)), max(1, round(gh * scale))), Image.Resampling.BICUBIC)
    centred = Image.new("L", (big, big), 0)
    centred.paste(glyph_img, ((big - glyph_img.width) // 2, (big - glyph_img.height) // 2))
    # Affine jitter about the centre: rotation, shear, shift (inverse map, as PIL expects).
    angle = math.radians(rng.uniform(-15, 15))
    shear = rng.uniform(-0.25, 0.25)
    dx, dy = rng.uniform(-0.12, 0.12, size=2) * big
    cos, sin = math.cos(angle), math.sin(angle)
    a, b, d, e = cos, -sin + shear * cos, sin, cos + shear * sin  # forward: rotate(shear(x))
    det = a * e - b * d
    ia, ib, id_, ie = e / det, -b / det, -d / det, a / det
    c0 = big / 2
    tx, ty = c0 + dx, c0 + dy
    coeffs = (ia, ib, c0 - ia * tx - ib * ty, id_, ie, c0 - id_ * tx - ie * ty)
    warped = centred.transform((big, big), Image.Transform.AFFINE, coeffs, Image.Resampling.BICUBIC)
    return np.asarray(warped.resize((size, size), Image.Resampling.LANCZOS))


def render_set(
    alphabet: str, per_class: int, size: int = 28, seed: int | Sequence[int] = 0, fonts: Sequence[str] = FONTS
) -> tuple[np.ndarray, np.ndarray]:
    """``per_class`` glyphs of every character of ``alphabet``, each in a font drawn from ``fonts``:
    (N, size, size) uint8 in a seeded shuffled order, and labels (index into ``alphabet``)."""
    parts = [int(s) for s in np.atleast_1d(seed)]
    images = np.empty((len(alphabet) * per_class, size, size), dtype=np.uint8)
    labels = np.repeat(np.arange(len(alphabet), dtype=np.int64), per_class)
    for label, char in enumerate(alphabet):
        rng = np.random.default_rng([*parts, 1, label])
        for j in range(per_class):
            font = fonts[int(rng.integers(len(fonts)))]
            images[label * per_class + j] = render(char, font, size, rng)
    order = np.random.default_rng([*parts, 0]).permutation(len(labels))
    return images[order], labels[order]


def _class_dir_name(char: str) -> str:
    """A folder name for a character that is safe on every file system (and case-insensitive ones)."""
    if char.isdigit():
        return char
    if char.isalpha() and char.isascii():
        return f"{char}_upper" if char.isupper() else f"{char}_lower"
    return f"u{ord(char):04x}"


def write_folder(
    root: Path | str,
    alphabet: str = DIGITS,
    per_class: int = 200,
    size: int = 28,
    seed: int = 0,
    fonts: Sequence[str] = FONTS,
) -> Path:
    """Write ``root/<class>/<i>.png`` (8-bit grayscale PNGs): a user's folder of small character
    images, for tests, docs and ``--dataset imagefolder`` trials. Returns ``root``."""
    root = Path(root)
    images, labels = render_set(alphabet, per_class, size, seed, fonts)
    counters = [0] * len(alphabet)
    for image, label in zip(images, labels):
        folder = root / _class_dir_name(alphabet[label])
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image, mode="L").save(folder / f"{counters[label]:05d}.png")
        counters[label] += 1
    return root


class Characters(Dataset):
    """Rendered characters (default the ten digits), 28x28 grayscale, class = character.

    ``train`` (240 per class) and ``test`` (100 per class) are drawn from disjoint fonts. Not
    flip-invariant: a mirrored character is another symbol (or none), so training uses no flips.
    """

    name = "characters"
    dcx_api = "3.0"
    flip_invariant = False
    reads_root = False
    defaults = RunDefaults(image_size=32, k=100, epochs=10, batch_size=64, width=0.25, passes=3, jitter=0.4)
    options = (
        Option("alphabet", str, DIGITS, "the characters, one class each"),
        Option("per_class", int, 240, "training images per character", min=1),
        Option("test_per_class", int, 100, "test images per character", min=1),
        Option("size", int, 28, "side of the images in pixels", min=8, max=256),
        Option("seed", int, 0, "seed of fonts, sizes and jitter (the dataset's identity)", min=0),
        Option("limit", int, None, "keep only the first N images (quick trials, tests)", nullable=True, min=2),
    )

    def __init__(self, **options) -> None:
        super().__init__(**options)
        alphabet = self.params["alphabet"]
        if len(alphabet) < 2 or len(set(alphabet)) != len(alphabet):
            raise InputError(f"characters: alphabet must hold at least 2 distinct characters, got {alphabet!r}")

    def splits(self) -> tuple[str, ...]:
        return ("train", "test")

    def load(self, root: Path | None = None, split: str = "train", download: bool = False) -> ImageSet:
        fonts = split_fonts(split)
        p = self.params
        per_class = p["per_class"] if split == "train" else p["test_per_class"]
        # The split is part of the seed: test glyphs never repeat train jitter (and fonts differ).
        seed = (p["seed"], int(split == "test"))
        images, labels = render_set(p["alphabet"], per_class, p["size"], seed, fonts)
        if p["limit"] is not None:
            images, labels = images[: p["limit"]], labels[: p["limit"]]
        return ImageSet(ArrayImages(images), labels, list(p["alphabet"]), channels=1)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write a folder root/<class>/*.png of rendered characters.")
    parser.add_argument("root", type=Path)
    parser.add_argument("--alphabet", default=DIGITS)
    parser.add_argument("--per-class", type=int, default=200)
    parser.add_argument("--size", type=int, default=28)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    write_folder(args.root, args.alphabet, args.per_class, args.size, args.seed)
    print(f"wrote {len(args.alphabet) * args.per_class} images under {args.root}")


if __name__ == "__main__":
    main()
