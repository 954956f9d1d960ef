"""Checks of datasets: splits, images, labels and their alignment, run defaults.

They load from the plugin under test's ``root`` (``check_dataset(MyDataset, root=...)``) with
``download=False`` and look at a sample of at most ``SAMPLE`` images, so they stay fast on
large datasets.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from dcx.core.contracts import Dataset, ImageSet, RunDefaults
from dcx.testing.base import PluginUnderTest, check, is_dataset

#: Images looked at by the per-image checks.
SAMPLE = 300
#: Side the label-alignment check compares images at.
THUMB = 12


def _load(p: PluginUnderTest, split: str | None = None) -> ImageSet:
    dataset: Dataset = p.new()
    split = split or dataset.splits()[0]
    images = dataset.load(p.root, split, False)
    assert isinstance(images, ImageSet), f"load({split!r}) must return an ImageSet, got {type(images).__name__}"
    assert len(images) > 0, f"load({split!r}) returned no images"
    return images


def _sample(n: int, size: int = SAMPLE) -> np.ndarray:
    """Evenly spread indices, first and last included."""
    return np.unique(np.linspace(0, n - 1, min(n, size)).round().astype(int))


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.float32)


@check("splits() is a non-empty tuple of split names", applies=is_dataset)
def check_dataset_splits(p: PluginUnderTest) -> None:
    splits = p.new().splits()
    assert isinstance(splits, tuple) and splits, f"splits() returned {splits!r}"
    assert all(isinstance(s, str) and s for s in splits), f"split names must be strings: {splits!r}"


@check("every split that splits() lists loads as a non-empty ImageSet", applies=is_dataset)
def check_dataset_splits_loadable(p: PluginUnderTest) -> None:
    for split in p.new().splits():
        _load(p, split)


@check("images[i] are PIL images with ImageSet.channels bands (1 or 3)", applies=is_dataset)
def check_dataset_images(p: PluginUnderTest) -> None:
    images = _load(p)
    assert images.channels in (1, 3), f"ImageSet.channels is {images.channels}"
    for i in _sample(len(images), 20):
        img = images.images[int(i)]
        assert isinstance(img, Image.Image), f"images[{i}] is a {type(img).__name__}, not a PIL image"
        assert len(img.getbands()) == images.channels, (
            f"images[{i}] has {len(img.getbands())} bands, ImageSet.channels says {images.channels}")


@check("labels are None or one integer per image in 0..len(classes)-1", applies=is_dataset)
def check_dataset_labels(p: PluginUnderTest) -> None:
    for split in p.new().splits():
        images = _load(p, split)
        if images.labels is None:
            continue
        labels = np.asarray(images.labels)
        assert labels.shape == (len(images),), f"{split}: labels have shape {labels.shape}, expected ({len(images)},)"
        assert np.issubdtype(labels.dtype, np.integer), f"{split}: labels are {labels.dtype}, expected integers"
        assert labels.min() >= 0, f"{split}: negative label {labels.min()}"
        if images.classes is not None:
            assert labels.max() < len(images.classes), (
                f"{split}: label {labels.max()} but only {len(images.classes)} classes ({images.classes[:5]}...)")


@check("loading twice gives the same images with the same labels in the same order, and images[i] is stable",
       applies=is_dataset)
def check_dataset_load_reproducible(p: PluginUnderTest) -> None:
    first, second = _load(p), _load(p)
    assert len(first) == len(second), f"{len(first)} then {len(second)} images"
    assert (first.labels is None) == (second.labels is None), "labels present in one load only"
    if first.labels is not None:
        assert np.array_equal(first.labels, second.labels), "labels differ between two loads (shuffled?)"
    for i in _sample(len(first), 10):
        a, b, c = (_pixels(s.images[int(i)]) for s in (first, second, first))
        assert np.array_equal(a, b), f"images[{i}] differs between two loads"
        assert np.array_equal(a, c), f"images[{i}] differs between two reads"


def _nearest_neighbour_accuracy(images: ImageSet, index: np.ndarray) -> tuple[float, float]:
    """Leave-one-out 1-NN accuracy of labels from small grayscale thumbnails, and its chance level."""
    thumbs = []
    for i in index:
        t = _pixels(images.images[int(i)].convert("L").resize((THUMB, THUMB), Image.BILINEAR)).ravel()
        t = t - t.mean()
        thumbs.append(t / (np.linalg.norm(t) + 1e-6))
    x = np.stack(thumbs)
    y = np.asarray(images.labels)[index]
    sim = x @ x.T
    np.fill_diagonal(sim, -np.inf)
    accuracy = float((y[sim.argmax(axis=1)] == y).mean())
    _, counts = np.unique(y, return_counts=True)
    chance = float(((counts / len(y)) * ((counts - 1) / max(len(y) - 1, 1))).sum())
    return accuracy, chance


@check("labels go with their images: a 1-nearest-neighbour on thumbnails beats chance (labels not shuffled)",
       applies=is_dataset)
def check_dataset_labels_match_images(p: PluginUnderTest) -> None:
    images = _load(p)
    if images.labels is None:
        return
    index = _sample(len(images))
    if len(np.unique(np.asarray(images.labels)[index])) < 2:
        return
    accuracy, chance = _nearest_neighbour_accuracy(images, index)
    margin = 3 * np.sqrt(chance * (1 - chance) / len(index)) + 0.02
    assert accuracy > chance + margin, (
        f"1-NN accuracy {accuracy:.2f} on {len(index)} images is at chance ({chance:.2f}): are the labels aligned "
        "with the images? (a dataset whose labels are not visible in small thumbnails can skip this check)")


@check("defaults and run_defaults(images) are RunDefaults with jitter in [0, 1]; flip_invariant is a bool",
       applies=is_dataset)
def check_dataset_run_defaults(p: PluginUnderTest) -> None:
    dataset: Dataset = p.new()
    assert isinstance(dataset.flip_invariant, bool), f"flip_invariant is {dataset.flip_invariant!r}"
    assert isinstance(dataset.defaults, RunDefaults), f"defaults is a {type(dataset.defaults).__name__}"
    d = dataset.run_defaults(_load(p))
    assert isinstance(d, RunDefaults), f"run_defaults returned a {type(d).__name__}"
    for which, rd in (("defaults", dataset.defaults), ("run_defaults", d)):
        assert 0 <= rd.jitter <= 1, f"{which}.jitter is {rd.jitter!r}, not in [0, 1] (--jitter's range)"
        assert rd.sobel is None or isinstance(rd.sobel, bool), f"{which}.sobel is {rd.sobel!r}, not None or a bool"
