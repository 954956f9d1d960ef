"""A run's trained backbone alone (no head, no optimiser), for use outside dcx: a torchvision state
dict where the architecture is torchvision's, or one self-contained program (``torch.export``, or
TorchScript for older torch) returning one block's pooled features; the input transform beside it."""

from __future__ import annotations

import copy
import io
import json
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dcx import data as D
from dcx.core.errors import InputError
from dcx.evaluation.runs import TrainedNetwork
from dcx.training.layers import FEATURES
from dcx.training.rundir import atomic_write
from dcx.results.embed import check_new_output
from dcx.results.source import layer_forward

FORMATS = ("torchvision", "torch-export", "torchscript")
SUFFIX = {"torchvision": ".pt", "torch-export": ".pt2", "torchscript": ".pt"}
#: Torchvision's VGG-16-BN classifier keeps fc6 (0) and fc7 (3); dcx's neck has them at 2 and 5.
_VGG_NECK = {"2": "0", "5": "3"}


def default_out(run_dir: Path, fmt: str) -> Path:
    return Path(run_dir) / f"backbone-{fmt}{SUFFIX[fmt]}"


def transform_spec(trained: TrainedNetwork, layer: str, dims: int, fmt: str) -> dict[str, Any]:
    """What the exported network expects and returns, as JSON: resize + centre crop to
    ``image_size``, then (x / 255 - mean) / std per channel; Sobel's filters when the run used it."""
    cfg, c = trained.setup.config, trained.channels
    spec: dict[str, Any] = {
        "format": fmt, "backbone": cfg.backbone, "run_dir": str(trained.run_dir), "epoch": trained.epoch,
        "layer": layer, "feature_dim": dims, "image_size": cfg.image_size, "resize": cfg.image_size,
        "center_crop": cfg.image_size, "channels": c, "grayscale": c == 1, "mean": [D.MEAN] * c, "std": [D.STD] * c,
        "sobel": bool(cfg.sobel),
    }
    if cfg.sobel:
        sobel = trained.learned.input
        spec["sobel_filters"] = {"gray": sobel.gray.flatten().tolist(), "kernels": sobel.kernels.squeeze(1).tolist()}
    return spec


def export_run(trained: TrainedNetwork, fmt: str = "torchvision", out: Path | None = None,
               layer: str = FEATURES) -> tuple[Path, Path]:
    """Write the backbone in ``fmt`` and its transform JSON (same name, ``.json``); returns both paths."""
    if fmt not in FORMATS:
        raise InputError(f"unknown --format {fmt}: use {', '.join(FORMATS)}")
    out = check_new_output(Path(out) if out is not None else default_out(trained.run_dir, fmt))
    meta_path = out.with_suffix(".json")
    if meta_path.exists():
        raise InputError(f"{meta_path} (the transform written beside --out) already exists: choose another --out")
    model = copy.deepcopy(trained.learned).cpu().eval()
    if fmt == "torchvision":
        if layer != FEATURES:
            raise InputError("--layer applies to --format torch-export or torchscript: a torchvision state dict "
                             "holds the whole backbone")
        state, recipe = torchvision_state(model, trained.setup.config.backbone, trained.setup.config.image_size)
        payload, dims = _save_bytes(state), model.feature_dim
    else:
        pooled, dims = layer_forward(trained, layer)
        program = LayerProgram(model, layer, pooled.sides.get(layer)).eval()
        payload, recipe = _program_bytes(program, fmt, trained.channels, trained.setup.config.image_size), None
    meta = transform_spec(trained, layer, dims, fmt)
    if recipe is not None:
        meta["torchvision"] = recipe
    atomic_write(out, payload)
    try:
        atomic_write(meta_path, (json.dumps(meta, indent=2) + "\n").encode())
    except BaseException:
        out.unlink(missing_ok=True)
        raise
    return out, meta_path


def _save_bytes(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


class LayerProgram(nn.Module):
    """Normalised images -> one layer's rows, average-pooled to ``side`` as ``dcx eval`` pools
    them (``dcx.training.layers.PooledLayers`` for one layer, batch size left free for export)."""

    def __init__(self, model: nn.Module, layer: str, side: int | None) -> None:
        super().__init__()
        self.model, self.layer, self.side = model, layer, side

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.layer == FEATURES:
            return self.model(x)
        y = self.model.forward_blocks(x, [self.layer])[self.layer]
        if self.side is not None and y.ndim == 4:
            y = nn.functional.adaptive_avg_pool2d(y, self.side)
        return y.flatten(1)


def _program_bytes(forward: nn.Module, fmt: str, channels: int, image_size: int) -> bytes:
    """One self-contained program: normalised images (B, C, S, S) -> (B, d) pooled layer rows."""
    example = torch.zeros(2, channels, image_size, image_size)
    buf = io.BytesIO()
    with torch.no_grad():
        if fmt == "torchscript":
            torch.jit.save(torch.jit.trace(forward, example), buf)
        else:
            program = torch.export.export(forward, (example,), dynamic_shapes=({0: torch.export.Dim("batch")},))
            torch.export.save(program, buf)
    return buf.getvalue()


# ----------------------------------------------------------------------------- torchvision key names


def torchvision_state(model: nn.Module, backbone: str, image_size: int) -> tuple[dict[str, torch.Tensor], dict]:
    """dcx's backbone weights under torchvision's key names, and how to build the model they load
    into with ``strict=True``; InputError saying what differs where the architecture is not torchvision's."""
    name = backbone.rpartition(":")[2]
    state = {k.removeprefix("net."): v for k, v in model.state_dict().items() if k.startswith("net.")}
    if name in ("resnet18", "resnet50"):
        mapped = {re.sub(r"^blocks\.conv1\.0\.", "conv1.", re.sub(r"^blocks\.conv1\.1\.", "bn1.", k)): v
                  for k, v in state.items()}
        mapped = {k.removeprefix("blocks."): v for k, v in mapped.items()}
        conv1 = mapped["conv1.weight"]
        small = conv1.shape[-1] == 3
        recipe = {"constructor": name, "fc": "Identity", "maxpool": "Identity" if small else "MaxPool2d",
                  "conv1": {"in_channels": int(conv1.shape[1]), "out_channels": int(conv1.shape[0]),
                            "kernel_size": int(conv1.shape[-1]), "stride": 1 if small else 2,
                            "padding": 1 if small else 3, "bias": False}}
    elif name == "vgg16":
        mapped, recipe = _vgg_keys(state), {"constructor": "vgg16_bn", "classifier": "classifier[:4]"}
    elif name == "alexnet":
        raise InputError("alexnet cannot load into torchvision.models.alexnet: dcx's has BatchNorm after every conv "
                         "and 96/256/384/384/256 conv channels (torchvision: no BatchNorm, 64/192/384/256/256): "
                         "use --format torch-export")
    else:
        raise InputError(f"backbone {backbone} has no torchvision counterpart: use --format torch-export")
    _check_loads(mapped, recipe, name)
    return mapped, recipe


def _vgg_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """dcx's conv blocks flattened into torchvision's ``features`` indices; fc6/fc7 into ``classifier``."""
    out, offset, seen = {}, 0, {}
    blocks = sorted({int(k.split(".")[1][4:]) for k in state if k.startswith("blocks.")})
    for b in blocks:
        prefix = f"blocks.conv{b}."
        layers = {int(k[len(prefix):].split(".")[0]) for k in state if k.startswith(prefix)}
        for k, v in state.items():
            if k.startswith(prefix):
                i, rest = k[len(prefix):].split(".", 1)
                out[f"features.{offset + int(i)}.{rest}"] = v
        seen[b] = max(layers)
        offset += max(layers) + 3  # the block's ReLU after its last BN, then its max-pool
    for k, v in state.items():
        if k.startswith("neck."):
            i, rest = k[5:].split(".", 1)
            out[f"classifier.{_VGG_NECK.get(i, i)}.{rest}"] = v
    return out


def build_torchvision(recipe: dict) -> nn.Module:
    """The torchvision model a recipe describes, ready for ``load_state_dict(strict=True)`` (the
    same steps docs/api.md shows for a Python without dcx)."""
    import torchvision

    m = getattr(torchvision.models, recipe["constructor"])(weights=None)
    if recipe["constructor"].startswith("resnet"):
        m.conv1 = nn.Conv2d(**recipe["conv1"])
        m.fc = nn.Identity()
        if recipe["maxpool"] == "Identity":
            m.maxpool = nn.Identity()
    else:
        m.classifier = m.classifier[:4]
    return m


def _check_loads(state: dict[str, torch.Tensor], recipe: dict, name: str) -> None:
    """Load into the torchvision model; InputError naming the first differences otherwise."""
    with torch.device("meta"):  # shapes only: nothing allocated or initialised
        ref = build_torchvision(recipe).state_dict()
    missing = sorted(set(ref) - set(state))
    extra = sorted(set(state) - set(ref))
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(ref[k].shape)}" for k in ref
              if k in state and state[k].shape != ref[k].shape]
    if missing or extra or shapes:
        what = "; ".join(p for p in (f"shapes differ: {', '.join(shapes[:3])}" if shapes else "",
                                      f"missing: {', '.join(missing[:3])}" if missing else "",
                                      f"not in torchvision: {', '.join(extra[:3])}" if extra else "") if p)
        raise InputError(f"this {name} does not match torchvision's {recipe['constructor']} (width or input size "
                         f"differs; {what}): use --format torch-export")
