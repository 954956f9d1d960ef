"""Evaluating a network or a run directory: every protocol on every layer, the trained network
always beside the same architecture at its random initialisation; eval.json and the headline."""

from __future__ import annotations

import copy
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from dcx.core.config import RunConfig
from dcx.core.errors import InputError, RunDirError
from dcx.evaluation.data import CLUSTER_IMAGES, EvalData, load_eval_data
from dcx.evaluation.extraction import extract_layers, layer_groups
from dcx.evaluation.protocols import (
    CLUSTER_ITERS, CLUSTER_PREPROCESSING, CLUSTER_RUNS, KNN_K, KNN_T, LINEAR_ITERS, LINEAR_WD, PROTOCOLS, cluster_protocol,
    knn_classify, linear_probe,
)
from dcx.training.layers import MAX_DIMS, layer_names, layer_shapes, pooling_plan
from dcx.training.network import FeatureNet
from dcx.core.progress import NullProgress, Progress
from dcx.core.registry import Registry
from dcx.training.rundir import CONFIG, SUMMARY, RunDir, save_json
from dcx.training.setup import Setup, setup

log = logging.getLogger("dcx.evaluation")

EVAL_JSON = "eval.json"


def evaluate_features(
    feats: np.ndarray, data: EvalData, protocols: Sequence[str], device: torch.device | str = "cpu",
    cluster_variants: Sequence[str] = CLUSTER_PREPROCESSING, cluster_runs: int = CLUSTER_RUNS,
    progress: Progress | None = None, desc: str = "k-means",
) -> dict[str, dict]:
    """Every protocol on one layer's features (rows aligned with ``data.images``); ``progress`` shows
    the cluster protocol's preprocessings and k-means seeds as they finish."""
    y = data.labels
    out: dict[str, dict] = {}
    if "linear" in protocols:
        out["linear"] = linear_probe(feats[data.train_idx], y[data.train_idx], feats[data.test_idx], y[data.test_idx], device)
    if "knn" in protocols:
        out["knn"] = knn_classify(feats[data.train_idx], y[data.train_idx], feats[data.test_idx], y[data.test_idx], device=device)
    if "cluster" in protocols:
        rows = feats if len(data.cluster_idx) == len(feats) else feats[data.cluster_idx]  # sorted: all = as is
        out["cluster"] = cluster_protocol(rows, y[data.cluster_idx], variants=cluster_variants,
                                          runs=cluster_runs, device=device, progress=progress, desc=desc)
    return out


def evaluate_network(
    model: FeatureNet, data: EvalData, protocols: Sequence[str] = PROTOCOLS, layers: Sequence[str] | str | None = None,
    image_size: int = 32, device: torch.device | str = "cpu", batch_size: int = 256, workers: int = 0,
    progress: Progress | None = None, name: str = "network", cluster_variants: Sequence[str] = CLUSTER_PREPROCESSING,
    cluster_runs: int = CLUSTER_RUNS,
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
                scores = evaluate_features(feats.pop(layer), data, protocols, device, cluster_variants, cluster_runs,
                                           progress, desc=f"k-means {name} {layer}")
                for p, v in scores.items():
                    result[p][layer] = v
                log.debug("%s %s evaluated in %.1f s", name, layer, time.perf_counter() - t)
                advance(1)
    return result


def check_protocols(protocols: Sequence[str] | str) -> list[str]:
    """Resolve 'all' / names (comma lists allowed) to known protocol names, in canonical order;
    an empty value is refused rather than read as all."""
    given = [protocols] if isinstance(protocols, str) else list(protocols)
    names = [p.strip() for n in given for p in n.split(",") if p.strip()]
    if not names:
        raise InputError(f"--protocol needs {', '.join(PROTOCOLS)} or all (comma list allowed), got {protocols!r}")
    if "all" in names:
        return list(PROTOCOLS)
    bad = [p for p in names if p not in PROTOCOLS]
    if bad:
        raise InputError(f"unknown protocol(s) {', '.join(bad)}: use {', '.join(PROTOCOLS)} or all")
    return [p for p in PROTOCOLS if p in names]


def check_cluster_runs(runs: int) -> int:
    """The k-means seeds the cluster protocol averages per layer: at least one."""
    if runs < 1:
        raise InputError(f"--cluster-runs {runs}: k-means needs at least one seed per layer (default {CLUSTER_RUNS})")
    return int(runs)


def check_cluster_images(images: int) -> int:
    """The cap on the cluster protocol's images: 0 (all) or at least 2."""
    if images < 0 or images == 1:
        raise InputError(f"--cluster-images {images}: give 0 for every image or at least 2 (default {CLUSTER_IMAGES})")
    return int(images)


def settings(protocols: Sequence[str], pca_dim: int = 256, cluster_runs: int = CLUSTER_RUNS,
             cluster_images: int = CLUSTER_IMAGES) -> dict[str, Any]:
    """What each protocol did, stored with its numbers."""
    out: dict[str, Any] = {"pooling": f"adaptive average pooling of each block to at most {MAX_DIMS} dims"}
    if "linear" in protocols:
        out["linear"] = (f"logistic regression on standardised features, full-batch L-BFGS ({LINEAR_ITERS} "
                         f"iterations), L2 penalty {' / '.join(map(str, LINEAR_WD))}")
    if "knn" in protocols:
        out["knn"] = f"weighted kNN on L2-normalised features, votes exp(cos/{KNN_T}), k = {', '.join(map(str, KNN_K))}"
    if "cluster" in protocols:
        out["cluster"] = (f"k-means (k = #classes, {CLUSTER_ITERS} Lloyd steps or until no label moves, torch "
                          f"backend) on the run's training images (at most {cluster_images or 'all'}: a seeded sample, "
                          f"stratified by class) after each preprocessing ({', '.join(CLUSTER_PREPROCESSING)}); mean "
                          f"of {cluster_runs} seeds")
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
    from dcx.training.network import build_network

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


@dataclass
class TrainedNetwork:
    """A run's trained network rebuilt from config.toml + checkpoint.pt, without its data."""

    setup: Setup
    learned: FeatureNet
    channels: int
    state: dict[str, Any]
    run_dir: Path

    @property
    def epoch(self) -> int:
        return int(self.state.get("epoch", 0))


def read_config(run_dir: Path, device: str | None = None) -> RunConfig:
    """A run directory's config.toml (``device`` overriding the run's), or a RunDirError."""
    run = RunDir(Path(run_dir))
    if not (run.path / CONFIG).is_file():
        raise RunDirError(f"{run.path} has no {CONFIG}: pass a run directory written by dcx run")
    cfg = RunConfig.load_run(run.path / CONFIG)
    return cfg.merged({"device": device}) if device is not None else cfg


def _trained(run: RunDir, s: Setup, channels: int | None) -> TrainedNetwork:
    """Load checkpoint.pt into the network ``s`` builds (for ``channels``, default: the checkpoint's)."""
    state = run.load_checkpoint()
    if state is None:
        raise RunDirError(f"{run.path} has no checkpoint.pt: the run has not finished an epoch yet")
    channels = channels or _checkpoint_channels(state["model"]) or 3
    learned = copy.deepcopy(_random_network(s, channels))
    try:
        learned.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise RunDirError(f"{run.path / 'checkpoint.pt'} does not match its config.toml ({str(exc).splitlines()[0]})") from None
    return TrainedNetwork(s, learned.eval(), channels, state, run.path)


def load_network(run_dir: Path, device: str | None = None, registry: Registry | None = None) -> TrainedNetwork:
    """A run's trained network (eval mode) and its resolved setup, without loading its images."""
    run = RunDir(Path(run_dir))
    s = setup(read_config(run.path, device), registry or Registry(), load_images=False)
    return _trained(run, s, None)


def load_run(
    run_dir: Path, dataset: str | None = None, data_root: str | None = None, dataset_options: dict | None = None,
    device: str | None = None, registry: Registry | None = None,
) -> LoadedRun:
    """Rebuild a run's network from config.toml + checkpoint.pt, its random init from the same seed
    (setup() is deterministic in it), and the labelled data to evaluate on (the run's or ``dataset``)."""
    run = RunDir(Path(run_dir))
    cfg = read_config(run.path, device)
    registry = registry or Registry()
    own = dataset is None or (dataset == cfg.dataset and not dataset_options and data_root is None)
    s = setup(cfg, registry, load_images=own)
    if own:  # fail on an unlabelled dataset before reading the checkpoint
        data = load_eval_data(s.dataset, cfg.dataset, cfg.data_root, cfg.download, s.images.channels, s.images)
    trained = _trained(run, s, s.images.channels if own else None)
    if not own:
        data = _other_dataset(s, dataset, data_root, dataset_options, registry, trained.channels)
    learned = trained.learned.train()  # as it was before: callers choose the mode
    return LoadedRun(s, learned, _random_network(s, trained.channels), data, trained.epoch)


def evaluate_run(
    run_dir: Path, protocols: Sequence[str] | str = "all", layers: Sequence[str] | str | None = "all",
    dataset: str | None = None, progress: Progress | None = None, data_root: str | None = None,
    dataset_options: dict | None = None, device: str | None = None, save: bool = True,
    registry: Registry | None = None, cluster_runs: int = CLUSTER_RUNS, cluster_images: int = CLUSTER_IMAGES,
) -> dict[str, Any]:
    """Evaluate a run's trained network and its random init side by side; write eval.json + summary.

    ``dataset`` (+ ``data_root``, ``dataset_options``) evaluates on another labelled dataset,
    e.g. when the run trained on unlabelled images. Results of protocols/layers not evaluated
    now are kept from a previous eval.json of the same dataset, split and epoch (its k-means
    scores only when they averaged as many seeds, ``cluster_runs``, on as many images,
    ``cluster_images``).
    """
    t0 = time.perf_counter()
    protocols = check_protocols(protocols)
    cluster_runs = check_cluster_runs(cluster_runs)
    cluster_images = check_cluster_images(cluster_images)
    run = load_run(run_dir, dataset, data_root, dataset_options, device, registry)
    cfg, data = run.setup.config, run.data
    scored = data.for_protocols(protocols, cluster_images)
    common = dict(protocols=protocols, layers=layers, image_size=cfg.image_size, device=run.setup.device,
                  batch_size=max(cfg.batch_size, 128), workers=cfg.workers, progress=progress, cluster_runs=cluster_runs)
    log.info("evaluating %s on %s: %s", run_dir, data.dataset, data.split)
    result = {
        "run_dir": str(run_dir), "backbone": cfg.backbone, "dataset": data.dataset, "split": data.split,
        "epoch": run.epoch, "seed": cfg.seed, "classes": data.num_classes,
        "train_images": len(data.train_idx), "test_images": len(data.test_idx),
        "protocols": protocols, "settings": settings(protocols, cfg.pca_dim, cluster_runs, cluster_images),
        "learned": evaluate_network(run.learned, scored, name="learned", **common),
        "random": evaluate_network(run.random, scored, name="random", **common),
    }
    result["layers"] = list(result["learned"]["dims"])
    if "cluster" in protocols:
        result["cluster_runs"] = cluster_runs
        result["cluster_images"] = len(scored.cluster_idx)
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
    progress: Progress | None = None, registry: Registry | None = None, cluster_runs: int = CLUSTER_RUNS,
    cluster_images: int = CLUSTER_IMAGES,
) -> dict[str, Any]:
    """Evaluate a randomly initialised network (``config``'s backbone, dataset and seed) alone."""
    t0 = time.perf_counter()
    protocols = check_protocols(protocols)
    cluster_runs = check_cluster_runs(cluster_runs)
    cluster_images = check_cluster_images(cluster_images)
    s = setup(config, registry)
    data = load_eval_data(s.dataset, s.config.dataset, s.config.data_root, s.config.download, s.images.channels, s.images)
    scored = data.for_protocols(protocols, cluster_images)
    result = {
        "backbone": s.config.backbone, "dataset": data.dataset, "split": data.split, "seed": s.config.seed,
        "classes": data.num_classes, "train_images": len(data.train_idx), "test_images": len(data.test_idx),
        "protocols": protocols, "settings": settings(protocols, s.config.pca_dim, cluster_runs, cluster_images),
        "random": evaluate_network(s.model, scored, protocols, layers, s.config.image_size, s.device,
                                   max(s.config.batch_size, 128), s.config.workers, progress, "random",
                                   cluster_runs=cluster_runs),
    }
    result["layers"] = list(result["random"]["dims"])
    if "cluster" in protocols:
        result["cluster_runs"] = cluster_runs
        result["cluster_images"] = len(scored.cluster_idx)
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
    runs, images = result.get("cluster_runs"), result.get("cluster_images")
    if runs is not None and (old.get("cluster_runs", CLUSTER_RUNS), old.get("cluster_images")) != (runs, images):
        # k-means scores over another number of seeds or images: not comparable, not kept
        for net in ("learned", "random"):
            merged.get(net, {}).pop("cluster", None)
        merged["protocols"] = [p for p in old.get("protocols", []) if p != "cluster"]
    if runs is not None:
        merged["cluster_runs"], merged["cluster_images"] = runs, images
    for net in ("learned", "random"):
        merged.setdefault(net, {})
        for key, value in result[net].items():
            merged[net].setdefault(key, {}).update(value)
    merged["protocols"] = [p for p in PROTOCOLS if p in set(merged.get("protocols", [])) | set(result["protocols"])]
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
