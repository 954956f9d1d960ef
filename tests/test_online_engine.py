"""The engine's online schedule (SwAV) end to end on a tiny digits config: a few real steps."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dcx.core.config import RunConfig
from dcx.training.engine import Engine
from dcx.training.setup import setup



def _params(module: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in module.parameters()]).clone()


def test_swav_online_epoch_trains_and_reports_collapse_guard():
    # 64 images, batch 32, passes 1: two optimiser steps, all in the prototypes' frozen first epoch.
    cfg = RunConfig(
        clusterer="swav", backbone="resnet18", dataset="digits", options={"digits": {"limit": 64}},
        epochs=1, passes=1, width=0.125, batch_size=32, k=10, probe=False,
    )
    s = setup(cfg)
    engine = Engine(s)
    before, head_before = _params(s.model), _params(engine.epochs.head)
    prototypes = engine.epochs.head.prototypes.weight.detach().clone()
    summary = engine.run()

    assert not torch.equal(before, _params(s.model))  # the backbone trained
    assert not torch.equal(head_before, _params(engine.epochs.head))  # so did the projection
    assert torch.allclose(engine.epochs.head.prototypes.weight, prototypes, atol=1e-6)  # frozen in epoch 0
    row = summary["first"]
    stats = row["clusterer"]
    for key in ("prototypes_used", "prototype_usage", "code_entropy", "loss", "ln_k"):
        assert key in stats, key
    assert 1 <= stats["prototypes_used"] <= 10
    assert 0 < stats["code_entropy"] <= math.log(10) + 1e-6
    assert np.isfinite(row["loss"]) and "nmi_labels" in row
    assert summary["final"]["clusters"] == 10


def test_online_clusterers_see_each_image_as_often_as_kmeans_by_default_swav_twice():
    """Default passes: the dataset's image passes times the views an online step takes (SwAV: twice
    that, its run_defaults), so passes // views (what the engine trains) is k-means' passes, or
    twice them; an explicit --passes is kept as given."""
    def resolved(clusterer, **extra):
        s = setup(RunConfig(clusterer=clusterer, dataset="digits", k=10, **extra), load_images=False)
        return s.config.passes, s.clusterer

    kmeans_passes, _ = resolved("kmeans")
    for name, extra, scale in (("dcv2", {}, 1), ("swav", {}, 2), ("swav", {"options": {"swav": {"n_small": 2}}}, 2)):
        passes, clusterer = resolved(name, **extra)
        views = clusterer.crops().views
        assert passes == kmeans_passes * views * scale
        assert passes // views == kmeans_passes * scale
    assert resolved("dcv2", passes=2)[0] == 2
    assert resolved("swav", passes=2)[0] == 2


def test_a_checkpoint_that_no_longer_fits_the_config_is_one_clear_error(tiny_config):
    """A plugin default that changed shape (e.g. swav.proj_dim) must not end a resume in a traceback."""
    from dcx.core.errors import RunDirError

    tiny_config.clusterer, tiny_config.epochs = "swav", 1
    tiny_config.options = {**tiny_config.options, "swav": {"proj_dim": 8}}
    state = Engine(setup(tiny_config)).state(0)
    tiny_config.options["swav"] = {"proj_dim": 16}
    with pytest.raises(RunDirError, match="does not fit the network this run's config.toml builds"):
        Engine(setup(tiny_config)).restore(state)
