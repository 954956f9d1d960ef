"""``photos``: colour 32x32 patches of ten colour photographs shipped inside installed wheels.

Class = source photograph: seven from scikit-image (``skimage/data``), one from matplotlib
(``mpl-data/sample_data``), two from scikit-learn (``load_sample_images``). No download.
Sources and licences: ``docs/datasets.md``.
"""

from __future__ import annotations

from dataclasses import replace

from dcx.datasets._patches import PatchDataset, Source

SOURCES = (
    Source("astronaut", "skimage", "data/astronaut.png", "public domain (NASA)"),
    Source("cat", "skimage", "data/chelsea.png", "CC0 (Stefan van der Walt)"),
    Source("coffee", "skimage", "data/coffee.png", "CC0 (Rachel Michetti)"),
    Source("hubble", "skimage", "data/hubble_deep_field.jpg", "public domain (NASA)"),
    Source("ihc", "skimage", "data/ihc.png", "no known copyright restrictions (CMMI)"),
    Source("retina", "skimage", "data/retina.jpg", "CC0 (Mikael Häggström, Wikimedia Commons)"),
    Source("rocket", "skimage", "data/rocket.jpg", "public domain (SpaceX)"),
    Source("hopper", "matplotlib", "mpl-data/sample_data/grace_hopper.jpg", "public domain (US Navy)"),
    Source("china", "sklearn", "datasets/images/china.jpg", "CC BY 2.0 (danielbuechele, Flickr)"),
    Source("flower", "sklearn", "datasets/images/flower.jpg", "CC BY 2.0 (vultilion, Flickr)"),
)


class Photos(PatchDataset):
    """Colour patches of ten colour photographs (astronaut, cat, coffee, hubble, ihc, retina,
    rocket, hopper, china, flower), class = source photograph; 2,400 train / 1,000 test."""

    name = "photos"
    dcx_api = "3.0"
    flip_invariant = True
    sources = SOURCES
    mode = "RGB"
    # No Sobel: colour tells most of these photographs apart and Sobel keeps only edges; textures keep it,
    # SwAV losing there without it (docs/decisions.md D08).
    defaults = replace(PatchDataset.defaults, sobel=False)
