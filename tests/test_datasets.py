"""The bundled real-image datasets: textures, photos (patches of shipped photographs), characters."""

import numpy as np
import pytest
from PIL import Image

from dcx.core.errors import InputError
from dcx.datasets._patches import BANDS, cut_patches
from dcx.datasets.characters import FONTS, Characters, split_fonts, write_folder
from dcx.datasets.photos import Photos
from dcx.datasets.textures import Textures
from dcx.testing import check_dataset

SMALL = {"per_class": 12, "test_per_class": 6}


@pytest.mark.parametrize("cls, mode, size", [(Textures, "L", 32), (Photos, "RGB", 32), (Characters, "L", 28)])
def test_bundled_datasets_load_deterministically_with_declared_modes_and_balanced_labels(cls, mode, size):
    a = cls(**SMALL).load(None, "train")
    b = cls(**SMALL).load(None, "train")
    test = cls(**SMALL).load(None, "test")
    assert a.classes == b.classes and len(a.classes) == 10 and a.num_classes == 10
    assert len(a) == 120 and len(test) == 60
    assert np.bincount(a.labels).tolist() == [12] * 10 and np.bincount(test.labels).tolist() == [6] * 10
    assert np.array_equal(a.images.array, b.images.array) and np.array_equal(a.labels, b.labels)
    img = a.images[0]
    assert img.mode == mode and img.size == (size, size) and a.channels == len(img.getbands())
    # Shuffled, not class after class (so `limit` keeps every class).
    assert len(set(a.labels[:30].tolist())) > 3
    other = cls(**SMALL, seed=1).load(None, "train")
    assert not np.array_equal(a.images.array, other.images.array)
    # No test image is a copy of a training image.
    flat_train = {x.tobytes() for x in a.images.array}
    assert not any(x.tobytes() in flat_train for x in test.images.array)
    limited = cls(**SMALL, limit=7).load(None, "train")
    assert len(limited) == 7 and np.array_equal(limited.images.array, a.images.array[:7])
    with pytest.raises(InputError, match="not 'all'"):
        cls(**SMALL).load(None, "all")
    check_dataset(cls(**SMALL))


def test_patch_datasets_are_not_flat_and_differ_between_classes():
    images = Textures(**SMALL).load(None, "train")
    x = images.images.array.astype(np.float32)
    assert np.median(x.reshape(len(x), -1).std(axis=1)) > 10  # patches show structure
    means = [x[images.labels == c].mean() for c in range(10)]
    assert np.ptp(means) > 20  # sources differ
    photos = Photos(**SMALL).load(None, "train").images.array.astype(np.float32)
    assert np.abs(photos[..., 0] - photos[..., 2]).mean() > 10  # real colour, not gray in RGB


def test_train_and_test_patches_come_from_disjoint_bands():
    (train_bands, test_band) = BANDS["train"], BANDS["test"][0]
    assert train_bands[0][1] <= test_band[0] and test_band[1] <= train_bands[1][0]
    # A source whose test band holds values 150..250 and train bands 0..100: no patch mixes them.
    rng = np.random.default_rng(0)
    h = w = 256
    src = rng.integers(0, 101, (h, w)).astype(np.uint8)
    rows = slice(round(test_band[0] * h), round(test_band[1] * h))
    src[rows] = rng.integers(150, 251, src[rows].shape)
    image = Image.fromarray(src)
    train = cut_patches(image, BANDS["train"], 200, np.random.default_rng(1), 32, base=48, scale=(0.5, 1.5))
    test = cut_patches(image, BANDS["test"], 200, np.random.default_rng(2), 32, base=48, scale=(0.5, 1.5))
    assert train.max() <= 100 and test.min() >= 150
    assert train.shape == (200, 32, 32) and test.dtype == np.uint8


def test_characters_splits_use_disjoint_fonts_and_are_never_flipped():
    train, test = set(split_fonts("train")), set(split_fonts("test"))
    assert not train & test and train | test == set(FONTS) and len(test) == 4
    assert Characters.flip_invariant is False and Textures.flip_invariant and Photos.flip_invariant
    glyphs = Characters(alphabet="AB", per_class=5, test_per_class=5).load(None, "train")
    assert glyphs.classes == ["A", "B"] and len(glyphs) == 10
    with pytest.raises(InputError, match="distinct"):
        Characters(alphabet="AA")


def test_write_folder_makes_a_class_per_character(tmp_path):
    root = write_folder(tmp_path / "chars", alphabet="01a", per_class=3, size=20, seed=0)
    assert sorted(p.name for p in root.iterdir()) == ["0", "1", "a_lower"]
    files = sorted(root.rglob("*.png"))
    assert len(files) == 9
    with Image.open(files[0]) as img:
        assert img.mode == "L" and img.size == (20, 20)
