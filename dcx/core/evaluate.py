"""Evaluation of learned features on a labelled task, always beside the random-init baseline.

Three protocols on each frozen block (paper Table 1 and the peers' benchmarks):
- ``linear``: a linear classifier on standardised, average-pooled block outputs -> test top-1;
- ``knn``: weighted kNN (votes exp(sim / T)) on L2-normalised features, k = 20 and 200, T = 0.1;
- ``cluster``: k-means with k = #classes -> NMI, ARI, Hungarian accuracy, under two
  preprocessings ("l2" and the paper's "pca256-whiten-l2"), since whitening can reverse a
  learned-vs-random comparison on conv features (docs/algorithms, lessons).

``evaluate_run`` evaluates a run directory's trained network and the same architecture at its
random initialisation; ``evaluate_network`` evaluates any FeatureNet on an EvalData (``dcx compare``).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from dcx.core import data as D
from dcx.core.config import RunConfig
from dcx.core.contracts import Dataset, ImageSet
from dcx.core.setup import Setup, setup
from dcx.core.errors import InputError, RunDirError
from dcx.core.features import PCAWhitening, check_finite, extract, l2_normalize
from dcx.core.kmeans import kmeans
from dcx.core.metrics import clustering_scores
from dcx.core.network import FeatureNet
from dcx.core.progress import NullProgress, Progress
from dcx.core.registry import Registry
from dcx.core.rundir import CONFIG, SUMMARY, RunDir, save_json

log = logging.getLogger(__name__)

PROTOCOLS = ("linear", "knn", "cluster")
#: The model's output (what the engine clusters; AlexNet/VGG: fc7 before ReLU), after the blocks.
FEATURES = "features"
EVAL_JSON = "eval.json"
#: Block outputs are average-pooled to at most this many dims (paper: ~9-10k per conv layer).
MAX_DIMS = 9216
KNN_K = (20, 200)
KNN_T = 0.1
CLUSTER_PREPROCESSING = ("l2", "pca256-whiten-l2")
#: k-means(k = #classes) NMI moves by +-0.05 with the seed on digits, even for the best of 10
#: restarts by objective: report the mean (and std) over this many seeds instead.
CLUSTER_RUNS = 5
#: Split-less datasets (digits, imagefolder): a fixed seeded stratified split, the same for every run.
SPLIT_SEED = 0
TEST_FRACTION = 0.3
#: L2 penalty of the linear probe; given several, the best on a held-out 20% of the train split
#: is used. One fixed value by default: on digits the choice moved top-1 by <0.4% (2 images).
LINEAR_WD = (1e-3,)
LINEAR_ITERS = 50
#: Extract at most this many bytes of pooled features per pass; more layers -> more passes.
MEMORY_BUDGET = 2 * 1024**3
LABELLED = "digits, mnist, cifar10, stl10, or imagefolder --data-root DIR with one sub-folder per class"


# ----------------------------------------------------------------------------- data


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

    @property
    def num_classes(self) -> int:
        return int(len(np.unique(self.labels)))


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


# ----------------------------------------------------------------------------- features


def pooled_side(channels: int, height: int, width: int, max_dims: int = MAX_DIMS) -> int | None:
    """Side of the adaptive average pooling bringing C x H x W to <= ``max_dims`` (None: keep as is)."""
    if channels * height * width <= max_dims:
        return None
    side = int(math.floor(math.sqrt(max_dims / channels)))
    return max(1, min(side, height, width))


def layer_names(model: FeatureNet, layers: Sequence[str] | str | None) -> list[str]:
    """Resolve ``layers`` ('all', None or names) to the model's block names (+ 'features')."""
    known = list(model.block_names) + [FEATURES]
    if layers is None or layers == "all" or list(layers) == ["all"]:
        return known
    names = [layers] if isinstance(layers, str) else list(layers)
    bad = [n for n in names if n not in known]
    if bad:
        raise InputError(f"unknown layer(s) {', '.join(bad)}: this network has {', '.join(known)} (or all)")
    return [n for n in known if n in names]  # network order


class _Pooled(nn.Module):
    """Forward returning the chosen blocks (average-pooled, flattened) concatenated in one row."""

    def __init__(self, model: FeatureNet, layers: Sequence[str], sides: dict[str, int | None]) -> None:
        super().__init__()
        self.model, self.layers, self.sides = model, list(layers), sides

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        blocks = [n for n in self.layers if n != FEATURES]
        out = self.model.forward_blocks(x, blocks) if blocks else {}
        if FEATURES in self.layers:
            out[FEATURES] = self.model(x)
        parts = []
        for name in self.layers:
            y = out[name]
            side = self.sides.get(name)
            if side is not None and y.ndim == 4:
                y = nn.functional.adaptive_avg_pool2d(y, side)
            parts.append(y.reshape(len(y), -1))
        return torch.cat(parts, 1)


@torch.no_grad()
def layer_shapes(model: FeatureNet, layers: Sequence[str], image_size: int, channels: int, device: torch.device) -> dict[str, tuple[int, ...]]:
    """Output shape (without batch) of each layer for one input of the network's size."""
    was = model.training
    model.eval()
    try:
        x = torch.zeros(1, channels, image_size, image_size, device=device)
        out = model.forward_blocks(x, [n for n in layers if n != FEATURES])
        if FEATURES in layers:
            out[FEATURES] = model(x)
    finally:
        model.train(was)
    return {n: tuple(out[n].shape[1:]) for n in layers}


def extract_layers(
    model: FeatureNet, data: EvalData, layers: Sequence[str], image_size: int, device: torch.device,
    batch_size: int = 256, workers: int = 0, progress: Progress | None = None, desc: str = "extract",
    max_dims: int = MAX_DIMS,
) -> dict[str, np.ndarray]:
    """Pooled features of every layer for all of ``data``'s images, in one pass (engine's ``extract``)."""
    progress = progress or NullProgress()
    sides, dims = pooling_plan(layer_shapes(model, layers, image_size, data.images.channels, device), max_dims)
    dataset = D.IndexedImages(data.images, D.eval_transform(image_size, data.images.channels))
    batches = D.loader(dataset, batch_size, workers)
    with progress.task(desc, len(dataset)) as advance:
        flat = extract(model, batches, len(dataset), device, forward=_Pooled(model, layers, sides), on_batch=advance)
    check_finite(flat, f"{desc} features")
    out, pos = {}, 0
    for n in layers:
        out[n] = flat[:, pos : pos + dims[n]]
        pos += dims[n]
    return out


def pooling_plan(shapes: dict[str, tuple[int, ...]], max_dims: int = MAX_DIMS) -> tuple[dict, dict[str, int]]:
    """Per layer: the pooled side (None: kept as is) and the resulting number of dims."""
    sides = {n: pooled_side(*s, max_dims) if len(s) == 3 else None for n, s in shapes.items()}
    dims = {n: int(np.prod(s)) if sides[n] is None else s[0] * sides[n] ** 2 for n, s in shapes.items()}
    return sides, dims


def layer_groups(dims: dict[str, int], n: int, budget: int = MEMORY_BUDGET) -> list[list[str]]:
    """Layers grouped so that one group's float32 features for ``n`` images fit in ``budget`` bytes."""
    groups: list[list[str]] = [[]]
    used = 0
    for name, d in dims.items():
        size = 4 * n * d
        if groups[-1] and used + size > budget:
            groups.append([])
            used = 0
        groups[-1].append(name)
        used += size
    return groups


# ----------------------------------------------------------------------------- protocols


def _standardise(train: torch.Tensor, *others: torch.Tensor) -> list[torch.Tensor]:
    mean = train.mean(0)
    std = train.std(0).clamp_min(1e-6)
    return [(t - mean) / std for t in (train, *others)]


def _fit_linear(x: torch.Tensor, y: torch.Tensor, n_classes: int, wd: float, iters: int) -> nn.Linear:
    """Full-batch L-BFGS on cross-entropy + wd/2 ||W||^2 from zero weights: deterministic, no
    learning rate or schedule to tune."""
    clf = nn.Linear(x.shape[1], n_classes).to(x.device)
    nn.init.zeros_(clf.weight)
    nn.init.zeros_(clf.bias)
    opt = torch.optim.LBFGS(clf.parameters(), lr=1.0, max_iter=iters, history_size=10, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = nn.functional.cross_entropy(clf(x), y) + 0.5 * wd * clf.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return clf


@torch.no_grad()
def _accuracy(clf: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((clf(x).argmax(1) == y).float().mean())


def linear_probe(
    train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
    device: torch.device | str = "cpu", weight_decays: Sequence[float] = LINEAR_WD, iters: int = LINEAR_ITERS,
) -> dict[str, float]:
    """Top-1 of a linear classifier on standardised features. With several ``weight_decays`` the
    penalty is picked on a stratified 20% of the train split, then refitted on the whole split."""
    classes, ytr = np.unique(train_y, return_inverse=True)
    index = {c: i for i, c in enumerate(classes)}
    yte = np.array([index.get(c, -1) for c in test_y])  # a class unseen in train can never be right
    dev = torch.device(device)
    xtr = torch.from_numpy(np.ascontiguousarray(train_x, dtype=np.float32)).to(dev)
    xte = torch.from_numpy(np.ascontiguousarray(test_x, dtype=np.float32)).to(dev)
    ytr_t, yte_t = torch.from_numpy(ytr).to(dev), torch.from_numpy(yte).to(dev)
    wd = weight_decays[0]
    if len(weight_decays) > 1:
        fit_i, val_i = stratified_split(ytr, 0.2, SPLIT_SEED + 1)
        if len(val_i):
            xf, xv = _standardise(xtr[fit_i], xtr[val_i])
            scores = [_accuracy(_fit_linear(xf, ytr_t[fit_i], len(classes), w, iters), xv, ytr_t[val_i]) for w in weight_decays]
            wd = weight_decays[int(np.argmax(scores))]  # the first of tied penalties
    xtr_s, xte_s = _standardise(xtr, xte)
    clf = _fit_linear(xtr_s, ytr_t, len(classes), wd, iters)
    return {"top1": _accuracy(clf, xte_s, yte_t), "train_top1": _accuracy(clf, xtr_s, ytr_t), "weight_decay": wd}


@torch.no_grad()
def knn_classify(
    train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
    ks: Sequence[int] = KNN_K, temperature: float = KNN_T, device: torch.device | str = "cpu", chunk: int = 1024,
) -> dict[str, float]:
    """Weighted kNN top-1 on L2-normalised features: neighbours vote exp(cosine / T) for their class."""
    dev = torch.device(device)
    classes, ytr = np.unique(train_y, return_inverse=True)
    index = {c: i for i, c in enumerate(classes)}
    yte = torch.tensor([index.get(c, -1) for c in test_y], device=dev)
    xtr = torch.from_numpy(l2_normalize(np.asarray(train_x, dtype=np.float32))).to(dev)
    xte = torch.from_numpy(l2_normalize(np.asarray(test_x, dtype=np.float32))).to(dev)
    ytr_t = torch.from_numpy(ytr).to(dev)
    k_max = min(max(ks), len(xtr))
    correct = {k: 0 for k in ks}
    for s in range(0, len(xte), chunk):
        sim, idx = (xte[s : s + chunk] @ xtr.T).topk(k_max, dim=1)
        weights = (sim / temperature).exp()
        neigh = ytr_t[idx]
        for k in ks:
            kk = min(k, k_max)
            votes = torch.zeros(len(sim), len(classes), device=dev)
            votes.scatter_add_(1, neigh[:, :kk], weights[:, :kk])
            correct[k] += int((votes.argmax(1) == yte[s : s + chunk]).sum())
    return {f"top1_k{k}": correct[k] / len(xte) for k in ks}


def pca_whiten_l2(x: np.ndarray, dim: int = 256) -> np.ndarray:
    """PCA to ``dim`` + whitening + L2 of the rows ``x`` itself (fit and transform on the same rows).

    Same map as PCAWhitening when N > d. With fewer rows than dims (conv blocks of a small
    dataset) it goes through the N x N Gram matrix instead of the d x d covariance: whitened
    training rows are the Gram's top eigenvectors scaled by sqrt(l / (l + eps l0)), so a 5,400-d
    block costs an N x N eigendecomposition instead of a 5,400^3 one. Directions of zero
    variance (only when dim >= N) give 0 instead of amplified round-off.
    """
    n, d = x.shape
    if n > d:
        return PCAWhitening(dim=dim).fit_transform(x)
    check_finite(x)
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    centred = t - t.mean(0, dtype=torch.float64).float()
    evals, evecs = torch.linalg.eigh(centred @ centred.T)  # float32 is ample for the top components
    keep = min(dim, n)
    evals, evecs = evals.flip(0)[:keep].clamp_min(0), evecs.flip(1)[:, :keep]
    eps = PCAWhitening.eps * max(float(evals[0]), 1e-30)
    y = evecs * torch.sqrt(evals / (evals + eps))
    y[:, evals <= eps] = 0
    return l2_normalize(y.float().numpy())


def preprocess_for_clustering(x: np.ndarray, variant: str, pca_dim: int = 256) -> np.ndarray:
    """'l2': rows to unit norm; 'pca256-whiten-l2': the paper's PCA to 256 dims + whitening + L2."""
    if variant == "l2":
        return l2_normalize(x)
    if variant == f"pca{pca_dim}-whiten-l2":
        return pca_whiten_l2(x, pca_dim)
    raise InputError(f"unknown clustering preprocessing {variant!r}: use {', '.join(CLUSTER_PREPROCESSING)}")


def cluster_protocol(
    x: np.ndarray, labels: np.ndarray, seed: int = SPLIT_SEED, variants: Sequence[str] = CLUSTER_PREPROCESSING,
    runs: int = CLUSTER_RUNS, device: torch.device | str = "cpu",
) -> dict[str, dict[str, float]]:
    """k-means (k = #classes) per preprocessing -> NMI, ARI, Hungarian accuracy: mean and std over
    ``runs`` seeds (``seed``, ``seed + 1``, ...)."""
    k = int(len(np.unique(labels)))
    out = {}
    for variant in variants:
        z = preprocess_for_clustering(x, variant)
        scores = [clustering_scores(labels, kmeans(z, k, 20, seed + r, device=device).labels) for r in range(runs)]
        out[variant] = {m: float(np.mean([sc[m] for sc in scores])) for m in scores[0]}
        out[variant].update({f"{m}_std": float(np.std([sc[m] for sc in scores])) for m in scores[0]})
    return out


# ----------------------------------------------------------------------------- networks and runs


def evaluate_features(
    feats: np.ndarray, data: EvalData, protocols: Sequence[str], device: torch.device | str = "cpu",
) -> dict[str, dict]:
    """Every protocol on one layer's features (rows aligned with ``data.images``)."""
    y = data.labels
    out: dict[str, dict] = {}
    if "linear" in protocols:
        out["linear"] = linear_probe(feats[data.train_idx], y[data.train_idx], feats[data.test_idx], y[data.test_idx], device)
    if "knn" in protocols:
        out["knn"] = knn_classify(feats[data.train_idx], y[data.train_idx], feats[data.test_idx], y[data.test_idx], device=device)
    if "cluster" in protocols:
        out["cluster"] = cluster_protocol(feats[data.cluster_idx], y[data.cluster_idx], device=device)
    return out


def evaluate_network(
    model: FeatureNet, data: EvalData, protocols: Sequence[str] = PROTOCOLS, layers: Sequence[str] | str | None = None,
    image_size: int = 32, device: torch.device | str = "cpu", batch_size: int = 256, workers: int = 0,
    progress: Progress | None = None, name: str = "network",
) -> dict[str, Any]:
    """Protocols x layers for one frozen network -> {protocol: {layer: metrics}, "dims": {layer: d}}."""
    progress = progress or NullProgress()
    device = torch.device(device)
    protocols = check_protocols(protocols)
    names = layer_names(model, layers)
    _, dims = pooling_plan(layer_shapes(model, names, image_size, data.images.channels, device))
    result: dict[str, Any] = {p: {} for p in protocols}
    result["dims"] = dims
    for group in layer_groups(dims, len(data.images)):
        feats = extract_layers(model, data, group, image_size, device, batch_size, workers, progress,
                               desc=f"extract {name} ({', '.join(group)})")
        with progress.task(f"evaluate {name} ({', '.join(protocols)})", len(group)) as advance:
            for layer in group:
                t = time.perf_counter()
                scores = evaluate_features(feats.pop(layer), data, protocols, device)
                for p, v in scores.items():
                    result[p][layer] = v
                log.debug("%s %s evaluated in %.1f s", name, layer, time.perf_counter() - t)
                advance(1)
    return result


def check_protocols(protocols: Sequence[str] | str) -> list[str]:
    """Resolve 'all' / names (comma lists allowed) to known protocol names, in canonical order."""
    names = [protocols] if isinstance(protocols, str) else list(protocols)
    names = [p.strip() for n in names for p in n.split(",") if p.strip()]
    if not names or "all" in names:
        return list(PROTOCOLS)
    bad = [p for p in names if p not in PROTOCOLS]
    if bad:
        raise InputError(f"unknown protocol(s) {', '.join(bad)}: use {', '.join(PROTOCOLS)} or all")
    return [p for p in PROTOCOLS if p in names]


def settings(protocols: Sequence[str], pca_dim: int = 256) -> dict[str, Any]:
    """What each protocol did, stored with its numbers."""
    out: dict[str, Any] = {"pooling": f"adaptive average pooling of each block to at most {MAX_DIMS} dims"}
    if "linear" in protocols:
        out["linear"] = (f"logistic regression on standardised features, full-batch L-BFGS ({LINEAR_ITERS} "
                         f"iterations), L2 penalty {' / '.join(map(str, LINEAR_WD))}")
    if "knn" in protocols:
        out["knn"] = f"weighted kNN on L2-normalised features, votes exp(cos/{KNN_T}), k = {', '.join(map(str, KNN_K))}"
    if "cluster" in protocols:
        out["cluster"] = (f"k-means (k = #classes, 20 iterations) on the run's training images after each "
                          f"preprocessing ({', '.join(CLUSTER_PREPROCESSING)}); mean of {CLUSTER_RUNS} seeds")
    return out


def _checkpoint_channels(state: dict[str, torch.Tensor]) -> int | None:
    """Image channels the saved network takes: Sobel's gray filter, else the first conv's input."""
    if "input.gray" in state:
        return int(state["input.gray"].shape[1])
    for value in state.values():
        if value.ndim == 4 and value.is_floating_point():
            return int(value.shape[1])
    return None


def _random_network(s: Setup, channels: int) -> FeatureNet:
    """The run's initial network: setup() builds it from the seed; rebuilt likewise for other channels."""
    if s.images is not None and s.images.channels == channels:
        return s.model
    from dcx.core.network import build_network

    cfg = s.config
    torch.manual_seed(cfg.seed)  # exactly as setup(): same seed -> same random-init network
    return build_network(s.backbone, channels, cfg.image_size, cfg.width, cfg.sobel).to(s.device)


def _other_dataset(s: Setup, dataset: str, data_root: str | None, options: dict | None,
                   registry: Registry, channels: int) -> EvalData:
    cfg = s.config
    opts = dict(cfg.options.get(dataset, {})) if dataset == cfg.dataset else {}
    opts.update(options or {})
    plugin = registry.create("dataset", dataset, opts)
    root = data_root if data_root is not None else (cfg.data_root if dataset == cfg.dataset else None)
    return load_eval_data(plugin, dataset, root, cfg.download, channels)


@dataclass
class LoadedRun:
    """A run directory resolved for evaluation: its trained network, its random init, the data."""

    setup: Setup
    learned: FeatureNet
    random: FeatureNet
    data: EvalData
    epoch: int


def load_run(
    run_dir: Path, dataset: str | None = None, data_root: str | None = None, dataset_options: dict | None = None,
    device: str | None = None, registry: Registry | None = None,
) -> LoadedRun:
    """Rebuild a run's network from config.toml + checkpoint.pt, its random init from the same seed
    (setup() is deterministic in it), and the labelled data to evaluate on (the run's or ``dataset``)."""
    run = RunDir(Path(run_dir))
    if not (run.path / CONFIG).is_file():
        raise RunDirError(f"{run.path} has no {CONFIG}: pass a run directory written by dcx run")
    cfg = RunConfig.load(run.path / CONFIG)
    if device is not None:
        cfg = cfg.merged({"device": device})
    registry = registry or Registry()
    own = dataset is None or (dataset == cfg.dataset and not dataset_options and data_root is None)
    s = setup(cfg, registry, load_images=own)
    if own:  # fail on an unlabelled dataset before reading the checkpoint
        data = load_eval_data(s.dataset, cfg.dataset, cfg.data_root, cfg.download, s.images.channels, s.images)
    state = run.load_checkpoint()
    if state is None:
        raise RunDirError(f"{run.path} has no checkpoint.pt: the run has not finished an epoch yet")
    channels = s.images.channels if own else (_checkpoint_channels(state["model"]) or 3)
    if not own:
        data = _other_dataset(s, dataset, data_root, dataset_options, registry, channels)
    random_net = _random_network(s, channels)
    learned = copy.deepcopy(random_net)
    try:
        learned.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise RunDirError(f"{run.path / 'checkpoint.pt'} does not match its config.toml ({str(exc).splitlines()[0]})") from None
    return LoadedRun(s, learned, random_net, data, int(state.get("epoch", 0)))


def evaluate_run(
    run_dir: Path, protocols: Sequence[str] | str = "all", layers: Sequence[str] | str | None = "all",
    dataset: str | None = None, progress: Progress | None = None, data_root: str | None = None,
    dataset_options: dict | None = None, device: str | None = None, save: bool = True,
    registry: Registry | None = None,
) -> dict[str, Any]:
    """Evaluate a run's trained network and its random init side by side; write eval.json + summary.

    ``dataset`` (+ ``data_root``, ``dataset_options``) evaluates on another labelled dataset,
    e.g. when the run trained on unlabelled images. Results of protocols/layers not evaluated
    now are kept from a previous eval.json of the same dataset, split and epoch.
    """
    t0 = time.perf_counter()
    protocols = check_protocols(protocols)
    run = load_run(run_dir, dataset, data_root, dataset_options, device, registry)
    cfg, data = run.setup.config, run.data
    common = dict(protocols=protocols, layers=layers, image_size=cfg.image_size, device=run.setup.device,
                  batch_size=max(cfg.batch_size, 128), workers=cfg.workers, progress=progress)
    log.info("evaluating %s on %s: %s", run_dir, data.dataset, data.split)
    result = {
        "run_dir": str(run_dir), "backbone": cfg.backbone, "dataset": data.dataset, "split": data.split,
        "epoch": run.epoch, "seed": cfg.seed, "classes": data.num_classes,
        "train_images": len(data.train_idx), "test_images": len(data.test_idx),
        "protocols": protocols, "settings": settings(protocols, cfg.pca_dim),
        "learned": evaluate_network(run.learned, data, name="learned", **common),
        "random": evaluate_network(run.random, data, name="random", **common),
    }
    result["layers"] = list(result["learned"]["dims"])
    result["seconds"] = time.perf_counter() - t0
    if save:
        path = Path(run_dir)
        result = merge_previous(path / EVAL_JSON, result)
        save_json(path / EVAL_JSON, result)
        if (path / SUMMARY).exists():
            rd = RunDir(path)
            summary = rd.read_json(SUMMARY)
            summary["eval"] = headline(result)
            rd.save_summary(summary)
    return result


def evaluate_random(
    config: RunConfig, protocols: Sequence[str] | str = "all", layers: Sequence[str] | str | None = "all",
    progress: Progress | None = None, registry: Registry | None = None,
) -> dict[str, Any]:
    """Evaluate a randomly initialised network (``config``'s backbone, dataset and seed) alone."""
    t0 = time.perf_counter()
    protocols = check_protocols(protocols)
    s = setup(config, registry)
    data = load_eval_data(s.dataset, s.config.dataset, s.config.data_root, s.config.download, s.images.channels, s.images)
    result = {
        "backbone": s.config.backbone, "dataset": data.dataset, "split": data.split, "seed": s.config.seed,
        "classes": data.num_classes, "train_images": len(data.train_idx), "test_images": len(data.test_idx),
        "protocols": protocols, "settings": settings(protocols, s.config.pca_dim),
        "random": evaluate_network(s.model, data, protocols, layers, s.config.image_size, s.device,
                                   max(s.config.batch_size, 128), s.config.workers, progress, "random"),
    }
    result["layers"] = list(result["random"]["dims"])
    result["seconds"] = time.perf_counter() - t0
    return result


def merge_previous(path: Path, result: dict[str, Any]) -> dict[str, Any]:
    """Keep a previous eval.json's other protocols/layers when dataset and split are the same."""
    if not path.exists():
        return result
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        return result
    if (old.get("dataset"), old.get("split"), old.get("epoch")) != (result["dataset"], result["split"], result["epoch"]):
        return result
    merged = copy.deepcopy(old)
    for net in ("learned", "random"):
        merged.setdefault(net, {})
        for key, value in result[net].items():
            merged[net].setdefault(key, {}).update(value)
    merged["protocols"] = [p for p in PROTOCOLS if p in set(old.get("protocols", [])) | set(result["protocols"])]
    merged["settings"] = {**old.get("settings", {}), **result["settings"]}
    order = result["layers"] + [n for n in old.get("layers", []) if n not in result["layers"]]
    merged["layers"] = [n for n in order if n in merged["learned"].get("dims", {})]
    merged["seconds"] = result["seconds"]
    return merged


def best_layer(result: dict[str, Any], network: str = "learned") -> str | None:
    """``network``'s best layer: by linear-probe top-1, else by kNN (k=20) top-1; None without either."""
    res = result.get(network, {})
    for protocol, key in (("linear", "top1"), ("knn", f"top1_k{KNN_K[0]}")):
        scores = res.get(protocol, {})
        if scores:
            return max(scores, key=lambda n: scores[n][key])
    return None


def headline(result: dict[str, Any]) -> dict[str, Any]:
    """The numbers a summary (and ``dcx compare``) needs, on the learned network's best layer.

    Per network: ``linear_top1``, ``k20`` / ``k200`` (kNN top-1), ``<preprocessing>_<nmi|ari|accuracy>``.
    """
    out: dict[str, Any] = {"dataset": result["dataset"], "split": result["split"], "file": EVAL_JSON}
    layer = best_layer(result) or (result["layers"][-1] if result.get("layers") else None)
    out["layer"] = layer
    for net in ("learned", "random"):
        res = result.get(net, {})
        row: dict[str, Any] = {}
        if layer in res.get("linear", {}):
            row["linear_top1"] = res["linear"][layer]["top1"]
        if layer in res.get("knn", {}):
            row.update({key.removeprefix("top1_"): v for key, v in res["knn"][layer].items()})
        if layer in res.get("cluster", {}):
            row.update({f"{v}_{m}": x for v, scores in res["cluster"][layer].items() for m, x in scores.items()})
        out[net] = row
    return out


# ----------------------------------------------------------------------------- tables


@dataclass
class EvalTable:
    """One protocol's numbers as text: the CLI prints it with rich, the report as markdown."""

    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)


def fmt(value: float | None) -> str:
    """Scores as printed everywhere (4 decimals, fractions not percents)."""
    return "-" if value is None else f"{value:.4f}"


def eval_tables(result: dict[str, Any]) -> list[EvalTable]:
    """Per protocol, one row per layer, learned beside random (or one network alone)."""
    nets = [n for n in ("learned", "random") if n in result]
    layers = result.get("layers", [])
    tables: list[EvalTable] = []

    def get(net: str, protocol: str, layer: str, *keys: str) -> float | None:
        value: Any = result.get(net, {}).get(protocol, {}).get(layer)
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        return value

    if any("linear" in result[n] for n in nets):
        t = EvalTable("linear probe top-1 (test split)", ["layer", "dims", *nets])
        if len(nets) == 2:
            t.columns.append("learned - random")
        for layer in layers:
            vals = [get(n, "linear", layer, "top1") for n in nets]
            if all(v is None for v in vals):
                continue
            row = [layer, str(result[nets[0]]["dims"].get(layer, "-")), *map(fmt, vals)]
            if len(nets) == 2:
                row.append("-" if None in vals else f"{vals[0] - vals[1]:+.4f}")
            t.rows.append(row)
        tables.append(t)
    if any("knn" in result[n] for n in nets):
        t = EvalTable(f"weighted kNN top-1 (T={KNN_T})", ["layer", *[f"k={k} {n}" for k in KNN_K for n in nets]])
        for layer in layers:
            vals = [get(n, "knn", layer, f"top1_k{k}") for k in KNN_K for n in nets]
            if any(v is not None for v in vals):
                t.rows.append([layer, *map(fmt, vals)])
        tables.append(t)
    if any("cluster" in result[n] for n in nets):
        for variant in CLUSTER_PREPROCESSING:
            t = EvalTable(f"k-means (k={result.get('classes', '#classes')}) after {variant}",
                          ["layer", *[f"{m} {n}" for m in ("NMI", "ARI", "acc") for n in nets]])
            for layer in layers:
                vals = [get(n, "cluster", layer, variant, m) for m in ("nmi", "ari", "accuracy") for n in nets]
                if any(v is not None for v in vals):
                    t.rows.append([layer, *map(fmt, vals)])
            if t.rows:
                tables.append(t)
    return tables
