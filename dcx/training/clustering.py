"""The offline clustering step of an epoch (DeepCluster §3.2): PCA-whitening + L2 fitted over every
rank's rows, then the clusterer's ``fit`` on every rank (a ``distributed`` clusterer) or on rank 0
with the partition broadcast, validated against the contract."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np

from dcx.core.contracts import Clusterer, FitContext, Partition
from dcx.data import derive_seed
from dcx.core.errors import ContractError
from dcx.algorithms.pca import PCAWhitening

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from dcx.training.distributed import World


def cluster(features: np.ndarray, clusterer: Clusterer, name: str, epoch: int, seed: int, pca_dim: int,
            previous_labels: np.ndarray | None, device: torch.device, world: World,
            ) -> tuple[Partition, dict[str, Any], np.ndarray, PCAWhitening | None]:
    """(partition, its timings, the rows the clusterer saw, the fitted PCA or None) of ``features`` for
    ``epoch``; ``name`` is the clusterer as the run names it (in contract errors)."""
    import torch

    n = len(features)
    timings: dict[str, Any] = {}
    t = time.perf_counter()
    x, pca = features, None
    gather_on = device if device.type == "cuda" else torch.device("cpu")
    if clusterer.wants_preprocessing:
        pca = PCAWhitening(dim=pca_dim)
        if world.distributed:
            block = world.block(n)
            pca.fit(features, rows=block, all_reduce=world.all_reduce)
            x = world.all_gather_rows(pca.transform(features, rows=block), gather_on)
        else:
            x = pca.fit_transform(features)
    timings["time_preprocess"] = time.perf_counter() - t
    t = time.perf_counter()
    ctx = FitContext(epoch=epoch, seed=derive_seed(seed, epoch), device=device, previous_labels=previous_labels,
                     rank=world.rank, world_size=world.size)
    if world.distributed and clusterer.distributed:
        ctx.rows, ctx.all_reduce = world.block(n), world.all_reduce
    part = None
    if clusterer.distributed or world.is_main:
        part = clusterer.fit(x, ctx)
        if not isinstance(part, Partition):
            raise ContractError(f"clusterer '{name}': fit must return a Partition, got {type(part).__name__}")
        part = part.validate(n, name)
    if world.distributed and not clusterer.distributed:
        part = world.broadcast_object(part)
    timings["time_cluster"] = time.perf_counter() - t
    return part, timings, x, pca
