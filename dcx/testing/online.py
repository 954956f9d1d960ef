"""Checks of online clusterers (``OnlineClusterer``): the per-batch step, assign, state.

The checks play the engine on stand-in backbone features (planted clusters plus noise per view):
``build_head`` -> ``start_epoch`` -> per step ``before_step``, ``loss``, backward,
``after_backward``, an SGD step of the head.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from dcx.core.contracts import CropSpec, EpochContext, OnlineClusterer, RunDefaults, StepContext, TrainSpec
from dcx.testing.base import PluginUnderTest, check, is_online
from dcx.testing.data import D, K, N, assert_json_serialisable, blobs, saved_state, same, scramble_global_rngs

#: Images per stand-in batch and steps per stand-in epoch.
B, STEPS = 32, 3
SPEC = TrainSpec(feature_dim=D, num_samples=N)


def _online(p: PluginUnderTest) -> tuple[OnlineClusterer, nn.Module]:
    """A fresh instance (k = the planted count when declared) and its head, from torch seed 0."""
    declares_k = any(o.name == "k" for o in p.cls.options)
    plugin = p.new(**({"k": K} if declares_k else {}))
    torch.manual_seed(0)
    head = plugin.build_head(SPEC)
    assert isinstance(head, nn.Module), f"build_head must return an nn.Module, got {type(head).__name__}"
    return plugin, head


def _views(plugin: OnlineClusterer, x: np.ndarray, step: int) -> tuple[list[torch.Tensor], torch.Tensor]:
    """One stand-in batch: each view is the batch's features plus its own noise; and the indices."""
    crops = plugin.crops()
    idx = (torch.arange(B) + step * B) % N
    gen = torch.Generator().manual_seed(100 + step)
    feats = torch.from_numpy(x)[idx]
    views = [(feats + 0.05 * torch.randn(feats.shape, generator=gen)).requires_grad_(True)
             for _ in range(crops.views)]
    return views, idx


def _train(plugin: OnlineClusterer, head: nn.Module, x: np.ndarray, steps: range) -> list[tuple[float, dict, list]]:
    """Run ``steps`` engine steps; returns (loss, stats, view gradients) per step."""
    params = [q for q in head.parameters() if q.requires_grad]
    opt = torch.optim.SGD(params, lr=0.1) if params else None
    out = []
    for i in steps:
        if i % STEPS == 0:
            plugin.start_epoch(head, EpochContext(epoch=i // STEPS, seed=i // STEPS, steps_per_epoch=STEPS,
                                                  num_samples=N, device=torch.device("cpu"),
                                                  features=lambda: torch.from_numpy(x)))
        views, idx = _views(plugin, x, i)
        step = StepContext(epoch=i // STEPS, step=i, steps_per_epoch=STEPS, indices=idx)
        head.train()
        plugin.before_step(head, step)
        loss, stats = plugin.loss(head, views, step)
        assert isinstance(loss, torch.Tensor) and loss.ndim == 0, f"loss must return a scalar tensor, got {loss!r}"
        assert torch.isfinite(loss.detach()), f"loss is {float(loss.detach())}"
        assert isinstance(stats, dict), f"loss must return (tensor, dict), got stats {type(stats).__name__}"
        head.zero_grad(set_to_none=True)
        loss.backward()
        plugin.after_backward(head, step)
        if opt is not None:
            opt.step()
        out.append((float(loss.detach()), stats, [v.grad for v in views]))
    return out


def _assign(plugin: OnlineClusterer, head: nn.Module, x: np.ndarray) -> torch.Tensor:
    head.eval()
    with torch.no_grad():
        return plugin.assign(head, torch.from_numpy(x))


@check("crops() is a CropSpec with at least one large crop, and run_defaults keeps every default positive",
       applies=is_online)
def check_online_head(p: PluginUnderTest) -> None:
    plugin, _ = _online(p)
    crops = plugin.crops()
    assert isinstance(crops, CropSpec), f"crops() must return a CropSpec, got {type(crops).__name__}"
    assert crops.n_large >= 1 and crops.n_small >= 0, f"crops() asks for {crops.n_large} large, {crops.n_small} small"
    for given in (RunDefaults(k=100, epochs=10, batch_size=64, passes=3, jitter=0.4),
                  RunDefaults(k=500, epochs=5, batch_size=128, passes=1, budget=150_000.0)):
        d = plugin.run_defaults(given)
        assert isinstance(d, RunDefaults), f"run_defaults must return a RunDefaults, got {type(d).__name__}"
        for name in ("k", "epochs", "batch_size", "passes"):
            assert getattr(d, name) >= 1, f"run_defaults({given}) gives {name}={getattr(d, name)!r}: must be >= 1"
        assert 0 <= d.jitter <= 1, f"run_defaults gives jitter={d.jitter!r}: must be in [0, 1]"


@check("through start_epoch and the step hooks, loss returns a finite scalar tensor and a dict", applies=is_online)
def check_online_loss(p: PluginUnderTest) -> None:
    plugin, head = _online(p)
    x, _ = blobs()
    _train(plugin, head, x, range(STEPS + 1))  # into the second epoch


@check("the loss sends nonzero gradients to the backbone features (not merely a graph)", applies=is_online)
def check_online_gradients(p: PluginUnderTest) -> None:
    plugin, head = _online(p)
    x, _ = blobs()
    for _, _, grads in _train(plugin, head, x, range(2)):
        assert any(g is not None for g in grads), "no view receives a gradient: the loss is detached from the features"
        total = sum(float(g.abs().sum()) for g in grads if g is not None)
        assert total > 0, "the gradients on the features are all zero: the loss does not depend on them"


@check("the same torch seed gives the same losses and labels, whatever the global NumPy/Python RNGs hold",
       applies=is_online)
def check_online_deterministic(p: PluginUnderTest) -> None:
    x, _ = blobs()
    runs = []
    for scramble in (1, 2):
        scramble_global_rngs(scramble)
        plugin, head = _online(p)
        torch.manual_seed(5)
        losses = [loss for loss, _, _ in _train(plugin, head, x, range(STEPS))]
        runs.append((losses, _assign(plugin, head, x)))
    assert runs[0][0] == runs[1][0], f"losses differ: {runs[0][0]} vs {runs[1][0]}"
    assert torch.equal(runs[0][1], runs[1][1]), "assign gives other labels"


@check("assign returns (B,) integer labels in 0..k-1 and leaves its input unchanged", applies=is_online)
def check_online_assign(p: PluginUnderTest) -> None:
    plugin, head = _online(p)
    x, _ = blobs()
    _train(plugin, head, x, range(2))
    feats = torch.from_numpy(x.copy())
    head.eval()
    with torch.no_grad():
        labels = plugin.assign(head, feats)
    assert isinstance(labels, torch.Tensor), f"assign must return a tensor, got {type(labels).__name__}"
    assert labels.shape == (N,), f"labels have shape {tuple(labels.shape)}, expected ({N},)"
    assert not labels.is_floating_point() and labels.dtype != torch.bool, f"labels are {labels.dtype}"
    assert torch.equal(feats, torch.from_numpy(x)), "assign modified the features in place"
    k = plugin.params.get("k")
    assert int(labels.min()) >= 0, f"negative label {int(labels.min())}"
    if k is not None:
        assert int(labels.max()) < k, f"label {int(labels.max())} outside 0..{k - 1}"


@check("loss statistics and epoch_stats() are dicts that can be written to metrics.jsonl (JSON)", applies=is_online)
def check_online_stats_serialisable(p: PluginUnderTest) -> None:
    plugin, head = _online(p)
    x, _ = blobs()
    for _, stats, _ in _train(plugin, head, x, range(2)):
        # Per-step values may stay 0-d tensors (no host sync per step); they must be scalars.
        assert isinstance(stats, dict), f"loss statistics must be a dict, got {type(stats).__name__}"
        plain = {k: (v.item() if isinstance(v, torch.Tensor) and v.ndim == 0 else v) for k, v in stats.items()}
        assert_json_serialisable(plain, "loss statistics")
    assert_json_serialisable(plugin.epoch_stats(), "epoch_stats()")


@check("state_dict() after an epoch survives a checkpoint, and a restored plugin continues exactly",
       applies=is_online)
def check_online_state_dict_round_trip(p: PluginUnderTest) -> None:
    plugin, head = _online(p)
    x, _ = blobs()
    _train(plugin, head, x, range(STEPS))
    state = plugin.state_dict()
    saved = saved_state(state)
    fresh, _ = _online(p)
    fresh.load_state_dict(saved)
    assert same(fresh.state_dict(), state), "the restored plugin's state_dict differs from the saved one"
    twin = copy.deepcopy(head)  # the engine restores the head itself
    torch.manual_seed(9)
    a = _train(plugin, head, x, range(STEPS, 2 * STEPS))
    torch.manual_seed(9)
    b = _train(fresh, twin, x, range(STEPS, 2 * STEPS))
    assert [r[0] for r in a] == [r[0] for r in b], "the restored plugin's next losses differ from the original's"
