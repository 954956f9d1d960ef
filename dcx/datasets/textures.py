"""``textures``: grayscale 32x32 patches of the ten grayscale photographs scikit-image ships.

Class = source image. No download: the files are inside the scikit-image wheel
(``skimage/data/*.png``). Sources and licences: ``docs/datasets.md``.
"""

from __future__ import annotations

from dcx.datasets._patches import PatchDataset, Source

SOURCES = (
    Source("brick", "skimage", "data/brick.png", "CC0 (CC0Textures)"),
    Source("camera", "skimage", "data/camera.png", "CC0 (Lav Varshney)"),
    Source("cell", "skimage", "data/cell.png", "CC0 (Paul Müller)"),
    Source("clock", "skimage", "data/clock_motion.png", "public domain (Stefan van der Walt)"),
    Source("coins", "skimage", "data/coins.png", "no known copyright restrictions (Brooklyn Museum)"),
    Source("grass", "skimage", "data/grass.png", "CC0 (linolafett, DeviantArt)"),
    Source("gravel", "skimage", "data/gravel.png", "CC0 (CC0Textures)"),
    Source("moon", "skimage", "data/moon.png", "scikit-image sample data, no licence stated"),
    Source("page", "skimage", "data/page.png", "scikit-image sample data, no licence stated"),
    Source("text", "skimage", "data/text.png", "public domain (Wikipedia 'Corner.png')"),
)


class Textures(PatchDataset):
    """Grayscale patches of ten grayscale photographs and textures (brick, camera, cell, clock,
    coins, grass, gravel, moon, page, text), class = source image; 2,400 train / 1,000 test."""

    name = "textures"
    dcx_api = "3.0"
    flip_invariant = True  # a mirrored patch of grass or brick is still grass or brick
    sources = SOURCES
    mode = "L"
