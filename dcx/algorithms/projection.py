"""What SwAV and DeepCluster-v2 share: the projection head, the multi-crop options, unwrapping a
distributed head, and labelling features by their nearest prototype (SwAV paper §4)."""

from __future__ import annotations

from typing import Any, Mapping, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from dcx.core.contracts import CropSpec
from dcx.core.errors import InputError
from dcx.core.options import Option

H = TypeVar("H", bound="ProjectionHead")


def projection_options(reference: str) -> tuple[Option, ...]:
    """``proj_dim`` and ``hidden_dim``, with ``reference``'s values in their help."""
    return (
        Option("proj_dim", int, 128, f"projection / prototype dimension ({reference}: 128)", min=2),
        Option("hidden_dim", int, None, "projection MLP hidden width; 0 = one Linear; auto = the feature dim clipped "
               f"to [proj_dim, 2048] ({reference}: 2048 for ResNet-50's 2048-d features)", min=0, nullable=True),
    )


def crop_options(reference: str) -> tuple[Option, ...]:
    """The multi-crop options (SwAV §3.2): large crops give the codes or fill the bank, small crops
    only predict; small crops take the areas below the large crops' smallest (as the reference)."""
    return (
        Option("n_large", int, 2, f"large crops ({reference}: 2)", min=1),
        # 0, not the reference's 6: a small crop is clamped to the backbone's minimum input, i.e. to full
        # size on 32-px images, so it costs a large crop without being one. Use them at >= 96 px.
        Option("n_small", int, 0, f"small crops, predictors only ({reference}: 6 at 96 px; only useful when "
               "small_size_ratio * image side is above the backbone's minimum input)", min=0),
        # 0.5, not the reference's 0.14 (tuned for 224-px photos): a 14 % crop of a small image rarely shows
        # the object, so two views share nothing; 0.5 is the engine's own minimum for images <= 64 px.
        Option("large_min_scale", float, 0.5, f"smallest area of large crops ({reference}: 0.14 at 224 px)",
               min=0.0, max=1.0),
        Option("small_min_scale", float, 0.05, f"smallest area of small crops; their largest is large_min_scale "
               f"({reference}: 0.05 to 0.14)", min=0.0, max=1.0),
        Option("small_size_ratio", float, 96 / 224, f"small crop side / image side ({reference}: 96/224)",
               min=0.01, max=1.0),
    )


def crop_spec(name: str, params: Mapping[str, Any]) -> CropSpec:
    """The CropSpec of ``crop_options``' values; refuses small crops larger than the large ones."""
    if params["small_min_scale"] > params["large_min_scale"]:
        raise InputError(f"{name}: small_min_scale={params['small_min_scale']} exceeds "
                         f"large_min_scale={params['large_min_scale']}: lower it")
    return CropSpec(n_large=params["n_large"], n_small=params["n_small"], large_scale=(params["large_min_scale"], 1.0),
                    small_scale=(params["small_min_scale"], params["large_min_scale"]),
                    small_size_ratio=params["small_size_ratio"])


def hidden_width(params: Mapping[str, Any], feature_dim: int) -> int:
    """``hidden_dim``, or auto: the feature dim clipped to [proj_dim, 2048] (the reference's 2048 on ResNet-50)."""
    hidden = params["hidden_dim"]
    return hidden if hidden is not None else min(max(feature_dim, params["proj_dim"]), 2048)


class ProjectionHead(nn.Module):
    """Projection (Linear-BN-ReLU-Linear, or one Linear when ``hidden_dim`` is 0) to unit embeddings.

    Pre-activation features (AlexNet's fc7) go in as they are: fc7 and the first Linear compose into
    one linear map that shapes all of fc7 (docs/decisions.md D38)."""

    def __init__(self, feature_dim: int, hidden_dim: int, proj_dim: int) -> None:
        super().__init__()
        if hidden_dim > 0:
            self.projection: nn.Module = nn.Sequential(
                nn.Linear(feature_dim, hidden_dim), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True),
                nn.Linear(hidden_dim, proj_dim),
            )
        else:
            self.projection = nn.Linear(feature_dim, proj_dim)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.projection(x), dim=1)


def unwrap(head: nn.Module, kind: type[H], owner: str) -> H:
    """The ``kind`` head inside a DistributedDataParallel (or similar ``.module``) wrapper."""
    inner = getattr(head, "module", head)
    if not isinstance(inner, kind):
        raise InputError(f"{owner} got a {type(inner).__name__} head; pass the module that build_head returned")
    return inner


@torch.no_grad()
def nearest_prototype(head: ProjectionHead, prototypes: nn.Linear, features: torch.Tensor) -> torch.Tensor:
    """Hard labels (B,): each feature's nearest unit prototype after the projection, in eval mode."""
    dev = prototypes.weight.device
    was = head.training
    head.eval()
    try:
        z = head.embed(features.to(dev))
        return (z @ F.normalize(prototypes.weight, dim=1).t()).argmax(dim=1).to(features.device)
    finally:
        head.train(was)
