"""Labelled data to evaluate on: the run's own images (split 70/30 when the dataset has no test
split) or another labelled dataset, converted to the network's channels."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Sequence

import numpy as np

from dcx.core.contracts import Dataset, ImageSet
from dcx.core.errors import InputError

#: Split-less datasets (digits, imagefolder): a fixed seeded stratified split, the same for every run.
SPLIT_SEED = 0
TEST_FRACTION = 0.3
LABELLED = "digits, mnist, cifar10, stl10, or imagefolder --data-root DIR with one sub-folder per class"
#: The cluster protocol scores k-means on at most this many images, a seeded sample stratified by
#: class: its PCA and k-means cost grow with the rows, and its NMI moves less with the sample than
#: with the k-means seed (docs/decisions.md D60). 0: every image.
CLUSTER_IMAGES = 10_000


@dataclass
class EvalData:
    """Labelled images to evaluate on: one array of images, with train / test / cluster indices.

    ``cluster_idx`` are the images k-means is run on (the run's training images); the linear
    and kNN classifiers train on ``train_idx`` and are scored on ``test_idx``.
    """

    images: ImageSet
    labels: np.ndarray
    train_idx: np.ndarray
    test_idx: np.ndarray
    cluster_idx: np.ndarray
    dataset: str
    split: str  # how train/test were formed, stated in every output
    #: The images decoded at an image size, kept for every extraction pass (``extraction.decoded``).
    decoded: dict[int, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def num_classes(self) -> int:
        return int(len(np.unique(self.labels)))

    def for_protocols(self, protocols: Sequence[str], cluster_images: int = CLUSTER_IMAGES) -> "EvalData":
        """The data ``protocols`` score: k-means' images cut to ``cluster_images`` (``stratified_sample``);
        for the cluster protocol alone, only those images, so that only they are decoded and extracted."""
        idx = stratified_sample(self.labels, self.cluster_idx, cluster_images)
        if list(protocols) != ["cluster"]:
            return replace(self, cluster_idx=idx)
        return self if len(idx) == len(self.labels) else clustering_data(self.images, idx, self.dataset, self.split)


class _Concat:
    """Two image sequences as one (train then test), converted to the network's colour mode."""

    def __init__(self, parts: Sequence[Sequence[Any]], mode: str | None) -> None:
        self.parts = parts
        self.offsets = np.cumsum([0] + [len(p) for p in parts])
        self.mode = mode

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, i: int):
        part = int(np.searchsorted(self.offsets, i, side="right") - 1)
        img = self.parts[part][i - int(self.offsets[part])]
        return img.convert(self.mode) if self.mode and getattr(img, "mode", self.mode) != self.mode else img


class Subset:
    """The images of a sequence at ``idx``, in that order."""

    def __init__(self, images: Sequence[Any], idx: np.ndarray) -> None:
        self.images, self.idx = images, idx

    def __len__(self) -> int:
        return len(self.idx)

    def __getitem__(self, i: int):
        return self.images[int(self.idx[i])]


def clustering_data(images: ImageSet, idx: np.ndarray, dataset: str, split: str) -> EvalData:
    """The labelled ``images`` at ``idx``, every one of them for k-means (no classifier split): the
    cluster protocol's sample and the end-of-run probe's."""
    labels = np.asarray(images.labels)[idx]
    rows = np.arange(len(idx))
    subset = ImageSet(Subset(images.images, idx), labels, images.classes, images.channels)
    return EvalData(subset, labels, rows, rows[:0], rows, dataset, split)


def _require_labels(images: ImageSet, dataset: str, split: str) -> None:
    if images.labels is None:
        raise InputError(
            f"dataset '{dataset}' ({split}) has no labels, so features cannot be scored: "
            f"pass a labelled dataset with --dataset ({LABELLED})"
        )
    if images.num_classes < 2:
        raise InputError(f"dataset '{dataset}' has a single class: evaluation needs at least 2 labelled classes")


def stratified_split(labels: np.ndarray, test_fraction: float = TEST_FRACTION, seed: int = SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split keeping each class's proportion (at least one train and, if possible, one test image)."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_test = min(len(idx) - 1, int(round(len(idx) * test_fraction)))
        n_test = max(n_test, 1 if len(idx) > 1 else 0)
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def stratified_sample(labels: np.ndarray, idx: np.ndarray, limit: int, seed: int = SPLIT_SEED) -> np.ndarray:
    """``limit`` of ``idx`` (sorted), each class keeping its share (largest remainders) and at least one
    image, so more only when there are more classes; seeded. All of ``idx`` when it is no longer than
    ``limit`` or ``limit`` is 0."""
    if limit <= 0 or len(idx) <= limit:
        return idx
    rng = np.random.default_rng(seed)
    y = labels[idx]
    classes, counts = np.unique(y, return_counts=True)
    share = counts * limit / len(idx)
    take = np.floor(share).astype(int)
    take[np.argsort(take - share, kind="stable")[: limit - take.sum()]] += 1  # largest remainders: limit in all
    take = np.maximum(take, 1)
    return np.sort(np.concatenate([rng.permutation(idx[y == c])[:t] for c, t in zip(classes, take)]))


def load_eval_data(
    dataset: Dataset, name: str, root: str | None, download: bool, channels: int,
    train_images: ImageSet | None = None,
) -> EvalData:
    """Load a labelled dataset's train and test splits, or split a split-less one (stated in ``split``).

    ``train_images`` reuses images already loaded (the run's own training split).
    ``channels`` is what the network takes: images are converted to it (L or RGB).
    """
    mode = "L" if channels == 1 else "RGB"
    splits = dataset.splits()
    if "train" in splits and "test" in splits:
        train = train_images if train_images is not None else dataset.load(root, "train", download)
        _require_labels(train, name, "train split")
        test = dataset.load(root, "test", download)
        _require_labels(test, name, "test split")
        n_tr, n_te = len(train), len(test)
        labels = np.concatenate([train.labels, test.labels])
        images = ImageSet(_Concat([train.images, test.images], mode), labels, train.classes, channels)
        train_idx, test_idx = np.arange(n_tr), np.arange(n_tr, n_tr + n_te)
        split = f"{name} train ({n_tr}) / test ({n_te}) splits"
        cluster_idx = train_idx
    else:
        allset = train_images if train_images is not None else dataset.load(root, splits[0], download)
        _require_labels(allset, name, f"split '{splits[0]}'")
        labels = np.asarray(allset.labels)
        images = ImageSet(_Concat([allset.images], mode), labels, allset.classes, channels)
        train_idx, test_idx = stratified_split(labels)
        split = (f"{name} has no test split: seeded stratified split (seed {SPLIT_SEED}, "
                 f"{int(TEST_FRACTION * 100)}% test): {len(train_idx)} train / {len(test_idx)} test")
        cluster_idx = np.arange(len(labels))
    if len(test_idx) == 0:
        raise InputError(f"dataset '{name}' is too small to hold out test images: use a larger labelled dataset")
    return EvalData(images, labels, train_idx, test_idx, cluster_idx, name, split)
