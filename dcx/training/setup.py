"""From a RunConfig to the objects a run is made of: plugins, data, and the random-init network.

Every user error (unknown plugin, bad option, ``--opt`` for a plugin not in the run, k > N,
missing data) surfaces here, before anything is written. The network is initialised from
``config.seed`` alone, so the same config always yields the same random-init network (the
"random" baseline of evaluation).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass, field
from typing import Any

import torch

from dcx.core.config import RunConfig
from dcx.core.contracts import Backbone, Clusterer, Dataset, ImageSet, OnlineClusterer
from dcx.training.distributed import World, world_from_env
from dcx.core.errors import InputError, OptionError
from dcx.training.network import FeatureNet, build_network
from dcx.core.registry import PluginRef, Registry

log = logging.getLogger(__name__)


@dataclass
class Setup:
    """A run's resolved configuration and the objects built from it (shared with evaluation)."""

    config: RunConfig
    dataset: Dataset
    images: ImageSet | None
    backbone: Backbone
    clusterer: Clusterer | OnlineClusterer
    model: FeatureNet
    device: torch.device
    split: str
    flip: bool = False
    world: World = field(default_factory=World)
    extra: dict[str, Any] = field(default_factory=dict)


def resolve_device(name: str, local_rank: int | None = None) -> torch.device:
    """cpu, cuda[:N] or auto; in a distributed run, "cuda" and "auto" mean this rank's GPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("--device cuda asked for but no CUDA device is available: use --device cpu or auto")
    if name == "cuda" and local_rank is not None:
        return torch.device("cuda", local_rank)
    return torch.device(name)


#: Largest input side that gets elastic warps by default (measured on small images only; docs/decisions.md D03).
ELASTIC_MAX_SIDE = 64


#: Run settings that are also dataset defaults (``RunDefaults``): what the user gave of them
#: overrides the dataset's before the clusterer's ``run_defaults`` hook sees them.
_GIVEN = ("image_size", "k", "epochs", "batch_size", "width", "passes", "jitter", "sobel", "flip", "augment")


def default_augment(image_size: int) -> str:
    """Crops + affine + elastic warps for small images, where they taught every measured dataset
    (digits, characters, textures, photos) most (docs/decisions.md D03); the reference's crops above."""
    return "elastic" if image_size <= ELASTIC_MAX_SIDE else "crop"


def default_workers(device: torch.device, local_world_size: int = 1) -> int:
    """Loader processes per rank: the node's cores shared by its ranks, at most 8, on CUDA; 0 on
    the CPU, where the cores are busy computing (worker processes there only add contention)."""
    if device.type != "cuda":
        return 0
    return max(0, min(8, (os.cpu_count() or 1) // max(1, local_world_size) - 1))


def train_split(dataset: Dataset) -> str:
    splits = dataset.splits()
    return "train" if "train" in splits else splits[0]


def _options_by_plugin(config: RunConfig, refs: dict[str, PluginRef]) -> dict[str, dict[str, Any]]:
    """The run's plugin options keyed by each plugin's bare name (``--opt kmeans.x`` and
    ``--opt dcx:kmeans.x`` are the same). Options for a plugin that is not part of this run are
    an error: silently dropping them would run with other settings than the user asked for."""
    out: dict[str, dict[str, Any]] = {}
    for owner, values in config.options.items():
        ref = next((r for r in refs.values() if r.refers_to(owner)), None)
        if ref is None:
            raise OptionError(
                f"options given for '{owner}', which is not part of this run (clusterer {config.clusterer}, "
                f"backbone {config.backbone}, dataset {config.dataset}): drop them or choose that plugin"
            )
        out.setdefault(ref.name, {}).update(values)
    return out


def _warn_if_provider_changed(recorded: dict[str, dict[str, str]], refs: dict[str, PluginRef]) -> None:
    """A config.toml run again with another package or version of a plugin may not reproduce."""
    for kind, ref in refs.items():
        was = recorded.get(kind, {})
        if was.get("name") == ref.name and (was.get("package"), was.get("version")) != (ref.package, ref.version):
            log.warning("the config was run with %s %s from %s %s; this run uses %s %s", kind, ref.name,
                        was.get("package"), was.get("version"), ref.package, ref.version)


def setup(config: RunConfig, registry: Registry | None = None, load_images: bool = True,
          world: World | None = None) -> Setup:
    """Resolve defaults, load plugins and data, build the randomly initialised network.

    ``world`` (default: from torchrun's environment) decides this process's device and its
    share of the batch; every rank builds the same network from the seed.
    """
    registry = registry or Registry()
    world = world or world_from_env()
    # A name may be bare or PACKAGE:NAME; the run keeps the user's and records the provider.
    refs = {kind: registry.resolve(kind, getattr(config, kind)) for kind in ("dataset", "backbone", "clusterer")}
    opts = _options_by_plugin(config, refs)
    dataset = registry.create("dataset", refs["dataset"].qualified, opts.get(refs["dataset"].name))
    backbone = registry.create("backbone", refs["backbone"].qualified, opts.get(refs["backbone"].name))
    clusterer_cls = registry.load("clusterer", refs["clusterer"].qualified)
    split = train_split(dataset)
    images = dataset.load(config.data_root, split, config.download) if load_images else None
    # Every default is resolved here, once: the dataset's, with what the user gave, as the clusterer
    # adjusts them (its hook sees the given values; only the ones not given take its answer).
    d = dataset.run_defaults(images) if images is not None else dataset.defaults
    d = dataclasses.replace(d, **{f: getattr(config, f) for f in _GIVEN if getattr(config, f) is not None})
    c_opts = dict(opts.get(refs["clusterer"].name, {}))
    declares_k = any(o.name == "k" for o in clusterer_cls.options)
    if declares_k and "k" not in c_opts:  # the run-level --k feeds the clusterer's own `k` unless --opt did
        c_opts["k"] = config.k if config.k is not None else d.k
    elif config.k is not None and not clusterer_cls.uses_k:
        log.warning("%s chooses its own number of clusters: --k %d is ignored", config.clusterer, config.k)
    clusterer = registry.create("clusterer", refs["clusterer"].qualified, c_opts)
    d = clusterer.run_defaults(d)
    if declares_k and config.k is None and "k" not in opts.get(refs["clusterer"].name, {}) \
            and clusterer.params["k"] != d.k:  # the clusterer's own default k (e.g. SwAV's k within the batch)
        clusterer = registry.create("clusterer", refs["clusterer"].qualified, {**c_opts, "k": d.k})
    cfg = config.model_copy(deep=True)
    for name in _GIVEN:
        if name != "k" and getattr(config, name) is None:
            setattr(cfg, name, getattr(d, name))
    if cfg.sobel is None:
        cfg.sobel = backbone.sobel_default
    if cfg.flip is None:
        cfg.flip = dataset.flip_invariant
    cfg.augment = cfg.augment or default_augment(cfg.image_size)
    if cfg.image_size < backbone.min_image_size:
        raise InputError(f"{backbone.name} needs --image-size >= {backbone.min_image_size}, got {cfg.image_size}")
    cfg.k = clusterer.params.get("k", cfg.k)
    # Store every used plugin's validated options (typed, defaults filled) so config.toml
    # reproduces the run even if a default changes later. None ("auto") is left out.
    cfg.options = {
        refs[kind].name: {k: v for k, v in plugin.params.items() if v is not None}
        for kind, plugin in (("dataset", dataset), ("backbone", backbone), ("clusterer", clusterer))
    }
    _warn_if_provider_changed(config.plugins, refs)
    cfg.plugins = {kind: ref.provenance() for kind, ref in refs.items()}
    if images is not None:
        if len(images) < 2:
            raise InputError(f"dataset {cfg.dataset} has {len(images)} image(s): need at least 2")
        k = clusterer.params.get("k")
        if k is not None and k > len(images):
            raise InputError(f"k={k} is larger than the dataset ({len(images)} images): lower --k")
    if cfg.batch_size % world.size:
        raise InputError(f"--batch-size {cfg.batch_size} (global) must be a multiple of the {world.size} processes")
    if cfg.sync_bn and not cfg.device.startswith("cuda") and not (cfg.device == "auto" and torch.cuda.is_available()):
        raise InputError("--sync-bn synchronises BatchNorm across GPUs: it needs --device cuda")
    device = resolve_device(cfg.device, world.local_rank if world.distributed else None)
    if cfg.workers is None:
        cfg.workers = default_workers(device, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    channels = images.channels if images is not None else 3
    torch.manual_seed(cfg.seed)
    model = build_network(backbone, channels, cfg.image_size, cfg.width, cfg.sobel).to(device)
    return Setup(cfg, dataset, images, backbone, clusterer, model, device, split, cfg.flip, world)
